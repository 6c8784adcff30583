//! `durhack-deployer migrate-from-python OLD_CONFIG_DIR`: reads the Python deployer's
//! `config/*.toml` (merged in its own order: `default`, the environment, the instance, then the
//! `local*` files) and prints this deployer's `config.toml` and the helper's `privhelper.toml`,
//! then the commands that retire the old set-up. Nothing on the machine is changed.
//!
//! What maps to what:
//! - `[listen]`, `origin` and `proxy_fix.x_for` become `listen`, `public_url` and
//!   `github.trusted_proxy_hops`; `webhook_secret_token` is never copied (it belongs in a file
//!   only root and the service can read);
//! - a deployment with `sites` rules (the `durhack-nginx` repository) publishes each selected
//!   `production/[<site>].conf` as site `<site>`: site names may be dotted, and the certificate
//!   lineage stays `live/<site>/`, the `--cert-name` the Python deployer used;
//! - a deployment with `instance_name` (the pnpm + PM2 apps) gets the Python worker's steps as
//!   commands, with `INSTANCE_NAME` in its environment;
//! - the Python deployer's own deployment is not carried over: this deployer replaces it.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use protocol::{Domain, SiteName, nginx_syntax};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The Python deployer's `config/` directory.
    old_config_dir: PathBuf,
    /// The instance whose file to read (`deploy.durhack.com` for `deploy.durhack.com.toml`), as
    /// the old `PYTHON_APP_INSTANCE`; needed when the directory holds more than one.
    #[arg(long)]
    instance: Option<String>,
    /// The old `PYTHON_ENV`.
    #[arg(long, default_value = "production")]
    environment: String,
    /// A checkout of the nginx repository: each site's domains and proxy ports are read from its
    /// conf (without it, a site's one domain is its name and it proxies nowhere).
    #[arg(long)]
    nginx_checkout: Option<PathBuf>,
    /// Write `config.toml` and `privhelper.toml` into this directory (never replacing a file)
    /// instead of printing them.
    #[arg(long)]
    out: Option<PathBuf>,
    /// The user the deployer service runs as (the policy's `client_user`).
    #[arg(long, default_value = "durhack-deployer")]
    client_user: String,
    /// nginx's configuration directory (`conf.d/` and `snippets/` are under it).
    #[arg(long, default_value = "/etc/nginx")]
    nginx_dir: PathBuf,
    /// nginx's log directory.
    #[arg(long, default_value = "/var/log/nginx")]
    nginx_log_dir: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{0}")]
    Invalid(String),
    #[error("{path} already exists: not replacing it")]
    Exists { path: PathBuf },
}

fn invalid(message: impl Into<String>) -> MigrateError {
    MigrateError::Invalid(message.into())
}

