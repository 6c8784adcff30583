//! Running one test inside a private network namespace, where only a loopback exists: ports 80
//! and 443 are free there, and binding them is a real privileged bind, exactly as on a server.
//!
//! A test calls [`run_test_inside`] with its own name. That re-executes the current test binary
//! (only that test) under `unshare -n`, after `ip link set lo up`, with [`INNER_ENV`] set; in
//! that inner run [`inner`] returns `Some` and the test does its work. The outer run binds
//! nothing: it waits for the inner run, then kills (and reports) any process the inner run left
//! behind in its namespace.
//!
//! ```no_run
//! #[test]
//! fn on_port_80() {
//!     if testkit::netns::inner().is_some() {
//!         // ... start nginx on port 80 here ...
//!         return;
//!     }
//!     if !testkit::prereq::require("netns", testkit::netns::available(), "ports 80/443") {
//!         return;
//!     }
//!     let run = testkit::netns::run_test_inside("on_port_80");
//!     run.assert_success();
//! }
//! ```

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::prereq;

/// Set (to a directory for the run's bookkeeping) in the inner run only.
pub const INNER_ENV: &str = "TESTKIT_NETNS_INNER_DIR";

/// The network namespace of process `pid` (`self` for this one), as `net:[inode]`.
pub fn netns_of(pid: &str) -> Option<String> {
    std::fs::read_link(format!("/proc/{pid}/ns/net"))
        .ok()
        .map(|l| l.display().to_string())
}

/// Set in the inner run to the outer run's network namespace.
const OUTER_NS_ENV: &str = "TESTKIT_NETNS_OUTER";

/// Is this process in a network namespace other than the machine's (so binding 80 here cannot
/// touch the machine's network)? Compared with init's namespace and, in an inner run, with the
/// outer run's; `false` when neither can be read (some sandboxes hide init's).
pub fn is_private() -> bool {
    let Some(mine) = netns_of("self") else {
        return false;
    };
    let references: Vec<String> = netns_of("1")
        .into_iter()
        .chain(std::env::var(OUTER_NS_ENV).ok())
        .collect();
    !references.is_empty() && references.iter().all(|r| *r != mine)
}

/// Can we make a private network namespace here (root, `unshare` and `ip`, and the kernel lets
/// us)?
pub fn available() -> bool {
    prereq::is_root()
        && prereq::have_program("unshare")
        && prereq::have_program("ip")
        && Command::new("unshare")
            .args(["-n", "--", "sh", "-c", "ip link set lo up"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
}

/// The inner run's marker, or `None` in the outer run.
#[derive(Debug)]
pub struct Inner {
    dir: PathBuf,
}

/// In the inner run: checks that this process really is in a private network namespace
/// (panics otherwise, so nothing ever binds 80 on the machine itself: see [`is_private`]), records the namespace
/// for the outer run's clean-up, and returns `Some`. In the outer run: `None`.
pub fn inner() -> Option<Inner> {
    let dir = PathBuf::from(std::env::var_os(INNER_ENV)?);
    assert!(
        is_private(),
        "{INNER_ENV} is set but this process shares init's network namespace: refusing to bind \
         ports 80/443 on the machine's own network"
    );
    let ns = netns_of("self").expect("read /proc/self/ns/net");
    std::fs::write(dir.join("netns"), ns).expect("record the network namespace");
    Some(Inner { dir })
}

impl Inner {
    /// A directory that outlives the inner run (removed by the outer run).
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// What the inner run did.
#[derive(Debug)]
pub struct InnerRun {
    pub success: bool,
    pub status: String,
    /// Its stdout and stderr, interleaved.
    pub output: String,
    /// Processes still in its namespace after it exited (killed since), as `pid cmdline`.
    pub leftovers: Vec<String>,
}

impl InnerRun {
    /// Panics unless the inner run passed and left nothing running.
    #[track_caller]
    pub fn assert_success(&self) {
        assert!(
            self.success,
            "the test inside the network namespace failed ({}); its output is above{}",
            self.status,
            if self.leftovers.is_empty() {
                String::new()
            } else {
                format!(
                    "; it also left processes running (killed now): {:?}",
                    self.leftovers
                )
            }
        );
        assert!(
            self.leftovers.is_empty(),
            "the test inside the network namespace left processes running (killed now): {:?}",
            self.leftovers
        );
    }
}

/// Runs the test named `test_name` (as `--exact` expects it) of the current test binary inside
/// a fresh network namespace with its loopback up, waits for it, prints its output, and kills
/// whatever it left in that namespace.
pub fn run_test_inside(test_name: &str) -> InnerRun {
    assert!(
        std::env::var_os(INNER_ENV).is_none(),
        "run_test_inside called from the inner run"
    );
    let dir = tempfile::Builder::new()
        .prefix("testkit-netns-")
        .tempdir()
        .expect("tempdir");
    let log_path = dir.path().join("output.log");
    let log = std::fs::File::create(&log_path).expect("create output log");
    let exe = std::env::current_exe().expect("current_exe");
    // Output goes to a file, not a pipe: a daemon left behind holding it cannot hang us.
    let status = Command::new("unshare")
        .args([
            "-n",
            "--",
            "sh",
            "-c",
            "ip link set lo up && exec \"$0\" \"$@\"",
        ])
        .arg(&exe)
        .args(["--exact", test_name, "--nocapture", "--test-threads=1"])
        .env(INNER_ENV, dir.path())
        .env(
            OUTER_NS_ENV,
            netns_of("self").expect("read /proc/self/ns/net"),
        )
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("dup log"))
        .stderr(log)
        .status()
        .expect("run unshare");
    let output = std::fs::read_to_string(&log_path).unwrap_or_default();
    println!(
        "----- inner run (network namespace) -----\n{output}----- end of inner run ({status}) -----"
    );
    let leftovers = match std::fs::read_to_string(dir.path().join("netns")) {
        Ok(ns) => kill_namespace(ns.trim()),
        Err(_) => Vec::new(),
    };
    // A test that ran no test at all (a wrong name) must not pass.
    let ran = output.contains("running 1 test");
    InnerRun {
        success: status.success() && ran,
        status: if ran {
            status.to_string()
        } else {
            format!("{status}, and it did not run exactly one test")
        },
        output,
        leftovers,
    }
}

/// SIGKILLs every process in network namespace `ns` (never ours: the caller is outside it) and
/// waits for them to go. Returns what was found.
fn kill_namespace(ns: &str) -> Vec<String> {
    let mine = netns_of("self");
    if mine.as_deref() == Some(ns) {
        return Vec::new();
    }
    let mut found = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let pids: Vec<String> = std::fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|p| p.bytes().all(|b| b.is_ascii_digit()))
            .filter(|p| netns_of(p).as_deref() == Some(ns))
            .filter(|p| crate::nginx::process_alive(p.parse().unwrap_or(0)))
            .collect();
        if pids.is_empty() || Instant::now() > deadline {
            return found;
        }
        for pid in pids {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
                .unwrap_or_default();
            let entry = format!("{pid} {}", cmdline.trim());
            if !found.contains(&entry) {
                found.push(entry);
            }
            let _ = Command::new("kill").args(["-KILL", &pid]).status();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
