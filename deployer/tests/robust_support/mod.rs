//! Shared by the robustness suites (`robust_*.rs`): the real `durhack-deployer serve` binary on a
//! free loopback port (SIGKILL and restart it), signed and raw HTTP from plain sockets, a seeded
//! PRNG, and read-only looks at the ledger and the queues.
#![allow(dead_code)]

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use deployer::config::Config;
use deployer::ledger::{DeliveryRecord, Ledger, ReconcileState, RedeliveryRequest};
use deployer::queue::Queue;
use deployer::worker::Run;

pub const EXE: &str = env!("CARGO_BIN_EXE_durhack-deployer");
pub const SECRET: &str = "robustness-suite-secret";
/// A bound on how long a broken pipeline can hang a suite; never a timing assertion.
pub const DEADLINE: Duration = Duration::from_secs(180);

/// `DURHACK_LONG_SUITES=1` (or `scripts/soak.sh`) runs the long versions.
pub fn long() -> bool {
    std::env::var("DURHACK_LONG_SUITES").is_ok_and(|v| !v.is_empty() && v != "0")
}

/// splitmix64: small, seedable and good enough to pick kill moments and mutations.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// Seeded from `DURHACK_SEED` when set (to replay a failure), else from the clock. The seed
    /// is printed so that any failing run can be replayed.
    pub fn from_env(suite: &str) -> Rng {
        let seed = std::env::var("DURHACK_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(1)
            });
        eprintln!("[{suite}] seed {seed} (replay with DURHACK_SEED={seed})");
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    pub fn range(&mut self, lo: u64, hi_inclusive: u64) -> u64 {
        lo + self.below(hi_inclusive - lo + 1)
    }

    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            items.swap(i, j);
        }
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next_u64() as u8).collect()
    }
}

/// One `[deployments.<name>]` table.
#[derive(Debug, Clone)]
pub struct DeploymentSpec {
    pub name: String,
    pub repository: String,
    pub branch: String,
    pub remote: String,
    /// Extra lines for the table (commands, sites, timeout).
    pub body: String,
}

/// A state directory, a secret file and a config file for one daemon.
#[derive(Debug)]
pub struct Setup {
    pub dir: tempfile::TempDir,
    pub port: u16,
    pub config_path: PathBuf,
    pub deployments: Vec<DeploymentSpec>,
}

impl Setup {
    /// `top` goes before the tables (database_url, redis_url, helper_socket, ...).
    /// Reconciliation is off (`reconcile_interval = "0"`) unless `top` sets it: these suites
    /// count runs and deliveries made by webhooks; `robust_reconcile` tests it.
    pub fn new(top: &str, deployments: Vec<DeploymentSpec>) -> Setup {
        Setup::with_github(top, "", deployments)
    }

    /// [`Setup::new`] with `github` appended to the `[github]` table (token_file, api_url).
    pub fn with_github(top: &str, github: &str, deployments: Vec<DeploymentSpec>) -> Setup {
        let dir = tempfile::Builder::new()
            .prefix("robust-")
            .tempdir()
            .unwrap();
        let port = restartable_port();
        let d = dir.path().display().to_string();
        std::fs::write(dir.path().join("secret"), SECRET).unwrap();
        let helper = if top.contains("helper_socket") {
            String::new()
        } else {
            format!("helper_socket = \"{d}/no-helper.sock\"\n")
        };
        let reconcile = if top.contains("reconcile_interval") {
            ""
        } else {
            "reconcile_interval = \"0\"\n"
        };
        let mut text = format!(
            "listen = \"127.0.0.1:{port}\"\nstate_dir = \"{d}/state\"\n{helper}{reconcile}{top}\n\
             [github]\nwebhook_secret_file = \"{d}/secret\"\n{github}\n"
        );
        // `sandbox = false`: these commands coordinate through marker files outside their tree
        // and report their pids; the sandbox has its own tests (sandbox_hostile_build.rs).
        for s in &deployments {
            let _ = write!(
                text,
                "\n[deployments.{name}]\nrepository = \"{repo}\"\nbranch = \"{branch}\"\n\
                 path = \"{d}/deploy/{name}\"\nremote = \"{remote}\"\n\
                 sandbox = false\n{body}\n",
                name = s.name,
                repo = s.repository,
                branch = s.branch,
                remote = s.remote,
                body = s.body,
            );
        }
        let config_path = dir.path().join("config.toml");
        std::fs::write(&config_path, text).unwrap();
        Setup {
            dir,
            port,
            config_path,
            deployments,
        }
    }

