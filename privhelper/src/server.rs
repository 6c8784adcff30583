//! The socket, the peer check, privilege reduction and the serial serve loop.

use std::fs;
use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::{Duration, Instant};

use caps::{CapSet, Capability, CapsHashSet};
use nix::sys::socket::{getsockopt, sockopt};
use nix::unistd::{Gid, Uid};
use protocol::frame::{self, FrameError};
use protocol::{ErrorCode, MAX_FRAME_BYTES, Request, Response};

use crate::actions;
use crate::policy::Policy;

/// Capabilities kept after binding, and why. Everything else is dropped from the bounding,
/// permitted and effective sets (so the commands we run, which as uid 0 would otherwise regain
/// the full bounding set on exec, cannot get them back either):
/// - CAP_CHOWN: `nginx -t` creates its temp directories and chowns them to the worker user;
/// - CAP_DAC_OVERRIDE: `nginx -t` and certbot must read confs, snippets and webroots that are
///   not necessarily root-owned, and certbot writes challenge files into the webroot;
/// - CAP_FOWNER: certbot sets modes on files and directories it did not create.
///
/// Binding a socket, changing its group and writing the conf dir happen before the drop or need
/// no capability (root owns the conf dir). Not kept: CAP_SYS_ADMIN, CAP_SYS_MODULE,
/// CAP_SYS_PTRACE, CAP_SETUID/SETGID, CAP_NET_ADMIN/RAW, CAP_NET_BIND_SERVICE (nginx -t does
/// not bind; the running master does, with its own capabilities), CAP_KILL (the reload signals
/// a master with our uid) and the rest.
pub const KEPT_CAPABILITIES: [Capability; 3] = [
    Capability::CAP_CHOWN,
    Capability::CAP_DAC_OVERRIDE,
    Capability::CAP_FOWNER,
];

/// stdin, if it is a listening Unix socket (systemd's, with `StandardInput=socket`).
fn inherited_listener() -> Option<UnixListener> {
    let fd = io::stdin().as_fd().try_clone_to_owned().ok()?;
    if !getsockopt(&fd, sockopt::AcceptConn).ok()? {
        return None;
    }
    let listener = UnixListener::from(fd);
    // std refuses to report an address for anything but a Unix socket.
    listener.local_addr().ok()?;
    Some(listener)
}

fn serr<E: std::fmt::Display>(what: &str) -> impl FnOnce(E) -> String + '_ {
    move |e| format!("{what}: {e}")
}

/// The listening socket: systemd's if we were socket-activated, otherwise our own at the
/// policy's path, mode 0660, group of the client user.
///
/// With `unsafe_code` forbidden we cannot adopt fd 3 by number, so socket activation needs
/// `StandardInput=socket` in the service unit: systemd then hands us the listening socket as
/// stdin, which std lets us borrow safely.
pub fn listen(policy: &Policy) -> Result<UnixListener, String> {
    if let Some(listener) = inherited_listener() {
        crate::info!(
            "using the activated socket on stdin: {:?}",
            listener.local_addr().ok()
        );
        return Ok(listener);
    }
    if std::env::var("LISTEN_PID").is_ok_and(|p| p == std::process::id().to_string()) {
        return Err(
            "socket-activated, but stdin is not the listening socket: set StandardInput=socket"
                .into(),
        );
    }
    match fs::symlink_metadata(&policy.socket) {
        Ok(m) if m.file_type().is_socket() => {
            fs::remove_file(&policy.socket).map_err(serr("cannot remove the stale socket"))?
        }
        Ok(_) => {
            return Err(format!(
                "{} exists and is not a socket",
                policy.socket.display()
            ));
        }
        Err(_) => {}
    }
    let listener = UnixListener::bind(&policy.socket).map_err(serr("cannot bind the socket"))?;
    if Uid::effective().is_root() {
        nix::unistd::chown(
            &policy.socket,
            Some(Uid::from_raw(0)),
            Some(Gid::from_raw(policy.client_gid)),
        )
        .map_err(serr("cannot chown the socket"))?;
    }
    fs::set_permissions(&policy.socket, fs::Permissions::from_mode(0o660))
        .map_err(serr("cannot chmod the socket"))?;
    Ok(listener)
}

