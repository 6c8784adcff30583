//! The deployer's TOML configuration: parsing, defaults and validation.
//!
//! Every error names the key it is about, so `durhack-deployer check` can tell an operator exactly
//! what to fix. Secrets are read here once and kept in [`Secret`], whose `Debug` never shows them.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::Deserialize;

pub const DEFAULT_CONFIG_PATH: &str = "/etc/durhack-deployer/config.toml";
pub const SECRET_ENV: &str = "DURHACK_DEPLOYER_WEBHOOK_SECRET";
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(20 * 60);

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "no configuration at {path}: pass --config PATH (or set DURHACK_DEPLOYER_CONFIG), or try \
         `durhack-deployer quickstart` for a local demo"
    )]
    NotFound { path: PathBuf },
    // `error`, not `source`: the message says it, and error chains must not say it twice.
    #[error("cannot read {path}: {error}")]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{key}: {reason}")]
    Invalid { key: String, reason: String },
}

fn invalid(key: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        reason: reason.into(),
    }
}

/// The whole configuration after validation, with secrets loaded.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub state_dir: PathBuf,
    /// `None` means the embedded SQLite ledger at `state_dir/ledger.sqlite3`.
    pub database_url: Option<String>,
    /// `None` means local (flock) locks.
    pub redis_url: Option<String>,
    pub helper_socket: PathBuf,
    pub public_url: Option<String>,
    /// How long a Redis lock lives without renewal. It is renewed every third of this and
    /// counted as lost after half of it without a successful renewal.
    pub lock_ttl: Duration,
    pub github: GithubConfig,
    pub deployments: BTreeMap<String, Deployment>,
    /// How often the remote branch heads are compared with what is deployed (and, with a
    /// token, failed deliveries are redelivered); `None` (`reconcile_interval = "0"`) disables it.
    pub reconcile_interval: Option<Duration>,
    /// The file this configuration was read from, made absolute: the build sandbox hides it.
    pub config_file: PathBuf,
}

#[derive(Debug, Clone)]
pub struct GithubConfig {
    pub webhook_secret: Secret,
    /// Enables commit statuses when set.
    pub token: Option<Secret>,
    pub api_url: String,
    /// Empty means every source is allowed.
    pub allowed_networks: Vec<IpNetwork>,
    pub trusted_proxy_hops: usize,
    /// Where the secrets were read from (absolute), for the build sandbox to hide.
    pub webhook_secret_file: Option<PathBuf>,
    pub token_file: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct Deployment {
    pub name: String,
    /// `owner/name`, compared with the push payload's `repository.full_name`.
    pub repository: String,
    pub branch: String,
    pub path: PathBuf,
    pub enabled: bool,
    pub remote: String,
    pub commands: Vec<CommandSpec>,
    pub env: BTreeMap<String, String>,
    pub timeout: Duration,
    /// nginx site name -> conf file path relative to the repository root.
    pub sites: BTreeMap<String, PathBuf>,
    /// A deploy key for an ssh remote: git (and only git) runs with `GIT_SSH_COMMAND` naming it.
    pub ssh_key_file: Option<PathBuf>,
    /// Where runs check out and build: in `path` itself, or in a fresh release directory.
    pub layout: Layout,
    /// Commands run once the new code is live (after the switch in the releases layout, after
    /// `commands` in place), in `path/current` or `path`.
    pub restart: Vec<CommandSpec>,
    /// Paths under `path/shared` linked into every release (releases layout).
    pub shared: Vec<PathBuf>,
    /// Releases kept after a successful switch (releases layout); at least 2.
    pub keep_releases: usize,
    /// The repository webhook's id, for redelivery; `None` means the `X-GitHub-Hook-ID` of the
    /// repository's latest received delivery.
    pub hook_id: Option<u64>,
    /// Run the commands inside the build sandbox (see `worker::sandbox`); on unless set false.
    pub sandbox: bool,
    /// Variables of the daemon's own environment passed on to the commands, by name.
    pub pass_env: Vec<String>,
    /// Paths (Unix sockets or their directories, e.g. PM2's `$PM2_HOME`) bound read-write
    /// into the sandbox even where it would otherwise hide them.
    pub allow_sockets: Vec<PathBuf>,
    /// The commands' `HOME` (caches, pnpm's store); `state_dir/homes/<name>` when unset.
    pub home: Option<PathBuf>,
    /// The deployer's own repository: its commands may ask the daemon to restart (exit 75) by
    /// touching `$DEPLOY_RESTART_FILE`. Off by default, so no other build can restart it.
    pub self_update: bool,
}

/// How a deployment's code is laid out under its `path`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Layout {
    /// One working tree at `path`, checked out and built where it is served from.
    #[default]
    InPlace,
    /// `path/releases/<run>` per run, built there; `path/current` is switched to it atomically.
    Releases,
}