    pub fn config(&self) -> Config {
        Config::parse(
            &std::fs::read_to_string(&self.config_path).unwrap(),
            &self.config_path,
            Some(SECRET.into()),
        )
        .expect("the suite's config is valid")
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    pub fn deploy_path(&self, name: &str) -> PathBuf {
        self.dir.path().join("deploy").join(name)
    }

    pub fn inbox(&self) -> Queue {
        Queue::open(deployer::dispatch::inbox_dir(&self.config())).unwrap()
    }

    pub fn deploy_queue(&self, name: &str) -> Queue {
        Queue::open(deployer::dispatch::deploy_queue_dir(&self.config(), name)).unwrap()
    }

    /// Entries (not temporaries) left in the inbox, the unreadable pile and every deploy queue.
    pub fn queued(&self) -> Vec<String> {
        let config = self.config();
        let mut dirs = vec![
            deployer::dispatch::inbox_dir(&config),
            deployer::dispatch::unreadable_dir(&config),
        ];
        for d in &self.deployments {
            dirs.push(deployer::dispatch::deploy_queue_dir(&config, &d.name));
        }
        let mut out = Vec::new();
        for dir in dirs {
            if !dir.exists() {
                continue;
            }
            for name in Queue::open(&dir).unwrap().list().unwrap() {
                out.push(format!("{}/{name}", dir.display()));
            }
        }
        out
    }

    /// `durhack-deployer <args> --config <this setup's config>`; panics unless it succeeds, and
    /// gives its standard output.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new(EXE)
            .args(args)
            .arg("--config")
            .arg(&self.config_path)
            .env_remove(deployer::config::SECRET_ENV)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "durhack-deployer {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Every file in the queue directories, temporaries included.
    pub fn queue_files(&self) -> Vec<String> {
        let mut out = Vec::new();
        let root = self.config().queues_dir();
        for dir in std::fs::read_dir(&root).into_iter().flatten().flatten() {
            for f in std::fs::read_dir(dir.path())
                .into_iter()
                .flatten()
                .flatten()
            {
                out.push(f.path().display().to_string());
            }
        }
        out
    }
}

/// A free loopback port below the kernel's ephemeral range. The daemon is restarted on the same
/// port after SIGKILL; a port in the ephemeral range may meanwhile be handed to an outgoing
/// connection (even one of ours connecting to it: a TCP self-connect), and the restart would
/// fail with EADDRINUSE.
pub fn restartable_port() -> u16 {
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let (from, to) = if low > 12_000 {
        (10_000, low - 1)
    } else {
        (low / 2, low - 1)
    };
    let mut rng = Rng(std::process::id() as u64
        ^ u64::from(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or(0),
        ));
    for _ in 0..1000 {
        let port = rng.range(u64::from(from), u64::from(to)) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in {from}..={to}");
}

/// The daemon process: `durhack-deployer serve --config <file>`; killed on drop.
#[derive(Debug)]
pub struct Daemon {
    pub config_path: PathBuf,
    pub log_path: PathBuf,
    pub port: u16,
    child: Option<Child>,
    pub starts: u32,
    /// Starts that met EADDRINUSE and were tried again.
    pub bind_retries: u32,
    env: Vec<(String, String)>,
}

impl Daemon {
    pub fn new(setup: &Setup) -> Daemon {
        Daemon {
            config_path: setup.config_path.clone(),
            log_path: setup.dir.path().join("daemon.log"),
            port: setup.port,
            child: None,
            starts: 0,
            bind_retries: 0,
            env: Vec::new(),
        }
    }

    pub fn env(mut self, key: &str, value: &str) -> Daemon {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Starts it and waits until `GET /` answers.
    ///
    /// Right after a SIGKILL, binding the same port occasionally fails with EADDRINUSE (seen
    /// about once in 30 restarts, with only TIME-WAIT sockets left on the port by the time `ss`
    /// looks); systemd's `Restart=on-failure` would start it again, and so does this, counting
    /// such retries in [`Daemon::bind_retries`]. Any other early exit fails the test.
    pub fn start(&mut self) {
        self.start_until(|status| status == 200);
    }

    /// Starts it and waits only until the endpoint answers at all: `GET /` says 503 while the
    /// daemon is still starting (e.g. its database is down), yet webhooks are accepted.
    pub fn start_listening(&mut self) {
        self.start_until(|status| status != 0);
    }

    fn start_until(&mut self, ready: fn(u16) -> bool) {
        assert!(self.child.is_none(), "already running");
        let start = Instant::now();
        loop {
            let offset = std::fs::metadata(&self.log_path).map_or(0, |m| m.len());
            match self.try_start(ready) {
                Ok(()) => return,
                Err(status) => {
                    let text = std::fs::read(&self.log_path).unwrap_or_default();
                    let fresh = String::from_utf8_lossy(&text[offset as usize..]).into_owned();
                    let in_use = fresh.contains("Address already in use");
                    if !in_use || start.elapsed() > DEADLINE {
                        panic!("the daemon exited ({status}) at start:\n{}", self.log());
                    }
                    self.bind_retries += 1;
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
        }
    }

    fn try_start(&mut self, ready: fn(u16) -> bool) -> Result<(), std::process::ExitStatus> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .unwrap();
        let mut cmd = Command::new(EXE);
        cmd.arg("serve")
            .arg("--config")
            .arg(&self.config_path)
            .env_remove(deployer::config::SECRET_ENV)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        self.child = Some(cmd.spawn().expect("start durhack-deployer serve"));
        self.starts += 1;
        let start = Instant::now();
        loop {
            if let Ok((status, _)) = request(self.port, "GET", "/", &[], b"")
                && ready(status)
            {
                return Ok(());
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                self.child = None;
                return Err(status);
            }
            assert!(
                start.elapsed() < DEADLINE,
                "the daemon did not answer GET /:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => c.try_wait().unwrap().is_none(),
            None => false,
        }
    }

    /// SIGKILL: no handler, no flush, no graceful anything.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM and wait for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        let start = Instant::now();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            if start.elapsed() > DEADLINE {
                let _ = child.kill();
                panic!("the daemon did not stop on SIGTERM:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// `VmRSS` and `VmHWM` in KiB.
    pub fn memory_kib(&self) -> (u64, u64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
                .unwrap_or_else(|| panic!("{name} in /proc/<pid>/status"))
        };
        (field("VmRSS:"), field("VmHWM:"))
    }

    pub fn log(&self) -> String {
        let text = std::fs::read_to_string(&self.log_path).unwrap_or_default();
        // The tail is what explains a failure; a whole soak log would drown it.
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(80)..].join("\n")
    }

    pub fn full_log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// One HTTP/1.1 request with `Connection: close`; the status and body of the answer.
pub fn request(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<(u16, String)> {
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        let _ = write!(head, "{k}: {v}\r\n");
    }
    head.push_str("\r\n");
    let mut bytes = head.into_bytes();
    bytes.extend_from_slice(body);
    raw(port, &bytes, Duration::from_secs(60))
}

/// Writes `bytes` as they are and reads the answer (status 0 if none came). No half-close:
/// hyper drops a connection whose client half-closes before the answer is ready.
pub fn raw(port: u16, bytes: &[u8], read_timeout: Duration) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(read_timeout))?;
    s.set_write_timeout(Some(read_timeout))?;
    // The server may answer (and close) before reading everything, e.g. a declared oversize.
    let _ = s.write_all(bytes);
    read_answer(&mut s)
}

pub fn read_answer(s: &mut TcpStream) -> std::io::Result<(u16, String)> {
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            // A reset after the answer arrived still leaves us the answer.
            Err(e) if !out.is_empty() && e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => return Err(e),
        }
    }
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .strip_prefix("HTTP/1.1 ")
        .and_then(|r| r.get(..3))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

/// The JSON GitHub sends for a push of `after` onto `branch` (the fields routing reads, and a
/// few it ignores, as GitHub sends them).
pub fn push_payload(repository: &str, branch: &str, before: Option<&str>, after: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "ref": format!("refs/heads/{branch}"),
        "before": before.unwrap_or("0000000000000000000000000000000000000000"),
        "after": after,
        "created": before.is_none(),
        "deleted": false,
        "forced": false,
        "repository": { "full_name": repository, "name": repository.split('/').nth(1) },
        "pusher": { "name": "robust" },
        "head_commit": { "id": after, "message": "robustness" },
    }))
    .unwrap()
}

