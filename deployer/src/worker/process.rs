//! Runs one command in its own process group, logging its output line by line as it is printed,
//! and kills the whole group on timeout, on cancellation, and after the command exits (so nothing
//! it started in the background outlives the run or holds its log pipe open).

use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio_util::sync::CancellationToken;

use super::log::RunLog;

/// Longest line kept whole; longer ones are split, so a runaway line cannot exhaust memory.
const MAX_LINE: usize = 64 * 1024;
/// How long to wait for output still buffered in the pipe once the group is dead; only a process
/// that escaped the group (setsid) can keep the pipe open longer.
const DRAIN: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("cannot start `{program}`: {source}")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
    #[error("`{command}` exited with status {code}")]
    Exit { command: String, code: i32 },
    #[error("`{command}` was killed by signal {signal}")]
    Signal { command: String, signal: String },
    #[error("`{command}` timed out after {after:?}")]
    Timeout { command: String, after: Duration },
    #[error("`{command}` was stopped: {why}")]
    Cancelled { command: String, why: String },
}

/// What to run.
#[derive(Debug)]
pub struct Spawn<'a> {
    pub argv: &'a [String],
    pub cwd: &'a Path,
    pub env: &'a [(String, String)],
    pub timeout: Duration,
    /// Where to record the command's process-group id while it runs (see [`pgid_file`]).
    pub pgid_file: Option<&'a Path>,
}

/// `state_dir/process-groups/<deployment>.pgid`: the process group of the deployment's running
/// command, as `<pgid> <start time>`. Written when a command starts and removed once its group
/// is killed, so a file left behind means its writer died (SIGKILL, power loss) and the group
/// may still be running: [`kill_leftover`] ends it before the next holder runs anything.
pub fn pgid_file(state_dir: &Path, deployment: &str) -> PathBuf {
    state_dir
        .join("process-groups")
        .join(format!("{deployment}.pgid"))
}

/// The start time of process `pid` (field 22 of `/proc/<pid>/stat`), to tell a reused id.
fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The fields after the command name, which is in parentheses, start at field 3.
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(19)?
        .parse()
        .ok()
}

fn record_pgid(file: &Path, pgid: Pid) {
    let written = file
        .parent()
        .map_or(Ok(()), std::fs::create_dir_all)
        .and_then(|()| {
            let start = start_time(pgid.as_raw()).unwrap_or(0);
            std::fs::write(file, format!("{} {start}\n", pgid.as_raw()))
        });
    if let Err(e) = written {
        tracing::warn!(file = %file.display(), error = %e, "cannot record the command's process group");
    }
}

/// Kills the process group recorded in `file` by a holder that died without cleaning up (it
/// is still running only if its writer was killed), and removes the file. Returns the group
/// killed, if any. A recorded id now used by another process (different start time) is not
/// touched: the recorded group ended for the id to be reused.
pub fn kill_leftover(file: &Path) -> Option<i32> {
    let text = std::fs::read_to_string(file).ok()?;
    let mut fields = text.split_whitespace();
    let pgid: i32 = fields.next()?.parse().ok()?;
    let start: u64 = fields.next()?.parse().ok()?;
    let reused = start_time(pgid).is_some_and(|now| now != start);
    let killed = (pgid > 1 && !reused && killpg(Pid::from_raw(pgid), Signal::SIGKILL).is_ok())
        .then_some(pgid);
    if let Err(e) = std::fs::remove_file(file) {
        tracing::warn!(file = %file.display(), error = %e, "cannot remove a process-group record");
    }
    killed
}

/// Kills the recorded process group (see [`kill_leftover`]) of each of `deployments`, whose
/// deploys this process runs (so holds their locks, and wrote those records), and returns the
/// groups killed: a forced stop (a second Ctrl-C) ends every running command, and what they
/// started, before the daemon exits. Records of other daemons sharing `state_dir` are not
/// touched.
pub fn kill_recorded_groups(state_dir: &Path, deployments: &[String]) -> Vec<i32> {
    deployments
        .iter()
        .filter_map(|d| kill_leftover(&pgid_file(state_dir, d)))
        .collect()
}

