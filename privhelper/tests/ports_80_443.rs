//! Production-like: the real helper, as root (so it really drops its capabilities), managing a
//! real nginx whose main conf listens on ports 80 and 443, with a certificate from a real ACME
//! server (pebble) validated over http-01 on port 80.
//!
//! Every earlier test used high ports, where `nginx -t` needs no privilege to bind. Here the
//! binds are real privileged binds: the test re-runs itself inside a private network namespace
//! (`testkit::netns`), where only a loopback exists, so 80 and 443 are free and nothing touches
//! the machine's own network.
//!
//! Needs root, unshare and ip, nginx, pebble, pebble-challtestsrv, certbot, openssl and curl.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use protocol::client::Client;
use protocol::{Domain, Domains, ErrorCode, Outcome, Request, Response, SiteConfig, SiteName};
use testkit::netns;
use testkit::nginx::Nginx;
use testkit::pebble::Pebble;
use testkit::prereq;
use testkit::privhelper::{PolicySpec, PrivHelper};

/// This test's name, as `--exact` wants it for the re-run inside the namespace.
const TEST: &str = "site_on_ports_80_and_443_with_a_real_certificate";

const CONTENT: &str = "hello from site.test\n";
const DEFAULT_ANSWER: (u16, &str) = (404, "default server\n");
/// A port some other program listens on, which a site then asks for.
const BUSY_PORT: u16 = 8080;

#[test]
fn site_on_ports_80_and_443_with_a_real_certificate() {
    if let Some(inner) = netns::inner() {
        return in_private_namespace(&inner);
    }
    let needs = [
        ("root", prereq::is_root(), "the helper drops real capabilities"),
        (
            "a private network namespace (unshare -n, ip)",
            netns::available(),
            "ports 80 and 443 without touching the machine's",
        ),
        (
            "nginx",
            prereq::have_program("nginx") || Path::new("/usr/sbin/nginx").is_file(),
            "the real web server",
        ),
        (
            "pebble and pebble-challtestsrv",
            prereq::have_program("pebble") && prereq::have_program("pebble-challtestsrv"),
            "a real ACME server",
        ),
        ("certbot", prereq::have_program("certbot"), "real issuance"),
        (
            "openssl and curl",
            prereq::have_program("openssl") && prereq::have_program("curl"),
            "TLS checks",
        ),
    ];
    for (what, available, why) in needs {
        if !prereq::require(what, available, why) {
            return;
        }
    }
    netns::run_test_inside(TEST).assert_success();
}

/// Everything the steps need, and what to show when one fails.
struct World {
    nginx: Nginx,
    pebble: Pebble,
    helper: PrivHelper,
    client: Client,
    site: SiteName,
    www: PathBuf,
    live: PathBuf,
    scratch: tempfile::TempDir,
}