/// A TOML string literal.
fn q(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

fn list(items: &[String]) -> String {
    let quoted: Vec<String> = items.iter().map(|s| q(s)).collect();
    format!("[{}]", quoted.join(", "))
}

/// The old loader's file order: later files override earlier ones, tables merged key by key.
fn file_order(environment: &str, instance: Option<&str>) -> Vec<String> {
    let e = environment;
    match instance {
        None => vec![
            "default".into(),
            e.into(),
            "local".into(),
            format!("local-{e}"),
        ],
        Some(i) => vec![
            "default".into(),
            e.into(),
            i.into(),
            format!("{e}-{i}"),
            "local".into(),
            format!("local-{e}"),
            format!("local-{i}"),
            format!("local-{e}-{i}"),
        ],
    }
}

fn merge(into: &mut toml::Table, from: toml::Table) {
    for (key, value) in from {
        match (into.get_mut(&key), value) {
            (Some(toml::Value::Table(old)), toml::Value::Table(new)) => merge(old, new),
            (_, value) => {
                into.insert(key, value);
            }
        }
    }
}

/// The merged old configuration, and the files it came from.
fn load_old(args: &Args) -> Result<(toml::Table, Vec<PathBuf>), MigrateError> {
    let dir = &args.old_config_dir;
    let read_dir = std::fs::read_dir(dir).map_err(|source| MigrateError::Read {
        path: dir.clone(),
        source,
    })?;
    let stems: Vec<String> = read_dir
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .filter_map(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .collect();
    let instance = match &args.instance {
        Some(i) => Some(i.clone()),
        None => {
            let known = [
                "default",
                "development",
                "production",
                "test",
                &args.environment,
            ];
            let mut candidates: Vec<&String> = stems
                .iter()
                .filter(|s| !known.contains(&s.as_str()) && !s.starts_with("local"))
                .collect();
            candidates.sort();
            match candidates.as_slice() {
                [] => None,
                [one] => Some((*one).clone()),
                many => {
                    let names: Vec<&str> = many.iter().map(|s| s.as_str()).collect();
                    return Err(invalid(format!(
                        "{} holds several instances ({}): pass --instance NAME",
                        dir.display(),
                        names.join(", ")
                    )));
                }
            }
        }
    };
    if let Some(i) = &instance
        && !stems.contains(i)
    {
        return Err(invalid(format!(
            "{} has no {i}.toml (instances: {})",
            dir.display(),
            stems.join(", ")
        )));
    }
    let mut merged = toml::Table::new();
    let mut used = Vec::new();
    for stem in file_order(&args.environment, instance.as_deref()) {
        if !stems.contains(&stem) {
            continue;
        }
        let path = dir.join(format!("{stem}.toml"));
        let text = std::fs::read_to_string(&path).map_err(|source| MigrateError::Read {
            path: path.clone(),
            source,
        })?;
        let table: toml::Table = toml::from_str(&text).map_err(|e| MigrateError::Parse {
            path: path.clone(),
            message: e.to_string(),
        })?;
        merge(&mut merged, table);
        used.push(path);
    }
    if used.is_empty() {
        return Err(invalid(format!(
            "{} has none of the Python deployer's config files",
            dir.display()
        )));
    }
    Ok((merged, used))
}

fn str_at<'a>(t: &'a toml::Table, key: &str) -> Option<&'a str> {
    t.get(key).and_then(|v| v.as_str())
}

/// The old `sites` filter: the rules from the last one selecting `*` on, each `include` or
/// `exclude` deciding for the names it selects; `candidates` are the names to decide on.
fn selected_sites(rules: &[toml::Value], candidates: &[String]) -> Vec<String> {
    let rules: Vec<(bool, Vec<String>)> = rules
        .iter()
        .filter_map(|r| r.as_table())
        .map(|r| {
            let include = str_at(r, "rule") == Some("include");
            let select = r.get("select").and_then(|s| s.as_array());
            let names = select.into_iter().flatten().filter_map(|s| s.as_str());
            (include, names.map(str::to_owned).collect())
        })
        .collect();
    let from = rules
        .iter()
        .rposition(|(_, names)| names.iter().any(|n| n == "*"))
        .unwrap_or(0);
    let mut all: Vec<String> = candidates.to_vec();
    for (_, names) in &rules[from..] {
        all.extend(names.iter().filter(|n| *n != "*").cloned());
    }
    all.sort();
    all.dedup();
    all.into_iter()
        .filter(|site| {
            let mut included = false;
            for (include, names) in &rules[from..] {
                if names.iter().any(|n| n == "*" || n == site) {
                    included = *include;
                }
            }
            included
        })
        .collect()
}

/// The site files of an nginx checkout: `production/[<site>].conf` or `.nginxconf`, by site.
fn checkout_sites(checkout: &Path) -> Result<BTreeMap<String, String>, MigrateError> {
    let dir = checkout.join("production");
    let entries = std::fs::read_dir(&dir).map_err(|source| MigrateError::Read {
        path: dir.clone(),
        source,
    })?;
    let mut sites = BTreeMap::new();
    for entry in entries.filter_map(|e| e.ok()) {
        let file = entry.file_name().to_string_lossy().into_owned();
        let site = [".conf", ".nginxconf"]
            .iter()
            .find_map(|ext| file.strip_suffix(ext))
            .and_then(|stem| stem.strip_prefix('['))
            .and_then(|stem| stem.strip_suffix(']'));
        if let Some(site) = site {
            sites.insert(site.to_owned(), format!("production/{file}"));
        }
    }
    Ok(sites)
}

