//! `durhack-deployer send-test-push`: sign and send a realistic push webhook for a deployment to a
//! running instance, so an operator can check an install (and a newcomer can watch the quickstart
//! deploy) without pushing to GitHub.
//!
//! The push is for the deployment's repository and branch, at the branch head of its remote (from
//! `git ls-remote`) or `--sha`; `--new-commit` first adds a commit to the remote when that is a
//! local bare repository, such as the quickstart's demo. It is signed with the config's webhook
//! secret exactly as GitHub signs (`X-Hub-Signature-256`), so it exercises the real endpoint.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::process::{Command, ExitCode, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::{Value, json};

use super::quickstart;
use crate::config::{Config, Deployment};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    config: super::ConfigArg,
    /// The deployment to push to (its repository and branch).
    deployment: String,
    /// The webhook URL [default: http://<listen>/github-webhook from the config].
    #[arg(long)]
    url: Option<String>,
    /// The commit to push [default: the branch head of the deployment's remote].
    #[arg(long, conflicts_with = "new_commit")]
    sha: Option<String>,
    /// First add a new commit to the deployment's remote, which must be a local bare repository
    /// (the quickstart's demo), so every push is a new deploy.
    #[arg(long)]
    new_commit: bool,
    /// The client address to present in X-Forwarded-For [default, when posting straight to the
    /// listen address with `trusted_proxy_hops` > 0: a GitHub hook address that
    /// `allowed_networks` accepts].
    #[arg(long)]
    forwarded_for: Option<IpAddr>,
    /// Also trust this PEM CA certificate for an `https://` `--url` (a private or staging ACME
    /// CA, such as the test suite's pebble); the built-in web roots are trusted either way.
    #[arg(long, value_name = "PEM")]
    cacert: Option<std::path::PathBuf>,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let config = Config::load(&args.config.config)?;
    let deployment = super::find_deployment(&config, &args.deployment)?;
    if !deployment.enabled {
        eprintln!(
            "note: deployment `{}` is disabled (enabled = false); the push will not deploy it",
            deployment.name
        );
    }

    // Straight to the daemon, or through the proxies in front of it (`--url`)?
    let direct = args.url.is_none();
    let url = match args.url {
        Some(url) => url,
        None => default_url(config.listen),
    };
    let extra_root =
        match &args.cacert {
            Some(path) => {
                let pem = std::fs::read(path)
                    .with_context(|| format!("cannot read --cacert {}", path.display()))?;
                Some(reqwest::Certificate::from_pem(&pem).with_context(|| {
                    format!("--cacert {} is not a PEM certificate", path.display())
                })?)
            }
            None => None,
        };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let client = {
        let mut client = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .user_agent("GitHub-Hookshot/send-test-push");
        if let Some(root) = extra_root {
            client = client.add_root_certificate(root);
        }
        client.build()?
    };
    if args.new_commit {
        // Checked before the commit: a push that cannot be sent must not leave a commit behind
        // that no deploy will ever be asked for.
        runtime
            .block_on(async { client.get(origin(&url)).send().await })
            .with_context(|| {
                format!(
                    "cannot reach {url} (is the deployer running? `durhack-deployer quickstart` \
                 starts the demo's); no commit added"
                )
            })?;
    }
    let (before, after) = if args.new_commit {
        if !quickstart::is_local_bare_repository(&deployment.remote) {
            bail!(
                "--new-commit adds a commit to the deployment's remote, which must be a local bare \
                 repository (like the quickstart's demo); `{}` is not",
                deployment.remote
            );
        }
        let (old, new) = quickstart::add_demo_commit(
            quickstart::local_path(&deployment.remote),
            &deployment.branch,
        )?;
        outln!(
            "added commit {new} to {} ({})",
            deployment.remote,
            deployment.branch
        );
        (old, new)
    } else {
        let sha = match args.sha {
            Some(sha) => {
                if !crate::dispatch::is_sha(&sha) {
                    bail!("--sha must be a full 40-hex commit id, not `{sha}`");
                }
                sha.to_ascii_lowercase()
            }
            None => super::remote_branch_head(deployment)?,
        };
        (None, sha)
    };

    let local = quickstart::is_local_bare_repository(&deployment.remote)
        .then(|| quickstart::local_path(&deployment.remote));
    let payload = push_payload(deployment, before.as_deref(), &after, local);
    let body = serde_json::to_vec(&payload)?;
    let xff = forwarded_for(&config, args.forwarded_for, direct)?;
    let delivery = delivery_id()?;
    let signature =
        crate::http::signature::sign(config.github.webhook_secret.expose().as_bytes(), &body);

    outln!(
        "POST {url}\n  X-GitHub-Event: push\n  X-GitHub-Delivery: {delivery}\n  push of {} {} to {}",
        deployment.repository,
        deployment.branch,
        after
    );
    if let Some(xff) = &xff {
        outln!("  X-Forwarded-For: {xff}  (as the proxy in front would send it)");
    }
    let (status, answer) = runtime.block_on(async {
        let mut request = client.post(&url);
        if let Some(xff) = &xff {
            request = request.header("X-Forwarded-For", xff);
        }
        let response = request
            .header("Content-Type", "application/json")
            .header("X-GitHub-Event", "push")
            .header("X-GitHub-Delivery", &delivery)
            .header("X-GitHub-Hook-Installation-Target-Type", "repository")
            .header("X-Hub-Signature-256", &signature)
            .body(body)
            .send()
            .await
            .with_context(|| format!("cannot reach {url} (is the deployer running?)"))?;
        let status = response.status();
        let answer = response.text().await.unwrap_or_default();
        anyhow::Ok((status, answer))
    })?;
    outln!("{status}\n{answer}");
    if status.is_success() {
        outln!(
            "\nqueued: follow the deploy with `{} logs --follow --config {} {}`",
            super::this_program(),
            args.config.config.display(),
            deployment.name
        );
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("send-test-push: the deployer refused the push ({status})");
        Ok(ExitCode::FAILURE)
    }
}