/// Drops every capability but [`KEPT_CAPABILITIES`], clears the inheritable and ambient sets,
/// and makes the process non-dumpable (no core dumps, no ptrace by the same uid).
pub fn drop_privileges() -> Result<(), String> {
    let keep: CapsHashSet = KEPT_CAPABILITIES.into_iter().collect();
    for cap in caps::all() {
        if !keep.contains(&cap) {
            caps::drop(None, CapSet::Bounding, cap)
                .map_err(serr("cannot drop from the bounding set"))?;
        }
    }
    caps::clear(None, CapSet::Ambient).map_err(serr("cannot clear the ambient set"))?;
    caps::clear(None, CapSet::Inheritable).map_err(serr("cannot clear the inheritable set"))?;
    caps::set(None, CapSet::Effective, &keep).map_err(serr("cannot set the effective set"))?;
    caps::set(None, CapSet::Permitted, &keep).map_err(serr("cannot set the permitted set"))?;
    nix::sys::prctl::set_dumpable(false).map_err(serr("cannot make the process non-dumpable"))?;
    let left = caps::read(None, CapSet::Permitted).map_err(serr("cannot read capabilities"))?;
    crate::info!("dropped capabilities; kept {left:?}");
    Ok(())
}

/// Serves connections one at a time, forever.
pub fn serve(policy: &Policy, listener: &UnixListener) -> Result<(), String> {
    loop {
        match listener.accept() {
            Ok((stream, _)) => serve_one(policy, stream),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                crate::error!("accept failed: {e}");
                // Avoid a hot loop on a persistent error such as EMFILE.
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

struct Deadline<'a> {
    stream: &'a UnixStream,
    until: Instant,
}

impl Read for Deadline<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        self.stream.set_read_timeout(Some(left))?;
        (&mut &*self.stream).read(buf)
    }
}

fn serve_one(policy: &Policy, mut stream: UnixStream) {
    let started = Instant::now();
    let (uid, pid) = match getsockopt(&stream, sockopt::PeerCredentials) {
        Ok(c) => (c.uid(), c.pid()),
        Err(e) => {
            crate::warning!("cannot read peer credentials, closing: {e}");
            return;
        }
    };
    let _ = stream.set_write_timeout(Some(policy.read_timeout));
    if uid != policy.client_uid {
        // Refused before a byte is read: the request is never looked at.
        let _ = frame::write(
            &mut stream,
            &Response::error(ErrorCode::PeerRefused, "not the policy's client user"),
        );
        return log_request((uid, pid), "-", "-", "refused: wrong peer uid", started);
    }
    // One deadline for the whole request, so a client dripping bytes cannot hold us either.
    let mut reader = Deadline {
        stream: &stream,
        until: Instant::now() + policy.read_timeout,
    };
    let request = frame::read_exact_one::<Request>(&mut reader);
    let (verb, site, response) = match request {
        Ok(req) => {
            let response = actions::handle(policy, &req);
            let site = req.site().map_or("-".into(), |s| s.to_string());
            (req.verb(), site, response)
        }
        Err(e) => {
            // Drain (bounded, under the read timeout) what the peer sent, so closing with unread
            // data does not reset the connection before it reads our error.
            let _ = io::copy(&mut reader.take(MAX_FRAME_BYTES as u64), &mut io::sink());
            let code = match &e {
                FrameError::VersionMismatch { .. } => ErrorCode::VersionMismatch,
                FrameError::Io(io)
                    if matches!(
                        io.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    ErrorCode::Timeout
                }
                _ => ErrorCode::Malformed,
            };
            ("-", "-".into(), Response::error(code, e.to_string()))
        }
    };
    let decision = match &response {
        Response::Hello { .. } => "hello".to_string(),
        Response::Done { outcome, .. } => format!("done: {outcome}"),
        Response::Error { code, detail } => format!(
            "error: {code}: {}",
            detail.as_str().lines().next().unwrap_or("")
        ),
    };
    let written =
        frame::write(&mut stream, &response).and_then(|()| stream.flush().map_err(FrameError::Io));
    log_request((uid, pid), verb, &site, &decision, started);
    if let Err(e) = written {
        crate::warning!("peer_pid={pid} could not send the response: {e}");
    }
}

/// The one log line per request.
fn log_request(peer: (u32, i32), verb: &str, site: &str, decision: &str, started: Instant) {
    let duration_ms = started.elapsed().as_millis() as u64;
    let (peer_uid, peer_pid) = peer;
    crate::info!(
        "peer_uid={peer_uid} peer_pid={peer_pid} verb={verb} site={site:?} decision={decision:?} duration_ms={duration_ms}"
    );
}
