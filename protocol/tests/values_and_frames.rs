//! Table-driven tests for the newtypes and the frame format.

use protocol::frame::{self, FrameError, HEADER_BYTES, MAGIC, MAX_FRAME_BYTES};
use protocol::types::{MAX_CONFIG_BYTES, MAX_MESSAGE_BYTES};
use protocol::{
    Domain, Domains, ErrorCode, Message, Outcome, PROTOCOL_VERSION, Request, Response, SiteConfig,
    SiteName,
};

#[test]
fn site_names() {
    let longest = format!("{0}.{0}.{0}.{1}", "a".repeat(63), "b".repeat(8));
    assert_eq!(longest.len(), protocol::types::MAX_SITE_NAME_BYTES);
    for good in [
        "a",
        "durhack",
        "durhack-2025",
        "0",
        "a-",
        &"a".repeat(63),
        // Sites named after their domain, as the Python deployer named them.
        "api.durhack.com",
        "admin.auth.durhack.com",
        "a-.b",
        &longest,
    ] {
        assert!(
            SiteName::try_from(good).is_ok(),
            "{good:?} should be accepted"
        );
    }
    let long = "a".repeat(64);
    let too_long = format!("{longest}b");
    for bad in [
        "",
        "-a",
        "..",
        "a/b",
        "/",
        "a\0b",
        "a\nb",
        "a;b",
        "a{b",
        "a}b",
        "a\"b",
        "a'b",
        "a b",
        ".",
        "...",
        ".a",
        "a.",
        "a..b",
        "./a",
        "a/../b",
        "../a",
        "a.-b",
        "a.b/c",
        "a.b\0",
        "api.durhack.com/../../etc",
        "A",
        "durHack",
        "dürhack",
        "a_b",
        "*",
        long.as_str(),
        too_long.as_str(),
    ] {
        assert!(
            SiteName::try_from(bad).is_err(),
            "{bad:?} should be refused"
        );
        assert!(SiteName::try_from(bad.to_string()).is_err());
    }
}

#[test]
fn domains() {
    let label63 = "a".repeat(63);
    let max = format!("{0}.{0}.{0}.{1}", label63, "a".repeat(61));
    assert_eq!(max.len(), 253);
    for good in [
        "localhost",
        "durhack.com",
        "www.durhack.com",
        "a-b.c0.example",
        "xn--drhack-wxa.com",
        &label63,
        &max,
    ] {
        assert!(
            Domain::try_from(good).is_ok(),
            "{good:?} should be accepted"
        );
    }
    let label64 = "a".repeat(64);
    let too_long = format!("{max}a");
    for bad in [
        "",
        ".",
        "a..b",
        ".a",
        "a.",
        "durhack.com.",
        "*.durhack.com",
        "a*.durhack.com",
        "-a.com",
        "a.-b.com",
        "a-.com",
        "Durhack.com",
        "DURHACK.COM",
        "dürhack.com",
        "a_b.com",
        "a/b",
        "../etc",
        "a\0.com",
        "a\n.com",
        "a;b.com",
        "a{b}.com",
        "\"a\".com",
        "a b.com",
        "a:80",
        label64.as_str(),
        too_long.as_str(),
    ] {
        assert!(Domain::try_from(bad).is_err(), "{bad:?} should be refused");
    }
}

fn d(s: &str) -> Domain {
    Domain::try_from(s).unwrap()
}

#[test]
fn domain_lists() {
    assert!(Domains::try_from(vec![]).is_err());
    assert!(Domains::try_from(vec![d("a.com"), d("a.com")]).is_err());
    let hundred: Vec<Domain> = (0..100).map(|i| d(&format!("d{i}.com"))).collect();
    assert_eq!(
        Domains::try_from(hundred.clone()).unwrap().as_slice().len(),
        100
    );
    let mut many = hundred;
    many.push(d("x.com"));
    assert!(Domains::try_from(many).is_err());
}

#[test]
fn site_configs_and_messages() {
    assert!(SiteConfig::try_from("server { }").is_ok());
    assert!(SiteConfig::try_from("x".repeat(MAX_CONFIG_BYTES)).is_ok());
    assert!(SiteConfig::try_from("x".repeat(MAX_CONFIG_BYTES + 1)).is_err());
    assert!(SiteConfig::try_from("server {\0}").is_err());

    assert!(Message::try_from("x".repeat(MAX_MESSAGE_BYTES + 1)).is_err());
    let long = "é".repeat(MAX_MESSAGE_BYTES);
    let head = Message::truncated(&long);
    assert!(
        head.as_str().len() <= MAX_MESSAGE_BYTES && head.as_str().len() >= MAX_MESSAGE_BYTES - 1
    );
    let tail = Message::truncated_tail(&format!("start{long}end"));
    assert!(tail.as_str().ends_with("end") && tail.as_str().len() <= MAX_MESSAGE_BYTES);
}

