//! What each verb does once the peer has been accepted. The only file ever written or removed
//! is `<conf_dir>/<site>.conf` (plus its temporary sibling during an atomic write).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::Duration;

use nix::fcntl::OFlag;
use protocol::{
    Domains, ErrorCode, Message, Outcome, PROTOCOL_VERSION, Request, Response, SiteConfig, SiteName,
};

use crate::checker;
use crate::command::{self, Failure};
use crate::policy::Policy;

pub fn handle(policy: &Policy, request: &Request) -> Response {
    match request {
        Request::Hello => Response::Hello {
            version: PROTOCOL_VERSION,
        },
        Request::WriteSite { site, config } => write_site(policy, site, config),
        Request::RemoveSite { site } => remove_site(policy, site),
        Request::ReloadNginx => reload(policy),
        Request::IssueCertificate { site, domains } => issue(policy, site, domains),
    }
}

fn not_in_policy(site: &SiteName) -> Response {
    Response::error(
        ErrorCode::NotAllowed,
        format!("site {site} is not in the policy"),
    )
}

fn internal(what: &str, path: &Path, e: io::Error) -> Response {
    Response::error(
        ErrorCode::Internal,
        format!("{what} {}: {e}", path.display()),
    )
}

/// A failed command's answer: its output's tail, after `note`.
fn failed(f: Failure, code: ErrorCode, note: &str) -> Response {
    let code = if f.timed_out {
        ErrorCode::Timeout
    } else {
        code
    };
    Response::Error {
        code,
        detail: Message::truncated_tail(&format!("{note}{}", f.output)),
    }
}