fn in_private_namespace(_inner: &netns::Inner) {
    let nginx = Nginx::start_on_80_443().expect("nginx (the outer run checked it is installed)");
    println!(
        "nginx {} listening on 80 and 443{}",
        nginx.prefix().display(),
        if nginx.ipv6() { ", IPv4 and IPv6" } else { ", IPv4 only" }
    );
    // pebble validates http-01 by fetching the token from site.test:80, which challtestsrv
    // resolves to 127.0.0.1: this nginx.
    let pebble = Pebble::start(80).expect("pebble (the outer run checked it is installed)");
    let scratch = tempfile::tempdir().unwrap();
    let certbot_dir = scratch.path().join("certbot");
    let www = nginx.www_dir().join("site");
    std::fs::create_dir_all(&www).unwrap();
    std::fs::write(www.join("index.html"), CONTENT).unwrap();

    let mut spec = PolicySpec::new(&nginx).site("site", &["site.test"]);
    spec.certbot_argv = pebble.certbot_argv(&certbot_dir, &nginx.webroot());
    spec.certbot_env = pebble.certbot_env();
    spec.cert_live_dir = Pebble::live_dir(&certbot_dir);
    spec.listen = vec!["80".into(), "443 ssl".into()];
    if nginx.ipv6() {
        spec.listen.extend(["[::]:80".into(), "[::]:443 ssl".into()]);
    }
    // For the reload nginx cannot apply (below): a port another program holds.
    spec.listen.push(BUSY_PORT.to_string());
    // The helper's systemd unit runs it with UMask=0077 (deploy/durhack-privhelper.service), so
    // what it creates (site confs) and what it runs (nginx -t, certbot) get that umask here too.
    let umask = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    let helper = PrivHelper::start(&nginx, &spec);
    nix::sys::stat::umask(umask);
    let helper = helper.expect("the helper (we are root)");
    let client = Client::new(helper.socket(), Duration::from_secs(300));
    let w = World {
        live: Pebble::live_dir(&certbot_dir).join("site"),
        nginx,
        pebble,
        helper,
        client,
        site: SiteName::try_from("site").unwrap(),
        www,
        scratch,
    };

    // Before any site: every host gets the catch-all.
    assert_eq!(w.get("site.test"), (DEFAULT_ANSWER.0, DEFAULT_ANSWER.1.into()));

    // 3. A plain-HTTP site on port 80 that also serves the ACME challenges.
    w.write_site(&w.http_server());
    w.reload();
    for addr in w.addrs(80) {
        assert_eq!(
            w.nginx.get_at(addr, "site.test", "/"),
            (200, CONTENT.into()),
            "site.test over http at {addr}\n{}",
            w.diagnostics()
        );
    }
    assert_eq!(w.get("other.test"), (DEFAULT_ANSWER.0, DEFAULT_ANSWER.1.into()));

    // A reload nginx cannot apply: another program holds a port the site now asks for. `nginx
    // -t` passes (it ignores "address in use", since the running master may hold the port);
    // the master then fails to bind and keeps serving the old configuration, which ReloadNginx
    // must report instead of "Reloaded".
    let squatter = std::net::TcpListener::bind(("0.0.0.0", BUSY_PORT)).unwrap();
    let busy = w
        .http_server()
        .replace("    listen 80;\n", &format!("    listen 80;\n    listen {BUSY_PORT};\n"));
    w.write_site(&busy);
    let response = w.call(&Request::ReloadNginx);
    match &response {
        Response::Error { code: ErrorCode::CommandFailed, .. } => {}
        other => panic!(
            "ReloadNginx that nginx could not apply: expected CommandFailed, got:\n{}\n{}",
            describe(other),
            w.diagnostics()
        ),
    }
    let bind_failed = format!("bind() to 0.0.0.0:{BUSY_PORT} failed (98: ");
    assert!(
        w.nginx.error_log().contains(&bind_failed),
        "the master could not bind {BUSY_PORT}\n{}",
        w.diagnostics()
    );
    assert_eq!(w.get("site.test"), (200, CONTENT.into()), "still served");
    drop(squatter);
    w.write_site(&w.http_server());
    w.reload();

    // The site's HTTPS server, on the certificate IssueCertificate will put in `live`.
    let tls = format!(
        "server {{\n    listen 443 ssl;\n{}    server_name site.test;\n    ssl_certificate {live}/fullchain.pem;\n    ssl_certificate_key {live}/privkey.pem;\n    root {www};\n}}\n",
        if w.nginx.ipv6() { "    listen [::]:443 ssl;\n" } else { "" },
        live = w.live.display(),
        www = w.www.display(),
    );
    // Before the certificate exists, nginx -t refuses the HTTPS server: the write is undone and
    // the port-80 site keeps being served.
    let response = w.call(&Request::WriteSite {
        site: w.site.clone(),
        config: SiteConfig::try_from(format!("{}{tls}", w.http_server())).unwrap(),
    });
    match &response {
        Response::Error { code: ErrorCode::NginxTestFailed, detail }
            if detail.as_str().contains("fullchain.pem") => {}
        other => panic!(
            "WriteSite with a missing certificate: expected NginxTestFailed naming fullchain.pem, got:\n{}\n{}",
            describe(other),
            w.diagnostics()
        ),
    }
    let on_disk = std::fs::read_to_string(w.nginx.sites_dir().join("site.conf")).unwrap();
    assert!(
        on_disk.contains("site.test") && !on_disk.contains("ssl_certificate"),
        "the refused write was undone:\n{on_disk}"
    );
    assert_eq!(w.get("site.test"), (200, CONTENT.into()), "{}", w.diagnostics());

    // 4. A real certificate: pebble fetches the token from port 80 through the site's snippet.
    let names = Domains::try_from(vec![Domain::try_from("site.test").unwrap()]).unwrap();
    let response = w.call(&Request::IssueCertificate { site: w.site.clone(), domains: names });
    w.expect(&response, Outcome::CertificateIssued, "IssueCertificate");
    let access_log = std::fs::read_to_string(w.nginx.logs_dir().join("access.log")).unwrap();
    assert!(
        access_log
            .lines()
            .any(|l| l.contains("GET /.well-known/acme-challenge/") && l.contains("\" 200 ")),
        "pebble fetched the http-01 token from nginx on port 80; access log:\n{access_log}\n{}",
        w.diagnostics()
    );
    let issued = w.live.join("cert.pem");
    assert!(issued.is_file(), "{}", w.diagnostics());

    // 5. The same site over HTTPS on 443 with that certificate.
    w.write_site(&format!("{}{tls}", w.http_server()));
    w.reload();
    let root = w.scratch.path().join("pebble-root.pem");
    std::fs::write(&root, w.pebble.root_ca_pem()).unwrap();
    for addr in w.addrs(443) {
        // Verified against pebble's root only, for the name site.test.
        assert_eq!(
            w.curl_https(addr, Some(&root)),
            (200, CONTENT.into()),
            "site.test over https at {addr}\n{}",
            w.diagnostics()
        );
        assert_eq!(
            served_fingerprint(addr),
            fingerprint(&issued),
            "the certificate served at {addr} for site.test is the one pebble issued"
        );
    }

    // 6. Removed: site.test falls to the catch-all on both ports.
    let response = w.call(&Request::RemoveSite { site: w.site.clone() });
    w.expect(&response, Outcome::SiteRemoved, "RemoveSite");
    w.reload();
    for addr in w.addrs(80) {
        assert_eq!(
            w.nginx.get_at(addr, "site.test", "/"),
            (DEFAULT_ANSWER.0, DEFAULT_ANSWER.1.into()),
            "site.test over http at {addr} after removal\n{}",
            w.diagnostics()
        );
    }
    for addr in w.addrs(443) {
        assert_eq!(
            served_fingerprint(addr),
            fingerprint(&w.nginx.default_cert()),
            "after removal the default server's certificate is served at {addr}"
        );
        assert_eq!(
            w.curl_https(addr, None),
            (DEFAULT_ANSWER.0, DEFAULT_ANSWER.1.into()),
            "site.test over https at {addr} after removal"
        );
    }
    let log = w.helper.log();
    for verb in ["write-site", "reload-nginx", "issue-certificate", "remove-site"] {
        assert!(log.contains(&format!("verb={verb} ")), "{log}");
    }
    // Only the reload nginx could not apply and the write before the certificate existed
    // were refused. (`verb=-` lines are the
    // harness's readiness probes: connections closed without a request.)
    let refused: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("verb=") && !l.contains("verb=- "))
        .filter(|l| l.contains("decision=\"error"))
        .collect();
    assert!(
        refused.len() == 2
            && refused[0].contains("verb=reload-nginx")
            && refused[0].contains("CommandFailed")
            && refused[1].contains("verb=write-site")
            && refused[1].contains("NginxTestFailed"),
        "{log}"
    );
    println!("all steps passed; helper log:\n{log}");
}

