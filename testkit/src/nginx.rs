//! A real nginx in a temporary prefix, listening on a free loopback port.
//!
//! Layout under [`Nginx::prefix`]:
//! - `conf/nginx.conf`: the main config; it includes `sites/*.conf` inside `http`;
//! - `sites/`: where site confs go (the privileged helper's `conf_dir` in tests);
//! - `snippets/acme-challenge.conf`: a `location` serving `acme/` for http-01 challenges, for
//!   sites to `include`;
//! - `acme/`: the ACME webroot (also served by the default server for any unknown host);
//! - `www/`: a place for site content; `logs/`, `tmp/`.
//!
//! Sites should `listen 127.0.0.1:<port>` ([`Nginx::listen`]). The default server answers 404
//! for hosts no site claims.
//!
//! [`Nginx::start_on_80_443`] starts a production-like instance instead: the main conf listens
//! on ports 80 and 443 (IPv4, and IPv6 when the loopback has it) with a `default_server`
//! catch-all answering 404 (443 with a self-signed certificate, [`Nginx::default_cert`]), no
//! ACME location of its own (sites include `snippets/acme-challenge.conf`), and workers running
//! as `www-data` when that user exists. It only runs in a private network namespace
//! ([`crate::netns`]), so it never takes the machine's own ports.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::prereq;

/// A running nginx; stopped on drop.
#[derive(Debug)]
pub struct Nginx {
    dir: tempfile::TempDir,
    port: u16,
    program: PathBuf,
    /// What sites put after `listen` (`127.0.0.1:<port>`, or `80` on the 80/443 instance).
    listen: String,
    /// Does the main conf also listen on `[::]` (80/443 instance only)?
    ipv6: bool,
    /// The master's pid once it served: stopped by signal on drop if `-s stop` cannot find it
    /// (a test that removed or rewrote the pid file would otherwise leak the master).
    started_master: Option<u32>,
}

/// Which main conf to write.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Layout {
    /// A free loopback port, the ACME webroot served for every host, workers as root.
    Loopback,
    /// 80 and 443 on every address, a 404 catch-all, workers as www-data.
    Production { ipv6: bool },
}

/// A free TCP port on 127.0.0.1 (free when asked; the caller binds it soon after).
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local_addr").port()
}

pub(crate) fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/bin", "/sbin", "/bin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

impl Nginx {
    /// Starts nginx, or returns `None` (after [`prereq::require`]'s loud notice; a failure under
    /// CI) when nginx is not installed.
    pub fn start() -> Option<Nginx> {
        Nginx::start_with(Layout::Loopback)
    }

    /// Starts the production-like instance on ports 80 and 443 (see the module docs), or returns
    /// `None` like [`Nginx::start`]. Panics outside a private network namespace.
    pub fn start_on_80_443() -> Option<Nginx> {
        assert!(
            crate::netns::is_private(),
            "Nginx::start_on_80_443 runs only inside a private network namespace (testkit::netns)"
        );
        if !prereq::require(
            "openssl",
            prereq::have_program("openssl"),
            "the default server's self-signed certificate",
        ) {
            return None;
        }
        // IPv6 loopback may be disabled; then the instance (and its sites) are IPv4 only.
        let ipv6 = TcpListener::bind("[::1]:0").is_ok();
        Nginx::start_with(Layout::Production { ipv6 })
    }

