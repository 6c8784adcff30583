//! What each verb does once the peer has been accepted. The only file ever written or removed
//! is `<conf_dir>/<site>.conf` (plus its temporary sibling during an atomic write).

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use nix::fcntl::OFlag;
use protocol::{
    Domains, ErrorCode, Message, Outcome, PROTOCOL_VERSION, Request, Response, SiteConfig, SiteName,
};

use crate::checker;
use crate::command::{self, Failure};
use crate::policy::{Command, Policy};

/// What the helper remembers between requests: when certbot last ran for each site.
#[derive(Debug, Default)]
pub struct State {
    certbot_runs: BTreeMap<SiteName, Vec<Instant>>,
}

pub fn handle(policy: &Policy, state: &mut State, request: &Request) -> Response {
    match request {
        Request::Hello => Response::Hello { version: PROTOCOL_VERSION },
        Request::WriteSite { site, config } => write_site(policy, site, config),
        Request::RemoveSite { site } => replace_site(policy, site, None),
        Request::ReloadNginx => reload(policy),
        Request::IssueCertificate { site, domains } => issue(policy, state, site, domains),
    }
}

fn not_in_policy(site: &SiteName) -> Response {
    Response::error(ErrorCode::NotAllowed, format!("site {site} is not in the policy"))
}

fn internal(what: &str, path: &Path, e: io::Error) -> Response {
    Response::error(ErrorCode::Internal, format!("{what} {}: {e}", path.display()))
}

/// A failed command's answer: its output's tail, after `note`.
fn failed(f: Failure, code: ErrorCode, note: &str) -> Response {
    let code = if f.timed_out { ErrorCode::Timeout } else { code };
    Response::Error { code, detail: Message::truncated_tail(&format!("{note}{}", f.output)) }
}