impl World {
    fn call(&self, request: &Request) -> Response {
        self.client
            .call(request)
            .unwrap_or_else(|e| panic!("{request:?}: {e}\n{}", self.diagnostics()))
    }

    #[track_caller]
    fn expect(&self, response: &Response, outcome: Outcome, what: &str) {
        match response {
            Response::Done { outcome: got, .. } if *got == outcome => {}
            other => panic!(
                "{what}: expected {outcome:?}, got:\n{}\n{}",
                describe(other),
                self.diagnostics()
            ),
        }
    }

    /// The site's port-80 server: its content, and the ACME challenges through the snippet.
    fn http_server(&self) -> String {
        format!(
            "server {{\n    listen 80;\n{}    server_name site.test;\n    root {};\n    include {}/acme-challenge.conf;\n}}\n",
            if self.nginx.ipv6() { "    listen [::]:80;\n" } else { "" },
            self.www.display(),
            self.nginx.snippets_dir().display()
        )
    }

    #[track_caller]
    fn write_site(&self, conf: &str) {
        let response = self.call(&Request::WriteSite {
            site: self.site.clone(),
            config: SiteConfig::try_from(conf.to_string()).unwrap(),
        });
        self.expect(&response, Outcome::SiteWritten, &format!("WriteSite\n{conf}"));
    }