/// What the policy needs from a site's conf: its domains and the loopback ports it proxies to.
fn read_site_conf(path: &Path) -> Result<(Vec<String>, Vec<u16>), MigrateError> {
    let text = std::fs::read_to_string(path).map_err(|source| MigrateError::Read {
        path: path.to_owned(),
        source,
    })?;
    let parsed = nginx_syntax::parse(&text).map_err(|e| MigrateError::Parse {
        path: path.to_owned(),
        message: e.to_string(),
    })?;
    let mut domains: Vec<String> = nginx_syntax::server_names(&parsed)
        .into_iter()
        .filter(|n| Domain::try_from(n.as_str()).is_ok())
        .collect();
    domains.sort();
    domains.dedup();
    fn ports(directives: &[nginx_syntax::Directive], out: &mut Vec<u16>) {
        for d in directives {
            if d.name == "proxy_pass"
                && let Some(port) = d.args.first().and_then(|a| nginx_syntax::loopback_port(a))
            {
                out.push(port);
            }
            if let Some(block) = &d.block {
                ports(block, out);
            }
        }
    }
    let mut proxy_ports = Vec::new();
    ports(&parsed, &mut proxy_ports);
    proxy_ports.sort();
    proxy_ports.dedup();
    Ok((domains, proxy_ports))
}

/// A deployment name this deployer accepts: lowercased, other characters made `-`.
fn deployment_name(old: &str) -> String {
    let name: String = old
        .to_ascii_lowercase()
        .chars()
        .map(|c| match c {
            'a'..='z' | '0'..='9' | '-' | '_' => c,
            _ => '-',
        })
        .collect();
    match name.trim_start_matches('-') {
        "" => "deployment".into(),
        n => n.chars().take(64).collect(),
    }
}

struct Site {
    name: SiteName,
    file: String,
    domains: Vec<String>,
    proxy_ports: Vec<u16>,
}

/// The migration's three outputs.
struct Migration {
    config: String,
    policy: String,
    steps: String,
}

