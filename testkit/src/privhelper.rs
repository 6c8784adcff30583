//! The real `durhack-privhelper` binary, started with a policy that points at a test [`Nginx`].
//!
//! ```no_run
//! # use testkit::{nginx::Nginx, privhelper::{PolicySpec, PrivHelper}};
//! let Some(nginx) = Nginx::start() else { return };
//! let spec = PolicySpec::new(&nginx).site("demo", &["demo.test"]);
//! let Some(helper) = PrivHelper::start(&nginx, &spec) else { return };
//! // protocol::client::Client::new(helper.socket(), timeout) talks to it.
//! ```
//!
//! The helper refuses to start unless it is root (or given `--dev-insecure`, which this harness
//! passes only when the tests do not run as root, and which it logs loudly).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::nginx::Nginx;
use crate::prereq;

/// What to put in a test policy besides the nginx instance's own paths.
#[derive(Debug, Clone)]
pub struct PolicySpec {
    /// The only user the helper will serve. Defaults to the user running the tests.
    pub client_user: String,
    /// Directories confs may serve from (`root`/`alias`). Defaults to the nginx `www/` dir.
    pub allowed_roots: Vec<PathBuf>,
    /// `(site, domains)`.
    pub sites: Vec<(String, Vec<String>)>,
    /// certbot argv and env; by default `/bin/false`, so an unexpected certbot run fails.
    pub certbot_argv: Vec<String>,
    pub certbot_env: Vec<(String, String)>,
    /// Where certbot's live certificates are (`ssl_certificate` must point inside
    /// `<live_dir>/<site>/`).
    pub cert_live_dir: PathBuf,
    pub command_timeout_secs: u64,
    /// The `listen` forms sites may use. Defaults to the test nginx's `127.0.0.1:<port>`.
    pub listen: Vec<String>,
    /// Loopback ports every site's `proxy_pass` may reach.
    pub proxy_ports: Vec<u16>,
    /// certbot runs per site per hour.
    pub certbot_max_runs_per_hour: u32,
    /// `(site, cert_name)`: sites whose policy keeps another lineage than their name.
    pub cert_names: Vec<(String, String)>,
}

/// The name of the user running this process.
pub fn current_user() -> String {
    let out = Command::new("id").arg("-un").output().expect("run id -un");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

impl PolicySpec {
    pub fn new(nginx: &Nginx) -> PolicySpec {
        PolicySpec {
            client_user: current_user(),
            allowed_roots: vec![nginx.www_dir()],
            sites: Vec::new(),
            certbot_argv: vec!["/bin/false".into()],
            certbot_env: Vec::new(),
            cert_live_dir: nginx.prefix().join("letsencrypt/live"),
            command_timeout_secs: 60,
            listen: vec![nginx.listen()],
            proxy_ports: Vec::new(),
            certbot_max_runs_per_hour: 3,
            cert_names: Vec::new(),
        }
    }

    /// Adds a site and its domains.
    pub fn site(mut self, name: &str, domains: &[&str]) -> PolicySpec {
        self.sites
            .push((name.into(), domains.iter().map(|d| d.to_string()).collect()));
        self
    }

    /// The policy TOML, with the socket at `socket`.
    pub fn to_toml(&self, nginx: &Nginx, socket: &Path) -> String {
        let q = |s: &str| format!("{s:?}");
        let list = |items: &[String]| {
            format!(
                "[{}]",
                items.iter().map(|s| q(s)).collect::<Vec<_>>().join(", ")
            )
        };
        let paths = |items: &[PathBuf]| {
            list(
                &items
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>(),
            )
        };
        let mut t = String::new();
        let _ = writeln!(t, "client_user = {}", q(&self.client_user));
        let _ = writeln!(t, "socket = {}", q(&socket.display().to_string()));
        let _ = writeln!(
            t,
            "conf_dir = {}",
            q(&nginx.sites_dir().display().to_string())
        );
        let _ = writeln!(t, "test_command = {}", list(&nginx.test_argv()));
        let _ = writeln!(t, "reload_command = {}", list(&nginx.reload_argv()));
        let _ = writeln!(
            t,
            "snippets_dir = {}",
            q(&nginx.snippets_dir().display().to_string())
        );
        let _ = writeln!(t, "allowed_roots = {}", paths(&self.allowed_roots));
        let _ = writeln!(
            t,
            "log_dir = {}",
            q(&nginx.logs_dir().display().to_string())
        );
        let _ = writeln!(t, "command_timeout_secs = {}", self.command_timeout_secs);
        let _ = writeln!(t, "listen = {}", list(&self.listen));
        let pid_file = nginx.pid_file();
        let _ = writeln!(t, "nginx_pid_file = {}", q(&pid_file.display().to_string()));
        let _ = writeln!(t, "[certbot]\nargv = {}", list(&self.certbot_argv));
        let _ = writeln!(t, "max_runs_per_hour = {}", self.certbot_max_runs_per_hour);
        let _ = writeln!(
            t,
            "live_dir = {}",
            q(&self.cert_live_dir.display().to_string())
        );
        let _ = writeln!(t, "timeout_secs = 300");
        let _ = writeln!(t, "[certbot.env]");
        for (k, v) in &self.certbot_env {
            let _ = writeln!(t, "{} = {}", q(k), q(v));
        }
        for (site, domains) in &self.sites {
            // Quoted: a dotted site name is one key, not nested tables.
            let _ = writeln!(t, "[sites.{}]\ndomains = {}", q(site), list(domains));
            let _ = writeln!(t, "proxy_ports = {:?}", self.proxy_ports);
            for (_, cert) in self.cert_names.iter().filter(|(s, _)| s == site) {
                let _ = writeln!(t, "cert_name = {}", q(cert));
            }
        }
        t
    }
}

/// A running helper; killed on drop.
#[derive(Debug)]
pub struct PrivHelper {
    dir: tempfile::TempDir,
    child: Child,
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("testkit is in the workspace")
        .to_path_buf()
}

/// The target profile directory this test binary was built into (`<target>/debug`).
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    // <target>/<profile>/deps/<test binary>
    exe.parent()
        .and_then(Path::parent)
        .expect("test binary in <target>/<profile>/deps")
        .to_path_buf()
}

