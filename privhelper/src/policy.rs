//! The root-owned allow-list: who may talk to the helper, where site confs go, which commands
//! run, and which sites and domains exist. Parsed from TOML, then validated into typed values.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use protocol::{Domain, SiteName};
use serde::Deserialize;

pub const DEFAULT_POLICY_PATH: &str = "/etc/durhack-deployer/privhelper.toml";

/// A policy problem, reported before the helper serves anything.
#[derive(Debug)]
pub struct PolicyError(pub String);

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn perr<T>(msg: impl Into<String>) -> Result<T, PolicyError> {
    Err(PolicyError(msg.into()))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    client_user: String,
    socket: PathBuf,
    conf_dir: PathBuf,
    test_command: Vec<String>,
    reload_command: Vec<String>,
    snippets_dir: PathBuf,
    allowed_roots: Vec<PathBuf>,
    log_dir: PathBuf,
    #[serde(default = "default_command_timeout")]
    command_timeout_secs: u64,
    #[serde(default = "default_read_timeout")]
    read_timeout_secs: u64,
    #[serde(default)]
    command_env: BTreeMap<String, String>,
    certbot: RawCertbot,
    #[serde(default)]
    sites: BTreeMap<String, RawSite>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCertbot {
    argv: Vec<String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    #[serde(default = "default_live_dir")]
    live_dir: PathBuf,
    #[serde(default = "default_openssl")]
    openssl: PathBuf,
    #[serde(default = "default_renew_days")]
    renew_before_days: u64,
    #[serde(default = "default_certbot_timeout")]
    timeout_secs: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSite {
    domains: Vec<String>,
}

fn default_command_timeout() -> u64 {
    60
}
fn default_read_timeout() -> u64 {
    5
}
fn default_live_dir() -> PathBuf {
    PathBuf::from("/etc/letsencrypt/live")
}
fn default_openssl() -> PathBuf {
    PathBuf::from("/usr/bin/openssl")
}
fn default_renew_days() -> u64 {
    30
}
fn default_certbot_timeout() -> u64 {
    300
}

/// A command with a fixed argv and its environment (the helper's own is never inherited).
#[derive(Debug, Clone)]
pub struct Command {
    pub argv: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub timeout: Duration,
}

#[derive(Debug)]
pub struct Certbot {
    pub command: Command,
    pub live_dir: PathBuf,
    pub openssl: PathBuf,
    pub renew_before: Duration,
}

#[derive(Debug)]
pub struct Policy {
    pub client_user: String,
    pub client_uid: u32,
    pub client_gid: u32,
    pub socket: PathBuf,
    pub conf_dir: PathBuf,
    pub test: Command,
    pub reload: Command,
    pub snippets_dir: PathBuf,
    pub allowed_roots: Vec<PathBuf>,
    pub log_dir: PathBuf,
    pub read_timeout: Duration,
    pub certbot: Certbot,
    pub sites: BTreeMap<SiteName, BTreeSet<Domain>>,
}

/// An absolute path with no `.` or `..` component, so prefix checks on it mean what they say.
fn clean_abs(what: &str, p: &Path) -> Result<PathBuf, PolicyError> {
    if !p.is_absolute()
        || p.components()
            .any(|c| matches!(c, Component::ParentDir | Component::CurDir))
    {
        return perr(format!(
            "{what} {} must be an absolute path without . or ..",
            p.display()
        ));
    }
    Ok(p.components().collect())
}

fn command(
    what: &str,
    argv: Vec<String>,
    env: BTreeMap<String, String>,
    secs: u64,
) -> Result<Command, PolicyError> {
    match argv.first() {
        Some(prog) if Path::new(prog).is_absolute() => {}
        _ => {
            return perr(format!(
                "{what} must be a non-empty argv starting with an absolute program path"
            ));
        }
    }
    if argv
        .iter()
        .chain(env.keys())
        .chain(env.values())
        .any(|a| a.contains('\0'))
        || env.keys().any(|k| k.contains('='))
    {
        return perr(format!(
            "{what}: NUL in an argument, or '=' in an environment name"
        ));
    }
    if secs == 0 {
        return perr(format!("{what}: a timeout of 0 seconds"));
    }
    Ok(Command {
        argv,
        env,
        timeout: Duration::from_secs(secs),
    })
}

impl Policy {
    pub fn parse(text: &str) -> Result<Policy, PolicyError> {
        let raw: RawPolicy =
            toml::from_str(text).map_err(|e| PolicyError(format!("invalid policy: {e}")))?;
        let user = nix::unistd::User::from_name(&raw.client_user)
            .map_err(|e| PolicyError(format!("cannot look up user {}: {e}", raw.client_user)))?;
        let Some(user) = user else {
            return perr(format!("client_user {} does not exist", raw.client_user));
        };
        let mut sites = BTreeMap::new();
        let mut owner: BTreeMap<Domain, SiteName> = BTreeMap::new();
        for (name, site) in raw.sites {
            let name = SiteName::try_from(name).map_err(|e| PolicyError(e.to_string()))?;
            if site.domains.is_empty() {
                return perr(format!("site {name} has no domains"));
            }
            let mut domains = BTreeSet::new();
            for d in site.domains {
                let d =
                    Domain::try_from(d).map_err(|e| PolicyError(format!("site {name}: {e}")))?;
                if let Some(other) = owner.insert(d.clone(), name.clone()) {
                    return perr(format!("domain {d} is listed for both {other} and {name}"));
                }
                domains.insert(d);
            }
            sites.insert(name, domains);
        }
        let allowed_roots = raw
            .allowed_roots
            .iter()
            .map(|r| clean_abs("allowed root", r))
            .collect::<Result<Vec<_>, _>>()?;
        if allowed_roots.iter().any(|r| r == Path::new("/")) {
            return perr("allowed_roots must not contain /");
        }
        let mut certbot_env = raw.command_env.clone();
        certbot_env.extend(raw.certbot.env);
        Ok(Policy {
            client_user: raw.client_user,
            client_uid: user.uid.as_raw(),
            client_gid: user.gid.as_raw(),
            socket: clean_abs("socket", &raw.socket)?,
            conf_dir: clean_abs("conf_dir", &raw.conf_dir)?,
            test: command(
                "test_command",
                raw.test_command,
                raw.command_env.clone(),
                raw.command_timeout_secs,
            )?,
            reload: command(
                "reload_command",
                raw.reload_command,
                raw.command_env,
                raw.command_timeout_secs,
            )?,
            snippets_dir: clean_abs("snippets_dir", &raw.snippets_dir)?,
            allowed_roots,
            log_dir: clean_abs("log_dir", &raw.log_dir)?,
            read_timeout: Duration::from_secs(raw.read_timeout_secs.max(1)),
            certbot: Certbot {
                command: command(
                    "certbot.argv",
                    raw.certbot.argv,
                    certbot_env,
                    raw.certbot.timeout_secs,
                )?,
                live_dir: clean_abs("certbot.live_dir", &raw.certbot.live_dir)?,
                openssl: clean_abs("certbot.openssl", &raw.certbot.openssl)?,
                renew_before: Duration::from_secs(
                    raw.certbot.renew_before_days.saturating_mul(86_400),
                ),
            },
            sites,
        })
    }

    pub fn load(path: &Path) -> Result<Policy, PolicyError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| PolicyError(format!("cannot read {}: {e}", path.display())))?;
        Policy::parse(&text)
    }

    /// The checks that make the policy trustworthy: it and the conf dir must be root's alone.
    pub fn check_ownership(&self, policy_path: &Path) -> Result<(), PolicyError> {
        root_only(policy_path)?;
        root_only(&self.conf_dir)
    }

    /// The path of a site's conf: the only file the helper ever writes.
    pub fn conf_path(&self, site: &SiteName) -> PathBuf {
        self.conf_dir.join(format!("{site}.conf"))
    }

    /// What `check` prints: everything this policy allows.
    pub fn describe(&self) -> String {
        let mut out = String::new();
        let argv = |c: &Command| c.argv.join(" ");
        out += &format!(
            "client user: {} (uid {}, gid {})\n",
            self.client_user, self.client_uid, self.client_gid
        );
        out += &format!("socket: {}\n", self.socket.display());
        out += &format!("site confs: {}/<site>.conf\n", self.conf_dir.display());
        out += &format!(
            "test: {}\nreload: {}\n",
            argv(&self.test),
            argv(&self.reload)
        );
        out += &format!("includes from: {}\n", self.snippets_dir.display());
        for r in &self.allowed_roots {
            out += &format!("allowed root: {}\n", r.display());
        }
        out += &format!("logs under: {}\n", self.log_dir.display());
        out += &format!(
            "certbot: {} --cert-name <site> -d <domain>...\n",
            argv(&self.certbot.command)
        );
        out += &format!(
            "certificates: {}/<site>/\n",
            self.certbot.live_dir.display()
        );
        for (site, domains) in &self.sites {
            let ds: Vec<&str> = domains.iter().map(|d| d.as_str()).collect();
            out += &format!("site {site}: {}\n", ds.join(" "));
        }
        out
    }
}