pub const DEFAULT_KEEP_RELEASES: usize = 5;
const MAX_KEEP_RELEASES: usize = 100;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandSpec {
    pub argv: Vec<String>,
    pub timeout: Option<Duration>,
}

/// A secret string whose `Debug` and `Display` are redacted.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// An IPv4 or IPv6 network in CIDR notation (`140.82.112.0/20`, `2a0a:a440::/29`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNetwork {
    addr: IpAddr,
    prefix: u8,
}

impl IpNetwork {
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match (self.addr, ip) {
            (IpAddr::V4(_), IpAddr::V6(v6)) => match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => return false,
            },
            _ => ip,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                prefix_matches(&net.octets(), &ip.octets(), self.prefix)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                prefix_matches(&net.octets(), &ip.octets(), self.prefix)
            }
            _ => false,
        }
    }
}

fn prefix_matches(net: &[u8], ip: &[u8], prefix: u8) -> bool {
    let full = usize::from(prefix / 8);
    let rest = prefix % 8;
    if net[..full] != ip[..full] {
        return false;
    }
    if rest == 0 {
        return true;
    }
    let mask = 0xffu8 << (8 - rest);
    net[full] & mask == ip[full] & mask
}

impl FromStr for IpNetwork {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("`{s}` is not an IP network"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("`{s}` has a prefix length outside 0..={max}"))?,
            None => max,
        };
        Ok(Self { addr, prefix })
    }
}

/// The longest timeout `check` accepts: a week. Longer ones cannot be meant, and the largest
/// values would overflow the clock.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(7 * 86400);

/// The default `lock_ttl`, and the bounds on it.
pub const DEFAULT_LOCK_TTL: Duration = Duration::from_secs(30);
const MIN_LOCK_TTL: Duration = Duration::from_secs(3);
const MAX_LOCK_TTL: Duration = Duration::from_secs(600);

/// The default `reconcile_interval`.
pub const DEFAULT_RECONCILE_INTERVAL: Duration = Duration::from_secs(5 * 60);

/// [`parse_duration`], refusing anything longer than [`MAX_TIMEOUT`].
pub fn parse_timeout(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d > MAX_TIMEOUT {
        return Err(format!("`{}` is longer than the maximum of 7d", s.trim()));
    }
    Ok(d)
}

/// Parses `90s`, `20m`, `1h30m`, `2h` or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if s.is_empty() {
        return Err("empty duration".into());
    }
    if let Ok(secs) = s.parse::<u64>() {
        if secs == 0 {
            return Err(format!("`{s}` must be longer than zero"));
        }
        return Ok(Duration::from_secs(secs));
    }
    let mut total: u64 = 0;
    let mut digits = String::new();
    for c in s.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86400,
            _ => return Err(format!("`{s}`: unknown unit `{c}` (use s, m, h or d)")),
        };
        let n: u64 = digits
            .parse()
            .map_err(|_| format!("`{s}`: expected a number before `{c}`"))?;
        digits.clear();
        total = n
            .checked_mul(unit)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(|| format!("`{s}` is too long"))?;
    }
    if !digits.is_empty() {
        return Err(format!("`{s}`: trailing number without a unit"));
    }
    if total == 0 {
        return Err(format!("`{s}` must be longer than zero"));
    }
    Ok(Duration::from_secs(total))
}