/// Reads the current conf without following a symlink planted in its place.
fn read_current(path: &Path) -> io::Result<Option<Vec<u8>>> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(OFlag::O_NOFOLLOW.bits())
        .open(path);
    match file {
        Ok(f) => {
            let mut buf = Vec::new();
            // Bounded: a conf we wrote is at most 64 KiB; anything bigger was not ours.
            f.take(1024 * 1024).read_to_end(&mut buf)?;
            Ok(Some(buf))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Writes `content` to `target` atomically: exclusive create of a temporary sibling (never
/// following a link), fsync, rename over the target, fsync the directory.
fn write_atomic(target: &Path, content: &[u8]) -> io::Result<()> {
    // `<site>.conf.tmp-<pid>`: not matched by an `include conf.d/*.conf` meanwhile.
    let tmp = target.with_extension(format!("conf.tmp-{}", std::process::id()));
    // A leftover from a crash is ours to clean up (the directory is root's alone).
    let _ = fs::remove_file(&tmp);
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .custom_flags((OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC).bits())
            .open(&tmp)?;
        f.write_all(content)?;
        f.sync_all()?;
        fs::rename(&tmp, target)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result?;
    sync_dir(target)
}

fn sync_dir(target: &Path) -> io::Result<()> {
    match target.parent() {
        Some(dir) => File::open(dir)?.sync_all(),
        None => Ok(()),
    }
}

/// Puts back what was there before: the old content, or nothing.
fn restore(target: &Path, previous: Option<&[u8]>) -> io::Result<()> {
    match previous {
        Some(old) => write_atomic(target, old),
        None => match fs::remove_file(target) {
            Ok(()) => sync_dir(target),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        },
    }
}

/// Runs nginx -t; on failure restores `previous` and answers with nginx's message.
fn test_or_restore(
    policy: &Policy,
    target: &Path,
    previous: Option<&[u8]>,
) -> Result<(), Response> {
    let Err(f) = command::run(&policy.test, &[]) else {
        return Ok(());
    };
    match restore(target, previous) {
        Ok(()) => Err(failed(
            f,
            ErrorCode::NginxTestFailed,
            "the previous state was restored\n",
        )),
        Err(e) => {
            let note = format!("RESTORING THE PREVIOUS STATE FAILED: {e}\n");
            Err(failed(f, ErrorCode::NginxTestFailed, &note))
        }
    }
}

fn write_site(policy: &Policy, site: &SiteName, config: &SiteConfig) -> Response {
    if !policy.sites.contains_key(site) {
        return not_in_policy(site);
    }
    if let Err(why) = checker::check(policy, site, config.as_str()) {
        return Response::error(ErrorCode::ConfRefused, why);
    }
    let target = policy.conf_path(site);
    let previous = match read_current(&target) {
        Ok(p) => p,
        Err(e) => return internal("cannot read", &target, e),
    };
    if previous.as_deref() == Some(config.as_str().as_bytes()) {
        return Response::done(
            Outcome::SiteUnchanged,
            format!("{} already has this content", target.display()),
        );
    }
    if let Err(e) = write_atomic(&target, config.as_str().as_bytes()) {
        return internal("cannot write", &target, e);
    }
    match test_or_restore(policy, &target, previous.as_deref()) {
        Ok(()) => Response::done(Outcome::SiteWritten, format!("wrote {}", target.display())),
        Err(response) => response,
    }
}

fn remove_site(policy: &Policy, site: &SiteName) -> Response {
    if !policy.sites.contains_key(site) {
        return not_in_policy(site);
    }
    let target = policy.conf_path(site);
    let previous = match read_current(&target) {
        Ok(Some(p)) => p,
        Ok(None) => {
            return Response::done(
                Outcome::SiteAbsent,
                format!("{} does not exist", target.display()),
            );
        }
        Err(e) => return internal("cannot read", &target, e),
    };
    if let Err(e) = fs::remove_file(&target).and_then(|()| sync_dir(&target)) {
        return internal("cannot remove", &target, e);
    }
    match test_or_restore(policy, &target, Some(&previous)) {
        Ok(()) => Response::done(
            Outcome::SiteRemoved,
            format!("removed {}", target.display()),
        ),
        Err(response) => response,
    }
}

fn reload(policy: &Policy) -> Response {
    if let Err(f) = command::run(&policy.test, &[]) {
        return failed(f, ErrorCode::NginxTestFailed, "not reloading: ");
    }
    match command::run(&policy.reload, &[]) {
        Ok(out) => Response::done(Outcome::Reloaded, out),
        Err(f) => failed(f, ErrorCode::CommandFailed, ""),
    }
}

fn issue(policy: &Policy, site: &SiteName, domains: &Domains) -> Response {
    let Some(allowed) = policy.sites.get(site) else {
        return not_in_policy(site);
    };
    if let Some(d) = domains.as_slice().iter().find(|d| !allowed.contains(*d)) {
        return Response::error(
            ErrorCode::NotAllowed,
            format!("domain {d} is not one of site {site}'s policy domains"),
        );
    }
    let cert = policy.certbot.live_dir.join(site.as_str()).join("cert.pem");
    let names = valid_certificate_names(policy, &cert);
    if domains
        .as_slice()
        .iter()
        .all(|d| names.iter().any(|n| n == d.as_str()))
    {
        let detail = format!("{} covers these domains", cert.display());
        return Response::done(Outcome::CertificateStillValid, detail);
    }
    let mut extra = vec!["--cert-name".to_string(), site.to_string()];
    for d in domains.as_slice() {
        extra.push("-d".into());
        extra.push(d.to_string());
    }
    match command::run(&policy.certbot.command, &extra) {
        Ok(out) => Response::Done {
            outcome: Outcome::CertificateIssued,
            detail: Message::truncated_tail(&out),
        },
        Err(f) => failed(f, ErrorCode::CommandFailed, ""),
    }
}

/// The DNS names of the certificate at `cert` if it exists and does not expire within the
/// policy's renewal window, else nothing. Asks openssl (fixed argv, cleared environment) rather
/// than parsing X.509 here.
fn valid_certificate_names(policy: &Policy, cert: &Path) -> Vec<String> {
    if !cert.exists() {
        return Vec::new();
    }
    let window = policy.certbot.renew_before.as_secs().to_string();
    let argv = [
        &*policy.certbot.openssl.to_string_lossy(),
        "x509",
        "-noout",
        "-checkend",
        &window,
    ];
    let openssl = crate::policy::Command {
        argv: argv
            .into_iter()
            .chain(["-ext", "subjectAltName", "-in"])
            .map(String::from)
            .collect(),
        env: Default::default(),
        timeout: Duration::from_secs(30),
    };
    let out = command::run(&openssl, &[cert.display().to_string()]).unwrap_or_default();
    let names = out
        .split([',', '\n'])
        .filter_map(|part| part.trim().strip_prefix("DNS:"));
    names.map(str::to_string).collect()
}