fn migrate(args: &Args) -> Result<Migration, MigrateError> {
    let (old, used) = load_old(args)?;
    let shown: Vec<String> = used.iter().map(|p| p.display().to_string()).collect();
    let mut config = format!(
        "# durhack-deployer configuration, made by `durhack-deployer migrate-from-python` from\n# {}.\n# Review it, then: durhack-deployer check --config /etc/durhack-deployer/config.toml\n\n",
        shown.join(", ")
    );
    let listen = old.get("listen").and_then(|l| l.as_table());
    let host = listen
        .and_then(|l| str_at(l, "host"))
        .unwrap_or("127.0.0.1");
    let host = if host == "localhost" {
        "127.0.0.1"
    } else {
        host
    };
    let port = listen
        .and_then(|l| l.get("port"))
        .and_then(|p| p.as_integer())
        .unwrap_or(3400);
    let _ = writeln!(config, "listen = {}", q(&format!("{host}:{port}")));
    if let Some(origin) = str_at(&old, "origin") {
        let _ = writeln!(config, "public_url = {}", q(origin));
    }
    let _ = writeln!(
        config,
        "\n[github]\n# The Python deployer's `webhook_secret_token`, alone in this file (mode 0640, group\n# durhack-deployer), or GitHub's deliveries will not verify.\nwebhook_secret_file = \"/etc/durhack-deployer/webhook-secret\""
    );
    let hops = old
        .get("proxy_fix")
        .and_then(|p| p.get("x_for"))
        .and_then(|x| x.as_integer())
        .unwrap_or(0);
    let _ = writeln!(config, "trusted_proxy_hops = {hops}");

    let empty = toml::Table::new();
    let deployments = old
        .get("deployments")
        .and_then(|d| d.as_table())
        .unwrap_or(&empty);
    let mut roots = Vec::new();
    let mut sites: Vec<Site> = Vec::new();
    let mut steps = String::new();
    let mut nginx_paths = Vec::new();
    for (old_name, d) in deployments {
        let d = d
            .as_table()
            .ok_or_else(|| invalid(format!("deployments.{old_name} is not a table")))?;
        let field = |k: &str| {
            str_at(d, k).ok_or_else(|| invalid(format!("deployments.{old_name}.{k} is missing")))
        };
        let (repository, branch, path) = (field("repository")?, field("branch")?, field("path")?);
        let enabled = d.get("enabled").and_then(|e| e.as_bool()).unwrap_or(true);
        if repository == "ducompsoc/durhack-deployer" {
            let _ = writeln!(
                config,
                "\n# deployments.{old_name} ({repository}, {path}) is the Python deployer itself, which this\n# deployer replaces: not carried over (docs/install.md says how to update this one)."
            );
            let _ = writeln!(steps, "# retire the Python deployer ({old_name}):");
            if let Some(unit) = str_at(d, "systemd_unit_name") {
                let _ = writeln!(steps, "systemctl disable --now {unit}");
            }
            if let Some(vassal) = str_at(d, "uwsgi_config_path") {
                let _ = writeln!(steps, "rm -f {}", shell_quote(vassal));
            }
            continue;
        }
        let name = deployment_name(old_name);
        let _ = writeln!(config, "\n[deployments.{name}]");
        if name != *old_name {
            let _ = writeln!(config, "# `{old_name}` in the Python deployer's config");
        }
        let _ = writeln!(config, "repository = {}", q(repository));
        let _ = writeln!(config, "branch = {}", q(branch));
        let _ = writeln!(config, "path = {}", q(path));
        if path.starts_with("/home/") {
            let _ = writeln!(
                config,
                "# Under /home: the service unit's ProtectHome needs the drop-in in docs/install.md."
            );
        }
        if !enabled {
            let _ = writeln!(config, "enabled = false");
        }
        let _ = writeln!(
            config,
            "# A private repository: an ssh remote and a deploy key readable only by the service, e.g.\n# remote = \"git@github.com:{repository}.git\"\n# ssh_key_file = \"/etc/durhack-deployer/keys/{name}\""
        );
        if let Some(rules) = d.get("sites").and_then(|s| s.as_array()) {
            nginx_paths.push(path.to_owned());
            let files = match &args.nginx_checkout {
                Some(checkout) => checkout_sites(checkout)?,
                None => BTreeMap::new(),
            };
            let candidates: Vec<String> = files.keys().cloned().collect();
            let wildcard = rules.iter().any(|r| {
                r.get("select")
                    .and_then(|s| s.as_array())
                    .is_some_and(|s| s.iter().any(|n| n.as_str() == Some("*")))
            });
            if wildcard && args.nginx_checkout.is_none() {
                return Err(invalid(format!(
                    "deployments.{old_name}.sites selects `*`: pass --nginx-checkout DIR so the site files can be listed"
                )));
            }
            let _ = writeln!(config, "[deployments.{name}.sites]");
            for site in selected_sites(rules, &candidates) {
                let site_name = SiteName::try_from(site.as_str()).map_err(|e| {
                    invalid(format!(
                        "deployments.{old_name}.sites: {e}; rename the site"
                    ))
                })?;
                let file = files
                    .get(&site)
                    .cloned()
                    .unwrap_or_else(|| format!("production/[{site}].conf"));
                let (domains, proxy_ports) = match &args.nginx_checkout {
                    Some(checkout) if files.contains_key(&site) => {
                        read_site_conf(&checkout.join(&file))?
                    }
                    _ => (vec![site.clone()], Vec::new()),
                };
                let _ = writeln!(config, "{} = {}", q(&site), q(&file));
                sites.push(Site {
                    name: site_name,
                    file,
                    domains,
                    proxy_ports,
                });
            }
            continue;
        }
        roots.push(path.to_owned());
        if let Some(instance) = str_at(d, "instance_name") {
            let prisma = if repository == "ducompsoc/durhack" {
                "\n    [\"pnpm\", \"--filter\", \"{server}\", \"exec\", \"prisma\", \"migrate\", \"deploy\"],"
            } else {
                ""
            };
            let _ = writeln!(
                config,
                "# The Python worker's steps: install and build the server, then restart its PM2 apps.\ncommands = [\n    [\"pnpm\", \"install\", \"--frozen-lockfile\", \"--filter\", \"{{server}}...\"],{prisma}\n    [\"pnpm\", \"--filter\", \"{{server}}...\", \"run\", \"generate\"],\n    [\"pnpm\", \"--filter\", \"{{server}}...\", \"run\", \"build\"],\n    [\"pm2\", \"startOrRestart\", \"ecosystem.config.js\"],\n    [\"pm2\", \"save\"],\n]\nenv = {{ INSTANCE_NAME = {} }}",
                q(instance)
            );
        } else {
            let _ = writeln!(
                config,
                "# The Python deployer had a worker of its own for this repository: write its steps\n# as commands here.\ncommands = []"
            );
        }
    }
    let policy = policy(args, &roots, &sites);
    if !sites.is_empty() {
        let _ = writeln!(
            steps,
            "# each site's conf as the helper would write it, or why it would refuse it:"
        );
        for site in &sites {
            if let Some(path) = nginx_paths.first() {
                let conf = format!("{}/{}", path.trim_end_matches('/'), site.file);
                let _ = writeln!(
                    steps,
                    "durhack-privhelper check-site --policy /etc/durhack-deployer/privhelper.toml {} {}",
                    site.name,
                    shell_quote(&conf)
                );
            }
        }
        let conf_d = args.nginx_dir.join("conf.d");
        let _ = writeln!(
            steps,
            "# once the first deploy has published the sites (durhack-deployer status), remove the\n# links the Python deployer made in {}:",
            conf_d.display()
        );
        for site in &sites {
            let old_link = conf_d.join(format!("[{}].conf", site.name));
            let _ = writeln!(
                steps,
                "rm -f {}",
                shell_quote(&old_link.display().to_string())
            );
        }
        let snippets = args.nginx_dir.join("snippets");
        for path in &nginx_paths {
            let _ = writeln!(
                steps,
                "# snippets linked from the nginx repository are the deployer's to change, yet root's nginx\n# loads them: copy the ones sites include as root-owned files, then remove the links\nfind {} -type l -lname {} -print -delete",
                shell_quote(&snippets.display().to_string()),
                shell_quote(&format!("{}/*", path.trim_end_matches('/')))
            );
        }
    }
    let _ = writeln!(
        steps,
        "# the old grants (sudoers/README.md):\nrm -f /etc/sudoers.d/durhack-deployer && visudo -c\nsetfacl -b {}",
        shell_quote(&args.nginx_dir.join("conf.d").display().to_string())
    );
    Ok(Migration {
        config,
        policy,
        steps,
    })
}

