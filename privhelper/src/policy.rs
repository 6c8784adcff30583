//! The root-owned allow-list: who may talk to the helper, where site confs go, which commands
//! run, and which sites and domains exist. Parsed from TOML, then validated into typed values.
//! Errors are plain strings: they are printed once, at startup or by `check`.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use protocol::{Domain, SiteName};
use serde::Deserialize;

pub const DEFAULT_POLICY_PATH: &str = "/etc/durhack-deployer/privhelper.toml";

type Env = BTreeMap<String, String>;

/// The policy file as written, then validated in place by [`Policy::parse`]; the fields after
/// `sites` are derived there.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    pub client_user: String,
    pub socket: PathBuf,
    pub conf_dir: PathBuf,
    test_command: Vec<String>,
    reload_command: Vec<String>,
    pub snippets_dir: PathBuf,
    pub allowed_roots: Vec<PathBuf>,
    pub log_dir: PathBuf,
    command_timeout_secs: Option<u64>,
    read_timeout_secs: Option<u64>,
    /// The `listen` argument lists a site may use, each joined by one space.
    #[serde(default = "default_listen")]
    pub listen: Vec<String>,
    #[serde(default = "default_pid_file")]
    pub nginx_pid_file: PathBuf,
    #[serde(default)]
    command_env: Env,
    pub certbot: Certbot,
    #[serde(rename = "sites", default)]
    site_table: BTreeMap<String, RawSite>,
    #[serde(skip)]
    pub sites: BTreeMap<SiteName, Site>,
    #[serde(skip)]
    pub client_uid: u32,
    #[serde(skip)]
    pub client_gid: u32,
    #[serde(skip)]
    pub test: Command,
    #[serde(skip)]
    pub reload: Command,
    #[serde(skip)]
    pub read_timeout: Duration,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Certbot {
    argv: Vec<String>,
    #[serde(default)]
    env: Env,
    #[serde(default = "default_live_dir")]
    pub live_dir: PathBuf,
    #[serde(default = "default_openssl")]
    pub openssl: PathBuf,
    renew_before_days: Option<u64>,
    timeout_secs: Option<u64>,
    max_runs_per_hour: Option<u64>,
    #[serde(skip)]
    pub command: Command,
    #[serde(skip)]
    pub renew_before: Duration,
    #[serde(skip)]
    pub max_runs: u32,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSite {
    domains: Vec<String>,
    #[serde(default)]
    proxy_ports: Vec<u16>,
    cert_name: Option<String>,
}

/// What a site may serve: its domains (each belongs to one site), the loopback ports its
/// `proxy_pass` may reach, and its certificate's lineage (`<live_dir>/<cert_name>/`, certbot's
/// `--cert-name`; the site's own name unless the policy keeps an older one), one site's alone.
#[derive(Debug)]
pub struct Site {
    pub domains: BTreeSet<Domain>,
    pub proxy_ports: Vec<u16>,
    pub cert_name: SiteName,
}

/// A command with a fixed argv and its environment (the helper's own is never inherited).
#[derive(Debug, Clone, Default)]
pub struct Command {
    pub argv: Vec<String>,
    pub env: Env,
    pub timeout: Duration,
}

fn default_listen() -> Vec<String> {
    ["80", "[::]:80", "443 ssl", "[::]:443 ssl"].map(String::from).into()
}
fn default_pid_file() -> PathBuf {
    "/run/nginx.pid".into()
}
fn default_live_dir() -> PathBuf {
    "/etc/letsencrypt/live".into()
}
fn default_openssl() -> PathBuf {
    "/usr/bin/openssl".into()
}

/// A value read from the policy, refused above `max` (a typo such as an extra digit would
/// otherwise overflow a deadline, or wait for ever).
fn bounded(what: &str, value: Option<u64>, default: u64, max: u64) -> Result<u64, String> {
    match value.unwrap_or(default) {
        0 => Err(format!("{what} must be at least 1")),
        v if v > max => Err(format!("{what} = {v} is over the maximum {max}")),
        v => Ok(v),
    }
}

/// An absolute path with no `.` or `..` component, so prefix checks on it mean what they say.
fn clean_abs(what: &str, p: &mut PathBuf) -> Result<(), String> {
    let dotted = p.components().any(|c| matches!(c, Component::ParentDir | Component::CurDir));
    if !p.is_absolute() || dotted {
        return Err(format!("{what} {} must be absolute, without . or ..", p.display()));
    }
    *p = p.components().collect();
    Ok(())
}

fn command(what: &str, argv: &[String], env: &Env, secs: u64) -> Result<Command, String> {
    if !argv.first().is_some_and(|prog| Path::new(prog).is_absolute()) {
        return Err(format!("{what} must be an argv starting with an absolute program path"));
    }
    let nul = argv.iter().chain(env.keys()).chain(env.values()).any(|a| a.contains('\0'));
    if nul || env.keys().any(|k| k.contains('=')) {
        return Err(format!("{what}: NUL in an argument or '=' in an env name"));
    }
    Ok(Command { argv: argv.to_vec(), env: env.clone(), timeout: Duration::from_secs(secs) })
}

impl Policy {
    pub fn parse(text: &str) -> Result<Policy, String> {
        let mut p: Policy = toml::from_str(text).map_err(|e| format!("invalid policy: {e}"))?;
        let user = nix::unistd::User::from_name(&p.client_user)
            .map_err(|e| format!("cannot look up user {}: {e}", p.client_user))?
            .ok_or_else(|| format!("client_user {} does not exist", p.client_user))?;
        (p.client_uid, p.client_gid) = (user.uid.as_raw(), user.gid.as_raw());
        let mut owner: BTreeMap<Domain, SiteName> = BTreeMap::new();
        for (name, site) in std::mem::take(&mut p.site_table) {
            let name = SiteName::try_from(name).map_err(|e| e.to_string())?;
            if site.domains.is_empty() {
                return Err(format!("site {name} has no domains"));
            }
            let mut domains = BTreeSet::new();
            for d in site.domains {
                let d = Domain::try_from(d).map_err(|e| format!("site {name}: {e}"))?;
                // One owner per domain, so "another site's server_name" is well defined.
                if let Some(other) = owner.insert(d.clone(), name.clone()) {
                    return Err(format!("domain {d} is listed for both {other} and {name}"));
                }
                domains.insert(d);
            }
            // Validated as a site name: a single directory under live_dir.
            let cert = site.cert_name.map_or(Ok(name.clone()), SiteName::try_from);
            let cert_name = cert.map_err(|e| format!("site {name}: cert_name: {e}"))?;
            if let Some(other) = p.sites.iter().find(|(_, s)| s.cert_name == cert_name) {
                return Err(format!("cert_name {cert_name} is used by {} and {name}", other.0));
            }
            p.sites.insert(name, Site { domains, proxy_ports: site.proxy_ports, cert_name });
        }
        p.allowed_roots.iter_mut().try_for_each(|root| clean_abs("allowed root", root))?;
        if p.allowed_roots.iter().any(|r| r == Path::new("/")) {
            return Err("allowed_roots must not contain /".into());
        }
        let bad = |l: &String| l.to_ascii_lowercase().contains("unix:") || l.contains("default");
        if p.listen.iter().any(bad) {
            return Err("listen forms may not name unix sockets or default servers".into());
        }
        let c = &mut p.certbot;
        for (what, path) in [
            ("socket", &mut p.socket),
            ("conf_dir", &mut p.conf_dir),
            ("snippets_dir", &mut p.snippets_dir),
            ("log_dir", &mut p.log_dir),
            ("nginx_pid_file", &mut p.nginx_pid_file),
            ("certbot.live_dir", &mut c.live_dir),
            ("certbot.openssl", &mut c.openssl),
        ] {
            clean_abs(what, path)?;
        }
        let secs = bounded("command_timeout_secs", p.command_timeout_secs, 60, 3600)?;
        p.test = command("test_command", &p.test_command, &p.command_env, secs)?;
        p.reload = command("reload_command", &p.reload_command, &p.command_env, secs)?;
        p.read_timeout =
            Duration::from_secs(bounded("read_timeout_secs", p.read_timeout_secs, 5, 60)?);
        let env: Env = p.command_env.clone().into_iter().chain(c.env.clone()).collect();
        let secs = bounded("certbot.timeout_secs", c.timeout_secs, 300, 3600)?;
        c.command = command("certbot.argv", &c.argv, &env, secs)?;
        let days = bounded("certbot.renew_before_days", c.renew_before_days, 30, 89)?;
        c.renew_before = Duration::from_secs(days * 86_400);
        c.max_runs = bounded("certbot.max_runs_per_hour", c.max_runs_per_hour, 3, 20)? as u32;
        Ok(p)
    }

    pub fn load(path: &Path) -> Result<Policy, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        Policy::parse(&text)
    }

    /// The checks that make the policy trustworthy: it, the snippets sites include and the conf
    /// dir, and every directory above them, must be root's alone (whoever may rename a parent
    /// may swap what is below).
    pub fn check_ownership(&self, policy_path: &Path) -> Result<(), String> {
        root_only_with_ancestors(policy_path)?;
        root_only_with_ancestors(&self.snippets_dir)?;
        // `nginx -t` (root) creates the site logs there, following links.
        root_only_with_ancestors(&self.log_dir)?;
        root_only_with_ancestors(&self.conf_dir)
    }

    /// The path of a site's conf: the only file the helper ever writes.
    pub fn conf_path(&self, site: &SiteName) -> PathBuf {
        self.conf_dir.join(format!("{site}.conf"))
    }
}