// ---- raw, as written in the file ----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    listen: Option<String>,
    state_dir: Option<PathBuf>,
    database_url: Option<String>,
    redis_url: Option<String>,
    helper_socket: Option<PathBuf>,
    public_url: Option<String>,
    lock_ttl: Option<String>,
    github: Option<RawGithub>,
    #[serde(default)]
    deployments: BTreeMap<String, RawDeployment>,
    reconcile_interval: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGithub {
    webhook_secret_file: Option<PathBuf>,
    token_file: Option<PathBuf>,
    api_url: Option<String>,
    #[serde(default)]
    allowed_networks: Vec<String>,
    #[serde(default)]
    trusted_proxy_hops: usize,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDeployment {
    repository: String,
    branch: String,
    path: PathBuf,
    #[serde(default = "yes")]
    enabled: bool,
    remote: Option<String>,
    #[serde(default)]
    commands: Vec<RawCommand>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    timeout: Option<String>,
    #[serde(default)]
    sites: BTreeMap<String, PathBuf>,
    ssh_key_file: Option<PathBuf>,
    layout: Option<String>,
    #[serde(default)]
    restart: Vec<RawCommand>,
    #[serde(default)]
    shared: Vec<PathBuf>,
    keep_releases: Option<usize>,
    hook_id: Option<u64>,
    #[serde(default = "yes")]
    sandbox: bool,
    #[serde(default)]
    pass_env: Vec<String>,
    #[serde(default)]
    allow_sockets: Vec<PathBuf>,
    home: Option<PathBuf>,
    #[serde(default)]
    self_update: bool,
}

fn yes() -> bool {
    true
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawCommand {
    Argv(Vec<String>),
    Table(RawCommandTable),
    /// Anything else, so that the error can say what a command looks like (an untagged enum's
    /// own error names no key and no shape).
    Other(toml::Value),
}

/// What a command looks like, for the error about one that does not.
const COMMAND_SHAPE: &str = "a command is a list of arguments like [\"npm\", \"ci\"] or a table \
     {argv = [\"npm\", \"ci\"], timeout = \"5m\"}";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCommandTable {
    argv: Vec<String>,
    timeout: Option<String>,
}

impl Config {
    /// Reads, parses and validates the file at `path`, loading the secrets it names.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|error| {
            if error.kind() == std::io::ErrorKind::NotFound {
                ConfigError::NotFound {
                    path: path.to_owned(),
                }
            } else {
                ConfigError::Read {
                    path: path.to_owned(),
                    error,
                }
            }
        })?;
        Self::parse(&text, path, std::env::var(SECRET_ENV).ok())
    }

    /// Parses `text`; `path` is only used in messages and to resolve nothing else.
    /// `env_secret` is the value of [`SECRET_ENV`], if set; it wins over `webhook_secret_file`.
    pub fn parse(text: &str, path: &Path, env_secret: Option<String>) -> Result<Self, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        let listen = match raw.listen.as_deref() {
            None => SocketAddr::from(([127, 0, 0, 1], 3400)),
            Some(s) => s
                .parse()
                .map_err(|_| invalid("listen", format!("`{s}` is not an address:port")))?,
        };
        let state_dir = raw
            .state_dir
            .unwrap_or_else(|| PathBuf::from("/var/lib/durhack-deployer"));
        if !state_dir.is_absolute() {
            return Err(invalid("state_dir", "must be an absolute path"));
        }
        if let Some(url) = &raw.database_url
            && !(url.starts_with("sqlite:")
                || url.starts_with("postgres://")
                || url.starts_with("postgresql://"))
        {
            return Err(invalid(
                "database_url",
                "must start with sqlite:, postgres:// or postgresql://",
            ));
        }
        if let Some(url) = &raw.redis_url
            && !(url.starts_with("redis://")
                || url.starts_with("rediss://")
                || url.starts_with("redis+unix://")
                || url.starts_with("unix://"))
        {
            return Err(invalid(
                "redis_url",
                "must start with redis://, rediss:// or unix://",
            ));
        }
        if let Some(url) = &raw.public_url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            return Err(invalid("public_url", "must start with http:// or https://"));
        }
        let lock_ttl = match raw.lock_ttl.as_deref() {
            None => DEFAULT_LOCK_TTL,
            Some(t) => {
                let ttl = parse_duration(t).map_err(|e| invalid("lock_ttl", e))?;
                if !(MIN_LOCK_TTL..=MAX_LOCK_TTL).contains(&ttl) {
                    return Err(invalid("lock_ttl", "must be between 3s and 10m"));
                }
                ttl
            }
        };
        let github = parse_github(raw.github, env_secret)?;
        let mut deployments: BTreeMap<String, Deployment> = BTreeMap::new();
        for (name, d) in raw.deployments {
            let deployment = parse_deployment(&name, d)?;
            // Two deployments in one working tree would check out over each other's runs.
            if let Some(other) = deployments.values().find(|o| o.path == deployment.path) {
                return Err(invalid(
                    format!("deployments.{name}.path"),
                    format!(
                        "{} is already the path of deployment `{}`",
                        deployment.path.display(),
                        other.name
                    ),
                ));
            }
            deployments.insert(name, deployment);
        }
        // The service's user owns the state directory (install.sh makes it so); before it exists,
        // whoever runs this is taken to be that user.
        let service_uid = std::fs::metadata(&state_dir).map_or_else(
            |_| nix::unistd::geteuid().as_raw(),
            |m| std::os::unix::fs::MetadataExt::uid(&m),
        );
        for d in deployments.values() {
            if let Some(problem) = d
                .ssh_key_file
                .as_deref()
                .and_then(|k| ssh_key_problem(k, service_uid))
            {
                return Err(invalid(
                    format!("deployments.{}.ssh_key_file", d.name),
                    problem,
                ));
            }
        }
        let reconcile_interval = match raw.reconcile_interval.as_deref().map(str::trim) {
            None => Some(DEFAULT_RECONCILE_INTERVAL),
            Some("0") => None,
            Some(t) => {
                let interval = parse_duration(t).map_err(|e| invalid("reconcile_interval", e))?;
                if interval > MAX_TIMEOUT {
                    return Err(invalid("reconcile_interval", "must be at most 7d"));
                }
                Some(interval)
            }
        };
        Ok(Self {
            listen,
            state_dir,
            database_url: raw.database_url,
            redis_url: raw.redis_url,
            helper_socket: raw
                .helper_socket
                .unwrap_or_else(|| PathBuf::from("/run/durhack-privhelper/privhelper.sock")),
            public_url: raw.public_url.map(|u| u.trim_end_matches('/').to_owned()),
            lock_ttl,
            github,
            deployments,
            reconcile_interval,
            config_file: std::path::absolute(path).unwrap_or_else(|_| path.to_owned()),
        })
    }

    /// The deployments that are switched on, in name order.
    pub fn enabled_deployments(&self) -> impl Iterator<Item = &Deployment> {
        self.deployments.values().filter(|d| d.enabled)
    }

    pub fn queues_dir(&self) -> PathBuf {
        self.state_dir.join("queues")
    }
    pub fn logs_dir(&self) -> PathBuf {
        self.state_dir.join("logs")
    }
    pub fn locks_dir(&self) -> PathBuf {
        self.state_dir.join("locks")
    }
    /// The database URL in force: the configured one, or SQLite in `state_dir`.
    pub fn effective_database_url(&self) -> String {
        match &self.database_url {
            Some(url) => url.clone(),
            None => format!(
                "sqlite://{}?mode=rwc",
                self.state_dir.join("ledger.sqlite3").display()
            ),
        }
    }
}

