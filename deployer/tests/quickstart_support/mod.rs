//! Shared by the tests that drive the real binary on a quickstart directory (quickstart.rs,
//! first_hour.rs): the daemon as a child process that is killed if a test panics, polling with
//! a generous bound, and running one-off commands.
#![allow(dead_code)]

use std::io::Read;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const EXE: &str = env!("CARGO_BIN_EXE_durhack-deployer");
/// Generous: a first deploy may clone and build on a loaded machine. Not a timing assertion,
/// only a bound on how long a broken pipeline can hang the test.
pub const DEADLINE: Duration = Duration::from_secs(300);

/// The daemon, killed if the test panics before stopping it.
pub struct Daemon {
    pub child: Child,
    pub log: PathBuf,
}

impl Daemon {
    /// Starts `cmd` with stdout and stderr going to `log`.
    pub fn spawn(mut cmd: Command, log: &Path) -> Self {
        let log_file = std::fs::File::create(log).unwrap();
        let child = cmd
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().unwrap())
            .stderr(log_file)
            .spawn()
            .unwrap();
        Self {
            child,
            log: log.to_owned(),
        }
    }

    pub fn log(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.log) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }

    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), signal).unwrap();
    }

    /// Waits for the daemon to exit (bounded by [`DEADLINE`]).
    pub fn wait_exit(&mut self, what: &str) -> std::process::ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(start.elapsed() < DEADLINE, "{what}:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Polls `check` until it returns `Some`, the daemon dies, or the deadline passes.
pub fn wait_for<T>(daemon: &mut Daemon, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = check() {
            return v;
        }
        if let Some(status) = daemon.child.try_wait().unwrap() {
            panic!(
                "the daemon exited ({status}) while waiting for {what}:\n{}",
                daemon.log()
            );
        }
        if start.elapsed() > DEADLINE {
            panic!(
                "gave up waiting for {what} after {DEADLINE:?}:\n{}",
                daemon.log()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

pub fn git_out(args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .args(args)
        .stderr(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// `quickstart --prepare-only` into `dir`, listening on `port`; returns the config's path.
pub fn prepare_quickstart(dir: &Path, port: u16) -> PathBuf {
    let out = Command::new(EXE)
        .arg("quickstart")
        .arg("--dir")
        .arg(dir)
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--prepare-only")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    dir.join("config.toml")
}

/// Runs the binary with `args` and `--config config` appended.
pub fn cli(config: &Path, args: &[&str]) -> Output {
    Command::new(EXE)
        .args(args)
        .arg("--config")
        .arg(config)
        .output()
        .unwrap()
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The HTTP status and body of `GET http://127.0.0.1:port/`, if anything answers.
pub fn get_root(port: u16) -> Option<(u16, String)> {
    use std::io::Write;
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let code = response.split_whitespace().nth(1)?.parse().ok()?;
    Some((code, response))
}
