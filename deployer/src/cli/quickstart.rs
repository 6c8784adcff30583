//! `durhack-deployer quickstart`: try the whole pipeline on a laptop, with no root and no helper.
//!
//! It prepares (idempotently) a directory holding a local bare repository with a demo app — a
//! stand-in for GitHub — a webhook secret and a configuration rendered from
//! `deploy/quickstart.toml`, then runs the daemon in the foreground on the embedded defaults
//! (SQLite ledger and local locks in the directory). `send-test-push --new-commit` then adds a
//! commit to the demo repository and sends the push GitHub would, so each one is a new deploy.

use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};

use anyhow::{Context, bail};
use tokio_util::sync::CancellationToken;

use crate::config::Config;

/// The configuration template; `{{DIR}}`, `{{LISTEN}}` and `{{SANDBOX}}` are filled in.
const TEMPLATE: &str = include_str!("../../../deploy/quickstart.toml");
/// The demo deployment's name and branch in the template.
pub(super) const DEMO_DEPLOYMENT: &str = "demo";
const DEMO_BRANCH: &str = "main";

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Where to keep the demo [default: $XDG_STATE_HOME/durhack-deployer-quickstart, that is
    /// ~/.local/state/durhack-deployer-quickstart].
    #[arg(long)]
    dir: Option<PathBuf>,
    /// The address the webhook endpoint listens on.
    #[arg(long, default_value = "127.0.0.1:3400")]
    listen: SocketAddr,
    /// Prepare the directory and print what to do, but do not start the daemon.
    #[arg(long)]
    prepare_only: bool,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let dir = match args.dir {
        Some(d) => absolute(&d)?,
        None => default_dir()?,
    };
    // Rewriting the config under a running daemon would change what it serves behind its back.
    if crate::presence::daemon_running(&dir.join("state")) {
        bail!(
            "a quickstart daemon is already running on {} (its Ctrl-C stops it); stop it first, \
             or pass another --dir",
            dir.display()
        );
    }
    let config_path = prepare(&dir, args.listen)?;
    let config = Config::load(&config_path)
        .with_context(|| format!("the generated {}", config_path.display()))?;
    print_banner(&dir, &config_path, &config);
    if args.prepare_only {
        return Ok(ExitCode::SUCCESS);
    }
    serve(config)
}

/// `$XDG_STATE_HOME/durhack-deployer-quickstart`, or `~/.local/state/…`: outside any checkout,
/// so running it from the source tree leaves the tree clean, and the same place every time.
fn default_dir() -> anyhow::Result<PathBuf> {
    let state_home = match std::env::var_os("XDG_STATE_HOME").filter(|v| !v.is_empty()) {
        Some(v) => PathBuf::from(v),
        None => {
            let home = std::env::var_os("HOME")
                .filter(|v| !v.is_empty())
                .context("neither XDG_STATE_HOME nor HOME is set: pass --dir")?;
            PathBuf::from(home).join(".local/state")
        }
    };
    absolute(&state_home.join("durhack-deployer-quickstart"))
}

fn absolute(path: &Path) -> anyhow::Result<PathBuf> {
    std::path::absolute(path).with_context(|| format!("cannot resolve {}", path.display()))
}

/// Creates what is missing under `dir` and (re)writes its config; returns the config's path.
fn prepare(dir: &Path, listen: SocketAddr) -> anyhow::Result<PathBuf> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("cannot create {}", dir.display()))?;

    let secret_path = dir.join("webhook-secret");
    if !secret_path.exists() {
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&secret_path)
            .with_context(|| format!("cannot create {}", secret_path.display()))?;
        writeln!(f, "{}", hex::encode(bytes))?;
    }

    let repo = dir.join("demo.git");
    if !repo.join("HEAD").exists() {
        git(&repo, &["init", "--quiet", "--bare"], None, true)?;
        git(
            &repo,
            &["symbolic-ref", "HEAD", &format!("refs/heads/{DEMO_BRANCH}")],
            None,
            false,
        )?;
    }
    if branch_head(&repo, DEMO_BRANCH)?.is_none() {
        add_demo_commit(&repo, DEMO_BRANCH)?;
    }

    // The deployment path exists and is empty, as the installer leaves it on a server.
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(dir.join("app"))?;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir.join("state"))?;

    let config_path = dir.join("config.toml");
    let text = render(dir, listen)?;
    std::fs::write(&config_path, text)
        .with_context(|| format!("cannot write {}", config_path.display()))?;
    Ok(config_path)
}