fn parse_github(
    raw: Option<RawGithub>,
    env_secret: Option<String>,
) -> Result<GithubConfig, ConfigError> {
    let raw = raw.unwrap_or(RawGithub {
        webhook_secret_file: None,
        token_file: None,
        api_url: None,
        allowed_networks: Vec::new(),
        trusted_proxy_hops: 0,
    });
    let webhook_secret = match (env_secret, &raw.webhook_secret_file) {
        (Some(s), _) => s,
        (None, Some(file)) => read_secret_file(file, "github.webhook_secret_file")?,
        (None, None) => {
            return Err(invalid(
                "github.webhook_secret_file",
                format!(
                    "no webhook secret: set this key or {SECRET_ENV} (there is no unauthenticated mode)"
                ),
            ));
        }
    };
    let webhook_secret = webhook_secret.trim_end_matches(['\r', '\n']).to_owned();
    if webhook_secret.is_empty() {
        return Err(invalid(
            "github.webhook_secret_file",
            "the webhook secret is empty",
        ));
    }
    let token = match &raw.token_file {
        Some(file) => {
            let t = read_secret_file(file, "github.token_file")?;
            let t = t.trim().to_owned();
            if t.is_empty() {
                return Err(invalid("github.token_file", "the token file is empty"));
            }
            Some(Secret(t))
        }
        None => None,
    };
    let api_url = raw
        .api_url
        .unwrap_or_else(|| "https://api.github.com".to_owned());
    if !(api_url.starts_with("http://") || api_url.starts_with("https://")) {
        return Err(invalid(
            "github.api_url",
            "must start with http:// or https://",
        ));
    }
    let allowed_networks = raw
        .allowed_networks
        .iter()
        .enumerate()
        .map(|(i, n)| {
            n.parse()
                .map_err(|e| invalid(format!("github.allowed_networks[{i}]"), e))
        })
        .collect::<Result<_, _>>()?;
    Ok(GithubConfig {
        webhook_secret: Secret(webhook_secret),
        token,
        api_url: api_url.trim_end_matches('/').to_owned(),
        allowed_networks,
        trusted_proxy_hops: raw.trusted_proxy_hops,
        webhook_secret_file: raw
            .webhook_secret_file
            .map(|f| std::path::absolute(&f).unwrap_or(f)),
        token_file: raw.token_file.map(|f| std::path::absolute(&f).unwrap_or(f)),
    })
}