/// `s` in single quotes for sh (the `[site]` in old file names is a glob).
fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

fn policy(args: &Args, roots: &[String], sites: &[Site]) -> String {
    let dir = |sub: &str| q(&args.nginx_dir.join(sub).display().to_string());
    let mut p = format!(
        "# durhack-privhelper policy, made by `durhack-deployer migrate-from-python`. Install as\n# /etc/durhack-deployer/privhelper.toml (root:root 0644), then:\n#   durhack-privhelper check --policy /etc/durhack-deployer/privhelper.toml\n# sudoers/privhelper.toml explains every key.\nclient_user = {}\nsocket = \"/run/durhack-privhelper/privhelper.sock\"\nconf_dir = {}\ntest_command = [\"/usr/sbin/nginx\", \"-t\", \"-q\"]\nreload_command = [\"/usr/sbin/nginx\", \"-s\", \"reload\"]\ncommand_timeout_secs = 60\ncommand_env = {{ PATH = \"/usr/sbin:/usr/bin:/sbin:/bin\" }}\nlisten = [\"80\", \"[::]:80\", \"443 ssl\", \"[::]:443 ssl\"]\nsnippets_dir = {}\nallowed_roots = {}\nlog_dir = {}\n",
        q(&args.client_user),
        dir("conf.d"),
        dir("snippets"),
        list(roots),
        q(&args.nginx_log_dir.display().to_string()),
    );
    let _ = writeln!(
        p,
        "\n[certbot]\n# Webroot instead of the Python deployer's --nginx plugin: sites include\n# snippets/acme-challenge.conf (docs/install.md). certbot keeps using the account and the\n# lineages (live/<site>/) the Python deployer made; add \"--email\", \"you@example.com\" if this\n# machine has no certbot account yet.\nargv = [\n    \"/usr/bin/certbot\", \"certonly\", \"--non-interactive\", \"--agree-tos\",\n    \"--keep-until-expiring\", \"--webroot\", \"-w\", \"/var/www/letsencrypt\",\n]\nenv = {{ PATH = \"/usr/sbin:/usr/bin:/sbin:/bin\" }}\nlive_dir = \"/etc/letsencrypt/live\""
    );
    for site in sites {
        let _ = writeln!(p, "\n# {}", site.file);
        let _ = writeln!(p, "[sites.{}]", q(site.name.as_str()));
        let _ = writeln!(p, "domains = {}", list(&site.domains));
        if !site.proxy_ports.is_empty() {
            let _ = writeln!(p, "proxy_ports = {:?}", site.proxy_ports);
        }
    }
    p
}