/// The template with its placeholders filled; `dir` lands inside TOML basic strings.
fn render(dir: &Path, listen: SocketAddr) -> anyhow::Result<String> {
    let dir = dir
        .to_str()
        .with_context(|| format!("{} is not UTF-8: pass another --dir", dir.display()))?;
    if dir.chars().any(char::is_control) {
        bail!("{dir:?} contains control characters: pass another --dir");
    }
    let dir = dir.replace('\\', "\\\\").replace('"', "\\\"");
    // The demo runs sandboxed wherever bubblewrap works, and unsandboxed (said in the banner)
    // elsewhere, so that the quickstart works on any machine.
    let sandbox = crate::worker::sandbox::availability().is_ok();
    Ok(TEMPLATE
        .replace("{{DIR}}", &dir)
        .replace("{{LISTEN}}", &listen.to_string())
        .replace("{{SANDBOX}}", if sandbox { "true" } else { "false" }))
}

fn print_banner(dir: &Path, config_path: &Path, config: &Config) {
    let exe = super::this_program();
    let d = dir.display();
    let c = config_path.display();
    let listen = config.listen;
    let sandbox = match crate::worker::sandbox::availability() {
        Ok(()) => "on: the demo's commands run in bubblewrap".to_owned(),
        Err(why) => format!("OFF for the demo (sandbox = false): {why}"),
    };
    outln!(
        "durhack-deployer quickstart

  directory    {d}
  config       {c}
  repository   {d}/demo.git  (branch {DEMO_BRANCH}; stands in for GitHub)
  deployment   {DEMO_DEPLOYMENT} -> {d}/app  (runs build.sh, which writes built.txt)
  ledger       SQLite in {d}/state, local locks, no root, no helper
  webhook      http://{listen}/github-webhook
  sandbox      {sandbox}

In another terminal, add a commit to the demo repository and send the push GitHub would send:

  {exe} send-test-push --config {c} {DEMO_DEPLOYMENT} --new-commit

then follow the deploy's own log (its commands' output) as it runs:

  {exe} logs --follow --config {c} {DEMO_DEPLOYMENT}

and look at the result (this terminal shows the daemon's log: pushes received, runs started
and finished):

  cat {d}/app/built.txt
  {exe} status --config {c}
  {exe} runs --config {c} {DEMO_DEPLOYMENT}

Ctrl-C stops it (a deploy under way gets up to 30 s; Ctrl-C again stops it at once);
running quickstart again carries on where it left off.
"
    );
}

fn serve(config: Config) -> anyhow::Result<ExitCode> {
    super::init_logging();
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    let listen = config.listen;
    runtime
        .block_on(async move {
            let shutdown = CancellationToken::new();
            tokio::spawn(super::serve::stop_on_signals(
                shutdown.clone(),
                config.state_dir.clone(),
            ));
            crate::daemon::run_with_ready(config, shutdown, |addr| {
                eprintln!("ready: listening on http://{addr}/github-webhook, send a push now");
            })
            .await
        })
        .map_err(|e| {
            // The usual first-run stumble: another quickstart (or anything) already on the port.
            if format!("{e:#}").contains("cannot listen") {
                e.context(format!(
                    "is something else on {listen}? pass --listen 127.0.0.1:<another port>"
                ))
            } else {
                e
            }
        })?;
    Ok(ExitCode::SUCCESS)
}

// ---- the demo repository, written with git's plumbing (no working tree, no user config) ----

/// Is `remote` a bare repository on this machine, which the demo commits can be added to?
pub(super) fn is_local_bare_repository(remote: &str) -> bool {
    let path = local_path(remote);
    path.is_absolute()
        && path.join("HEAD").is_file()
        && git(path, &["rev-parse", "--is-bare-repository"], None, false)
            .is_ok_and(|out| out.trim() == "true")
}

/// The local path of a `file://` or plain-path remote.
pub(super) fn local_path(remote: &str) -> &Path {
    Path::new(remote.strip_prefix("file://").unwrap_or(remote))
}