fn read_secret_file(path: &Path, key: &str) -> Result<String, ConfigError> {
    std::fs::read_to_string(path)
        .map_err(|e| invalid(key, format!("cannot read {}: {e}", path.display())))
}

/// Deployment names become queue directories, log directories and lock keys.
pub fn valid_deployment_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('-')
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

fn valid_repository(repo: &str) -> bool {
    let ok = |part: &str| {
        !part.is_empty()
            && part != "."
            && part != ".."
            && part
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    };
    matches!(repo.split_once('/'), Some((owner, name)) if ok(owner) && ok(name))
}

/// A branch name as git's check-ref-format allows it, minus the exotic corners.
fn valid_branch(branch: &str) -> bool {
    !branch.is_empty()
        && branch.len() <= 255
        && !branch.starts_with(['-', '/'])
        && !branch.ends_with(['/', '.'])
        && !branch.ends_with(".lock")
        && !branch.contains("..")
        && !branch.contains("//")
        && !branch.contains("@{")
        && branch
            .bytes()
            .all(|b| b > 0x20 && b != 0x7f && !b"~^:?*[\\".contains(&b))
}

fn parse_commands(key: &str, raw: Vec<RawCommand>) -> Result<Vec<CommandSpec>, ConfigError> {
    let mut commands = Vec::new();
    for (i, c) in raw.into_iter().enumerate() {
        let (argv, timeout) = match c {
            RawCommand::Argv(argv) => (argv, None),
            RawCommand::Table(t) => (t.argv, t.timeout),
            RawCommand::Other(value) => {
                let got = match value {
                    toml::Value::String(_) => "a string (commands run without a shell)",
                    toml::Value::Table(_) => "a table without a list of strings in `argv`",
                    _ => "something else",
                };
                return Err(invalid(
                    format!("{key}[{i}]"),
                    format!("{COMMAND_SHAPE}, not {got}"),
                ));
            }
        };
        if argv.is_empty() || argv[0].is_empty() {
            return Err(invalid(format!("{}[{i}]", key), "an empty command"));
        }
        if argv.iter().any(|a| a.contains('\0')) {
            return Err(invalid(format!("{}[{i}]", key), "contains a NUL byte"));
        }
        let timeout = timeout
            .map(|t| parse_timeout(&t))
            .transpose()
            .map_err(|e| invalid(format!("{}[{i}].timeout", key), e))?;
        commands.push(CommandSpec { argv, timeout });
    }
    Ok(commands)
}