fn newest_source(dir: &Path) -> std::time::SystemTime {
    let mut newest = std::time::SystemTime::UNIX_EPOCH;
    for entry in walk(dir) {
        if let Ok(m) = entry.metadata().and_then(|m| m.modified()) {
            newest = newest.max(m);
        }
    }
    newest
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

/// The helper binary: `$DURHACK_PRIVHELPER_BIN`, or `<target>/<profile>/durhack-privhelper` if
/// it is newer than the privhelper and protocol sources, or else built now with
/// `cargo build -p privhelper --bin durhack-privhelper` into the same target directory.
pub fn binary() -> PathBuf {
    if let Some(bin) = std::env::var_os("DURHACK_PRIVHELPER_BIN") {
        return PathBuf::from(bin);
    }
    let profile = profile_dir();
    let bin = profile.join("durhack-privhelper");
    let root = workspace_root();
    let sources = ["privhelper", "protocol"]
        .map(|c| newest_source(&root.join(c).join("src")))
        .into_iter()
        .max();
    let fresh = bin
        .metadata()
        .and_then(|m| m.modified())
        .is_ok_and(|built| Some(built) >= sources);
    if fresh {
        return bin;
    }
    let target = profile.parent().expect("target dir");
    let mut build = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    build
        .args(["build", "-p", "privhelper", "--bin", "durhack-privhelper"])
        .current_dir(&root)
        .env("CARGO_TARGET_DIR", target);
    if profile.file_name().is_some_and(|p| p == "release") {
        build.arg("--release");
    }
    let status = build
        .status()
        .expect("run cargo build for durhack-privhelper");
    assert!(status.success(), "building durhack-privhelper failed");
    bin
}

impl PrivHelper {
    /// Starts the helper with the policy `spec` describes for `nginx`. Returns `None` (after a
    /// loud notice; a failure under CI) when not root: the helper's real checks need root.
    pub fn start(nginx: &Nginx, spec: &PolicySpec) -> Option<PrivHelper> {
        if !prereq::require(
            "root",
            prereq::is_root(),
            "the privileged helper runs as root",
        ) {
            return None;
        }
        let dir = tempfile::Builder::new()
            .prefix("testkit-privhelper-")
            .tempdir()
            .expect("tempdir");
        // Others (the wrong-uid tests) must be able to reach the socket to be refused by it.
        crate::nginx::set_mode(dir.path(), 0o755);
        let socket = dir.path().join("privhelper.sock");
        let policy = dir.path().join("privhelper.toml");
        std::fs::write(&policy, spec.to_toml(nginx, &socket)).expect("write policy");
        crate::nginx::set_mode(&policy, 0o644);
        Some(PrivHelper::start_with_policy_file(dir, &policy, &socket))
    }

    fn start_with_policy_file(dir: tempfile::TempDir, policy: &Path, socket: &Path) -> PrivHelper {
        let log = std::fs::File::create(dir.path().join("privhelper.log")).expect("create log");
        let child = Command::new(binary())
            .arg("--policy")
            .arg(policy)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start durhack-privhelper");
        let mut helper = PrivHelper { dir, child };
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::os::unix::net::UnixStream::connect(socket).is_err() {
            if let Ok(Some(status)) = helper.child.try_wait() {
                panic!("durhack-privhelper exited ({status}):\n{}", helper.log());
            }
            assert!(
                Instant::now() < deadline,
                "durhack-privhelper did not listen:\n{}",
                helper.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        helper
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("privhelper.sock")
    }

    pub fn policy_path(&self) -> PathBuf {
        self.dir.path().join("privhelper.toml")
    }

    /// The helper's log so far (one line per request).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("privhelper.log")).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for PrivHelper {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