/// Sends a correctly signed delivery; the status, or the I/O error (e.g. the daemon was killed).
pub fn send_signed(port: u16, event: &str, delivery: &str, body: &[u8]) -> std::io::Result<u16> {
    let signature = deployer::http::signature::sign(SECRET.as_bytes(), body);
    request(
        port,
        "POST",
        "/github-webhook",
        &[
            ("X-GitHub-Event", event),
            ("X-GitHub-Delivery", delivery),
            ("X-GitHub-Hook-Id", "4242"),
            ("X-Hub-Signature-256", &signature),
            ("Content-Type", "application/json"),
            ("User-Agent", "GitHub-Hookshot/robust"),
        ],
        body,
    )
    .and_then(|(status, body)| match status {
        // Nothing came back: the daemon died with the request in flight.
        0 => Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            format!("no answer ({body:?})"),
        )),
        s => Ok(s),
    })
}

/// A read-only view of the ledger, with a runtime of its own so the suites stay synchronous.
#[derive(Debug)]
pub struct LedgerView {
    rt: tokio::runtime::Runtime,
    ledger: Ledger,
}

impl LedgerView {
    pub fn open(url: &str) -> LedgerView {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let ledger = rt
            .block_on(Ledger::connect(url))
            .unwrap_or_else(|e| panic!("cannot open the ledger at {url}: {e}"));
        LedgerView { rt, ledger }
    }

