//! Frames: `MAGIC (4) | version u32 BE | length u32 BE | body (length bytes)`.
//!
//! The header is fixed-size, so a reader learns the version and the length before it allocates
//! anything; a length above [`MAX_FRAME_BYTES`] is refused without reading further. The body is
//! bincode 2.0.1 (`standard()` config with a limit of [`MAX_FRAME_BYTES`]) and must be consumed
//! exactly: trailing bytes are an error.
//!
//! bincode is pinned to `=2.0.1` in the workspace: 3.0.0 on crates.io is an empty tombstone
//! release, so "upgrading" would silently remove the encoder.

use std::io::{self, Read, Write};

use bincode::{Decode, Encode};

use crate::PROTOCOL_VERSION;

/// Identifies our frames, so a stray client speaking something else fails clearly.
pub const MAGIC: [u8; 4] = *b"DHPH";
/// Header size: magic, version, length.
pub const HEADER_BYTES: usize = 12;
/// Largest body: a 64 KiB conf plus 100 maximal domains and some framing fits well under this.
pub const MAX_FRAME_BYTES: usize = 128 * 1024;

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<MAX_FRAME_BYTES>()
}

/// Why a frame could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("I/O error: {0}")]
    Io(#[from] io::Error),
    #[error("connection closed before a complete frame ({got} of {want} bytes)")]
    Truncated { got: usize, want: usize },
    #[error("not a durhack-privhelper frame (bad magic)")]
    BadMagic,
    #[error(
        "protocol version mismatch: peer speaks {theirs}, we speak {ours}; deploy matching deployer and helper builds"
    )]
    VersionMismatch { ours: u32, theirs: u32 },
    #[error("frame of {0} bytes exceeds the {MAX_FRAME_BYTES}-byte maximum")]
    TooLarge(u64),
    #[error("malformed frame body: {0}")]
    Decode(String),
    #[error("{0} trailing bytes after the frame body")]
    TrailingBytes(usize),
    #[error("frame body is not in canonical encoding")]
    NonCanonical,
    #[error("cannot encode: {0}")]
    Encode(String),
}

impl FrameError {
    /// Was the peer's build different from ours?
    pub fn is_version_mismatch(&self) -> bool {
        matches!(self, FrameError::VersionMismatch { .. })
    }
}

/// Encodes `value` as a complete frame (header and body).
pub fn encode<T: Encode>(value: &T) -> Result<Vec<u8>, FrameError> {
    let body =
        bincode::encode_to_vec(value, config()).map_err(|e| FrameError::Encode(e.to_string()))?;
    if body.len() > MAX_FRAME_BYTES {
        return Err(FrameError::TooLarge(body.len() as u64));
    }
    let mut out = Vec::with_capacity(HEADER_BYTES + body.len());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&PROTOCOL_VERSION.to_be_bytes());
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&body);
    Ok(out)
}

/// Checks a header and returns the body length it announces.
pub fn parse_header(header: &[u8; HEADER_BYTES]) -> Result<usize, FrameError> {
    if header[..4] != MAGIC {
        return Err(FrameError::BadMagic);
    }
    let theirs = u32::from_be_bytes([header[4], header[5], header[6], header[7]]);
    if theirs != PROTOCOL_VERSION {
        return Err(FrameError::VersionMismatch {
            ours: PROTOCOL_VERSION,
            theirs,
        });
    }
    let len = u32::from_be_bytes([header[8], header[9], header[10], header[11]]);
    if len as u64 > MAX_FRAME_BYTES as u64 {
        return Err(FrameError::TooLarge(len as u64));
    }
    Ok(len as usize)
}

/// Decodes a body, which must be consumed exactly and be the canonical encoding of what it
/// decodes to: bincode also accepts over-long varints, and one value must have one encoding.
pub fn decode_body<T: Decode<()> + Encode>(body: &[u8]) -> Result<T, FrameError> {
    let (value, used) = bincode::decode_from_slice(body, config())
        .map_err(|e| FrameError::Decode(e.to_string()))?;
    if used != body.len() {
        return Err(FrameError::TrailingBytes(body.len() - used));
    }
    let again =
        bincode::encode_to_vec(&value, config()).map_err(|e| FrameError::Encode(e.to_string()))?;
    if again != body {
        return Err(FrameError::NonCanonical);
    }
    Ok(value)
}

/// Decodes one complete frame held in `bytes`; anything after it is an error.
pub fn decode<T: Decode<()> + Encode>(bytes: &[u8]) -> Result<T, FrameError> {
    let Some(header) = bytes.first_chunk::<HEADER_BYTES>() else {
        return Err(FrameError::Truncated {
            got: bytes.len(),
            want: HEADER_BYTES,
        });
    };
    let len = parse_header(header)?;
    let rest = &bytes[HEADER_BYTES..];
    if rest.len() < len {
        return Err(FrameError::Truncated {
            got: bytes.len(),
            want: HEADER_BYTES + len,
        });
    }
    if rest.len() > len {
        return Err(FrameError::TrailingBytes(rest.len() - len));
    }
    decode_body(rest)
}

fn read_full(
    reader: &mut impl Read,
    buf: &mut [u8],
    offset: usize,
    want: usize,
) -> Result<(), FrameError> {
    let mut got = 0;
    while got < buf.len() {
        match reader.read(&mut buf[got..]) {
            Ok(0) => {
                return Err(FrameError::Truncated {
                    got: offset + got,
                    want,
                });
            }
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(FrameError::Io(e)),
        }
    }
    Ok(())
}

/// Reads one frame from a stream. The body buffer is allocated only after the header has been
/// checked, and never larger than [`MAX_FRAME_BYTES`]. Whatever follows on the stream is left
/// unread (see [`read_exact_one`]).
pub fn read<T: Decode<()> + Encode>(reader: &mut impl Read) -> Result<T, FrameError> {
    let mut header = [0u8; HEADER_BYTES];
    read_full(reader, &mut header, 0, HEADER_BYTES)?;
    let len = parse_header(&header)?;
    let mut body = vec![0u8; len];
    read_full(reader, &mut body, HEADER_BYTES, HEADER_BYTES + len)?;
    decode_body(&body)
}

/// Reads one frame and then requires end of stream: a peer that sends more than one frame
/// (or garbage after it) is refused.
pub fn read_exact_one<T: Decode<()> + Encode>(reader: &mut impl Read) -> Result<T, FrameError> {
    let value = read(reader)?;
    let mut extra = [0u8; 1];
    loop {
        match reader.read(&mut extra) {
            Ok(0) => return Ok(value),
            Ok(_) => return Err(FrameError::TrailingBytes(1)),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(FrameError::Io(e)),
        }
    }
}

/// A reader that fails with `TimedOut` once `until` has passed, however the bytes trickle in:
/// one deadline for a whole request, so a peer dripping one byte at a time cannot hold a server.
#[derive(Debug)]
pub struct Deadline<'a> {
    pub stream: &'a std::os::unix::net::UnixStream,
    pub until: std::time::Instant,
}

impl Read for Deadline<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self
            .until
            .saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        self.stream.set_read_timeout(Some(left))?;
        (&mut &*self.stream).read(buf)
    }
}

/// Writes one frame.
pub fn write<T: Encode>(writer: &mut impl Write, value: &T) -> Result<(), FrameError> {
    writer.write_all(&encode(value)?)?;
    writer.flush()?;
    Ok(())
}
