//! The git side of a run: clone or fetch, put the working tree at the pushed commit, and answer
//! the history questions coalescing asks.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::log::RunLog;
use super::process::{self, ProcessError, Spawn};

/// Queries (rev-parse, merge-base) are local and quick; this only guards against a wedged git.
const QUERY_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Debug, thiserror::Error)]
pub enum GitError {
    #[error("{0}")]
    Process(#[from] ProcessError),
    #[error("`git {args}` failed: {stderr}")]
    Query { args: String, stderr: String },
    #[error("{path} exists, is not empty and is not a git repository")]
    NotARepo { path: PathBuf },
    #[error("commit {0} is not in the repository (not pushed, or force-pushed away)")]
    MissingCommit(String),
    #[error("HEAD is {actual} after checkout, not {expected}")]
    HeadMismatch { expected: String, actual: String },
}

impl GitError {
    /// Worth retrying: the network or the remote may be back in a moment.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Self::Process(ProcessError::Exit { .. } | ProcessError::Timeout { .. })
        )
    }
}

/// The environment every git command runs with: never wait for a password on a terminal; with a
/// deploy key, ssh uses that key alone and learns a new host's key on first use (a changed one
/// is still refused). Only git gets it: build commands never see the key's path.
fn git_env(ssh_key: Option<&Path>) -> Vec<(String, String)> {
    let mut env = vec![
        ("GIT_TERMINAL_PROMPT".into(), "0".into()),
        ("GIT_ASKPASS".into(), "true".into()),
        ("LC_ALL".into(), "C".into()),
    ];
    if let Some(key) = ssh_key {
        // git runs this through sh: the path is single-quoted.
        let quoted = key.to_string_lossy().replace('\'', "'\\''");
        env.push((
            "GIT_SSH_COMMAND".into(),
            format!("ssh -i '{quoted}' -o IdentitiesOnly=yes -o StrictHostKeyChecking=accept-new"),
        ));
    }
    env
}

/// A deployment's working tree.
#[derive(Debug, Clone)]
pub struct Repo {
    path: PathBuf,
    ssh_key: Option<PathBuf>,
    /// Where logged git commands record their process group, as a run's build commands do
    /// (so a forced stop, or the next holder, kills a git left running).
    pgid_file: Option<PathBuf>,
}

impl Repo {
    pub fn new(path: &Path) -> Self {
        Self {
            path: path.to_owned(),
            ssh_key: None,
            pgid_file: None,
        }
    }

    /// Logged git commands record their process group in `file` while they run (see
    /// [`super::process::pgid_file`]).
    pub fn with_pgid_file(mut self, file: PathBuf) -> Self {
        self.pgid_file = Some(file);
        self
    }

    /// Git reaches the remote with this deploy key (`ssh_key_file`).
    pub fn with_ssh_key(mut self, key: Option<&Path>) -> Self {
        self.ssh_key = key.map(Path::to_owned);
        self
    }

    /// Runs a logged git command (clone, fetch, checkout) in `cwd`.
    async fn logged(
        &self,
        cwd: &Path,
        args: &[&str],
        log: &Arc<RunLog>,
        cancel: &CancellationToken,
        timeout: Duration,
    ) -> Result<(), GitError> {
        let argv: Vec<String> = std::iter::once("git")
            .chain(args.iter().copied())
            .map(str::to_owned)
            .collect();
        let env = git_env(self.ssh_key.as_deref());
        process::run(
            Spawn {
                argv: &argv,
                cwd,
                env: &env,
                timeout,
                pgid_file: self.pgid_file.as_deref(),
            },
            log,
            cancel,
            "the run was stopped",
        )
        .await?;
        Ok(())
    }

    async fn query(&self, args: &[&str]) -> Result<Option<String>, GitError> {
        query(Some(&self.path), args, self.ssh_key.as_deref()).await
    }

    fn is_repo(&self) -> bool {
        self.path.join(".git").exists()
    }