fn write_new(path: &Path, text: &str) -> Result<(), MigrateError> {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|source| match source.kind() {
            std::io::ErrorKind::AlreadyExists => MigrateError::Exists {
                path: path.to_owned(),
            },
            _ => MigrateError::Read {
                path: path.to_owned(),
                source,
            },
        })?;
    file.write_all(text.as_bytes())
        .map_err(|source| MigrateError::Read {
            path: path.to_owned(),
            source,
        })
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let migration = match migrate(&args) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("migrate-from-python: {e}");
            return Ok(ExitCode::FAILURE);
        }
    };
    match &args.out {
        Some(out) => {
            for (name, text) in [
                ("config.toml", &migration.config),
                ("privhelper.toml", &migration.policy),
            ] {
                if let Err(e) = write_new(&out.join(name), text) {
                    eprintln!("migrate-from-python: {e}");
                    return Ok(ExitCode::FAILURE);
                }
                outln!("wrote {}", out.join(name).display());
            }
        }
        None => outln!(
            "# ===== /etc/durhack-deployer/config.toml =====\n{}\n# ===== /etc/durhack-deployer/privhelper.toml =====\n{}",
            migration.config,
            migration.policy
        ),
    }
    outln!(
        "\n# ===== then, as root =====\n{}",
        migration.steps.trim_end()
    );
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::valid_deployment_name;

    fn rules(text: &str) -> Vec<toml::Value> {
        let t: toml::Table = toml::from_str(text).unwrap();
        t["sites"].as_array().unwrap().clone()
    }

    #[test]
    fn the_old_site_filter() {
        let include = rules("[[sites]]\nrule = \"include\"\nselect = [\"b.com\", \"a.com\"]\n");
        assert_eq!(
            selected_sites(&include, &["c.com".into()]),
            ["a.com", "b.com"]
        );
        let all_but = rules(
            "[[sites]]\nrule = \"include\"\nselect = [\"x.com\"]\n[[sites]]\nrule = \"include\"\nselect = [\"*\"]\n[[sites]]\nrule = \"exclude\"\nselect = [\"b.com\"]\n",
        );
        let found = ["a.com".to_string(), "b.com".to_string()];
        assert_eq!(selected_sites(&all_but, &found), ["a.com"]);
    }

    #[test]
    fn names_and_quoting() {
        assert_eq!(deployment_name("DurHack.API"), "durhack-api");
        assert!(valid_deployment_name(&deployment_name("--x")));
        assert_eq!(
            shell_quote("/etc/nginx/conf.d/[a.com].conf"),
            "'/etc/nginx/conf.d/[a.com].conf'"
        );
        for tricky in ["a\"b", "a'b\"c", "x\\y", "[a.com]"] {
            let t: toml::Table = toml::from_str(&format!("k = {}", q(tricky))).unwrap();
            assert_eq!(t["k"].as_str(), Some(tricky));
        }
    }
}