/// GitHub hook source addresses (https://api.github.com/meta, "hooks"), one per published range.
const GITHUB_HOOK_ADDRESSES: [&str; 6] = [
    "140.82.112.1",
    "192.30.252.1",
    "185.199.108.1",
    "143.55.64.1",
    "2a0a:a440::1",
    "2606:50c0::1",
];

/// The X-Forwarded-For header to send, if any. Behind `trusted_proxy_hops` proxies the daemon
/// reads the client from that header, so a post straight to it (bypassing the proxies) carries
/// the header the proxies would have written: the client, then one loopback entry per further hop.
/// Through the proxies (`--url`) they add their own entries; only an explicit address is sent.
fn forwarded_for(
    config: &Config,
    explicit: Option<IpAddr>,
    direct: bool,
) -> anyhow::Result<Option<String>> {
    let hops = config.github.trusted_proxy_hops;
    if !direct || hops == 0 {
        return Ok(explicit.map(|ip| ip.to_string()));
    }
    let networks = &config.github.allowed_networks;
    let client = match explicit {
        Some(ip) => ip,
        None if networks.is_empty() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        None => GITHUB_HOOK_ADDRESSES
            .iter()
            .filter_map(|a| a.parse::<IpAddr>().ok())
            .find(|ip| networks.iter().any(|n| n.contains(*ip)))
            .context(
                "no GitHub hook address is in github.allowed_networks: pass --forwarded-for \
                 with an address it allows",
            )?,
    };
    let mut entries = vec![client.to_string()];
    entries.extend(std::iter::repeat_n("127.0.0.1".to_owned(), hops - 1));
    Ok(Some(entries.join(", ")))
}

/// `scheme://authority/` of `url`, where `GET` answers if anything listens.
fn origin(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority = rest.split_once('/').map_or(rest, |(a, _)| a);
    format!("{scheme}://{authority}/")
}

/// The endpoint on the configured listen address; a wildcard address is reached on loopback.
fn default_url(listen: SocketAddr) -> String {
    let ip = match listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    format!(
        "http://{}/github-webhook",
        SocketAddr::new(ip, listen.port())
    )
}

/// A GitHub-style delivery id (a random UUID v4).
fn delivery_id() -> anyhow::Result<String> {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    Ok(format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    ))
}

/// What `git log` knows about a commit in a local repository, for a realistic `head_commit`.
struct CommitInfo {
    tree: String,
    author: (String, String),
    committer: (String, String),
    timestamp: String,
    message: String,
    added: Vec<String>,
    removed: Vec<String>,
    modified: Vec<String>,
}