    #[track_caller]
    fn reload(&self) {
        let old = self.nginx.worker_pids();
        let response = self.call(&Request::ReloadNginx);
        self.expect(&response, Outcome::Reloaded, "ReloadNginx");
        self.nginx.wait_for_new_workers(&old);
    }

    fn get(&self, host: &str) -> (u16, String) {
        self.nginx.get(host, "/")
    }

    /// Loopback addresses on `port` the instance listens on.
    fn addrs(&self, port: u16) -> Vec<SocketAddr> {
        let mut addrs = vec![SocketAddr::from(([127, 0, 0, 1], port))];
        if self.nginx.ipv6() {
            addrs.push(SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port)));
        }
        addrs
    }

    /// `GET https://site.test/` at `addr` with SNI site.test: verified against `ca` only, or not
    /// verified when `None`. Returns the status and body.
    fn curl_https(&self, addr: SocketAddr, ca: Option<&Path>) -> (u16, String) {
        let mut curl = Command::new("curl");
        curl.args(["--silent", "--show-error", "--max-time", "30"])
            .args(["--resolve", &format!("site.test:443:{}", bracketed(addr))])
            .args(["--write-out", "\n%{remote_ip} %{http_code}"]);
        match ca {
            Some(ca) => curl.arg("--cacert").arg(ca),
            None => curl.arg("--insecure"),
        };
        let out = curl.arg("https://site.test/").output().expect("run curl");
        assert!(
            out.status.success(),
            "curl https://site.test/ at {addr}: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.diagnostics()
        );
        let text = String::from_utf8_lossy(&out.stdout);
        let (body, last) = text.rsplit_once('\n').unwrap_or(("", &text));
        let (remote, code) = last.split_once(' ').unwrap_or(("", last));
        assert_eq!(
            remote.parse::<std::net::IpAddr>().ok(),
            Some(addr.ip()),
            "curl connected where it was sent"
        );
        (code.trim().parse().unwrap_or(0), body.to_string())
    }

    fn diagnostics(&self) -> String {
        let tail = |s: String| {
            let lines: Vec<&str> = s.lines().collect();
            lines[lines.len().saturating_sub(40)..].join("\n")
        };
        format!(
            "--- helper log ---\n{}\n--- nginx error log ---\n{}\n--- pebble log (tail) ---\n{}",
            self.helper.log(),
            tail(self.nginx.error_log()),
            tail(self.pebble.log())
        )
    }
}

/// `addr`'s IP as curl's `--resolve` wants it (`[::1]` for IPv6).
fn bracketed(addr: SocketAddr) -> String {
    match addr {
        SocketAddr::V4(a) => a.ip().to_string(),
        SocketAddr::V6(a) => format!("[{}]", a.ip()),
    }
}

fn describe(response: &Response) -> String {
    match response {
        Response::Error { code, detail } => format!("Error {code:?}:\n{}", detail.as_str()),
        Response::Done { outcome, detail } => format!("Done {outcome:?}: {}", detail.as_str()),
        other => format!("{other:?}"),
    }
}

fn openssl(args: &[&str], stdin: &[u8]) -> String {
    use std::io::Write;
    let mut child = Command::new("openssl")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run openssl");
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin).unwrap();
    drop(input);
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The SHA-256 fingerprint of the PEM certificate at `path`.
fn fingerprint(path: &Path) -> String {
    let pem = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    openssl(&["x509", "-noout", "-fingerprint", "-sha256"], &pem)
}

/// The SHA-256 fingerprint of the certificate served at `addr` for SNI site.test.
fn served_fingerprint(addr: SocketAddr) -> String {
    let connect = addr.to_string();
    let shown = openssl(&["s_client", "-connect", &connect, "-servername", "site.test"], b"");
    let start = shown.find("-----BEGIN CERTIFICATE-----");
    let end = shown.find("-----END CERTIFICATE-----");
    let (Some(start), Some(end)) = (start, end) else {
        panic!("no certificate served at {addr}:\n{shown}");
    };
    let pem = &shown[start..end + "-----END CERTIFICATE-----".len()];
    openssl(&["x509", "-noout", "-fingerprint", "-sha256"], format!("{pem}\n").as_bytes())
}