fn parse_deployment(name: &str, raw: RawDeployment) -> Result<Deployment, ConfigError> {
    let key = |k: &str| format!("deployments.{name}.{k}");
    if !valid_deployment_name(name) {
        return Err(invalid(
            format!("deployments.{name}"),
            "a deployment name is 1-64 of lowercase letters, digits, `-` and `_`, not starting with `-`",
        ));
    }
    if !valid_repository(&raw.repository) {
        return Err(invalid(key("repository"), "must be `owner/name`"));
    }
    if !valid_branch(&raw.branch) {
        return Err(invalid(
            key("branch"),
            format!("`{}` is not a valid branch name", raw.branch),
        ));
    }
    if !raw.path.is_absolute() {
        return Err(invalid(key("path"), "must be an absolute path"));
    }
    let remote = raw
        .remote
        .unwrap_or_else(|| format!("https://github.com/{}.git", raw.repository));
    if remote.starts_with('-') || remote.is_empty() {
        return Err(invalid(key("remote"), "is not a git remote"));
    }
    let commands = parse_commands(&key("commands"), raw.commands)?;
    let restart = parse_commands(&key("restart"), raw.restart)?;
    for k in raw.env.keys() {
        if k.is_empty() || k.contains(['=', '\0']) || k.starts_with("DEPLOY_") {
            return Err(invalid(
                format!("{}.{k}", key("env")),
                "not a usable variable name (DEPLOY_* is reserved)",
            ));
        }
    }
    let timeout = match raw.timeout {
        Some(t) => parse_timeout(&t).map_err(|e| invalid(key("timeout"), e))?,
        None => DEFAULT_TIMEOUT,
    };
    for (site, file) in &raw.sites {
        // The helper's own rule, so `check` refuses what the helper would.
        if let Err(e) = protocol::SiteName::try_from(site.as_str()) {
            return Err(invalid(format!("{}.{site}", key("sites")), e.to_string()));
        }
        let relative_inside = file.is_relative()
            && file
                .components()
                .all(|c| matches!(c, std::path::Component::Normal(_)));
        if !relative_inside {
            return Err(invalid(
                format!("{}.{site}", key("sites")),
                "must be a path inside the repository, without `..`",
            ));
        }
    }
    if raw.ssh_key_file.as_ref().is_some_and(|k| !k.is_absolute()) {
        return Err(invalid(key("ssh_key_file"), "must be an absolute path"));
    }
    let layout = match raw.layout.as_deref() {
        None | Some("in-place") => Layout::InPlace,
        Some("releases") => Layout::Releases,
        Some(other) => {
            return Err(invalid(
                key("layout"),
                format!("`{other}` is not a layout: \"in-place\" or \"releases\""),
            ));
        }
    };
    for (i, entry) in raw.shared.iter().enumerate() {
        let inside = entry.is_relative()
            && entry.components().next().is_some()
            && entry
                .components()
                .all(|c| matches!(c, std::path::Component::Normal(_)));
        if !inside {
            return Err(invalid(
                format!("{}[{i}]", key("shared")),
                "must be a relative path inside the release, without `..`",
            ));
        }
        if entry.starts_with(".git") {
            return Err(invalid(
                format!("{}[{i}]", key("shared")),
                "cannot share git's own metadata",
            ));
        }
    }
    let shared = raw.shared;
    let keep_releases = raw.keep_releases.unwrap_or(DEFAULT_KEEP_RELEASES);
    if !(2..=MAX_KEEP_RELEASES).contains(&keep_releases) {
        return Err(invalid(
            key("keep_releases"),
            format!(
                "must be between 2 (the live release and the one before it) and {MAX_KEEP_RELEASES}"
            ),
        ));
    }
    for (i, var) in raw.pass_env.iter().enumerate() {
        if var.is_empty() || var.contains(['=', '\0']) || var.starts_with("DEPLOY_") {
            return Err(invalid(
                format!("{}[{i}]", key("pass_env")),
                "not a usable variable name (DEPLOY_* is reserved)",
            ));
        }
        if var == SECRET_ENV {
            return Err(invalid(
                format!("{}[{i}]", key("pass_env")),
                "the webhook secret is never passed to commands",
            ));
        }
    }
    for (i, socket) in raw.allow_sockets.iter().enumerate() {
        if !socket.is_absolute() || socket.parent().is_none() {
            return Err(invalid(
                format!("{}[{i}]", key("allow_sockets")),
                "must be an absolute path below /",
            ));
        }
    }
    if let Some(home) = &raw.home
        && (!home.is_absolute() || home.parent().is_none())
    {
        return Err(invalid(key("home"), "must be an absolute path below /"));
    }
    Ok(Deployment {
        name: name.to_owned(),
        repository: raw.repository,
        branch: raw.branch,
        path: raw.path,
        enabled: raw.enabled,
        remote,
        commands,
        env: raw.env,
        timeout,
        sites: raw.sites,
        ssh_key_file: raw.ssh_key_file,
        layout,
        restart,
        shared,
        keep_releases,
        hook_id: raw.hook_id,
        sandbox: raw.sandbox,
        pass_env: raw.pass_env,
        allow_sockets: raw.allow_sockets,
        home: raw.home,
        self_update: raw.self_update,
    })
}

