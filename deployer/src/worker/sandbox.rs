//! The build sandbox: every command a deployment runs goes through bubblewrap (`bwrap`, the tool
//! Flatpak relies on) with a fixed argv built here, and always with a clean environment.
//!
//! Inside: `/` read-only; the deployment's `path` and its home (`state_dir/homes/<name>` unless
//! `home` is set) read-write; a private `/tmp`, `/dev` and `/proc` of a new PID namespace (the
//! daemon is not there to be seen, signalled or traced); a new IPC namespace; no further user
//! namespaces. Hidden behind empty tmpfs mounts: `state_dir` (queues, ledger, locks, logs,
//! process-group records), the helper socket's directory, the config directory, and every other
//! deployment's `path` (a build has no reason to read another app's `.env` or to change its
//! tree, so hidden rather than read-only); the config, secret and token files and every
//! deployment's deploy key (`ssh_key_file`, with its directory) are covered by `/dev/null` too,
//! wherever they live. The network is kept: builds fetch packages.
//! The tree's `.git` is read-only: the daemon's own git commands run there, outside the sandbox.
//! Its git config (`.git/config`, or `path/repo/.git/config` for releases), which holds the
//! remote's URL and so any credentials in it, reads as empty.
//! `allow_sockets` paths are bound read-write last, so they stay reachable even inside a hidden
//! directory: they are holes, on purpose (PM2's `$PM2_HOME`). The hiding tmpfs mounts are then
//! made read-only: nothing can be written where the machinery was.
//!
//! The process group kill on timeout still reaches everything: `bwrap` is the group leader,
//! and `--die-with-parent` makes the sandbox's PID 1 die with it, which ends the PID namespace.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crate::config::{Config, Deployment, Layout};

/// The program; found through the daemon's `PATH`.
pub const BWRAP: &str = "bwrap";

/// `PATH` for commands when the daemon has none.
const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error(
        "the build sandbox is unavailable ({0}); install bubblewrap and allow user namespaces, or set `sandbox = false` for this deployment to run its commands unsandboxed"
    )]
    Unavailable(String),
    #[error("cannot create the deployment's home {path}: {source}")]
    Home {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// What the probe found: whether `--disable-userns` works here (it writes the sandbox's own
/// `/proc/sys/user/max_user_namespaces`, which some containers mount read-only).
#[derive(Debug, Clone, Copy)]
struct Support {
    blocks_nested_userns: bool,
}

fn support() -> &'static Result<Support, String> {
    static SUPPORT: OnceLock<Result<Support, String>> = OnceLock::new();
    SUPPORT.get_or_init(|| match run_probe(true) {
        Ok(()) => Ok(Support {
            blocks_nested_userns: true,
        }),
        Err(strict) => match run_probe(false) {
            Ok(()) => {
                tracing::warn!(
                    why = %strict,
                    "the build sandbox works here, but cannot refuse nested user namespaces (--disable-userns)"
                );
                Ok(Support {
                    blocks_nested_userns: false,
                })
            }
            Err(_) => Err(strict),
        },
    })
}

/// Whether `bwrap` can build the sandbox here (installed, user namespaces allowed, a fresh
/// `/proc` mountable), probed once per process; the error says why not.
pub fn availability() -> Result<(), &'static str> {
    support().as_ref().map(|_| ()).map_err(String::as_str)
}

/// Runs a sandbox with the same namespaces and mounts as a real one, around `true`.
fn run_probe(block_nested_userns: bool) -> Result<(), String> {
    let out = std::process::Command::new(BWRAP)
        .args(base_args(block_nested_userns))
        .args(["--", "true"])
        .env_clear()
        .env("PATH", daemon_path())
        .stdin(std::process::Stdio::null())
        .output();
    match out {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(format!(
            "`{BWRAP}` is not installed (Debian package bubblewrap)"
        )),
        Err(e) => Err(format!("cannot run `{BWRAP}`: {e}")),
        Ok(out) if out.status.success() => Ok(()),
        Ok(out) => {
            let stderr = String::from_utf8_lossy(&out.stderr);
            Err(format!(
                "`{BWRAP}` fails here: {}",
                stderr.lines().next().unwrap_or("no message").trim()
            ))
        }
    }
}

fn base_args(block_nested_userns: bool) -> impl Iterator<Item = &'static str> {
    BASE_ARGS
        .iter()
        .copied()
        .filter(move |a| block_nested_userns || *a != "--disable-userns")
}