    /// Clones when the path is missing (or an empty directory), otherwise fetches the branch.
    pub async fn clone_or_fetch(
        &self,
        remote: &str,
        branch: &str,
        log: &Arc<RunLog>,
        cancel: &CancellationToken,
        timeout: Duration,
    ) -> Result<(), GitError> {
        if !self.is_repo() {
            let empty = match std::fs::read_dir(&self.path) {
                Ok(mut entries) => entries.next().is_none(),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => true,
                Err(_) => false,
            };
            if !empty {
                return Err(GitError::NotARepo {
                    path: self.path.clone(),
                });
            }
            let parent = self.path.parent().unwrap_or(Path::new("/"));
            let _ = std::fs::create_dir_all(parent);
            let target = self.path.to_string_lossy().into_owned();
            // A clone that dies half-way leaves a directory that is not yet a repository.
            let _ = std::fs::remove_dir(&self.path);
            let cloned = self
                .logged(
                    parent,
                    &[
                        "clone",
                        "--no-checkout",
                        "--origin",
                        "origin",
                        "--",
                        remote,
                        &target,
                    ],
                    log,
                    cancel,
                    timeout,
                )
                .await;
            if cloned.is_err() && !self.is_repo() {
                let _ = std::fs::remove_dir_all(&self.path);
            }
            cloned?;
        } else {
            // The configured remote is authoritative, even if someone changed the clone's.
            self.logged(
                &self.path,
                &["remote", "set-url", "origin", remote],
                log,
                cancel,
                timeout,
            )
            .await?;
        }
        let refspec = format!("+refs/heads/{branch}:refs/remotes/origin/{branch}");
        self.logged(
            &self.path,
            &[
                "fetch",
                "--force",
                "--prune",
                "--no-tags",
                "origin",
                &refspec,
            ],
            log,
            cancel,
            timeout,
        )
        .await
    }

    /// Makes sure `sha` is present, fetching it by name when the branch no longer leads to it.
    pub async fn ensure_commit(
        &self,
        sha: &str,
        log: &Arc<RunLog>,
        cancel: &CancellationToken,
        timeout: Duration,
    ) -> Result<(), GitError> {
        if self.has_commit(sha).await? {
            return Ok(());
        }
        // Servers may refuse to serve a commit by id; the check below gives the real answer.
        let _ = self
            .logged(
                &self.path,
                &["fetch", "--no-tags", "origin", sha],
                log,
                cancel,
                timeout,
            )
            .await;
        if self.has_commit(sha).await? {
            Ok(())
        } else {
            Err(GitError::MissingCommit(sha.to_owned()))
        }
    }

    pub async fn has_commit(&self, sha: &str) -> Result<bool, GitError> {
        if !is_commit_id(sha) {
            return Ok(false);
        }
        Ok(self
            .query(&["cat-file", "-e", &format!("{sha}^{{commit}}")])
            .await
            .unwrap_or(None)
            .is_some())
    }

    /// Is `ancestor` an ancestor of (or the same commit as) `descendant`?
    pub async fn is_ancestor(&self, ancestor: &str, descendant: &str) -> Result<bool, GitError> {
        Ok(self
            .query(&["merge-base", "--is-ancestor", ancestor, descendant])
            .await?
            .is_some())
    }