/// The commit `branch` points at in `git_dir`, if the branch exists.
pub(super) fn branch_head(git_dir: &Path, branch: &str) -> anyhow::Result<Option<String>> {
    let out = Command::new("git")
        .arg("--git-dir")
        .arg(git_dir)
        .args([
            "rev-parse",
            "--verify",
            "--quiet",
            &format!("refs/heads/{branch}^{{commit}}"),
        ])
        .envs(git_env())
        .stderr(Stdio::null())
        .output()
        .context("cannot run git (is it installed?)")?;
    if !out.status.success() {
        return Ok(None);
    }
    Ok(Some(String::from_utf8_lossy(&out.stdout).trim().to_owned()))
}

/// Adds a commit to `branch` of the bare repository `git_dir` that bumps the demo app's version
/// (creating the app on the first call). Returns (previous head, new commit).
pub(super) fn add_demo_commit(
    git_dir: &Path,
    branch: &str,
) -> anyhow::Result<(Option<String>, String)> {
    let old = branch_head(git_dir, branch)?;
    // A private index inside the repository, so concurrent calls do not share one.
    let index = git_dir.join(format!("quickstart-index-{}", std::process::id()));
    let result: anyhow::Result<String> = (|| {
        let index_env = Some(index.as_path());
        let version = match &old {
            Some(old) => {
                git(git_dir, &["read-tree", old], index_env, false)?;
                let current = git(
                    git_dir,
                    &["cat-file", "blob", &format!("{old}:version.txt")],
                    None,
                    false,
                )
                .unwrap_or_default();
                current.trim().parse::<u64>().unwrap_or(0) + 1
            }
            None => 1,
        };
        let version_text = format!("{version}\n");
        let mut files: Vec<(&str, &str, &str)> =
            vec![("100644", "version.txt", version_text.as_str())];
        if old.is_none() {
            files.extend([
                ("100644", "README.md", DEMO_README),
                ("100755", "build.sh", DEMO_BUILD),
                ("100644", ".gitignore", "built.txt\n"),
            ]);
        }
        for (mode, name, content) in files {
            let blob = git_with_input(git_dir, &["hash-object", "-w", "--stdin"], content)?;
            git(
                git_dir,
                &[
                    "update-index",
                    "--add",
                    "--cacheinfo",
                    &format!("{mode},{},{name}", blob.trim()),
                ],
                index_env,
                false,
            )?;
        }
        let tree = git(git_dir, &["write-tree"], index_env, false)?;
        let message = if version == 1 {
            "demo: the quickstart's demo app".to_owned()
        } else {
            format!("demo: version {version}")
        };
        let mut args = vec!["commit-tree", "--no-gpg-sign", tree.trim(), "-m", &message];
        if let Some(old) = &old {
            args.extend(["-p", old]);
        }
        let commit = git(git_dir, &args, None, false)?.trim().to_owned();
        // Compare-and-swap on the old head: a concurrent push is refused, not lost.
        let zero = "0".repeat(40);
        let expected = old.as_deref().unwrap_or(&zero);
        git(
            git_dir,
            &[
                "update-ref",
                "-m",
                &message,
                &format!("refs/heads/{branch}"),
                &commit,
                expected,
            ],
            None,
            false,
        )?;
        Ok(commit)
    })();
    let _ = std::fs::remove_file(&index);
    Ok((old, result?))
}

const DEMO_README: &str = "# The quickstart's demo app

Each deploy runs `build.sh` in the deployment's working tree, which writes `built.txt`.
`durhack-deployer send-test-push --new-commit` bumps `version.txt` with a new commit.
";

const DEMO_BUILD: &str = r#"#!/bin/sh
# The demo's build step: run by the deployer in the working tree, as you, on every deploy.
set -eu
echo "building the demo app, version $(cat version.txt)"
echo "${DEMO_GREETING:-hello}"
{
    echo "version: $(cat version.txt)"
    echo "built: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
} > built.txt
echo "wrote built.txt"
"#;