/// Why a deploy key is unfit, if it is: not a regular file, readable or writable by group or
/// others, or not owned by `uid` (the service's user). ssh refuses such a key too, but only at
/// the first fetch; `check` says so before.
pub fn ssh_key_problem(path: &Path, uid: u32) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) => return Some(format!("cannot read {}: {e}", path.display())),
    };
    let mode = meta.mode() & 0o777;
    if !meta.is_file() {
        Some(format!("{} is not a file", path.display()))
    } else if mode & 0o077 != 0 {
        Some(format!(
            "{} has mode {mode:o}: a deploy key must be readable by its owner alone (chmod 600)",
            path.display()
        ))
    } else if meta.uid() != uid {
        Some(format!(
            "{} is owned by uid {}, not by the service's user (uid {uid})",
            path.display(),
            meta.uid()
        ))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("test.toml"), Some("s3cret".into()))
    }

    const EXAMPLE: &str = r#"
listen = "127.0.0.1:3400"
state_dir = "/var/lib/durhack-deployer"

[github]
allowed_networks = ["140.82.112.0/20", "2a0a:a440::/29"]

[deployments.durhack]
repository = "ducompsoc/durhack"
branch = "main"
path = "/var/www/durhack"
commands = [["pnpm", "install"], { argv = ["pnpm", "build"], timeout = "5m" }]
env = { NODE_ENV = "production" }
timeout = "20m"
sites = { durhack = "nginx/durhack.conf", "api.durhack.com" = "nginx/api.conf" }