fn commit_info(git_dir: &Path, sha: &str) -> Option<CommitInfo> {
    let run = |args: &[&str]| -> Option<String> {
        let out = Command::new("git")
            .arg("--git-dir")
            .arg(git_dir)
            .args(args)
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let log = run(&[
        "log",
        "-1",
        "--format=%T%x00%an%x00%ae%x00%cn%x00%ce%x00%cI%x00%B",
        sha,
    ])?;
    let mut f = log.splitn(7, '\0');
    let mut next = || f.next().unwrap_or_default().to_owned();
    let (tree, an, ae, cn, ce, timestamp, message) =
        (next(), next(), next(), next(), next(), next(), next());
    let (mut added, mut removed, mut modified) = (Vec::new(), Vec::new(), Vec::new());
    let changes = run(&[
        "diff-tree",
        "--root",
        "--no-commit-id",
        "--name-status",
        "-r",
        sha,
    ])
    .unwrap_or_default();
    for line in changes.lines() {
        if let Some((status, path)) = line.split_once('\t') {
            let list = match status.chars().next() {
                Some('A') => &mut added,
                Some('D') => &mut removed,
                _ => &mut modified,
            };
            list.push(path.to_owned());
        }
    }
    Some(CommitInfo {
        tree,
        author: (an, ae),
        committer: (cn, ce),
        timestamp,
        message: message.trim_end().to_owned(),
        added,
        removed,
        modified,
    })
}

/// A push payload in GitHub's shape. `before` is the previous head when it is known (a new
/// commit, or the parent in a local repository); otherwise it is `after` itself, which reads as
/// "the branch did not move" — a redeploy of its head.
fn push_payload(
    deployment: &Deployment,
    before: Option<&str>,
    after: &str,
    local_repo: Option<&Path>,
) -> Value {
    let full_name = &deployment.repository;
    let (owner, name) = full_name.split_once('/').unwrap_or((full_name, full_name));
    let html_url = format!("https://github.com/{full_name}");
    let info = local_repo.and_then(|repo| commit_info(repo, after));
    let before = before.map(str::to_owned).unwrap_or_else(|| {
        local_repo
            .and_then(|repo| {
                let out = Command::new("git")
                    .arg("--git-dir")
                    .arg(repo)
                    .args(["rev-parse", "--verify", "--quiet", &format!("{after}^")])
                    .stderr(Stdio::null())
                    .output()
                    .ok()?;
                let sha = String::from_utf8_lossy(&out.stdout).trim().to_owned();
                (out.status.success() && crate::dispatch::is_sha(&sha)).then_some(sha)
            })
            .unwrap_or_else(|| after.to_owned())
    });
    let person = |(n, e): &(String, String)| json!({ "name": n, "email": e, "username": null });
    let head_commit = match &info {
        Some(i) => json!({
            "id": after,
            "tree_id": i.tree,
            "distinct": true,
            "message": i.message,
            "timestamp": i.timestamp,
            "url": format!("{html_url}/commit/{after}"),
            "author": person(&i.author),
            "committer": person(&i.committer),
            "added": i.added,
            "removed": i.removed,
            "modified": i.modified,
        }),
        None => json!({
            "id": after,
            "tree_id": null,
            "distinct": true,
            "message": format!("send-test-push: {} at {}", deployment.branch, &after[..12]),
            "timestamp": now_rfc3339(),
            "url": format!("{html_url}/commit/{after}"),
            "author": { "name": "send-test-push", "email": "send-test-push@durhack-deployer.invalid", "username": null },
            "committer": { "name": "send-test-push", "email": "send-test-push@durhack-deployer.invalid", "username": null },
            "added": [],
            "removed": [],
            "modified": [],
        }),
    };
    // GitHub's clone_url is always https; a local remote (the quickstart) is not a GitHub URL.
    let clone_url = if deployment.remote.starts_with("https://") {
        deployment.remote.clone()
    } else {
        format!("{html_url}.git")
    };
    json!({
        "ref": format!("refs/heads/{}", deployment.branch),
        "before": before,
        "after": after,
        "created": false,
        "deleted": false,
        "forced": false,
        "base_ref": null,
        "compare": format!("{html_url}/compare/{}...{}", &before[..12.min(before.len())], &after[..12]),
        "commits": if before == after { json!([]) } else { json!([head_commit.clone()]) },
        "head_commit": head_commit,
        "repository": {
            "name": name,
            "full_name": full_name,
            "private": false,
            "owner": { "name": owner, "login": owner },
            "html_url": html_url,
            "url": html_url,
            "clone_url": clone_url,
            "git_url": format!("git://github.com/{full_name}.git"),
            "ssh_url": format!("git@github.com:{full_name}.git"),
            "default_branch": deployment.branch,
            "master_branch": deployment.branch,
        },
        "pusher": { "name": "send-test-push", "email": "send-test-push@durhack-deployer.invalid" },
        "sender": { "login": "send-test-push", "type": "User" },
    })
}

fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deployment() -> Deployment {
        let text = "[deployments.durhack]\nrepository = \"ducompsoc/durhack\"\nbranch = \"main\"\npath = \"/var/www/durhack\"\n";
        Config::parse(text, Path::new("t.toml"), Some("s".into()))
            .unwrap()
            .deployments
            .remove("durhack")
            .unwrap()
    }

    #[test]
    fn payload_has_githubs_shape() {
        let sha = "a".repeat(40);
        let before = "b".repeat(40);
        let p = push_payload(&deployment(), Some(&before), &sha, None);
        assert_eq!(p["ref"], "refs/heads/main");
        assert_eq!(p["after"], sha.as_str());
        assert_eq!(p["before"], before.as_str());
        assert_eq!(p["repository"]["full_name"], "ducompsoc/durhack");
        assert_eq!(
            p["repository"]["clone_url"],
            "https://github.com/ducompsoc/durhack.git"
        );
        assert_eq!(p["head_commit"]["id"], sha.as_str());
        assert_eq!(p["commits"].as_array().unwrap().len(), 1);
        for flag in ["created", "deleted", "forced"] {
            assert_eq!(p[flag], false, "{flag}");
        }
        // Without a known previous head, the push is a redeploy of the head.
        let p = push_payload(&deployment(), None, &sha, None);
        assert_eq!(p["before"], sha.as_str());
        assert!(p["commits"].as_array().unwrap().is_empty());
    }

    #[test]
    fn delivery_ids_are_uuid_like_and_distinct() {
        let a = delivery_id().unwrap();
        let b = delivery_id().unwrap();
        assert_ne!(a, b);
        assert_eq!(a.len(), 36);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit() || c == b'-'));
        assert_eq!(a.as_bytes()[14], b'4');
    }

    #[test]
    fn forwarded_for_mimics_the_proxies_only_when_bypassing_them() {
        let config = |extra: &str| {
            Config::parse(
                &format!("[github]\n{extra}"),
                Path::new("t.toml"),
                Some("s".into()),
            )
            .unwrap()
        };
        let none = config("");
        assert_eq!(forwarded_for(&none, None, true).unwrap(), None);
        let behind_nginx = config(
            "trusted_proxy_hops = 2\nallowed_networks = [\"185.199.108.0/22\", \"2a0a:a440::/29\"]",
        );
        assert_eq!(
            forwarded_for(&behind_nginx, None, true).unwrap().as_deref(),
            Some("185.199.108.1, 127.0.0.1")
        );
        assert_eq!(forwarded_for(&behind_nginx, None, false).unwrap(), None);
        let explicit = Some("10.1.2.3".parse().unwrap());
        assert_eq!(
            forwarded_for(&behind_nginx, explicit, false)
                .unwrap()
                .as_deref(),
            Some("10.1.2.3")
        );
        let open = config("trusted_proxy_hops = 1");
        assert_eq!(
            forwarded_for(&open, None, true).unwrap().as_deref(),
            Some("127.0.0.1")
        );
        let private = config("trusted_proxy_hops = 1\nallowed_networks = [\"10.0.0.0/8\"]");
        assert!(forwarded_for(&private, None, true).is_err());
    }

    #[test]
    fn default_url_reaches_a_wildcard_listener_on_loopback() {
        assert_eq!(
            default_url("0.0.0.0:3400".parse().unwrap()),
            "http://127.0.0.1:3400/github-webhook"
        );
        assert_eq!(
            default_url("[::]:3400".parse().unwrap()),
            "http://[::1]:3400/github-webhook"
        );
        assert_eq!(
            default_url("127.0.0.1:9".parse().unwrap()),
            "http://127.0.0.1:9/github-webhook"
        );
    }
}
