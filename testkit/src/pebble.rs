//! A real ACME server: pebble, with pebble-challtestsrv as its DNS (every name resolves to
//! 127.0.0.1), so http-01 validation really fetches the token from the test nginx.

use std::net::{TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::nginx::free_port;
use crate::prereq;

/// Running pebble + challtestsrv; both are killed on drop.
#[derive(Debug)]
pub struct Pebble {
    dir: tempfile::TempDir,
    port: u16,
    management: u16,
    pebble: Child,
    challtestsrv: Child,
}

/// A port free for both TCP and UDP on 127.0.0.1 (the DNS server wants both).
fn free_tcp_udp_port() -> u16 {
    loop {
        let port = free_port();
        if UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn wait_for_port(port: u16, what: &str, child: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{what} exited early: {status}");
        }
        assert!(
            Instant::now() < deadline,
            "{what} did not start listening on {port}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

impl Pebble {
    /// Starts pebble validating http-01 challenges against `http_port` (the test nginx's port).
    /// Returns `None` after a loud notice (a failure under CI) when pebble, challtestsrv or
    /// openssl is missing.
    pub fn start(http_port: u16) -> Option<Pebble> {
        let have = ["pebble", "pebble-challtestsrv", "openssl"]
            .iter()
            .all(|p| prereq::have_program(p));
        if !prereq::require(
            "pebble, pebble-challtestsrv and openssl",
            have,
            "a real ACME server for certbot tests",
        ) {
            return None;
        }
        let dir = tempfile::Builder::new()
            .prefix("testkit-pebble-")
            .tempdir()
            .expect("tempdir");
        let d = dir.path();
        openssl(
            d,
            &[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
                "-days",
                "30",
                "-subj",
                "/CN=testkit pebble CA",
            ],
        );
        openssl(
            d,
            &[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                "key.pem",
                "-out",
                "srv.csr",
                "-subj",
                "/CN=localhost",
            ],
        );
        std::fs::write(
            d.join("ext.cnf"),
            "subjectAltName=DNS:localhost,IP:127.0.0.1\n",
        )
        .expect("write ext.cnf");
        openssl(
            d,
            &[
                "x509",
                "-req",
                "-in",
                "srv.csr",
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                "cert.pem",
                "-days",
                "30",
                "-extfile",
                "ext.cnf",
            ],
        );

        let port = free_port();
        let management = free_port();
        let tls_port = free_port();
        let dns = free_tcp_udp_port();
        let dns_management = free_port();
        let config = format!(
            r#"{{"pebble": {{"listenAddress": "127.0.0.1:{port}", "managementListenAddress": "127.0.0.1:{management}",
"certificate": "{d}/cert.pem", "privateKey": "{d}/key.pem", "httpPort": {http_port}, "tlsPort": {tls_port},
"ocspResponderURL": "", "externalAccountBindingRequired": false}}}}"#,
            d = d.display()
        );
        std::fs::write(d.join("config.json"), config).expect("write pebble config");
        let log =
            |name: &str| Stdio::from(std::fs::File::create(d.join(name)).expect("create log"));

        let mut challtestsrv = Command::new("pebble-challtestsrv")
            .args([
                "-dns01",
                &format!("127.0.0.1:{dns}"),
                "-http01",
                "",
                "-https01",
                "",
                "-tlsalpn01",
                "",
            ])
            .args([
                "-management",
                &format!("127.0.0.1:{dns_management}"),
                "-defaultIPv4",
                "127.0.0.1",
                "-defaultIPv6",
                "",
            ])
            .stdout(log("challtestsrv.log"))
            .stderr(log("challtestsrv.err"))
            .spawn()
            .expect("start pebble-challtestsrv");
        wait_for_port(dns_management, "pebble-challtestsrv", &mut challtestsrv);

        let pebble = Command::new("pebble")
            .args([
                "-config",
                &d.join("config.json").display().to_string(),
                "-dnsserver",
                &format!("127.0.0.1:{dns}"),
            ])
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .stdout(log("pebble.log"))
            .stderr(log("pebble.err"))
            .spawn();
        let mut pebble = match pebble {
            Ok(p) => p,
            Err(e) => {
                let _ = challtestsrv.kill();
                panic!("start pebble: {e}");
            }
        };
        wait_for_port(port, "pebble", &mut pebble);
        Some(Pebble {
            dir,
            port,
            management,
            pebble,
            challtestsrv,
        })
    }

    /// The ACME directory URL.
    pub fn directory_url(&self) -> String {
        format!("https://127.0.0.1:{}/dir", self.port)
    }

    /// The CA that signed pebble's own TLS certificate (certbot must trust it).
    pub fn ca_bundle(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// The root certificate pebble signs with (PEM), from its management API: what a client
    /// verifying a certificate pebble issued must trust. pebble makes a new root on every
    /// start. Needs curl.
    pub fn root_ca_pem(&self) -> String {
        let out = Command::new("curl")
            .args(["--silent", "--show-error", "--fail", "--cacert"])
            .arg(self.ca_bundle())
            .arg(format!("https://127.0.0.1:{}/roots/0", self.management))
            .output()
            .expect("run curl");
        let pem = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success() && pem.contains("BEGIN CERTIFICATE"),
            "fetching pebble's root from its management API: {}{pem}",
            String::from_utf8_lossy(&out.stderr)
        );
        pem
    }

    /// pebble's log (requests it served), for assertions and failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("pebble.log")).unwrap_or_default()
    }

    /// The certbot argv for a policy: certonly via the webroot, against this pebble, with its
    /// state under `certbot_dir` (certificates end up in `<certbot_dir>/config/live/<name>/`).
    /// The helper appends `--cert-name <site> -d <domain>...`.
    pub fn certbot_argv(&self, certbot_dir: &Path, webroot: &Path) -> Vec<String> {
        let program = crate::nginx::find_program("certbot")
            .unwrap_or_else(|| PathBuf::from("/usr/bin/certbot"));
        let c = certbot_dir.display();
        [
            program.display().to_string(),
            "certonly".into(),
            "--non-interactive".into(),
            "--agree-tos".into(),
            "--register-unsafely-without-email".into(),
            "--keep-until-expiring".into(),
            "--server".into(),
            self.directory_url(),
            "--config-dir".into(),
            format!("{c}/config"),
            "--work-dir".into(),
            format!("{c}/work"),
            "--logs-dir".into(),
            format!("{c}/logs"),
            "--webroot".into(),
            "-w".into(),
            webroot.display().to_string(),
        ]
        .into()
    }

    /// Where certbot with [`Pebble::certbot_argv`] puts live certificates.
    pub fn live_dir(certbot_dir: &Path) -> PathBuf {
        certbot_dir.join("config/live")
    }

    /// The environment certbot needs: trust pebble's CA.
    pub fn certbot_env(&self) -> Vec<(String, String)> {
        vec![
            (
                "REQUESTS_CA_BUNDLE".into(),
                self.ca_bundle().display().to_string(),
            ),
            ("PATH".into(), "/usr/sbin:/usr/bin:/sbin:/bin".into()),
        ]
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        let _ = self.pebble.kill();
        let _ = self.pebble.wait();
        let _ = self.challtestsrv.kill();
        let _ = self.challtestsrv.wait();
    }
}