/// The namespaces and fresh mounts every sandbox gets, before the per-deployment binds.
const BASE_ARGS: &[&str] = &[
    "--unshare-user",
    "--disable-userns",
    "--unshare-pid",
    "--unshare-ipc",
    "--die-with-parent",
    "--new-session",
    "--ro-bind",
    "/",
    "/",
    "--dev",
    "/dev",
    "--proc",
    "/proc",
    "--tmpfs",
    "/tmp",
];

/// The commands' home directory.
pub fn home(config: &Config, d: &Deployment) -> PathBuf {
    d.home
        .clone()
        .unwrap_or_else(|| config.state_dir.join("homes").join(&d.name))
}

/// Creates the home (mode 0700) if needed, so it can be bound into the sandbox.
pub fn ensure_home(home: &Path) -> Result<(), SandboxError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(home)
        .map_err(|source| SandboxError::Home {
            path: home.to_owned(),
            source,
        })
}

fn daemon_path() -> String {
    std::env::var("PATH").unwrap_or_else(|_| DEFAULT_PATH.to_owned())
}

/// The whole environment of a deployment's command, sandboxed or not: `PATH` and `LANG` (the
/// daemon's, or defaults), `HOME`, the `pass_env` variables the daemon has, the deployment's
/// `env`, then `deploy_vars` (the `DEPLOY_*` variables). Nothing else of the daemon's.
pub fn command_env(
    d: &Deployment,
    home: &Path,
    deploy_vars: &[(String, String)],
) -> Vec<(String, String)> {
    let mut env = vec![
        ("PATH".to_owned(), daemon_path()),
        ("HOME".to_owned(), home.to_string_lossy().into_owned()),
        (
            "LANG".to_owned(),
            std::env::var("LANG").unwrap_or_else(|_| "C.UTF-8".to_owned()),
        ),
    ];
    for name in &d.pass_env {
        if name == crate::config::SECRET_ENV {
            continue;
        }
        if let Ok(value) = std::env::var(name) {
            env.push((name.clone(), value));
        }
    }
    env.extend(d.env.iter().map(|(k, v)| (k.clone(), v.clone())));
    env.extend(deploy_vars.iter().cloned());
    // Later entries win, as the process environment would have it; keep one of each.
    let mut seen = std::collections::HashSet::new();
    let mut deduped: Vec<(String, String)> = env
        .into_iter()
        .rev()
        .filter(|(k, _)| seen.insert(k.clone()))
        .collect();
    deduped.reverse();
    deduped
}

/// `path` and, when it differs, its canonical form (a symlinked directory is hidden under both
/// names: bwrap mounts over the target).
fn with_canonical(path: &Path) -> Vec<PathBuf> {
    let mut out = vec![path.to_owned()];
    if let Ok(real) = std::fs::canonicalize(path)
        && real != path
    {
        out.push(real);
    }
    out
}

