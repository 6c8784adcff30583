//! The blocking client against real Unix sockets: errors are classified so the deployer knows
//! when to retry. Run with `--features client`.
#![cfg(feature = "client")]

use std::io::{Read, Write};
use std::os::unix::net::UnixListener;
use std::time::Duration;

use protocol::client::{Client, ClientError};
use protocol::{PROTOCOL_VERSION, Request, Response, frame};

#[test]
fn a_missing_socket_is_transient() {
    let dir = tempfile::tempdir().unwrap();
    let err = Client::new(dir.path().join("none.sock"), Duration::from_secs(1))
        .call(&Request::Hello)
        .unwrap_err();
    assert!(matches!(err, ClientError::Connect { .. }), "{err}");
    assert!(err.is_transient());
}

#[test]
fn a_helper_that_never_answers_times_out() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("h.sock");
    // Bound and listening, but never accepting: the connection sits in the backlog.
    let _listener = UnixListener::bind(&path).unwrap();
    let err = Client::new(&path, Duration::from_millis(200))
        .call(&Request::Hello)
        .unwrap_err();
    assert!(matches!(err, ClientError::Timeout(_)), "{err}");
    assert!(err.is_transient());
}

fn serve_once(
    reply: Vec<u8>,
) -> (
    tempfile::TempDir,
    std::path::PathBuf,
    std::thread::JoinHandle<Vec<u8>>,
) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("h.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let handle = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).unwrap();
        s.write_all(&reply).unwrap();
        got
    });
    (dir, path, handle)
}

#[test]
fn one_request_frame_then_half_close_and_one_response() {
    let (_dir, path, handle) = serve_once(
        frame::encode(&Response::Hello {
            version: PROTOCOL_VERSION,
        })
        .unwrap(),
    );
    let response = Client::new(&path, Duration::from_secs(10))
        .call(&Request::ReloadNginx)
        .unwrap();
    assert_eq!(
        response,
        Response::Hello {
            version: PROTOCOL_VERSION
        }
    );
    assert_eq!(
        frame::decode::<Request>(&handle.join().unwrap()).unwrap(),
        Request::ReloadNginx
    );
}

#[test]
fn garbage_and_version_mismatch_are_not_transient() {
    let (_dir, path, _h) = serve_once(b"HTTP/1.0 200 OK\r\n\r\n".to_vec());
    let err = Client::new(&path, Duration::from_secs(10))
        .call(&Request::Hello)
        .unwrap_err();
    assert!(
        matches!(err, ClientError::Protocol(_)) && !err.is_transient(),
        "{err}"
    );

    let mut other = frame::encode(&Response::Hello {
        version: PROTOCOL_VERSION + 1,
    })
    .unwrap();
    other[4..8].copy_from_slice(&(PROTOCOL_VERSION + 1).to_be_bytes());
    let (_dir, path, _h) = serve_once(other);
    let err = Client::new(&path, Duration::from_secs(10))
        .call(&Request::Hello)
        .unwrap_err();
    assert!(
        matches!(err, ClientError::VersionMismatch(_)) && !err.is_transient(),
        "{err}"
    );
    assert!(err.to_string().contains("version"), "{err}");
}

#[test]
fn a_helper_closing_without_an_answer_is_transient() {
    let (_dir, path, _h) = serve_once(Vec::new());
    let err = Client::new(&path, Duration::from_secs(10))
        .call(&Request::Hello)
        .unwrap_err();
    assert!(
        matches!(err, ClientError::Closed) && err.is_transient(),
        "{err}"
    );
}
