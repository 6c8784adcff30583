//! Validated newtypes. Each is built only through `TryFrom`, and bincode decoding goes through
//! the same `TryFrom`, so a value that exists has been checked, whichever side made it.

use std::fmt;

use bincode::de::Decoder;
use bincode::error::DecodeError;
use bincode::{Decode, Encode};

/// Longest nginx conf text a request may carry.
pub const MAX_CONFIG_BYTES: usize = 64 * 1024;
/// Most domains one certificate request may name.
pub const MAX_DOMAINS: usize = 100;
/// Longest detail message in a response (nginx/certbot output is cut to this).
pub const MAX_MESSAGE_BYTES: usize = 4 * 1024;
/// Longest domain name (RFC 1035, without the trailing dot).
pub const MAX_DOMAIN_BYTES: usize = 253;
/// Longest site name. Sites are often named after their domain (`api.durhack.com`), but the
/// name also makes file names (`<site>.conf.tmp-<pid>`, `<site>.access.log`), which must stay
/// under the 255-byte limit of one path component.
pub const MAX_SITE_NAME_BYTES: usize = 200;

/// Why a value was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidValue {
    #[error("site name {0:?} is invalid: {1}")]
    SiteName(String, &'static str),
    #[error("domain {0:?} is invalid: {1}")]
    Domain(String, &'static str),
    #[error("domain list is invalid: {0}")]
    Domains(&'static str),
    #[error("site config is invalid: {0}")]
    SiteConfig(&'static str),
    #[error("message is invalid: {0}")]
    Message(&'static str),
}

/// Shortens what we echo back in errors: the value may be hostile and huge.
fn echo(s: &str) -> String {
    let mut end = s.len().min(80);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

macro_rules! string_newtype {
    ($ty:ident, $check:path) => {
        impl $ty {
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }
        impl TryFrom<String> for $ty {
            type Error = InvalidValue;
            fn try_from(s: String) -> Result<Self, InvalidValue> {
                $check(&s)?;
                Ok(Self(s))
            }
        }
        impl TryFrom<&str> for $ty {
            type Error = InvalidValue;
            fn try_from(s: &str) -> Result<Self, InvalidValue> {
                $check(s)?;
                Ok(Self(s.to_string()))
            }
        }
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl AsRef<str> for $ty {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
        impl<Context> Decode<Context> for $ty {
            fn decode<D: Decoder<Context = Context>>(decoder: &mut D) -> Result<Self, DecodeError> {
                let s = String::decode(decoder)?;
                Self::try_from(s).map_err(|e| DecodeError::OtherString(e.to_string()))
            }
        }
        bincode::impl_borrow_decode!($ty);
    };
}

/// A site: dot-separated labels of lowercase letters, digits and `-` (each 1–63 bytes, not
/// starting with `-`), at most 200 bytes. So `durhack` and `api.durhack.com` are site names, and
/// none is `.`, `..`, starts or ends with a dot, or holds `/`, NUL or anything else that could
/// make `<conf_dir>/<site>.conf` or a log file name leave its directory.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Encode)]
pub struct SiteName(String);

fn check_site_name(s: &str) -> Result<(), InvalidValue> {
    let bad = |why| Err(InvalidValue::SiteName(echo(s), why));
    if s.is_empty() {
        return bad("empty");
    }
    if s.len() > MAX_SITE_NAME_BYTES {
        return bad("longer than 200 bytes");
    }
    for label in s.split('.') {
        if label.is_empty() {
            return bad("empty label (a leading, trailing or doubled '.')");
        }
        if label.len() > 63 {
            return bad("label longer than 63 bytes");
        }
        if label.starts_with('-') {
            return bad("label starts with '-'");
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return bad("only a-z, 0-9, '-' and '.' between labels are allowed");
        }
    }
    Ok(())
}
string_newtype!(SiteName, check_site_name);

/// A host name: lowercase LDH labels of 1–63 bytes separated by dots, at most 253 bytes, no
/// wildcard, no trailing dot, no label starting or ending with `-`. IDNs must arrive as
/// punycode (`xn--…`), which is plain LDH.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Encode)]
pub struct Domain(String);

fn check_domain(s: &str) -> Result<(), InvalidValue> {
    let bad = |why| Err(InvalidValue::Domain(echo(s), why));
    if s.is_empty() {
        return bad("empty");
    }
    if s.len() > MAX_DOMAIN_BYTES {
        return bad("longer than 253 bytes");
    }
    if s.ends_with('.') {
        return bad("trailing dot");
    }
    for label in s.split('.') {
        if label.is_empty() {
            return bad("empty label");
        }
        if label.len() > 63 {
            return bad("label longer than 63 bytes");
        }
        if label == "*" || label.contains('*') {
            return bad("wildcards are not allowed");
        }
        if label.starts_with('-') || label.ends_with('-') {
            return bad("label starts or ends with '-'");
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return bad("only lowercase a-z, 0-9, '-' and '.' are allowed (IDNs as punycode)");
        }
    }
    Ok(())
}
string_newtype!(Domain, check_domain);

/// The nginx conf text for one site: UTF-8 (guaranteed by `String`), no NUL, at most 64 KiB.
/// Its content is checked by the helper's policy, not here.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Encode)]
pub struct SiteConfig(String);

fn check_site_config(s: &str) -> Result<(), InvalidValue> {
    if s.len() > MAX_CONFIG_BYTES {
        return Err(InvalidValue::SiteConfig("larger than 64 KiB"));
    }
    if s.contains('\0') {
        return Err(InvalidValue::SiteConfig("contains NUL"));
    }
    Ok(())
}
string_newtype!(SiteConfig, check_site_config);

/// Bounded human-readable text in a response (at most 4 KiB).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Default, Encode)]
pub struct Message(String);

fn check_message(s: &str) -> Result<(), InvalidValue> {
    if s.len() > MAX_MESSAGE_BYTES {
        return Err(InvalidValue::Message("longer than 4 KiB"));
    }
    Ok(())
}
string_newtype!(Message, check_message);

impl Message {
    /// The first 4 KiB of `s`, cut at a char boundary.
    pub fn truncated(s: &str) -> Message {
        let mut end = s.len().min(MAX_MESSAGE_BYTES);
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        Message(s[..end].to_string())
    }

    /// The last 4 KiB of `s`, cut at a char boundary: command failures explain themselves at
    /// the end of their output.
    pub fn truncated_tail(s: &str) -> Message {
        let mut start = s.len().saturating_sub(MAX_MESSAGE_BYTES);
        while !s.is_char_boundary(start) {
            start += 1;
        }
        Message(s[start..].to_string())
    }
}

/// 1–100 distinct domains.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Encode)]
pub struct Domains(Vec<Domain>);

impl Domains {
    pub fn as_slice(&self) -> &[Domain] {
        &self.0
    }
}

fn check_domains(v: &[Domain]) -> Result<(), InvalidValue> {
    if v.is_empty() {
        return Err(InvalidValue::Domains("empty"));
    }
    if v.len() > MAX_DOMAINS {
        return Err(InvalidValue::Domains("more than 100 domains"));
    }
    let mut seen: Vec<&Domain> = v.iter().collect();
    seen.sort();
    if seen.windows(2).any(|w| w[0] == w[1]) {
        return Err(InvalidValue::Domains("duplicate domain"));
    }
    Ok(())
}

impl TryFrom<Vec<Domain>> for Domains {
    type Error = InvalidValue;
    fn try_from(v: Vec<Domain>) -> Result<Self, InvalidValue> {
        check_domains(&v)?;
        Ok(Domains(v))
    }
}

impl<Context> Decode<Context> for Domains {
    fn decode<D: Decoder<Context = Context>>(decoder: &mut D) -> Result<Self, DecodeError> {
        // Read the count ourselves so a hostile count fails before any element is decoded.
        let len = u64::decode(decoder)?;
        if len == 0 || len > MAX_DOMAINS as u64 {
            return Err(DecodeError::OtherString(format!(
                "domain list has {len} entries; 1 to {MAX_DOMAINS} are allowed"
            )));
        }
        let mut v = Vec::with_capacity(len as usize);
        for _ in 0..len {
            v.push(Domain::decode(decoder)?);
        }
        Domains::try_from(v).map_err(|e| DecodeError::OtherString(e.to_string()))
    }
}
bincode::impl_borrow_decode!(Domains);