fn arg(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// A directory shared with the rest of the system (`/`, `/etc`): hiding it would break builds,
/// so only the files in it are covered.
fn too_broad_to_hide(dir: &Path) -> bool {
    dir.components().count() <= 2
}

/// The SQLite ledger's file, wherever `database_url` puts it.
fn sqlite_file(config: &Config) -> Option<PathBuf> {
    let url = config.effective_database_url();
    let rest = url.strip_prefix("sqlite:")?;
    let path = rest.trim_start_matches("//");
    let path = path.split('?').next().unwrap_or(path);
    Path::new(path).is_absolute().then(|| PathBuf::from(path))
}

/// What a command of `d` run in `cwd` may write besides its home: in place, the working tree;
/// in the releases layout, only the release it builds or serves from (`cwd`, `current` resolved)
/// and `path/shared`, never the git store, the other releases, their completion markers or the
/// `current` link, which the daemon trusts.
fn writable_trees(d: &Deployment, cwd: &Path) -> Vec<PathBuf> {
    match d.layout {
        Layout::InPlace => vec![d.path.clone()],
        Layout::Releases => {
            let release = std::fs::canonicalize(cwd).unwrap_or_else(|_| cwd.to_owned());
            let shared = d.path.join("shared");
            let mut trees = vec![release];
            trees.extend(shared.is_dir().then_some(shared));
            trees
        }
    }
}

/// The bwrap argv that runs a command of `d` in `cwd` (ending with `--`; the command's argv
/// follows).
pub fn bwrap_prefix(config: &Config, d: &Deployment, home: &Path, cwd: &Path) -> Vec<String> {
    let mut args: Vec<String> = std::iter::once(BWRAP)
        .chain(base_args(
            support().as_ref().map_or(true, |s| s.blocks_nested_userns),
        ))
        .map(str::to_owned)
        .collect();

    // Files: covered one by one wherever they live.
    let ledger = sqlite_file(config);
    let mut files: Vec<&Path> = vec![&config.config_file];
    files.extend(ledger.as_deref());
    files.extend(config.github.webhook_secret_file.as_deref());
    files.extend(config.github.token_file.as_deref());
    // Every deployment's deploy key, this one's too: git fetches outside the sandbox.
    let keys: Vec<&Path> = config
        .deployments
        .values()
        .filter_map(|o| o.ssh_key_file.as_deref())
        .collect();
    files.extend(keys.iter().copied());
    for file in files {
        for f in with_canonical(file) {
            if f.is_file() {
                args.extend(["--ro-bind".into(), "/dev/null".into(), arg(&f)]);
            }
        }
    }

    // Directories: replaced by an empty tmpfs. The parts of state_dir by name too, since any of
    // them may be a symlink out of it (the installer links logs/ to /var/log/durhack-deployer).
    let mut hidden: Vec<PathBuf> = vec![
        config.state_dir.clone(),
        config.logs_dir(),
        config.queues_dir(),
        config.locks_dir(),
    ];
    hidden.extend(
        sqlite_file(config)
            .as_deref()
            .and_then(Path::parent)
            .filter(|p| !too_broad_to_hide(p))
            .map(Path::to_owned),
    );
    hidden.extend(
        config
            .helper_socket
            .parent()
            .filter(|p| !too_broad_to_hide(p))
            .map(Path::to_owned),
    );
    let mut secret_dirs: Vec<&Path> = vec![&config.config_file];
    secret_dirs.extend(config.github.webhook_secret_file.as_deref());
    secret_dirs.extend(config.github.token_file.as_deref());
    secret_dirs.extend(keys.iter().copied());
    hidden.extend(
        secret_dirs
            .into_iter()
            .filter_map(Path::parent)
            .filter(|p| !too_broad_to_hide(p))
            .map(Path::to_owned),
    );
    // Other deployments: their trees and their homes (which may be set outside state_dir).
    for other in config.deployments.values().filter(|o| o.name != d.name) {
        hidden.push(other.path.clone());
        hidden.push(self::home(config, other));
    }
    let mut hidden: Vec<PathBuf> = hidden
        .iter()
        .flat_map(|p| with_canonical(p))
        // bwrap cannot create a mount point on the read-only root; a missing one hides nothing.
        .filter(|p| p.is_dir())
        .collect();
    hidden.sort();
    hidden.dedup();
    let hidden: Vec<PathBuf> = hidden
        .iter()
        .filter(|p| !hidden.iter().any(|q| q != *p && p.starts_with(q)))
        .cloned()
        .collect();

    let trees = writable_trees(d, cwd);
    let writable: Vec<PathBuf> = trees.iter().cloned().chain([home.to_owned()]).collect();
    let inside_writable = |p: &Path| writable.iter().any(|w| p.starts_with(w) && p != w);
    // Hidden directories above (or beside) the writable ones first: the binds that follow are
    // taken from the real file system and stay visible on top of the tmpfs.
    for dir in hidden.iter().filter(|p| !inside_writable(p)) {
        args.extend(["--tmpfs".into(), arg(dir)]);
    }
    for w in &writable {
        args.extend(["--bind".into(), arg(w), arg(w)]);
    }
    // The tree's .git read-only: the daemon runs git there, unsandboxed, before the next run, so
    // a hook or a config entry (core.fsmonitor, a filter) written by a build would run outside.
    // A release's .git is a file naming its git dir: rewritten, it would point the daemon's git
    // at a directory the build made.
    for tree in &trees {
        let git = tree.join(".git");
        if git.exists() {
            args.extend(["--ro-bind".into(), arg(&git), arg(&git)]);
        }
    }
    // The git config holds the remote's URL, credentials and all: covered, like the token, by
    // an empty file (git inside refuses an unreadable config, and a bound /dev/null is one:
    // bwrap binds with nodev). A build has no use for the remote.
    let git_config = match d.layout {
        Layout::InPlace => d.path.join(".git").join("config"),
        Layout::Releases => d.path.join("repo").join(".git").join("config"),
    };
    if git_config.is_file() {
        args.extend([
            "--ro-bind".into(),
            arg(&empty_file(config)),
            arg(&git_config),
        ]);
    }
    // Another deployment's tree inside ours (or state_dir inside the tree) is hidden after.
    let nested: Vec<&PathBuf> = hidden.iter().filter(|p| inside_writable(p)).collect();
    for dir in &nested {
        args.extend(["--tmpfs".into(), arg(dir)]);
    }
    if nested.iter().any(|n| home.starts_with(n)) {
        args.extend(["--bind".into(), arg(home), arg(home)]);
    }
    // Last, so nothing above hides them: the deliberate holes.
    for socket in &d.allow_sockets {
        args.extend(["--bind-try".into(), arg(socket), arg(socket)]);
    }
    // The hiding tmpfs mounts are made read-only once every mount point in them exists, so a
    // build cannot leave files there for a later command (or mistake them for the real thing).
    // Not recursive: the binds inside them stay writable.
    for dir in &hidden {
        args.extend(["--remount-ro".into(), arg(dir)]);
    }
    args.extend(["--chdir".into(), arg(cwd), "--".into()]);
    args
}

/// An empty file of the daemon's, in `state_dir`, to cover a file with; `/dev/null` if it cannot
/// be made (which hides as well, but reads as an error).
fn empty_file(config: &Config) -> PathBuf {
    let file = config.state_dir.join("sandbox-empty");
    let made = match std::fs::symlink_metadata(&file) {
        Ok(m) => m.is_file() && m.len() == 0,
        Err(_) => std::fs::write(&file, "").is_ok(),
    };
    if made {
        file
    } else {
        PathBuf::from("/dev/null")
    }
}

/// What the daemon says at start-up about the sandbox for each deployment, with a warning flag.
pub fn describe(d: &Deployment) -> (bool, String) {
    match (d.sandbox, availability()) {
        (false, _) => (
            true,
            format!(
                "{}: sandbox = false: its commands run unsandboxed, with the daemon's access (state, ledger, queues, helper socket)",
                d.name
            ),
        ),
        (true, Ok(())) => (false, format!("{}: commands run in the sandbox", d.name)),
        (true, Err(why)) => (
            true,
            format!(
                "{}: the build sandbox is unavailable ({why}): its runs will fail until bubblewrap works or it sets sandbox = false",
                d.name
            ),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(dir: &Path) -> Config {
        let text = format!(
            r#"
state_dir = "{d}/state"
helper_socket = "{d}/run/helper/privhelper.sock"
[github]
webhook_secret_file = "{d}/secrets/webhook-secret"
token_file = "{d}/secrets/token"
[deployments.a]
repository = "o/a"
branch = "main"
path = "{d}/www/a"
pass_env = ["KEEP_ME", "DURHACK_DEPLOYER_WEBHOOK_SECRET_NOT"]
allow_sockets = ["{d}/state/.pm2"]
env = {{ NODE_ENV = "production" }}
[deployments.b]
repository = "o/b"
branch = "main"
path = "{d}/www/b"
home = "{d}/cache/b"
[deployments.nested]
repository = "o/n"
branch = "main"
path = "{d}/www/a/nested"
"#,
            d = dir.display()
        );
        for sub in [
            "state/queues",
            "state/.pm2",
            "run/helper",
            "secrets",
            "etc",
            "www/a/nested",
            "www/a/.git",
            "www/b",
            "cache/b",
        ] {
            std::fs::create_dir_all(dir.join(sub)).unwrap();
        }
        std::fs::write(dir.join("secrets/webhook-secret"), "s").unwrap();
        std::fs::write(dir.join("secrets/token"), "t").unwrap();
        let file = dir.join("etc/config.toml");
        std::fs::write(&file, &text).unwrap();
        Config::load(&file).unwrap()
    }

    /// Position of `op target...` in the argv.
    fn find(args: &[String], op: &str, target: &Path) -> Option<usize> {
        let target = target.to_string_lossy();
        args.windows(2)
            .position(|w| w[0] == op && w[1] == target)
            .or_else(|| args.windows(3).position(|w| w[0] == op && w[2] == target))
    }

    #[test]
    fn the_argv_hides_the_machinery_and_binds_the_tree_and_home_after() {
        let dir = tempfile::tempdir().unwrap();
        let dir_path = std::fs::canonicalize(dir.path()).unwrap();
        let c = config(&dir_path);
        let d = &c.deployments["a"];
        let home = home(&c, d);
        std::fs::create_dir_all(&home).unwrap();
        let args = bwrap_prefix(&c, d, &home, &d.path);
        let p = |s: &str| dir_path.join(s);
        let tmpfs = |s: &str| find(&args, "--tmpfs", &p(s));
        let state = tmpfs("state").expect("state_dir hidden");
        tmpfs("run/helper").expect("helper socket dir hidden");
        tmpfs("secrets").expect("secret dir hidden");
        tmpfs("etc").expect("config dir hidden");
        tmpfs("www/b").expect("another deployment hidden");
        tmpfs("cache/b").expect("another deployment's home hidden");
        for f in ["secrets/webhook-secret", "secrets/token", "etc/config.toml"] {
            find(&args, "--ro-bind", &p(f)).unwrap_or_else(|| panic!("{f} covered: {args:?}"));
        }
        let tree = find(&args, "--bind", &p("www/a")).expect("tree bound");
        let git = find(&args, "--ro-bind", &p("www/a/.git")).expect("the tree's .git read-only");
        assert!(git > tree, "over the tree's writable bind");
        let home_bind = find(&args, "--bind", &home).expect("home bound");
        assert!(home.starts_with(p("state")));
        assert!(
            home_bind > state,
            "the home is bound after state_dir is hidden"
        );
        let nested = tmpfs("www/a/nested").expect("nested deployment hidden");
        assert!(
            nested > tree,
            "a deployment inside the tree is hidden after the tree's bind"
        );
        let socket = find(&args, "--bind-try", &p("state/.pm2")).expect("allowed socket");
        assert!(socket > state && socket > home_bind);
        let read_only = find(&args, "--remount-ro", &p("www/b")).expect("hidden dirs read-only");
        assert!(
            read_only > socket,
            "made read-only after every mount point in them exists"
        );
        for ns in [
            "--unshare-pid",
            "--unshare-ipc",
            "--die-with-parent",
            "--disable-userns",
        ] {
            assert!(args.iter().any(|a| a == ns), "{ns}");
        }
        assert!(
            !args
                .iter()
                .any(|a| a == "--share-net" || a == "--unshare-net")
        );
        assert_eq!(args.last().map(String::as_str), Some("--"));
    }

    #[test]
    fn symlinked_logs_and_a_ledger_outside_state_dir_are_hidden_too() {
        let dir = tempfile::tempdir().unwrap();
        let d = std::fs::canonicalize(dir.path()).unwrap();
        for sub in ["state", "varlog/durhack", "db", "www/a", "etc", "secret"] {
            std::fs::create_dir_all(d.join(sub)).unwrap();
        }
        std::os::unix::fs::symlink(d.join("varlog/durhack"), d.join("state/logs")).unwrap();
        std::fs::write(d.join("db/ledger.sqlite3"), "").unwrap();
        std::fs::write(d.join("secret/s"), "s").unwrap();
        let file = d.join("etc/config.toml");
        std::fs::write(
            &file,
            format!(
                "state_dir = \"{p}/state\"\ndatabase_url = \"sqlite://{p}/db/ledger.sqlite3?mode=rwc\"\n\
                 [github]\nwebhook_secret_file = \"{p}/secret/s\"\n\
                 [deployments.a]\nrepository = \"o/a\"\nbranch = \"main\"\npath = \"{p}/www/a\"\n",
                p = d.display()
            ),
        )
        .unwrap();
        let c = Config::parse(&std::fs::read_to_string(&file).unwrap(), &file, None).unwrap();
        let args = bwrap_prefix(
            &c,
            &c.deployments["a"],
            &d.join("state/homes/a"),
            &c.deployments["a"].path,
        );
        find(&args, "--tmpfs", &d.join("varlog/durhack")).expect("the logs' real directory");
        find(&args, "--tmpfs", &d.join("db")).expect("the ledger's directory");
        find(&args, "--ro-bind", &d.join("db/ledger.sqlite3")).expect("the ledger file");
    }

    #[test]
    fn the_environment_is_built_not_inherited() {
        let dir = tempfile::tempdir().unwrap();
        let c = config(dir.path());
        let d = &c.deployments["a"];
        let env = command_env(
            d,
            Path::new("/h"),
            &[("DEPLOY_NAME".to_owned(), "a".to_owned())],
        );
        let names: Vec<&str> = env.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(names, ["PATH", "HOME", "LANG", "NODE_ENV", "DEPLOY_NAME"]);
        assert!(env.contains(&("HOME".to_owned(), "/h".to_owned())));
    }
}