/// [`root_only`] for `path` and each of its ancestors (which must be absolute, as ours are).
pub fn root_only_with_ancestors(path: &Path) -> Result<(), String> {
    let path = std::path::absolute(path).map_err(|e| format!("{}: {e}", path.display()))?;
    root_only(&path, false)?;
    path.ancestors().skip(1).try_for_each(|a| root_only(a, true))
}

/// Owned by root, not a symlink, not writable by group or others; a sticky ancestor (`/tmp`)
/// is fine, since others cannot rename root's entries in it.
fn root_only(path: &Path, ancestor: bool) -> Result<(), String> {
    let meta = std::fs::symlink_metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let (p, uid, mode) = (path.display(), meta.uid(), meta.mode() & 0o7777);
    let writable = mode & 0o022 != 0 && !(ancestor && mode & 0o1000 != 0);
    if meta.file_type().is_symlink() || uid != 0 || writable {
        return Err(format!("{p}: writable by others, a symlink or not root's ({uid}, {mode:o})"));
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
proxy_ports = [3000]
{extra}"#
        )
    }

    #[test]
    fn parses_the_sample() {
        let p = Policy::parse(&sample("")).unwrap();
        assert_eq!(p.client_uid, 0);
        assert_eq!(p.sites.len(), 1);
        let durhack = &p.sites[&SiteName::try_from("durhack").unwrap()];
        assert_eq!(durhack.proxy_ports, [3000]);
        assert_eq!(durhack.domains.len(), 2);
    }

    #[test]
    fn the_example_policy_in_sudoers_is_valid() {
        let text = include_str!("../../sudoers/privhelper.toml");
        // The example's user exists only on a deployed machine.
        let text = text.replace("client_user = \"durhack-deployer\"", "client_user = \"root\"");
        let p = Policy::parse(&text).unwrap();
        assert_eq!(p.certbot.renew_before, Duration::from_secs(30 * 86_400));

        // The shipped policy and the shipped deployer config describe the same machine: every
        // site a deployment publishes is allowed, and every deployment path is an allowed root.
        let example: toml::Table =
            toml::from_str(include_str!("../../deploy/config.example.toml")).unwrap();
        let mut config_sites = Vec::new();
        for (name, d) in example["deployments"].as_table().unwrap() {
            let path = PathBuf::from(d["path"].as_str().unwrap());
            assert!(p.allowed_roots.contains(&path), "{name}: {path:?} not an allowed root");
            if let Some(sites) = d.get("sites").and_then(|s| s.as_table()) {
                config_sites.extend(sites.keys().cloned());
            }
        }
        config_sites.sort();
        let mut policy_sites: Vec<String> = p.sites.keys().map(|s| s.to_string()).collect();
        policy_sites.sort();
        assert_eq!(policy_sites, config_sites);
    }

    #[test]
    fn dotted_sites_and_certificate_names() {
        // Sites named after their domain (the Python deployer's names), one keeping an older
        // certificate lineage; by default the lineage is the site's own name.
        let p = Policy::parse(&sample(
            "[sites.\"api.durhack.com\"]\ndomains = [\"api.durhack.com\"]\n\
             [sites.\"auth.durhack.com\"]\ndomains = [\"auth.durhack.com\"]\ncert_name = \"auth-2024\"\n",
        ))
        .unwrap();
        let cert = |s: &str| p.sites[&SiteName::try_from(s).unwrap()].cert_name.to_string();
        assert_eq!(cert("api.durhack.com"), "api.durhack.com");
        assert_eq!(cert("auth.durhack.com"), "auth-2024");
        assert_eq!(cert("durhack"), "durhack");
        // A lineage is one directory under live_dir, and one site's alone.
        for cert_name in ["..", "../etc", "a/b", ".", "x.", "", "durhack"] {
            let text =
                sample(&format!("[sites.x]\ndomains = [\"x.com\"]\ncert_name = \"{cert_name}\"\n"));
            assert!(Policy::parse(&text).is_err(), "cert_name {cert_name:?} should be refused");
        }
        for site in ["..", ".x", "x..y", "a/b"] {
            let text = sample(&format!("[sites.\"{site}\"]\ndomains = [\"x.com\"]\n"));
            assert!(Policy::parse(&text).is_err(), "site {site:?} should be refused");
        }
    }

    #[test]
    fn refuses_bad_policies() {
        let top = |line: &str| sample("").replace("conf_dir =", &format!("{line}\nconf_dir ="));
        assert!(Policy::parse(&top("read_timeout_secs = 60")).is_ok());
        let cases = [
            sample("[sites.other]\ndomains = [\"durhack.com\"]\n"),
            sample("[sites.Bad]\ndomains = [\"a.com\"]\n"),
            sample("[sites.empty]\ndomains = []\n"),
            sample("[sites.wild]\ndomains = [\"*.a.com\"]\n"),
            sample("").replace("allowed_roots = [\"/srv/durhack\"]", "allowed_roots = [\"/\"]"),
            sample("")
                .replace("allowed_roots = [\"/srv/durhack\"]", "allowed_roots = [\"/srv/../etc\"]"),
            sample("").replace("\"/usr/sbin/nginx\", \"-t\"", "\"nginx\", \"-t\""),
            sample("").replace("client_user = \"root\"", "client_user = \"no-such-user-here\""),
            sample("").replace("[certbot]", "unknown_key = 1\n[certbot]"),
            sample("").replace("argv = [\"/usr/bin/certbot\"", "argv = [\"certbot\""),
            // Bounded values: a typo must not overflow a deadline.
            top("command_timeout_secs = 18446744073709551615"),
            top("read_timeout_secs = 0"),
            sample("").replace("[certbot]", "[certbot]\ntimeout_secs = 99999999"),
            sample("").replace("[certbot]", "[certbot]\nrenew_before_days = 400"),
            top("listen = [\"UNIX:/x\"]"),
            top("listen = [\"80 default_server\"]"),
        ];
        for text in cases {
            assert!(Policy::parse(&text).is_err(), "should be refused:\n{text}");
        }
    }
}
