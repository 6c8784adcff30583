//! Who may talk to the helper, and what the running helper can still do.
//! Needs root and nginx (skips loudly without them; fails under CI=true).

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use protocol::client::Client;
use protocol::{ErrorCode, Request, Response, SiteConfig, SiteName};
use testkit::nginx::Nginx;
use testkit::prereq;
use testkit::privhelper::{PolicySpec, PrivHelper};

/// Sends `frame` to `socket` as the user nobody and returns what came back (hex) or the error.
const CLIENT: &str = r#"
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect(sys.argv[1])
try:
    s.sendall(sys.stdin.buffer.read())
    s.shutdown(socket.SHUT_WR)
except (BrokenPipeError, ConnectionResetError):
    pass  # the helper may close before reading what we send
data = b""
try:
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
except ConnectionResetError:
    pass
print(data.hex())
"#;

#[test]
fn a_client_running_as_another_uid_is_refused_and_nothing_runs() {
    let available = prereq::have_program("/usr/bin/python3") && prereq::have_program("setpriv");
    if !prereq::require("/usr/bin/python3 and setpriv", available, "a client running as nobody") {
        return;
    }
    let Some(nginx) = Nginx::start() else { return };
    let spec = PolicySpec::new(&nginx).site("demo", &["demo.test"]);
    let Some(helper) = PrivHelper::start(&nginx, &spec) else {
        return;
    };
    // Defence in depth: even with the socket's file permissions opened up by mistake, the
    // peer-credential check must refuse.
    std::fs::set_permissions(helper.socket(), std::fs::Permissions::from_mode(0o666)).unwrap();

    let request = Request::WriteSite {
        site: SiteName::try_from("demo").unwrap(),
        config: SiteConfig::try_from(format!(
            "server {{ listen {}; server_name demo.test; }}",
            nginx.listen()
        ))
        .unwrap(),
    };
    let frame = protocol::frame::encode(&request).unwrap();
    let mut child = Command::new("setpriv")
        .args([
            "--reuid=nobody",
            "--regid=nogroup",
            "--clear-groups",
            "--inh-caps=-all",
            "--bounding-set=-all",
        ])
        .args(["/usr/bin/python3", "-c", CLIENT])
        .arg(helper.socket())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(&frame).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the nobody client failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let hex = String::from_utf8_lossy(&out.stdout).trim().to_string();
    // The refusal arrives even though the client sent its request first (no reset).
    assert!(!hex.is_empty(), "no PeerRefused frame reached the client");
    {
        let bytes: Vec<u8> = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect();
        let response: Response = protocol::frame::decode(&bytes).unwrap();
        assert!(
            matches!(response, Response::Error { code: ErrorCode::PeerRefused, .. }),
            "{response:?}"
        );
    }
    assert!(!nginx.sites_dir().join("demo.conf").exists(), "nothing was written");
    let log = helper.log();
    assert!(log.contains("error: PeerRefused"), "{log}");
    let nobody_uid =
        String::from_utf8(Command::new("id").args(["-u", "nobody"]).output().unwrap().stdout)
            .unwrap();
    assert!(log.contains(&format!("peer_uid={}", nobody_uid.trim())), "{log}");
    assert!(!log.contains("write-site"), "the request was never read: {log}");

    // The policy's own client is still served.
    let client = Client::new(helper.socket(), Duration::from_secs(60));
    assert!(matches!(client.call(&Request::Hello), Ok(Response::Hello { .. })));
}

fn status_field(pid: u32, field: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .unwrap_or_else(|| panic!("{field} not in /proc/{pid}/status"))
        .trim()
        .to_string()
}

#[test]
fn capabilities_are_dropped_after_binding() {
    let Some(nginx) = Nginx::start() else { return };
    let Some(helper) = PrivHelper::start(&nginx, &PolicySpec::new(&nginx)) else {
        return;
    };
    // CAP_CHOWN (0), CAP_DAC_OVERRIDE (1), CAP_FOWNER (3) and CAP_NET_BIND_SERVICE (10) only.
    let kept = format!("{:016x}", (1u64 << 0) | (1 << 1) | (1 << 3) | (1 << 10));
    for field in ["CapPrm", "CapEff", "CapBnd"] {
        assert_eq!(status_field(helper.pid(), field), kept, "{field}");
    }
    for field in ["CapInh", "CapAmb"] {
        assert_eq!(status_field(helper.pid(), field), "0000000000000000", "{field}");
    }
    assert!(helper.log().contains("dropped capabilities"), "{}", helper.log());
}

