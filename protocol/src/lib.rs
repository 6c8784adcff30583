//! The wire protocol between `durhack-deployer` (unprivileged) and `durhack-privhelper` (root).
//!
//! - [`types`]: validated newtypes ([`SiteName`], [`Domain`], [`Domains`], [`SiteConfig`],
//!   [`Message`]); decoding validates with the same checks as `TryFrom`.
//! - [`frame`]: the frame format (magic, version, length checked before allocation, bincode
//!   body with a size limit, trailing bytes refused).
//! - [`nginx_syntax`]: a pure nginx-syntax tokenizer/parser shared by the helper's checker and the
//!   deployer.
//! - `client` (feature `client`): the blocking client the deployer uses.
//!
//! One request per connection: the client writes one request frame, the helper answers with one
//! response frame and closes.

use bincode::{Decode, Encode};

pub mod frame;
pub mod nginx_syntax;
pub mod types;

#[cfg(feature = "client")]
pub mod client;

pub use frame::{FrameError, MAX_FRAME_BYTES};
pub use types::{Domain, Domains, InvalidValue, Message, SiteConfig, SiteName};

/// Bumped whenever the encoding of [`Request`] or [`Response`] changes. Every frame carries it,
/// so a deployer and helper built from different revisions fail with a clear
/// [`FrameError::VersionMismatch`] instead of misreading each other.
pub const PROTOCOL_VERSION: u32 = 1;

/// What the deployer asks the helper to do.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub enum Request {
    /// Version handshake: answered with [`Response::Hello`].
    Hello,
    /// Check `config` against the policy, write it as `<conf_dir>/<site>.conf`, run `nginx -t`
    /// and roll back if that fails. Does not reload.
    WriteSite { site: SiteName, config: SiteConfig },
    /// Remove `<conf_dir>/<site>.conf`, run `nginx -t` and restore it if that fails.
    RemoveSite { site: SiteName },
    /// `nginx -t`, then the policy's reload command.
    ReloadNginx,
    /// Obtain a certificate named `site` covering `domains` (all of them the site's policy
    /// domains), unless a valid one with exactly these names exists.
    IssueCertificate { site: SiteName, domains: Domains },
}

impl Request {
    /// A short name for logs.
    pub fn verb(&self) -> &'static str {
        match self {
            Request::Hello => "hello",
            Request::WriteSite { .. } => "write-site",
            Request::RemoveSite { .. } => "remove-site",
            Request::ReloadNginx => "reload-nginx",
            Request::IssueCertificate { .. } => "issue-certificate",
        }
    }

    /// The site the request is about, if any.
    pub fn site(&self) -> Option<&SiteName> {
        match self {
            Request::WriteSite { site, .. }
            | Request::RemoveSite { site }
            | Request::IssueCertificate { site, .. } => Some(site),
            Request::Hello | Request::ReloadNginx => None,
        }
    }
}

/// The helper's answer.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub enum Response {
    Hello { version: u32 },
    Done { outcome: Outcome, detail: Message },
    Error { code: ErrorCode, detail: Message },
}

/// What a successful request did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Encode, Decode)]
pub enum Outcome {
    SiteWritten,
    /// The file already had exactly this content; nothing was written or tested.
    SiteUnchanged,
    SiteRemoved,
    /// There was no such file; nothing was done.
    SiteAbsent,
    Reloaded,
    CertificateIssued,
    /// A certificate with exactly these domains, not close to expiry, exists; certbot did not run.
    CertificateStillValid,
}

/// Why a request failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Encode, Decode)]
pub enum ErrorCode {
    /// The frame carried another protocol version.
    VersionMismatch,
    /// The frame could not be decoded (bad magic, length, encoding or a value failing validation).
    Malformed,
    /// The peer is not the policy's client user.
    PeerRefused,
    /// The site or a domain is not in the policy.
    NotAllowed,
    /// The nginx conf was refused by the helper's checker; nothing was written.
    ConfRefused,
    /// `nginx -t` failed; the previous state was restored. The detail is nginx's output.
    NginxTestFailed,
    /// The reload or certbot command failed. The detail is its output.
    CommandFailed,
    /// A command or the connection timed out.
    Timeout,
    /// Something on the helper's side went wrong (I/O error and the like).
    Internal,
}

impl From<&FrameError> for ErrorCode {
    /// How a server answers a request frame it could not read.
    fn from(e: &FrameError) -> ErrorCode {
        match e {
            FrameError::VersionMismatch { .. } => ErrorCode::VersionMismatch,
            FrameError::Io(io)
                if matches!(
                    io.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                ErrorCode::Timeout
            }
            _ => ErrorCode::Malformed,
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self, f)
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self, f)
    }
}

impl Response {
    /// An error response whose detail is cut to fit.
    pub fn error(code: ErrorCode, detail: impl AsRef<str>) -> Response {
        Response::Error {
            code,
            detail: Message::truncated(detail.as_ref()),
        }
    }

    /// A success response whose detail is cut to fit, keeping its end: a command's output says
    /// what it did last (certbot's "Successfully received certificate").
    pub fn done(outcome: Outcome, detail: impl AsRef<str>) -> Response {
        Response::Done {
            outcome,
            detail: Message::truncated_tail(detail.as_ref()),
        }
    }
}