[deployments.durhack-staging]
repository = "ducompsoc/durhack"
branch = "staging"
path = "/var/www/durhack-staging"
enabled = false
"#;

    #[test]
    fn example_parses() {
        let c = parse(EXAMPLE).unwrap();
        assert_eq!(c.github.webhook_secret.expose(), "s3cret");
        let d = &c.deployments["durhack"];
        assert_eq!(d.remote, "https://github.com/ducompsoc/durhack.git");
        assert_eq!(d.sites["api.durhack.com"], Path::new("nginx/api.conf"));
        assert_eq!(d.commands[1].timeout, Some(Duration::from_secs(300)));
        assert_eq!(d.timeout, Duration::from_secs(1200));
        assert_eq!(c.enabled_deployments().count(), 1);
        assert_eq!(c.reconcile_interval, Some(DEFAULT_RECONCILE_INTERVAL));
        assert_eq!(d.hook_id, None);
        assert!(c.github.allowed_networks[0].contains("140.82.115.9".parse().unwrap()));
        assert!(!c.github.allowed_networks[0].contains("140.82.128.1".parse().unwrap()));
        assert!(c.github.allowed_networks[0].contains("::ffff:140.82.112.1".parse().unwrap()));
        assert!(c.github.allowed_networks[1].contains("2a0a:a440::1".parse().unwrap()));
    }

    #[test]
    fn errors_name_the_key() {
        let cases = [
            ("bogus = 1", "bogus"),
            ("listen = \"nope\"", "listen"),
            ("state_dir = \"relative\"", "state_dir"),
            ("database_url = \"mysql://x\"", "database_url"),
            (
                "[github]\nallowed_networks = [\"1.2.3.4/33\"]",
                "github.allowed_networks[0]",
            ),
            (
                "[deployments.a]\nrepository = \"x\"\nbranch = \"main\"\npath = \"/x\"",
                "deployments.a.repository",
            ),
            (
                "[deployments.a]\nrepository = \"o/r\"\nbranch = \"a..b\"\npath = \"/x\"",
                "deployments.a.branch",
            ),
            (
                "[deployments.a]\nrepository = \"o/r\"\nbranch = \"main\"\npath = \"/x\"\ntimeout = \"5y\"",
                "deployments.a.timeout",
            ),
            (
                "[deployments.a]\nrepository = \"o/r\"\nbranch = \"main\"\npath = \"/x\"\ncommands = [[]]",
                "deployments.a.commands[0]",
            ),
            (
                "[deployments.a]\nrepository = \"o/r\"\nbranch = \"main\"\npath = \"/x\"\nsites = { s = \"../x\" }",
                "deployments.a.sites.s",
            ),
            (
                "[deployments.A]\nrepository = \"o/r\"\nbranch = \"main\"\npath = \"/x\"",
                "deployments.A",
            ),
            (
                "[deployments.a]\nrepository = \"o/r\"\nbranch = \"main\"\npath = \"/x\"\nsites = { \"a..b\" = \"x.conf\" }",
                "deployments.a.sites.a..b",
            ),
            (
                "[deployments.a]\nrepository = \"o/r\"\nbranch = \"main\"\npath = \"/x\"\nssh_key_file = \"keys/a\"",
                "deployments.a.ssh_key_file",
            ),
            (
                "[deployments.a]\nrepository = \"o/r\"\nbranch = \"main\"\npath = \"/x\"\nlayout = \"blue-green\"",
                "deployments.a.layout",
            ),
            (
                "[deployments.a]\nrepository = \"o/r\"\nbranch = \"main\"\npath = \"/x\"\nshared = [\"ok\", \"../up\"]",
                "deployments.a.shared[1]",
            ),
            (
                "[deployments.a]\nrepository = \"o/r\"\nbranch = \"main\"\npath = \"/x\"\nshared = [\"/etc\"]",
                "deployments.a.shared[0]",
            ),
            (
                "[deployments.a]\nrepository = \"o/r\"\nbranch = \"main\"\npath = \"/x\"\nkeep_releases = 1",
                "deployments.a.keep_releases",
            ),
            (
                "[deployments.a]\nrepository = \"o/r\"\nbranch = \"main\"\npath = \"/x\"\nrestart = [[]]",
                "deployments.a.restart[0]",
            ),
            ("lock_ttl = \"1s\"", "lock_ttl"),
            ("reconcile_interval = \"soon\"", "reconcile_interval"),
            ("reconcile_interval = \"8d\"", "reconcile_interval"),
            (
                "[deployments.a]\nrepository = \"o/r\"\nbranch = \"main\"\npath = \"/x\"\nhook_id = \"x\"",
                "hook_id",
            ),
            (
                "[deployments.a]\nrepository = \"o/r\"\nbranch = \"main\"\npath = \"/x\"\ncommands = [\"npm ci\"]",
                "deployments.a.commands[0]: a command is a list of arguments like [\"npm\", \"ci\"]",
            ),
            ("lock_ttl = \"1h\"", "lock_ttl"),
            (
                "[deployments.a]\nrepository = \"o/r\"\nbranch = \"main\"\npath = \"/x\"\ntimeout = \"8d\"",
                "deployments.a.timeout",
            ),
        ];
        for (text, key) in cases {
            let err = parse(text).unwrap_err().to_string();
            assert!(err.contains(key), "{text:?}: {err:?} should name {key}");
        }
    }

    #[test]
    fn reconcile_interval_zero_disables_it() {
        let c = parse("reconcile_interval = \"0\"").unwrap();
        assert_eq!(c.reconcile_interval, None);
        let c = parse("reconcile_interval = \"90s\"").unwrap();
        assert_eq!(c.reconcile_interval, Some(Duration::from_secs(90)));
    }

    #[test]
    fn no_secret_is_an_error() {
        let err = Config::parse("", Path::new("t"), None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("github.webhook_secret_file"), "{err}");
    }

    #[test]
    fn secret_is_redacted() {
        let c = parse("").unwrap();
        assert!(!format!("{c:?}").contains("s3cret"));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        for bad in ["", "0", "m", "10x", "1h5"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }
}