    fn start_with(layout: Layout) -> Option<Nginx> {
        let program = find_program("nginx");
        if !prereq::require("nginx", program.is_some(), "tests against a real nginx") {
            return None;
        }
        let program = program?;
        let dir = tempfile::Builder::new()
            .prefix("testkit-nginx-")
            .tempdir()
            .expect("tempdir");
        let prefix = dir.path();
        for sub in ["conf", "sites", "snippets", "acme", "www", "logs", "tmp"] {
            std::fs::create_dir_all(prefix.join(sub)).expect("create nginx prefix dirs");
        }
        // Workers may run as another user: let them traverse into the prefix.
        set_mode(prefix, 0o755);
        let p = prefix.display();
        let (port, conf) = match layout {
            Layout::Loopback => Nginx::loopback_conf(prefix),
            Layout::Production { ipv6 } => Nginx::production_conf(prefix, ipv6),
        };
        std::fs::write(prefix.join("conf/nginx.conf"), conf).expect("write nginx.conf");
        std::fs::write(
            prefix.join("snippets/acme-challenge.conf"),
            format!("location /.well-known/acme-challenge/ {{ root {p}/acme; }}\n"),
        )
        .expect("write acme snippet");
        let (listen, ipv6) = match layout {
            Layout::Loopback => (format!("127.0.0.1:{port}"), false),
            Layout::Production { ipv6 } => (port.to_string(), ipv6),
        };
        let nginx = Nginx {
            dir,
            port,
            program,
            listen,
            ipv6,
            started_master: None,
        };
        let out = Command::new(&nginx.program)
            .args(nginx.base_args())
            .output()
            .expect("run nginx");
        assert!(
            out.status.success(),
            "nginx did not start: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        nginx.wait_until_serving();
        let mut nginx = nginx;
        nginx.started_master = nginx.master_pid();
        Some(nginx)
    }

    /// The main conf of [`Nginx::start`], and its port.
    fn loopback_conf(prefix: &Path) -> (u16, String) {
        let port = free_port();
        let p = prefix.display();
        // As root, run workers as root too, so tests may serve content from private temp
        // directories without chmod games; nginx ignores `user` when not root, with a warning.
        let user = if prereq::is_root() {
            "user root root;"
        } else {
            ""
        };
        let conf = format!(
            "{user}
daemon on;
worker_processes 1;
pid {p}/logs/nginx.pid;
error_log {p}/logs/error.log;
events {{ worker_connections 64; }}
http {{
    access_log {p}/logs/access.log;
    client_body_temp_path {p}/tmp/client_body;
    proxy_temp_path {p}/tmp/proxy;
    fastcgi_temp_path {p}/tmp/fastcgi;
    uwsgi_temp_path {p}/tmp/uwsgi;
    scgi_temp_path {p}/tmp/scgi;
    default_type text/plain;
    server {{
        listen 127.0.0.1:{port} default_server;
        server_name _;
        location /.well-known/acme-challenge/ {{ root {p}/acme; }}
        location / {{ return 404; }}
    }}
    include {p}/sites/*.conf;
}}
"
        );
        (port, conf)
    }

    /// The main conf of [`Nginx::start_on_80_443`] (port 80), with a fresh self-signed
    /// certificate for the default server in `default-tls/`.
    fn production_conf(prefix: &Path, ipv6: bool) -> (u16, String) {
        let tls = prefix.join("default-tls");
        std::fs::create_dir_all(&tls).expect("create default-tls");
        let out = Command::new("openssl")
            .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
            .args(["ec_paramgen_curve:prime256v1", "-nodes", "-days", "2"])
            .args(["-subj", "/CN=default-server.invalid"])
            .args(["-keyout", "key.pem", "-out", "cert.pem"])
            .current_dir(&tls)
            .output()
            .expect("run openssl");
        assert!(
            out.status.success(),
            "openssl req -x509: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let p = prefix.display();
        // Production workers are not root: serve as www-data (Debian's nginx user) if it exists.
        let user = if prereq::is_root() && prereq::user_exists("www-data") {
            "user www-data www-data;"
        } else if prereq::is_root() {
            "user root root;"
        } else {
            ""
        };
        let v6 = |l: &str| {
            if ipv6 {
                format!("\n        listen [::]:{l} default_server;")
            } else {
                String::new()
            }
        };
        let (v6_80, v6_443) = (v6("80"), v6("443 ssl"));
        let conf = format!(
            "{user}
daemon on;
worker_processes 1;
pid {p}/logs/nginx.pid;
error_log {p}/logs/error.log;
events {{ worker_connections 64; }}
http {{
    access_log {p}/logs/access.log;
    client_body_temp_path {p}/tmp/client_body;
    proxy_temp_path {p}/tmp/proxy;
    fastcgi_temp_path {p}/tmp/fastcgi;
    uwsgi_temp_path {p}/tmp/uwsgi;
    scgi_temp_path {p}/tmp/scgi;
    default_type text/plain;
    server {{
        listen 80 default_server;{v6_80}
        listen 443 ssl default_server;{v6_443}
        server_name _;
        ssl_certificate {p}/default-tls/cert.pem;
        ssl_certificate_key {p}/default-tls/key.pem;
        location / {{ return 404 \"default server\\n\"; }}
    }}
    include {p}/sites/*.conf;
}}
"
        );
        (80, conf)
    }

    fn base_args(&self) -> Vec<String> {
        let p = self.prefix().display().to_string();
        vec![
            "-p".into(),
            p.clone(),
            "-c".into(),
            "conf/nginx.conf".into(),
            "-e".into(),
            format!("{p}/logs/error.log"),
        ]
    }

    fn wait_until_serving(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "nginx did not start listening on {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// What a site conf puts after `listen`: `127.0.0.1:<port>`, or `80` on the 80/443
    /// instance.
    pub fn listen(&self) -> String {
        self.listen.clone()
    }

    /// Does the main conf (80/443 instance) also listen on `[::]`?
    pub fn ipv6(&self) -> bool {
        self.ipv6
    }

    /// The master's pid file (`pid` in the main conf).
    pub fn pid_file(&self) -> PathBuf {
        self.prefix().join("logs/nginx.pid")
    }

    /// The default server's self-signed certificate (80/443 instance).
    pub fn default_cert(&self) -> PathBuf {
        self.prefix().join("default-tls/cert.pem")
    }

    pub fn prefix(&self) -> &Path {
        self.dir.path()
    }

    /// Where site confs go (`include`d by the main config).
    pub fn sites_dir(&self) -> PathBuf {
        self.prefix().join("sites")
    }

    /// The directory of snippets sites may include (holds `acme-challenge.conf`).
    pub fn snippets_dir(&self) -> PathBuf {
        self.prefix().join("snippets")
    }

    /// The ACME http-01 webroot served at `/.well-known/acme-challenge/`.
    pub fn webroot(&self) -> PathBuf {
        self.prefix().join("acme")
    }

    /// A place for site content.
    pub fn www_dir(&self) -> PathBuf {
        self.prefix().join("www")
    }

    pub fn logs_dir(&self) -> PathBuf {
        self.prefix().join("logs")
    }

    /// `nginx -t` for this instance, with an absolute program path (as a policy requires).
    pub fn test_argv(&self) -> Vec<String> {
        let mut argv = vec![self.program.display().to_string(), "-t".into(), "-q".into()];
        argv.extend(self.base_args());
        argv
    }

    /// `nginx -s reload` for this instance.
    pub fn reload_argv(&self) -> Vec<String> {
        let mut argv = vec![self.program.display().to_string()];
        argv.extend(self.base_args());
        argv.extend(["-s".into(), "reload".into()]);
        argv
    }

    /// The master's pid.
    pub fn master_pid(&self) -> Option<u32> {
        std::fs::read_to_string(self.pid_file())
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// The pids of the master's children (the workers). A reload replaces them, so a test can
    /// wait for a reload to take effect with [`Nginx::wait_for_new_workers`].
    pub fn worker_pids(&self) -> Vec<u32> {
        let Some(master) = self.master_pid() else {
            return Vec::new();
        };
        let mut pids = Vec::new();
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
                continue;
            };
            // Fields after the parenthesised command name: state, ppid, ...
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok());
            if ppid == Some(master) {
                pids.push(pid);
            }
        }
        pids.sort();
        pids
    }

    /// Waits (up to 30 s) until none of `old` is a worker any more and a new worker runs.
    pub fn wait_for_new_workers(&self, old: &[u32]) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let now = self.worker_pids();
            if !now.is_empty() && now.iter().all(|p| !old.contains(p)) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "nginx workers were not replaced (old {old:?}, now {now:?})"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `GET path` with `Host: host` over HTTP/1.0; returns the status and body.
    pub fn get(&self, host: &str, path: &str) -> (u16, String) {
        self.get_at(
            std::net::SocketAddr::from(([127, 0, 0, 1], self.port)),
            host,
            path,
        )
    }

    /// [`Nginx::get`] against `addr` (for example `[::1]:80`).
    pub fn get_at(&self, addr: std::net::SocketAddr, host: &str, path: &str) -> (u16, String) {
        let mut stream =
            TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect to nginx at {addr}: {e}"));
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .expect("set_read_timeout");
        write!(
            stream,
            "GET {path} HTTP/1.0\r\nHost: {host}\r\nConnection: close\r\n\r\n"
        )
        .expect("send request");
        let mut response = Vec::new();
        stream.read_to_end(&mut response).expect("read response");
        let response = String::from_utf8_lossy(&response).into_owned();
        let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        (status, body.to_string())
    }

    /// The error log so far, for assertion messages.
    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.prefix().join("logs/error.log")).unwrap_or_default()
    }
}

/// Is `pid` running (a zombie awaiting its reaper does not count)?
pub(crate) fn process_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            stat.rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next())
                != Some("Z")
        }
        Err(_) => false,
    }
}

pub(crate) fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let master = self.master_pid();
        let _ = Command::new(&self.program)
            .args(self.base_args())
            .args(["-s", "stop"])
            .output();
        // Wait for the master to go, so the prefix can be removed and the port reused.
        if let Some(pid) = master.or(self.started_master) {
            let deadline = Instant::now() + Duration::from_secs(10);
            while process_alive(pid) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            if process_alive(pid) {
                let _ = Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .output();
            }
        }
    }
}
