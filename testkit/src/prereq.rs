//! Prerequisite checks: fail in CI, say so loudly elsewhere.

/// Is this a CI run (`CI=true`), where a missing prerequisite must fail the test?
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// Returns `true` when `available`. Otherwise panics under CI, or prints a loud notice and
/// returns `false` so the caller can return early.
#[track_caller]
pub fn require(what: &str, available: bool, why: &str) -> bool {
    if available {
        return true;
    }
    let msg = format!("prerequisite missing: {what} ({why})");
    if in_ci() {
        panic!("{msg}; CI=true, so this is a failure, not a skip");
    }
    eprintln!("\n*** SKIPPED: {msg}. Install it or run the test command from README.md. ***\n");
    false
}

/// Is `program` on PATH (or an existing path)?
pub fn have_program(program: &str) -> bool {
    if program.contains('/') {
        return std::path::Path::new(program).is_file();
    }
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
}

/// Are we root (needed by tests that switch users or bind privileged things)?
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|e| e == "0"))
        })
        .unwrap_or(false)
}

/// Does the user `name` exist on this machine?
pub fn user_exists(name: &str) -> bool {
    std::process::Command::new("id")
        .args(["-u", "--", name])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}