    pub fn deliveries(&self) -> Vec<DeliveryRecord> {
        self.rt
            .block_on(self.ledger.delivery_history(i64::MAX))
            .unwrap()
    }

    pub fn runs(&self, deployment: &str) -> Vec<Run> {
        self.rt.block_on(self.ledger.runs_of(deployment)).unwrap()
    }

    pub fn try_runs(&self, deployment: &str) -> Option<Vec<Run>> {
        self.rt.block_on(self.ledger.runs_of(deployment)).ok()
    }

    pub fn deployed(&self, deployment: &str) -> Option<String> {
        self.rt
            .block_on(self.ledger.deployed_sha(deployment))
            .unwrap()
    }

    pub fn reconcile_state(&self, deployment: &str) -> Option<ReconcileState> {
        self.rt
            .block_on(self.ledger.reconcile_state(deployment))
            .unwrap()
    }

    pub fn redeliveries(&self) -> Vec<RedeliveryRequest> {
        self.rt
            .block_on(self.ledger.redelivery_history(i64::MAX))
            .unwrap()
    }
}

/// Polls `check` until it gives `Some`, with [`DEADLINE`] as the bound; `context` explains a
/// timeout.
pub fn wait_for<T>(
    what: &str,
    mut check: impl FnMut() -> Option<T>,
    context: impl Fn() -> String,
) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "gave up waiting for {what} after {DEADLINE:?}:\n{}",
            context()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Is this path under a mount point of its own? (So the suite unmounts only what it mounted.)
pub fn is_mount_point(path: &Path) -> bool {
    let Ok(mounts) = std::fs::read_to_string("/proc/self/mounts") else {
        return false;
    };
    let p = path.display().to_string();
    mounts
        .lines()
        .any(|l| l.split_whitespace().nth(1) == Some(p.as_str()))
}

/// Two daemons on one setup (one state dir, one config but for the listen port, so one ledger
/// and one lock server): the lock tests' competitors.
pub fn two_daemons(setup: &Setup) -> (Daemon, Daemon) {
    let a = Daemon::new(setup);
    let mut b = Daemon::new(setup);
    let port = restartable_port();
    let text = std::fs::read_to_string(&setup.config_path)
        .unwrap()
        .replace(
            &format!("listen = \"127.0.0.1:{}\"", setup.port),
            &format!("listen = \"127.0.0.1:{port}\""),
        );
    let config_b: PathBuf = setup.dir.path().join("config-b.toml");
    std::fs::write(&config_b, text).unwrap();
    b.config_path = config_b;
    b.port = port;
    b.log_path = setup.dir.path().join("daemon-b.log");
    (a, b)
}

/// `redis-cli -p PORT --raw ARGS...`, trimmed.
pub fn redis_cli(port: u16, args: &[&str]) -> String {
    let out = std::process::Command::new("redis-cli")
        .args(["-p", &port.to_string(), "--raw"])
        .args(args)
        .output()
        .expect("redis-cli");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}