/// The author and committer of demo commits, and no system or global git config: the demo must
/// not depend on (or be signed by) whoever runs it.
fn git_env() -> [(&'static str, &'static str); 6] {
    [
        ("GIT_AUTHOR_NAME", "durhack-deployer quickstart"),
        ("GIT_AUTHOR_EMAIL", "quickstart@durhack-deployer.invalid"),
        ("GIT_COMMITTER_NAME", "durhack-deployer quickstart"),
        ("GIT_COMMITTER_EMAIL", "quickstart@durhack-deployer.invalid"),
        ("GIT_CONFIG_NOSYSTEM", "1"),
        ("GIT_CONFIG_GLOBAL", "/dev/null"),
    ]
}

/// Runs `git` on `git_dir` (or, for `init`, creating it); returns stdout, or an error with stderr.
fn git(
    git_dir: &Path,
    args: &[&str],
    index: Option<&Path>,
    creating: bool,
) -> anyhow::Result<String> {
    let mut cmd = Command::new("git");
    if creating {
        cmd.args(args).arg(git_dir);
    } else {
        cmd.arg("--git-dir").arg(git_dir).args(args);
    }
    cmd.envs(git_env());
    if let Some(index) = index {
        cmd.env("GIT_INDEX_FILE", index);
    }
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .context("cannot run git (is it installed?)")?;
    git_stdout(args, &out)
}

/// `git`'s stdout, or an error naming the command with its stderr.
fn git_stdout(args: &[&str], out: &std::process::Output) -> anyhow::Result<String> {
    if !out.status.success() {
        bail!(
            "git {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn git_with_input(git_dir: &Path, args: &[&str], input: &str) -> anyhow::Result<String> {
    let mut child = Command::new("git")
        .arg("--git-dir")
        .arg(git_dir)
        .args(args)
        .envs(git_env())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot run git (is it installed?)")?;
    child
        .stdin
        .take()
        .context("git's stdin")?
        .write_all(input.as_bytes())?;
    let out = child.wait_with_output()?;
    git_stdout(args, &out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_renders_to_a_valid_config() {
        let text = render(
            Path::new("/tmp/a \"quoted\" dir"),
            "127.0.0.1:4567".parse().unwrap(),
        )
        .unwrap();
        let config = Config::parse(&text, Path::new("quickstart.toml"), Some("s".into())).unwrap();
        assert_eq!(config.listen.port(), 4567);
        assert_eq!(
            config.state_dir,
            Path::new("/tmp/a \"quoted\" dir/state"),
            "the state dir is inside the quickstart dir"
        );
        let demo = &config.deployments[DEMO_DEPLOYMENT];
        assert_eq!(demo.branch, DEMO_BRANCH);
        assert_eq!(demo.remote, "/tmp/a \"quoted\" dir/demo.git");
        assert!(demo.sites.is_empty(), "the quickstart needs no helper");
        assert!(config.database_url.is_none() && config.redis_url.is_none());
        assert!(!text.contains("{{"), "every placeholder is filled");
    }

    #[test]
    fn demo_commits_bump_the_version() {
        if !testkit::prereq::require(
            "git",
            testkit::prereq::have_program("git"),
            "the demo repository is written with git",
        ) {
            return;
        }
        let tmp = std::env::temp_dir().join(format!("dd-quickstart-unit-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        let repo = tmp.join("demo.git");
        git(&repo, &["init", "--quiet", "--bare"], None, true).unwrap();
        let (old, first) = add_demo_commit(&repo, "main").unwrap();
        assert_eq!(old, None);
        let (old, second) = add_demo_commit(&repo, "main").unwrap();
        assert_eq!(old.as_deref(), Some(first.as_str()));
        assert_eq!(
            branch_head(&repo, "main").unwrap().as_deref(),
            Some(second.as_str())
        );
        let version = git(
            &repo,
            &["cat-file", "blob", "main:version.txt"],
            None,
            false,
        )
        .unwrap();
        assert_eq!(version, "2\n");
        let build = git(&repo, &["ls-tree", "main", "build.sh"], None, false).unwrap();
        assert!(build.starts_with("100755 "), "{build}");
        assert!(is_local_bare_repository(repo.to_str().unwrap()));
        assert!(!is_local_bare_repository("https://github.com/o/r.git"));
        std::fs::remove_dir_all(&tmp).unwrap();
    }
}