fn sample_requests() -> Vec<Request> {
    vec![
        Request::Hello,
        Request::WriteSite {
            site: SiteName::try_from("durhack").unwrap(),
            config: SiteConfig::try_from("server { server_name durhack.com; }").unwrap(),
        },
        Request::RemoveSite {
            site: SiteName::try_from("durhack").unwrap(),
        },
        Request::ReloadNginx,
        Request::IssueCertificate {
            site: SiteName::try_from("durhack").unwrap(),
            domains: Domains::try_from(vec![d("durhack.com"), d("www.durhack.com")]).unwrap(),
        },
    ]
}

#[test]
fn frames_round_trip() {
    for req in sample_requests() {
        let bytes = frame::encode(&req).unwrap();
        assert_eq!(frame::decode::<Request>(&bytes).unwrap(), req);
        let mut cursor = std::io::Cursor::new(bytes);
        assert_eq!(frame::read_exact_one::<Request>(&mut cursor).unwrap(), req);
    }
    for resp in [
        Response::Hello {
            version: PROTOCOL_VERSION,
        },
        Response::done(Outcome::SiteWritten, "ok"),
        Response::error(ErrorCode::NginxTestFailed, "x".repeat(100_000)),
    ] {
        let bytes = frame::encode(&resp).unwrap();
        assert_eq!(frame::decode::<Response>(&bytes).unwrap(), resp);
    }
    // The largest legitimate request fits in a frame.
    let big = Request::WriteSite {
        site: SiteName::try_from(format!("{0}.{0}.{0}.{1}", "a".repeat(63), "b".repeat(8)))
            .unwrap(),
        config: SiteConfig::try_from("é".repeat(MAX_CONFIG_BYTES / 2)).unwrap(),
    };
    assert!(frame::encode(&big).is_ok());
}

#[test]
fn truncated_frames() {
    let bytes = frame::encode(&sample_requests()[1]).unwrap();
    for cut in 0..bytes.len() {
        let err = frame::decode::<Request>(&bytes[..cut]).unwrap_err();
        assert!(
            matches!(err, FrameError::Truncated { .. }),
            "cut at {cut}: {err}"
        );
        let err = frame::read::<Request>(&mut &bytes[..cut]).unwrap_err();
        assert!(
            matches!(err, FrameError::Truncated { .. }),
            "cut at {cut}: {err}"
        );
    }
}

fn header(version: u32, len: u32) -> Vec<u8> {
    let mut h = MAGIC.to_vec();
    h.extend_from_slice(&version.to_be_bytes());
    h.extend_from_slice(&len.to_be_bytes());
    h
}

/// A reader that fails the test if more than its header is read: proves the length check comes
/// before any read (and therefore before any allocation of the announced size).
struct HeaderOnly(Vec<u8>, usize);
impl std::io::Read for HeaderOnly {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = buf.len().min(self.0.len() - self.1);
        assert!(self.1 + n <= HEADER_BYTES, "read past the header");
        buf[..n].copy_from_slice(&self.0[self.1..self.1 + n]);
        self.1 += n;
        Ok(n)
    }
}

#[test]
fn oversized_length_prefix_is_refused_before_reading_the_body() {
    for len in [MAX_FRAME_BYTES as u32 + 1, u32::MAX] {
        let err =
            frame::read::<Request>(&mut HeaderOnly(header(PROTOCOL_VERSION, len), 0)).unwrap_err();
        assert!(matches!(err, FrameError::TooLarge(_)), "{err}");
        let err = frame::decode::<Request>(&header(PROTOCOL_VERSION, len)).unwrap_err();
        assert!(matches!(err, FrameError::TooLarge(_)), "{err}");
    }
}

#[test]
fn wrong_version_and_magic() {
    let mut bytes = frame::encode(&Request::Hello).unwrap();
    bytes[4..8].copy_from_slice(&(PROTOCOL_VERSION + 1).to_be_bytes());
    let err = frame::decode::<Request>(&bytes).unwrap_err();
    assert!(err.is_version_mismatch(), "{err}");
    assert!(err.to_string().contains("version"));
    let err = frame::read::<Request>(&mut HeaderOnly(header(PROTOCOL_VERSION + 1, u32::MAX), 0))
        .unwrap_err();
    assert!(err.is_version_mismatch());

    let mut bytes = frame::encode(&Request::Hello).unwrap();
    bytes[0] = b'X';
    assert!(matches!(
        frame::decode::<Request>(&bytes),
        Err(FrameError::BadMagic)
    ));
    // An HTTP client poking the socket.
    assert!(matches!(
        frame::decode::<Request>(b"GET / HTTP/1.0\r\n\r\n"),
        Err(FrameError::BadMagic)
    ));
}

#[test]
fn trailing_garbage() {
    let mut bytes = frame::encode(&Request::ReloadNginx).unwrap();
    bytes.push(0);
    assert!(matches!(
        frame::decode::<Request>(&bytes),
        Err(FrameError::TrailingBytes(1))
    ));
    assert!(matches!(
        frame::read_exact_one::<Request>(&mut &bytes[..]),
        Err(FrameError::TrailingBytes(_))
    ));
    // Garbage inside the announced length, after a valid body.
    let body = {
        let b = frame::encode(&Request::ReloadNginx).unwrap();
        let mut body = b[HEADER_BYTES..].to_vec();
        body.extend_from_slice(b"junk");
        body
    };
    let mut bytes = header(PROTOCOL_VERSION, body.len() as u32);
    bytes.extend_from_slice(&body);
    assert!(matches!(
        frame::decode::<Request>(&bytes),
        Err(FrameError::TrailingBytes(4))
    ));
}