/// Reads the current conf without following a symlink planted in its place.
fn read_current(path: &Path) -> io::Result<Option<Vec<u8>>> {
    let mut buf = Vec::new();
    match OpenOptions::new().read(true).custom_flags(OFlag::O_NOFOLLOW.bits()).open(path) {
        // Bounded: what we write is well under 1 MiB; anything bigger was not ours.
        Ok(f) => f.take(1024 * 1024).read_to_end(&mut buf).map(|_| Some(buf)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Makes `target` hold `content` (or not exist, for `None`) atomically: exclusive create of a
/// temporary sibling (never following a link), fsync, rename over the target; then fsync the
/// directory.
fn put(target: &Path, content: Option<&[u8]>) -> io::Result<()> {
    match content {
        Some(content) => {
            // `<site>.conf.tmp-<pid>`: not matched by an `include conf.d/*.conf` meanwhile.
            let tmp = target.with_extension(format!("conf.tmp-{}", std::process::id()));
            // A leftover from a crash is ours to clean up (the directory is root's alone).
            let _ = fs::remove_file(&tmp);
            let flags = (OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC).bits();
            let mut options = OpenOptions::new();
            options.write(true).create_new(true).mode(0o644).custom_flags(flags);
            let result = options.open(&tmp).and_then(|mut f| {
                f.write_all(content)?;
                f.sync_all()?;
                fs::rename(&tmp, target)
            });
            if result.is_err() {
                let _ = fs::remove_file(&tmp);
            }
            result?
        }
        None => match fs::remove_file(target) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        },
    }
    File::open(target.parent().unwrap_or(Path::new("/")))?.sync_all()
}

/// WriteSite (`Some`) and RemoveSite (`None`): put the new state in place, then `nginx -t`,
/// and on failure put the previous state back.
fn replace_site(policy: &Policy, site: &SiteName, new: Option<&[u8]>) -> Response {
    if !policy.sites.contains_key(site) {
        return not_in_policy(site);
    }
    let target = policy.conf_path(site);
    let shown = target.display();
    let previous = match read_current(&target) {
        Ok(p) => p,
        Err(e) => return internal("cannot read", &target, e),
    };
    if previous.as_deref() == new {
        let (outcome, what) = match new {
            Some(_) => (Outcome::SiteUnchanged, "already has this content"),
            None => (Outcome::SiteAbsent, "does not exist"),
        };
        return Response::done(outcome, format!("{shown} {what}"));
    }
    if let Err(e) = put(&target, new) {
        return internal("cannot change", &target, e);
    }
    if let Err(f) = command::run(&policy.test, &[]) {
        let note = match put(&target, previous.as_deref()) {
            Ok(()) => "the previous state was restored\n".to_string(),
            Err(e) => format!("RESTORING THE PREVIOUS STATE FAILED: {e}\n"),
        };
        return failed(f, ErrorCode::NginxTestFailed, &note);
    }
    match new {
        Some(_) => Response::done(Outcome::SiteWritten, format!("wrote {shown}")),
        None => Response::done(Outcome::SiteRemoved, format!("removed {shown}")),
    }
}

fn write_site(policy: &Policy, site: &SiteName, config: &SiteConfig) -> Response {
    // Only the checker's rendering is written: never a byte of the client's text.
    match checker::check(policy, site, config.as_str()) {
        Ok(written) => replace_site(policy, site, Some(written.as_bytes())),
        Err(_) if !policy.sites.contains_key(site) => not_in_policy(site),
        Err(why) => Response::error(ErrorCode::ConfRefused, why),
    }
}

/// `nginx -t`, the reload command, then proof that nginx applied it: a master that cannot apply
/// a configuration (a port it cannot bind, say) keeps its old workers and says so only in its
/// error log, so a reload is done only once the master has started a new child.
fn reload(policy: &Policy) -> Response {
    if let Err(f) = command::run(&policy.test, &[]) {
        return failed(f, ErrorCode::NginxTestFailed, "not reloading: ");
    }
    let master = match fs::read_to_string(&policy.nginx_pid_file) {
        Ok(pid) => pid.trim().to_string(),
        Err(e) => return internal("cannot read", &policy.nginx_pid_file, e),
    };
    let children_file = format!("/proc/{master}/task/{master}/children");
    let children = || -> BTreeSet<String> {
        let text = fs::read_to_string(&children_file).unwrap_or_default();
        text.split_whitespace().map(String::from).collect()
    };
    let before = children();
    let out = match command::run(&policy.reload, &[]) {
        Ok(out) => out,
        Err(f) => return failed(f, ErrorCode::CommandFailed, ""),
    };
    // Done once a new worker runs and no old one still accepts (it exited, or its title says
    // it is shutting down: nginx sets that before closing its listening sockets), so the next
    // request is served by the new configuration; a long request may keep an old one to 10 s.
    let (deadline, mut applied) = (Instant::now() + Duration::from_secs(10), false);
    let accepting = |pid: &String| {
        !fs::read_to_string(format!("/proc/{pid}/cmdline"))
            .is_ok_and(|c| c.contains("shutting down"))
    };
    while Instant::now() < deadline {
        let now = children();
        applied |= !now.is_subset(&before);
        if applied && !now.intersection(&before).any(accepting) {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let why = format!(
        "nginx (pid {master}) did not apply the new configuration: no new worker within 10 s; it keeps the old one (its error log says why, often a port it cannot bind)\n{out}"
    );
    match applied {
        true => Response::done(Outcome::Reloaded, out),
        false => Response::error(ErrorCode::CommandFailed, why),
    }
}

fn issue(policy: &Policy, state: &mut State, site: &SiteName, domains: &Domains) -> Response {
    let Some(allowed) = policy.sites.get(site) else {
        return not_in_policy(site);
    };
    if let Some(d) = domains.as_slice().iter().find(|d| !allowed.domains.contains(*d)) {
        let why = format!("domain {d} is not one of site {site}'s policy domains");
        return Response::error(ErrorCode::NotAllowed, why);
    }
    let cert = policy.certbot.live_dir.join(allowed.cert_name.as_str()).join("cert.pem");
    // Exactly these names: a certificate for more or fewer would be replaced by certbot, so
    // alternating two sets must not pass for "still valid" either (rate limits are below).
    let names: BTreeSet<String> = valid_certificate_names(policy, &cert).into_iter().collect();
    let wanted: BTreeSet<String> = domains.as_slice().iter().map(|d| d.to_string()).collect();
    if names == wanted {
        let detail = format!("{} has exactly these domains", cert.display());
        return Response::done(Outcome::CertificateStillValid, detail);
    }
    // Never drop a name from a valid certificate (alternating sets would shrink the live lineage,
    // break what else uses it, and burn Let's Encrypt's limits): a smaller set waits for renewal.
    if let Some(kept) = names.iter().find(|n| !wanted.contains(*n)) {
        let why =
            format!("{kept} is on the valid certificate: request it too, or wait for renewal");
        return Response::error(ErrorCode::NotAllowed, why);
    }
    // certbot runs this hour, failed ones included. With the two rules above, a site gets a
    // new certificate only for a set that grows, or once the old one nears its end.
    let runs = state.certbot_runs.entry(site.clone()).or_default();
    runs.retain(|t| t.elapsed() < Duration::from_secs(3600));
    let max = policy.certbot.max_runs;
    if runs.len() >= max as usize {
        let why = format!("certbot ran {max} times for site {site} this hour (max_runs_per_hour)");
        return Response::error(ErrorCode::NotAllowed, why);
    }
    runs.push(Instant::now());
    let mut extra = vec!["--cert-name".to_string(), allowed.cert_name.to_string()];
    extra.extend(domains.as_slice().iter().flat_map(|d| ["-d".to_string(), d.to_string()]));
    match command::run(&policy.certbot.command, &extra) {
        Ok(out) => Response::done(Outcome::CertificateIssued, out),
        Err(f) => failed(f, ErrorCode::CommandFailed, ""),
    }
}

/// The DNS names of the certificate at `cert` if it exists and does not expire within the
/// policy's renewal window, else nothing. Asks openssl (fixed argv, cleared environment) rather
/// than parsing X.509 here.
fn valid_certificate_names(policy: &Policy, cert: &Path) -> Vec<String> {
    // No certificate: openssl fails, and the answer is no names.
    let window = policy.certbot.renew_before.as_secs().to_string();
    let openssl = policy.certbot.openssl.display().to_string();
    let argv = [&*openssl, "x509", "-noout", "-checkend", &window, "-ext", "subjectAltName", "-in"];
    let argv = argv.map(String::from).into();
    let cmd = Command { argv, env: Default::default(), timeout: Duration::from_secs(30) };
    let out = command::run(&cmd, &[cert.display().to_string()]).unwrap_or_default();
    let names = out.split([',', '\n']).filter_map(|part| part.trim().strip_prefix("DNS:"));
    names.map(str::to_string).collect()
}