#[test]
fn check_subcommand_prints_what_the_policy_allows_and_refuses_unsafe_files() {
    let Some(nginx) = Nginx::start() else { return };
    if !prereq::require("root", prereq::is_root(), "ownership checks") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.toml");
    let spec = PolicySpec::new(&nginx).site("demo", &["demo.test", "www.demo.test"]);
    std::fs::write(&policy, spec.to_toml(&nginx, &dir.path().join("s.sock"))).unwrap();
    std::fs::set_permissions(&policy, std::fs::Permissions::from_mode(0o644)).unwrap();
    let check = || {
        Command::new(testkit::privhelper::binary())
            .arg("check")
            .arg("--policy")
            .arg(&policy)
            .output()
            .unwrap()
    };
    let out = check();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("\"demo.test\"") && stdout.contains("\"www.demo.test\""), "{stdout}");
    assert!(stdout.contains("proxy_pass") && !stdout.contains("load_module"), "{stdout}");

    // A policy writable by others is refused.
    std::fs::set_permissions(&policy, std::fs::Permissions::from_mode(0o666)).unwrap();
    let out = check();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("writable"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Unless the development switch is given, which says so loudly.
    let out = Command::new(testkit::privhelper::binary())
        .args(["check", "--dev-insecure", "--policy"])
        .arg(&policy)
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--dev-insecure: NOT checking"));
    std::fs::set_permissions(&policy, std::fs::Permissions::from_mode(0o644)).unwrap();

    // So is a conf dir writable by others.
    std::fs::set_permissions(nginx.sites_dir(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let out = check();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("writable"));
    std::fs::set_permissions(nginx.sites_dir(), std::fs::Permissions::from_mode(0o755)).unwrap();
    assert!(check().status.success());

    // And a directory above either: whoever may rename it may swap what is below (review
    // finding 7: only the file itself used to be checked).
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o775)).unwrap();
    let out = check();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains(&dir.path().display().to_string()),
        "{stderr}"
    );
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(nginx.prefix(), std::fs::Permissions::from_mode(0o775)).unwrap();
    assert!(!check().status.success(), "the conf dir's parent is group-writable");
    std::fs::set_permissions(nginx.prefix(), std::fs::Permissions::from_mode(0o755)).unwrap();

    // The socket is chowned and chmodded by path, so the helper binds only in a directory no
    // one else can change.
    let open_dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(open_dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    std::fs::write(&policy, spec.to_toml(&nginx, &open_dir.path().join("s.sock"))).unwrap();
    let out = Command::new(testkit::privhelper::binary())
        .arg("--policy")
        .arg(&policy)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("writable"), "{stderr}");
    assert!(!open_dir.path().join("s.sock").exists());
}

#[test]
fn a_socket_activated_listener_on_stdin_is_used() {
    let Some(nginx) = Nginx::start() else { return };
    if !prereq::require("root", prereq::is_root(), "the helper runs as root") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let activated = dir.path().join("activated.sock");
    let policy_socket = dir.path().join("policy.sock");
    let policy = dir.path().join("policy.toml");
    std::fs::write(&policy, PolicySpec::new(&nginx).to_toml(&nginx, &policy_socket)).unwrap();
    // What systemd does with StandardInput=socket: the listening socket is the helper's stdin.
    let listener = std::os::unix::net::UnixListener::bind(&activated).unwrap();
    let mut child = Command::new(testkit::privhelper::binary())
        .arg("--policy")
        .arg(&policy)
        .stdin(Stdio::from(std::os::fd::OwnedFd::from(listener)))
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let client = Client::new(&activated, Duration::from_secs(60));
    let answer = client.call(&Request::Hello);
    child.kill().unwrap();
    let out = child.wait_with_output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(matches!(answer, Ok(Response::Hello { .. })), "{answer:?}\n{log}");
    assert!(!policy_socket.exists(), "the policy's socket path was not bound");
    assert!(log.contains("activated socket"), "{log}");
}