/// Encodes a request with unchecked strings, as a hostile or buggy peer would.
fn raw_write_site(site: &str, config: &str) -> Vec<u8> {
    #[derive(bincode::Encode)]
    enum Raw {
        #[allow(dead_code)]
        Hello,
        WriteSite {
            site: String,
            config: String,
        },
    }
    frame::encode(&Raw::WriteSite {
        site: site.into(),
        config: config.into(),
    })
    .unwrap()
}

#[test]
fn decoding_validates() {
    assert!(frame::decode::<Request>(&raw_write_site("ok", "server {}")).is_ok());
    assert!(frame::decode::<Request>(&raw_write_site("api.durhack.com", "server {}")).is_ok());
    for (site, config) in [
        ("../etc", "x"),
        ("", "x"),
        ("Upper", "x"),
        ("ok", "a\0b"),
        ("..", "x"),
        (".", "x"),
        (".hidden", "x"),
        ("a..b", "x"),
        ("a.b/../c", "x"),
    ] {
        let err = frame::decode::<Request>(&raw_write_site(site, config)).unwrap_err();
        assert!(
            matches!(err, FrameError::Decode(_)),
            "{site:?}/{config:?}: {err}"
        );
    }
    // An IssueCertificate with an invalid domain, and with a huge announced count.
    #[derive(bincode::Encode)]
    enum Raw {
        #[allow(dead_code)]
        Hello,
        #[allow(dead_code)]
        WriteSite,
        #[allow(dead_code)]
        RemoveSite,
        #[allow(dead_code)]
        ReloadNginx,
        IssueCertificate {
            site: String,
            domains: Vec<String>,
        },
    }
    for domains in [
        vec!["*.a.com".to_string()],
        vec![],
        (0..101).map(|i| format!("d{i}.com")).collect(),
    ] {
        let bytes = frame::encode(&Raw::IssueCertificate {
            site: "ok".into(),
            domains,
        })
        .unwrap();
        assert!(frame::decode::<Request>(&bytes).is_err());
    }
    // A vector length of u64::MAX must not allocate: varint 0xFF + 8 bytes.
    let mut body = vec![4u8, 2, b'o', b'k', 0xFF];
    body.extend_from_slice(&u64::MAX.to_le_bytes());
    let mut bytes = header(PROTOCOL_VERSION, body.len() as u32);
    bytes.extend_from_slice(&body);
    assert!(frame::decode::<Request>(&bytes).is_err());
    // A string length far beyond the frame.
    let mut body = vec![1u8, 0xFD];
    body.extend_from_slice(&u32::MAX.to_le_bytes());
    let mut bytes = header(PROTOCOL_VERSION, body.len() as u32);
    bytes.extend_from_slice(&body);
    assert!(frame::decode::<Request>(&bytes).is_err());
}

#[test]
fn non_canonical_encodings_are_refused() {
    // Found by the frame_decode fuzz target: the variant index 0 as an over-long varint
    // (0xFB then a u16 zero) decoded to the same value as the canonical single byte.
    let crash = b"DHPH\x00\x00\x00\x01\x00\x00\x00\x04\xfb\x00\x00\x68";
    assert!(matches!(
        frame::decode::<Response>(crash),
        Err(FrameError::NonCanonical)
    ));
    let canonical = frame::encode(&Response::Hello { version: 0x68 }).unwrap();
    assert_eq!(
        frame::decode::<Response>(&canonical).unwrap(),
        Response::Hello { version: 0x68 }
    );
    // The same trick inside a string length.
    let mut body = vec![2u8, 0xFB, 7, 0];
    body.extend_from_slice(b"durhack");
    let mut bytes = header(PROTOCOL_VERSION, body.len() as u32);
    bytes.extend_from_slice(&body);
    assert!(matches!(
        frame::decode::<Request>(&bytes),
        Err(FrameError::NonCanonical)
    ));
}

#[test]
fn random_bytes_never_panic() {
    // A small xorshift generator: deterministic, no dependency.
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let valid = frame::encode(&sample_requests()[4]).unwrap();
    for round in 0..20_000 {
        let len = (next() % 300) as usize;
        let mut bytes: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        if round % 2 == 0 {
            // Mutate a valid frame so the body decoder is exercised too.
            bytes = valid.clone();
            for _ in 0..(next() % 4 + 1) {
                let i = (next() as usize) % bytes.len();
                bytes[i] = next() as u8;
            }
        }
        if let Ok(req) = frame::decode::<Request>(&bytes) {
            // Whatever decodes re-encodes to the same bytes: nothing was silently dropped.
            assert_eq!(frame::encode(&req).unwrap(), bytes);
        }
        let _ = frame::decode::<Response>(&bytes);
    }
}