fn root_only(path: &Path) -> Result<(), PolicyError> {
    let meta = std::fs::symlink_metadata(path)
        .map_err(|e| PolicyError(format!("cannot stat {}: {e}", path.display())))?;
    if meta.file_type().is_symlink() {
        return perr(format!("{} is a symlink", path.display()));
    }
    if meta.uid() != 0 {
        return perr(format!(
            "{} is owned by uid {}, not root",
            path.display(),
            meta.uid()
        ));
    }
    if meta.mode() & 0o022 != 0 {
        return perr(format!(
            "{} is writable by group or others (mode {:o})",
            path.display(),
            meta.mode() & 0o7777
        ));
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub fn sample(extra: &str) -> String {
        format!(
            r#"
client_user = "root"
socket = "/run/durhack-privhelper/privhelper.sock"
conf_dir = "/etc/nginx/conf.d"
test_command = ["/usr/sbin/nginx", "-t", "-q"]
reload_command = ["/usr/sbin/nginx", "-s", "reload"]
snippets_dir = "/etc/nginx/snippets"
allowed_roots = ["/srv/durhack"]
log_dir = "/var/log/nginx"
[certbot]
argv = ["/usr/bin/certbot", "certonly", "--non-interactive"]
[sites.durhack]
domains = ["durhack.com", "www.durhack.com"]
{extra}"#
        )
    }

    #[test]
    fn parses_the_sample() {
        let p = Policy::parse(&sample("")).unwrap();
        assert_eq!(p.client_uid, 0);
        assert_eq!(p.sites.len(), 1);
        assert!(
            p.describe()
                .contains("site durhack: durhack.com www.durhack.com")
        );
    }

    #[test]
    fn refuses_bad_policies() {
        let cases = [
            sample("[sites.other]\ndomains = [\"durhack.com\"]\n"),
            sample("[sites.Bad]\ndomains = [\"a.com\"]\n"),
            sample("[sites.empty]\ndomains = []\n"),
            sample("[sites.wild]\ndomains = [\"*.a.com\"]\n"),
            sample("").replace(
                "allowed_roots = [\"/srv/durhack\"]",
                "allowed_roots = [\"/\"]",
            ),
            sample("").replace(
                "allowed_roots = [\"/srv/durhack\"]",
                "allowed_roots = [\"/srv/../etc\"]",
            ),
            sample("").replace("\"/usr/sbin/nginx\", \"-t\"", "\"nginx\", \"-t\""),
            sample("").replace(
                "client_user = \"root\"",
                "client_user = \"no-such-user-here\"",
            ),
            sample("").replace("[certbot]", "unknown_key = 1\n[certbot]"),
            sample("").replace("argv = [\"/usr/bin/certbot\"", "argv = [\"certbot\""),
        ];
        for text in cases {
            assert!(Policy::parse(&text).is_err(), "should be refused:\n{text}");
        }
    }
}
