//! The socket, the peer check, privilege reduction and the serial serve loop.

use std::fs;
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::fd::AsFd;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use caps::{CapSet, Capability, CapsHashSet};
use nix::sys::socket::{getsockopt, sockopt};
use nix::unistd::{Gid, Uid};
use protocol::frame::{self, Deadline, FrameError};
use protocol::{ErrorCode, MAX_FRAME_BYTES, PROTOCOL_VERSION, Request, Response};

use crate::actions;
use crate::policy::Policy;

/// Capabilities kept after binding, and why. Everything else is dropped from the bounding,
/// permitted and effective sets (so the commands we run, which as uid 0 would otherwise regain
/// the full bounding set on exec, cannot get them back either):
/// - CAP_CHOWN: `nginx -t` creates its temp directories and chowns them to the worker user;
/// - CAP_DAC_OVERRIDE: `nginx -t` and certbot must read confs, snippets and webroots that are
///   not necessarily root-owned, and certbot writes challenge files into the webroot;
/// - CAP_FOWNER: certbot sets modes on files and directories it did not create;
/// - CAP_NET_BIND_SERVICE: `nginx -t` binds every listen socket of the new configuration
///   (80 and 443) to test it, and fails with EACCES without it.
///
/// Binding a socket, changing its group and writing the conf dir happen before the drop or need
/// no capability (root owns the conf dir). Not kept: CAP_SYS_ADMIN, CAP_SYS_MODULE,
/// CAP_SYS_PTRACE, CAP_SETUID/SETGID, CAP_NET_ADMIN/RAW, CAP_KILL (the reload signals a master
/// with our uid) and the rest.
pub const KEPT_CAPABILITIES: [Capability; 4] = [
    Capability::CAP_CHOWN,
    Capability::CAP_DAC_OVERRIDE,
    Capability::CAP_FOWNER,
    Capability::CAP_NET_BIND_SERVICE,
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
        crate::info!("using the activated socket on stdin: {:?}", listener.local_addr().ok());
        return Ok(listener);
    }
    if std::env::var("LISTEN_PID").is_ok_and(|p| p == std::process::id().to_string()) {
        return Err(
            "socket-activated, but stdin is not the listening socket (StandardInput=socket)".into(),
        );
    }
    // chown and chmod below go by path: safe only while nobody but root can change what the
    // path names, so its directory (and every one above) must be root's alone.
    let is_root = Uid::effective().is_root();
    if let (true, Some(dir)) = (is_root, policy.socket.parent()) {
        crate::policy::root_only_with_ancestors(dir)?;
    }
    let (socket, gid) = (&policy.socket, Gid::from_raw(policy.client_gid));
    match fs::symlink_metadata(socket) {
        Ok(m) if m.file_type().is_socket() => {
            fs::remove_file(socket).map_err(serr("cannot remove the stale socket"))?
        }
        Ok(_) => return Err(format!("{} exists and is not a socket", socket.display())),
        Err(_) => {}
    }
    // Created 0600, so no one else can connect before the group and mode are set.
    let umask = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
    let bound = UnixListener::bind(&policy.socket);
    nix::sys::stat::umask(umask);
    let listener = bound.map_err(serr("cannot bind the socket"))?;
    if is_root {
        nix::unistd::chown(socket, Some(Uid::from_raw(0)), Some(gid))
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
    for cap in caps::all().difference(&keep) {
        caps::drop(None, CapSet::Bounding, *cap)
            .map_err(serr("cannot drop from the bounding set"))?;
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

/// Connections read at once. More are answered "busy" at once, so idle connections cannot
/// queue up in front of a request.
const MAX_OPEN: usize = 64;

type Job = (UnixStream, Request, (u32, i32), Instant);

/// Reads requests concurrently (one thread per connection, each under one deadline, at most
/// [`MAX_OPEN`]) and executes them one at a time on a single thread, forever. `Hello` has no
/// effect and is answered by its reader, so it is never stuck behind a slow certbot run; a
/// request that finds the queue full is answered "busy" at once.
pub fn serve(policy: &Policy, listener: &UnixListener) -> Result<(), String> {
    let open = AtomicUsize::new(0);
    let (jobs, queue) = mpsc::sync_channel::<Job>(MAX_OPEN);
    thread::scope(|scope| {
        thread::Builder::new()
            .spawn_scoped(scope, move || execute(policy, queue))
            .map_err(serr("cannot start the executor"))?;
        loop {
            let stream = match listener.accept() {
                Ok((stream, _)) => stream,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    crate::error!("accept failed: {e}");
                    // Avoid a hot loop on a persistent error such as EMFILE.
                    thread::sleep(Duration::from_millis(100));
                    continue;
                }
            };
            let (open, jobs) = (&open, jobs.clone());
            if open.fetch_add(1, Ordering::SeqCst) >= MAX_OPEN {
                open.fetch_sub(1, Ordering::SeqCst);
                let busy = Response::error(ErrorCode::Internal, "busy: too many open connections");
                let _ = stream.set_write_timeout(Some(policy.read_timeout));
                let _ = frame::write(&mut &stream, &busy);
                continue;
            }
            let reader = move || {
                receive(policy, stream, &jobs);
                open.fetch_sub(1, Ordering::SeqCst);
            };
            if let Err(e) = thread::Builder::new().spawn_scoped(scope, reader) {
                crate::error!("cannot start a reader: {e}");
                open.fetch_sub(1, Ordering::SeqCst);
            }
        }
    })
}

fn execute(policy: &Policy, queue: mpsc::Receiver<Job>) {
    let mut state = actions::State::default();
    for (stream, request, peer, started) in queue {
        let response = actions::handle(policy, &mut state, &request);
        let site = request.site().map_or("-".into(), |s| s.to_string());
        respond(stream, peer, request.verb(), &site, &response, started, None);
    }
}

/// Checks the peer, reads its one request under one deadline, and hands it to the executor.
fn receive(policy: &Policy, stream: UnixStream, jobs: &mpsc::SyncSender<Job>) {
    let started = Instant::now();
    let peer = match getsockopt(&stream, sockopt::PeerCredentials) {
        Ok(c) => (c.uid(), c.pid()),
        Err(e) => return crate::warning!("cannot read peer credentials, closing: {e}"),
    };
    let _ = stream.set_write_timeout(Some(policy.read_timeout));
    // One deadline for the whole request, so a client dripping bytes cannot hold us either.
    let until = Instant::now() + policy.read_timeout;
    let response = if peer.0 != policy.client_uid {
        // Refused before a byte is looked at (what it sent is drained unparsed, below).
        Response::error(ErrorCode::PeerRefused, "not the policy's client user")
    } else {
        let mut reader = Deadline { stream: &stream, until };
        match frame::read_exact_one::<Request>(&mut reader) {
            Ok(Request::Hello) => Response::Hello { version: PROTOCOL_VERSION },
            // Never wait for the executor here: a reader holding its slot while the queue is
            // full would let queued requests turn every other connection away.
            Ok(request) => match jobs.try_send((stream, request, peer, started)) {
                Ok(()) => return,
                Err(
                    mpsc::TrySendError::Full((stream, ..))
                    | mpsc::TrySendError::Disconnected((stream, ..)),
                ) => {
                    let busy =
                        Response::error(ErrorCode::Internal, "busy: too many queued requests");
                    return respond(stream, peer, "-", "-", &busy, started, Some(until));
                }
            },
            Err(e) => Response::error(ErrorCode::from(&e), e.to_string()),
        }
    };
    let verb = if matches!(response, Response::Hello { .. }) { "hello" } else { "-" };
    respond(stream, peer, verb, "-", &response, started, Some(until));
}

/// Sends `response` and writes the one log line for the request. With `drain_until`, what the
/// peer sent is then read and dropped (bounded, never parsed), so that our close does not reset
/// the connection before the peer has read the answer.
fn respond(
    mut stream: UnixStream,
    peer: (u32, i32),
    verb: &str,
    site: &str,
    response: &Response,
    started: Instant,
    drain_until: Option<Instant>,
) {
    let decision = match response {
        Response::Hello { .. } => "hello".to_string(),
        Response::Done { outcome, .. } => format!("done: {outcome}"),
        Response::Error { code, detail } => {
            format!("error: {code}: {}", detail.as_str().lines().next().unwrap_or(""))
        }
    };
    // The one log line per request, written before the peer can see the answer.
    let (peer_uid, peer_pid, ms) = (peer.0, peer.1, started.elapsed().as_millis());
    crate::info!(
        "peer_uid={peer_uid} peer_pid={peer_pid} verb={verb} site={site:?} decision={decision:?} duration_ms={ms}"
    );
    let written =
        frame::write(&mut stream, response).and_then(|()| stream.flush().map_err(FrameError::Io));
    if let Some(until) = drain_until {
        let _ = stream.shutdown(Shutdown::Write);
        let reader = Deadline { stream: &stream, until };
        let _ = io::copy(&mut reader.take(MAX_FRAME_BYTES as u64), &mut io::sink());
    }
    if let Err(e) = written {
        crate::warning!("peer_pid={peer_pid} could not send the response: {e}");
    }
}