    /// The commit the working tree is checked out at (`None` before the first checkout).
    pub async fn checked_out(&self) -> Result<Option<String>, GitError> {
        Ok(self
            .query(&["rev-parse", "--verify", "--quiet", "HEAD^{commit}"])
            .await?
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty()))
    }

    /// The branch head as of the last fetch.
    pub async fn remote_head(&self, branch: &str) -> Result<Option<String>, GitError> {
        Ok(self
            .query(&[
                "rev-parse",
                "--verify",
                "--quiet",
                &format!("refs/remotes/origin/{branch}^{{commit}}"),
            ])
            .await?
            .map(|s| s.trim().to_owned()))
    }

    /// Forces the working tree to `sha`, detached, and checks that HEAD is that commit.
    /// Untracked files that are not ignored are removed; ignored ones (node_modules, .env, build
    /// caches) stay, so builds stay incremental and hand-placed secrets survive.
    pub async fn checkout(
        &self,
        sha: &str,
        log: &Arc<RunLog>,
        cancel: &CancellationToken,
        timeout: Duration,
    ) -> Result<(), GitError> {
        for args in [
            &["checkout", "--force", "--detach", sha][..],
            &["reset", "--hard", sha][..],
            &["clean", "-ffd"][..],
        ] {
            self.logged(&self.path, args, log, cancel, timeout).await?;
        }
        let head = self
            .query(&["rev-parse", "HEAD"])
            .await?
            .unwrap_or_default()
            .trim()
            .to_owned();
        if head != sha {
            return Err(GitError::HeadMismatch {
                expected: sha.to_owned(),
                actual: head,
            });
        }
        Ok(())
    }

    /// Checks `sha` out, detached, into a new linked working tree at `dir` (a release), sharing
    /// this repository's objects, and checks that its HEAD is that commit.
    pub async fn worktree_add(
        &self,
        dir: &Path,
        sha: &str,
        log: &Arc<RunLog>,
        cancel: &CancellationToken,
        timeout: Duration,
    ) -> Result<(), GitError> {
        let target = dir.to_string_lossy().into_owned();
        self.logged(
            &self.path,
            &["worktree", "add", "--detach", "--", &target, sha],
            log,
            cancel,
            timeout,
        )
        .await?;
        let head = Repo::new(dir).checked_out().await?.unwrap_or_default();
        if head != sha {
            return Err(GitError::HeadMismatch {
                expected: sha.to_owned(),
                actual: head,
            });
        }
        Ok(())
    }

    /// Forgets linked working trees whose directories are gone.
    pub async fn worktree_prune(&self) -> Result<(), GitError> {
        self.query(&["worktree", "prune"]).await.map(|_| ())
    }

    /// Paths changed between two commits.
    pub async fn changed_files(&self, from: &str, to: &str) -> Result<Vec<PathBuf>, GitError> {
        let out = self
            .query(&["diff", "--name-only", "-z", "--no-renames", from, to])
            .await?
            .unwrap_or_default();
        Ok(out
            .split('\0')
            .filter(|s| !s.is_empty())
            .map(PathBuf::from)
            .collect())
    }
}

/// A full commit id (SHA-1 or SHA-256), lowercase.
pub fn is_commit_id(s: &str) -> bool {
    (s.len() == 40 || s.len() == 64)
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Runs a quiet git query; `Ok(None)` when git exits 1 (the usual "no" answer).
async fn query(
    cwd: Option<&Path>,
    args: &[&str],
    ssh_key: Option<&Path>,
) -> Result<Option<String>, GitError> {
    let failed = |stderr: String| GitError::Query {
        args: args.join(" "),
        stderr,
    };
    let mut cmd = tokio::process::Command::new("git");
    cmd.args(args)
        .envs(git_env(ssh_key))
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    if let Some(cwd) = cwd {
        cmd.current_dir(cwd);
    }
    let out = tokio::time::timeout(QUERY_TIMEOUT, cmd.output())
        .await
        .map_err(|_| failed("timed out".into()))?
        .map_err(|e| failed(e.to_string()))?;
    match out.status.code() {
        Some(0) => Ok(Some(String::from_utf8_lossy(&out.stdout).into_owned())),
        Some(1) => Ok(None),
        _ => Err(failed(
            String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        )),
    }
}

/// The branch head on `remote`, without a working tree (for `deploy` without `--sha`).
pub async fn ls_remote_head(
    remote: &str,
    branch: &str,
    ssh_key: Option<&Path>,
) -> Result<Option<String>, GitError> {
    let r = format!("refs/heads/{branch}");
    let out = query(None, &["ls-remote", "--", remote, &r], ssh_key)
        .await?
        .unwrap_or_default();
    Ok(out.lines().find_map(|l| {
        l.split_once('\t')
            .filter(|(_, name)| *name == r)
            .map(|(sha, _)| sha.to_owned())
    }))
}
