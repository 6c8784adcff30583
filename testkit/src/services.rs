//! Shared services for tests: the PostgreSQL and Redis servers on this machine, and private
//! Redis instances a test may stop and start.
//!
//! PostgreSQL is the server at 127.0.0.1:5432 (trust auth, user `postgres` or `root`). Each call to
//! [`postgres_url`] creates a fresh, uniquely named database, so tests never see each other's
//! rows; databases left by earlier test processes that have exited are dropped on first use.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::prereq;

const PG_HOST: &str = "127.0.0.1";
const PG_PORT: u16 = 5432;
const DB_PREFIX: &str = "durhack_test_";
const SHARED_REDIS: &str = "127.0.0.1:6379";

fn psql(user: &str, database: &str, sql: &str) -> Result<String, String> {
    let out = Command::new("psql")
        .args(["-X", "-q", "-t", "-A", "-v", "ON_ERROR_STOP=1"])
        .args([
            "-h",
            PG_HOST,
            "-p",
            &PG_PORT.to_string(),
            "-U",
            user,
            "-d",
            database,
        ])
        .args(["-c", sql])
        .env("PGCONNECT_TIMEOUT", "5")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("running psql: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
    }
}

/// The user that can log in, found once per process.
fn pg_user() -> Option<&'static str> {
    static USER: OnceLock<Option<&'static str>> = OnceLock::new();
    *USER.get_or_init(|| {
        let user = ["postgres", "root"]
            .into_iter()
            .find(|u| psql(u, "test", "SELECT 1").is_ok())?;
        drop_abandoned_databases(user);
        Some(user)
    })
}

fn process_alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// Drops test databases whose creating process has exited (names carry the pid).
fn drop_abandoned_databases(user: &str) {
    let Ok(list) = psql(
        user,
        "test",
        &format!("SELECT datname FROM pg_database WHERE datname LIKE '{DB_PREFIX}%'"),
    ) else {
        return;
    };
    for name in list.lines().map(str::trim) {
        let pid = name
            .strip_prefix(DB_PREFIX)
            .and_then(|rest| rest.split('_').next())
            .and_then(|p| p.parse::<u32>().ok());
        if pid.is_some_and(|p| !process_alive(p)) {
            let _ = psql(
                user,
                "test",
                &format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"),
            );
        }
    }
}

/// A URL to a new, empty database in the shared PostgreSQL server, or `None` (after
/// [`prereq::require`]: a failure under CI) when the server or `psql` is not available.
#[track_caller]
pub fn postgres_url() -> Option<String> {
    let user = pg_user();
    if !prereq::require(
        "PostgreSQL at 127.0.0.1:5432 (trust auth, user postgres or root) and psql",
        user.is_some(),
        "the ledger is tested against a real PostgreSQL",
    ) {
        return None;
    }
    let user = user?;
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let name = format!(
        "{DB_PREFIX}{}_{}_{nanos}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    );
    if let Err(e) = psql(user, "test", &format!("CREATE DATABASE \"{name}\"")) {
        panic!("creating test database {name}: {e}");
    }
    Some(format!("postgres://{user}@{PG_HOST}:{PG_PORT}/{name}"))
}

fn redis_ping(addr: &str) -> bool {
    let Ok(addr) = addr.parse() else { return false };
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(2)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"*1\r\n$4\r\nPING\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 7];
    s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
}

/// The shared Redis server at 127.0.0.1:6379, or `None` (after [`prereq::require`]) when it
/// does not answer. Tests sharing it must use their own key names.
#[track_caller]
pub fn redis_url() -> Option<String> {
    let up = redis_ping(SHARED_REDIS);
    if !prereq::require(
        "Redis at 127.0.0.1:6379",
        up,
        "locks are tested against a real Redis",
    ) {
        return None;
    }
    Some(format!("redis://{SHARED_REDIS}"))
}

fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/bin", "/sbin", "/bin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

/// A `redis-server` of this test's own on a free loopback port; killed on drop.
#[derive(Debug)]
pub struct PrivateRedis {
    program: PathBuf,
    port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

/// Starts a private `redis-server`, or `None` (after [`prereq::require`]) when it is not
/// installed.
#[track_caller]
pub fn private_redis() -> Option<PrivateRedis> {
    let program = find_program("redis-server");
    if !prereq::require(
        "redis-server",
        program.is_some(),
        "lock tests stop and start their own Redis",
    ) {
        return None;
    }
    let dir = tempfile::Builder::new()
        .prefix("testkit-redis-")
        .tempdir()
        .expect("tempdir");
    let mut redis = PrivateRedis {
        program: program?,
        port: 0,
        dir,
        child: None,
    };
    // A free port can be taken between asking and binding; try a few.
    for _ in 0..5 {
        redis.port = free_port();
        if redis.try_start().is_ok() {
            return Some(redis);
        }
    }
    panic!("redis-server did not start: see {}", redis.log().display());
}

impl PrivateRedis {
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join("redis.log")
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// The server's process id while it runs (to SIGSTOP it: a hung server, not a dead one).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    fn try_start(&mut self) -> Result<(), String> {
        let child = Command::new(&self.program)
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .arg("--logfile")
            .arg(self.log())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("spawning redis-server: {e}"))?;
        self.child = Some(child);
        let addr = format!("127.0.0.1:{}", self.port);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if redis_ping(&addr) {
                return Ok(());
            }
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                self.child = None;
                return Err(format!("redis-server exited: {status}"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.stop();
        Err("redis-server did not answer PING within 10 s".into())
    }

    /// Kills the server (SIGKILL: as abrupt as a crash). Data is not kept.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port after [`PrivateRedis::stop`].
    pub fn start(&mut self) {
        if self.child.is_none() {
            self.try_start()
                .unwrap_or_else(|e| panic!("restarting redis on port {}: {e}", self.port));
        }
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.stop();
    }
}
