//! Running the policy's commands: fixed argv, cleared environment, no shell, a timeout, and
//! output captured up to a bound.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::process::{Command as Process, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use crate::policy::Command;

/// How much combined stdout+stderr is kept (the tail beyond this is dropped, the rest drained).
const MAX_OUTPUT: usize = 64 * 1024;

/// Why a command did not succeed, with its (bounded) output.
#[derive(Debug)]
pub struct Failure {
    pub timed_out: bool,
    pub output: String,
}

fn failure(output: String) -> Failure {
    Failure { timed_out: false, output }
}

/// Runs `cmd` with `extra` arguments appended.
pub fn run(cmd: &Command, extra: &[String]) -> Result<String, Failure> {
    let Some((program, args)) = cmd.argv.split_first() else {
        return Err(failure("empty argv".into()));
    };
    let spawned = (|| {
        let (reader, writer) = std::io::pipe()?;
        let mut process = Process::new(program);
        process.args(args).args(extra).env_clear().envs(&cmd.env).current_dir("/");
        process.stdin(Stdio::null()).stderr(writer.try_clone()?).stdout(writer);
        // Its own process group, so a timeout kills what it started too.
        process.process_group(0);
        // `process` (and our copies of the pipe's write end) goes here: EOF can come.
        Ok((process.spawn()?, reader))
    })();
    let (mut child, reader) =
        spawned.map_err(|e: std::io::Error| failure(format!("cannot run {program}: {e}")))?;
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut reader = reader;
        let mut kept = Vec::new();
        let mut buf = [0u8; 8192];
        loop {
            match reader.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    // Keep the tail: tools explain failures at the end of their output.
                    kept.extend_from_slice(&buf[..n]);
                    if kept.len() > MAX_OUTPUT {
                        kept.drain(..kept.len() - MAX_OUTPUT);
                    }
                }
            }
        }
        let _ = tx.send(String::from_utf8_lossy(&kept).into_owned());
    });

    let deadline = Instant::now() + cmd.timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if Instant::now() >= deadline => {
                let group = nix::unistd::Pid::from_raw(child.id() as i32);
                let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
                let _ = child.wait();
                break None;
            }
            Ok(None) => thread::sleep(Duration::from_millis(20)),
            Err(e) => return Err(failure(format!("cannot wait for {program}: {e}"))),
        }
    };
    // A grandchild that kept the pipe open must not hang us: give the reader a moment, then
    // answer with what we have.
    let output = rx
        .recv_timeout(Duration::from_secs(2))
        .unwrap_or_else(|_| "(output still open after exit)".into());
    match status {
        Some(s) if s.success() => Ok(output),
        Some(s) => Err(failure(format!("{program} failed ({s})\n{output}"))),
        None => Err(Failure {
            timed_out: true,
            output: format!("{program} timed out after {:?}\n{output}", cmd.timeout),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn cmd(argv: &[&str], secs: u64) -> Command {
        Command {
            argv: argv.iter().map(|s| s.to_string()).collect(),
            env: BTreeMap::from([("ONLY".to_string(), "this".to_string())]),
            timeout: Duration::from_secs(secs),
        }
    }

    #[test]
    fn environment_is_cleared_and_output_bounded() {
        match run(&cmd(&["/usr/bin/env"], 10), &[]) {
            Ok(out) => assert_eq!(out.trim(), "ONLY=this"),
            other => panic!("{other:?}"),
        }
        match run(&cmd(&["/usr/bin/head", "-c", "1000000", "/dev/zero"], 10), &[]) {
            Ok(out) => assert_eq!(out.len(), MAX_OUTPUT),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn failures_timeouts_and_missing_programs() {
        // Arguments are passed as they are, never through a shell.
        match run(&cmd(&["/usr/bin/ls", "--"], 10), &["/nonexistent; touch /tmp/x".into()]) {
            Err(f) => assert!(f.output.contains("/nonexistent; touch /tmp/x") && !f.timed_out),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            run(&cmd(&["/usr/bin/sleep", "30"], 1), &[]),
            Err(Failure { timed_out: true, .. })
        ));
        // A timeout kills the whole process group, not only the direct child.
        let marker = format!("/tmp/privhelper-pgroup-{}", std::process::id());
        let script = format!("/usr/bin/sleep 3 && /usr/bin/touch {marker} & /usr/bin/sleep 30");
        let timed_out = run(&cmd(&["/bin/sh", "-c", &script], 1), &[]);
        assert!(matches!(timed_out, Err(Failure { timed_out: true, .. })));
        std::thread::sleep(Duration::from_secs(4));
        assert!(!std::path::Path::new(&marker).exists(), "a grandchild outlived the timeout");
        assert!(matches!(
            run(&cmd(&["/nonexistent/program"], 1), &[]),
            Err(Failure { timed_out: false, .. })
        ));
    }
}