/// Shown in logs and errors: argv joined, quoted where needed for reading (not for a shell),
/// with credentials in URLs (`https://user:token@host/...`, as a remote may carry) masked.
pub fn display_argv(argv: &[String]) -> String {
    argv.iter()
        .map(|a| redact_userinfo(a))
        .map(|a| {
            if !a.is_empty() && a.bytes().all(|b| b.is_ascii_graphic() && b != b'"') {
                a.clone()
            } else {
                format!("{a:?}")
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn redact_userinfo(arg: &str) -> String {
    let Some(scheme_end) = arg.find("://").map(|i| i + 3) else {
        return arg.to_owned();
    };
    let authority_end = arg[scheme_end..]
        .find('/')
        .map_or(arg.len(), |i| scheme_end + i);
    match arg[scheme_end..authority_end].rfind('@') {
        Some(at) => format!("{}***{}", &arg[..scheme_end], &arg[scheme_end + at..]),
        None => arg.to_owned(),
    }
}

/// How a deployment's command is confined (see [`super::sandbox`]).
#[derive(Debug, Clone, Copy)]
pub struct Confinement<'a> {
    /// Prepended to the command's argv: the sandbox (`bwrap ... --`); empty to run it directly.
    pub prefix: &'a [String],
}

/// The program's name, as errors show a command: its arguments may hold tokens, and errors
/// reach the ledger, the run page and GitHub's commit status.
pub fn program_name(argv: &[String]) -> String {
    let program = argv.first().map_or("", String::as_str);
    Path::new(program)
        .file_name()
        .map_or_else(|| program.to_owned(), |n| n.to_string_lossy().into_owned())
}

/// Runs `spawn`; `cancel` stops it early (shutdown after the grace period, or a lost lock), with
/// `why` carried into the error. The command inherits the daemon's environment plus `env`.
pub async fn run(
    spawn: Spawn<'_>,
    log: &Arc<RunLog>,
    cancel: &CancellationToken,
    why: &str,
) -> Result<(), ProcessError> {
    run_with(spawn, None, log, cancel, why).await
}

/// Like [`run`], for a deployment's command: with `spawn.env` as its whole environment (nothing
/// of the daemon's), inside `confinement`'s sandbox when it has one.
pub async fn run_confined(
    spawn: Spawn<'_>,
    confinement: Confinement<'_>,
    log: &Arc<RunLog>,
    cancel: &CancellationToken,
    why: &str,
) -> Result<(), ProcessError> {
    run_with(spawn, Some(confinement), log, cancel, why).await
}

async fn run_with(
    spawn: Spawn<'_>,
    confinement: Option<Confinement<'_>>,
    log: &Arc<RunLog>,
    cancel: &CancellationToken,
    why: &str,
) -> Result<(), ProcessError> {
    log.line(&format!("$ {}", display_argv(spawn.argv)));
    let command = program_name(spawn.argv);
    let spawn_err = |source| ProcessError::Spawn {
        program: command.clone(),
        source,
    };
    let (reader, writer) = std::io::pipe().map_err(spawn_err)?;
    let full: Vec<&String> = confinement
        .map_or(&[][..], |c| c.prefix)
        .iter()
        .chain(spawn.argv)
        .collect();
    let mut cmd = tokio::process::Command::new(full[0]);
    if confinement.is_some() {
        cmd.env_clear();
    }
    cmd.args(&full[1..])
        .current_dir(spawn.cwd)
        .envs(spawn.env.iter().map(|(k, v)| (k, v)))
        .stdin(std::process::Stdio::null())
        .stdout(writer.try_clone().map_err(spawn_err)?)
        .stderr(writer)
        .process_group(0);
    let child = cmd.spawn();
    // The Command holds our copies of the pipe's write end; they must close for EOF to come.
    drop(cmd);
    let mut child = child.map_err(spawn_err)?;
    let pgid = child
        .id()
        .and_then(|id| i32::try_from(id).ok())
        .map(Pid::from_raw);
    if let (Some(file), Some(pgid)) = (spawn.pgid_file, pgid) {
        record_pgid(file, pgid);
    }

    let log_for_reader = Arc::clone(log);
    let reader = tokio::task::spawn_blocking(move || copy_lines(reader, &log_for_reader));

    let outcome = tokio::select! {
        status = child.wait() => Ok(status),
        () = tokio::time::sleep(spawn.timeout) => Err(ProcessError::Timeout { command: command.clone(), after: spawn.timeout }),
        () = cancel.cancelled() => Err(ProcessError::Cancelled { command: command.clone(), why: why.to_owned() }),
    };
    if let Some(pgid) = pgid {
        // ESRCH (nothing left in the group) is the usual case after a clean exit.
        let _ = killpg(pgid, Signal::SIGKILL);
    }
    if let Some(file) = spawn.pgid_file {
        let _ = std::fs::remove_file(file);
    }
    let status = match outcome {
        Ok(status) => status,
        Err(e) => {
            let _ = child.wait().await;
            let _ = tokio::time::timeout(DRAIN, reader).await;
            log.line(&format!("! {e}"));
            return Err(e);
        }
    };
    let _ = tokio::time::timeout(DRAIN, reader).await;
    let status = status.map_err(spawn_err)?;
    let result = if status.success() {
        Ok(())
    } else if let Some(code) = status.code() {
        Err(ProcessError::Exit { command, code })
    } else {
        let signal = status
            .signal()
            .and_then(|s| Signal::try_from(s).ok())
            .map_or_else(|| "?".to_owned(), |s| s.as_str().to_owned());
        Err(ProcessError::Signal { command, signal })
    };
    if let Err(e) = &result {
        log.line(&format!("! {e}"));
    }
    result
}

fn copy_lines(reader: std::io::PipeReader, log: &RunLog) {
    let mut reader = BufReader::with_capacity(MAX_LINE, reader);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        let mut limited = (&mut reader).take(MAX_LINE as u64);
        match limited.read_until(b'\n', &mut buf) {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                let text = String::from_utf8_lossy(&buf);
                log.line(text.strip_suffix('\n').unwrap_or(&text));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_in_urls_are_masked() {
        let argv = [
            "git",
            "clone",
            "https://x-access-token:ghs_secret@github.com/o/r.git",
            "/srv/a b",
        ]
        .map(String::from);
        let shown = display_argv(&argv);
        assert_eq!(
            shown,
            "git clone https://***@github.com/o/r.git \"/srv/a b\""
        );
        assert_eq!(
            display_argv(&["https://github.com/o/r@x".to_owned()]),
            "https://github.com/o/r@x"
        );
    }
}
