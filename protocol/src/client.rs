//! The deployer's blocking client: one connection per call, bounded by a timeout.

use std::io;
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

use crate::frame::{self, FrameError};
use crate::{Request, Response};

/// Why a call failed before a response was decoded.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to the privileged helper at {path}: {source}")]
    Connect { path: PathBuf, source: io::Error },
    #[error("the privileged helper did not answer within {0:?}")]
    Timeout(Duration),
    #[error("I/O error talking to the privileged helper: {0}")]
    Io(io::Error),
    #[error("the privileged helper closed the connection without a complete answer")]
    Closed,
    #[error("the privileged helper's answer is invalid: {0}")]
    Protocol(FrameError),
    #[error("{0}")]
    VersionMismatch(FrameError),
}

impl ClientError {
    /// True when the helper could not be reached or did not answer in time (try again later);
    /// false when it answered something we cannot use.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            ClientError::Connect { .. } | ClientError::Timeout(_) | ClientError::Closed
        )
    }
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

impl From<FrameError> for ClientError {
    fn from(e: FrameError) -> Self {
        match e {
            FrameError::Io(e) if is_timeout(&e) => ClientError::Timeout(Duration::ZERO),
            FrameError::Io(e) => ClientError::Io(e),
            FrameError::Truncated { .. } => ClientError::Closed,
            e @ FrameError::VersionMismatch { .. } => ClientError::VersionMismatch(e),
            e => ClientError::Protocol(e),
        }
    }
}

/// A client for one helper socket.
#[derive(Debug, Clone)]
pub struct Client {
    socket: PathBuf,
    timeout: Duration,
}

impl Client {
    /// `timeout` bounds each read and write on the connection. Certificate requests can take a
    /// while (certbot), so give it minutes rather than seconds.
    pub fn new(socket: impl Into<PathBuf>, timeout: Duration) -> Client {
        Client {
            socket: socket.into(),
            timeout,
        }
    }

    pub fn socket(&self) -> &std::path::Path {
        &self.socket
    }

    /// Sends `request` and waits for the one response.
    pub fn call(&self, request: &Request) -> Result<Response, ClientError> {
        let bytes = frame::encode(request).map_err(ClientError::Protocol)?;
        let mut stream =
            UnixStream::connect(&self.socket).map_err(|source| ClientError::Connect {
                path: self.socket.clone(),
                source,
            })?;
        let timeout = Some(self.timeout.max(Duration::from_millis(1)));
        stream.set_read_timeout(timeout).map_err(ClientError::Io)?;
        stream.set_write_timeout(timeout).map_err(ClientError::Io)?;
        let result = (|| {
            io::Write::write_all(&mut stream, &bytes).map_err(FrameError::Io)?;
            // The helper reads exactly one frame and then expects end of stream.
            stream.shutdown(Shutdown::Write).map_err(FrameError::Io)?;
            frame::read::<Response>(&mut stream)
        })();
        result.map_err(|e| match ClientError::from(e) {
            ClientError::Timeout(_) => ClientError::Timeout(self.timeout),
            other => other,
        })
    }
}
