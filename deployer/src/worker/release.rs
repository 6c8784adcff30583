//! The releases layout (`layout = "releases"`): each run checks out into a release directory of
//! its own and builds there; the live code is whatever `current` points at.
//!
//! ```text
//! <path>/repo/                 the shared clone (objects, fetches); never built in
//! <path>/releases/<run>/       a git worktree of <path>/repo at the run's commit
//! <path>/releases/<run>.complete   {"run", "sha"}: written only after the build succeeded
//! <path>/shared/<entry>        linked into every release (`shared = [...]`)
//! <path>/current -> releases/<run>   switched by renaming a new symlink over it
//! ```
//!
//! Crash safety: a release is complete only once its `.complete` marker is durable (written to a
//! temporary, fsynced, renamed, directory fsynced), and `current` is switched only to a complete
//! release, by `rename(2)` of a fresh symlink over it, so a SIGKILL at any moment leaves `current`
//! at a complete release (the old one or the new one). The marker sits next to the release, not
//! inside it, so a build cannot mark its own release complete. Whatever a killed run left (a
//! release without a marker, a `current.tmp-*` link, git's worktree entry, locked while it was
//! being added) is removed by the next run, under the deployment's lock, before it adds its own.
//!
//! Which run produced which release: the release directory is named after the run id (the
//! ledger's `runs.id`) and its marker holds the commit. No ledger column is needed, so the record
//! cannot disagree with the directory after a crash between a database write and a rename.

use std::io::Write as _;
use std::path::{Component, Path, PathBuf};

use super::Worker;
use super::git::{GitError, Repo};
use super::log::RunLog;
use super::run::{Attempt, Pending, StepError};
use crate::config::{Deployment, Layout};

/// The run `source` of an operator's `rollback NAME`.
pub const ROLLBACK_SOURCE: &str = "rollback";

const MARKER_SUFFIX: &str = ".complete";
const TMP_LINK_PREFIX: &str = "current.tmp-";

#[derive(Debug, thiserror::Error)]
pub enum ReleaseError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{0} is an in-place checkout (it has a .git); the releases layout needs a path of its own (see docs/releases.md)"
    )]
    InPlaceCheckout(PathBuf),
    #[error("shared path {entry}: {reason}")]
    Shared { entry: String, reason: String },
    #[error("rollback needs layout = \"releases\"; deployment {0} builds in place")]
    NotReleasesLayout(String),
    #[error("release {0} is not a kept, complete release")]
    NoSuchRelease(String),
    #[error("release {release} is commit {actual}, not {expected}")]
    WrongCommit {
        release: String,
        expected: String,
        actual: String,
    },
    #[error("`{0}` is not a release id")]
    BadId(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ReleaseError + '_ {
    move |source| ReleaseError::Io {
        path: path.to_owned(),
        source,
    }
}

/// A release id is a run id (`20261129T053300Z-3f9a1c`): it becomes a directory name.
pub fn is_release_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && !id.starts_with('-')
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// What a complete release's marker says.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ReleaseInfo {
    pub run: String,
    pub sha: String,
    /// Completion order: one more than any release before it (run ids started in the same
    /// second do not sort by time).
    #[serde(default)]
    pub seq: u64,
    /// The release `current` pointed at when this one went live (what prune keeps, and where a
    /// rollback goes by default); absent in markers written before it was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<String>,
}

/// The releases layout of one deployment's `path`.
#[derive(Debug, Clone)]
pub struct Releases {
    root: PathBuf,
}

impl Releases {
    pub fn new(root: &Path) -> Self {
        Self {
            root: root.to_owned(),
        }
    }

    pub fn repo_dir(&self) -> PathBuf {
        self.root.join("repo")
    }
    pub fn releases_dir(&self) -> PathBuf {
        self.root.join("releases")
    }
    pub fn release_dir(&self, id: &str) -> PathBuf {
        self.releases_dir().join(id)
    }
    pub fn current_link(&self) -> PathBuf {
        self.root.join("current")
    }
    pub fn shared_dir(&self) -> PathBuf {
        self.root.join("shared")
    }
    fn marker(&self, id: &str) -> PathBuf {
        self.releases_dir().join(format!("{id}{MARKER_SUFFIX}"))
    }

    /// The release `current` points at, if it is one of ours.
    pub fn current(&self) -> Option<String> {
        let target = std::fs::read_link(self.current_link()).ok()?;
        let mut parts = target.components();
        match (parts.next(), parts.next(), parts.next()) {
            (Some(Component::Normal(dir)), Some(Component::Normal(id)), None)
                if dir == "releases" =>
            {
                id.to_str()
                    .filter(|id| is_release_id(id))
                    .map(str::to_owned)
            }
            _ => None,
        }
    }

    /// The marker of release `id`, if it is complete (its directory present, its marker read).
    pub fn info(&self, id: &str) -> Option<ReleaseInfo> {
        if !is_release_id(id) || !self.release_dir(id).is_dir() {
            return None;
        }
        let text = std::fs::read(self.marker(id)).ok()?;
        serde_json::from_slice::<ReleaseInfo>(&text)
            .ok()
            .filter(|i| i.run == id)
    }

    /// The complete releases, oldest (first completed) first.
    pub fn complete(&self) -> Vec<ReleaseInfo> {
        let mut releases: Vec<ReleaseInfo> = std::fs::read_dir(self.releases_dir())
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().to_str().map(str::to_owned))
            .filter(|n| is_release_id(n))
            .filter_map(|id| self.info(&id))
            .collect();
        releases.sort_by(|a, b| (a.seq, &a.run).cmp(&(b.seq, &b.run)));
        releases
    }

    /// The sequence number the next complete release gets.
    pub fn next_seq(&self) -> u64 {
        self.complete().last().map_or(1, |r| r.seq + 1)
    }

    /// Where a rollback goes by default: the release that was live before `current` went live,
    /// if it is still kept and complete (not the newest one built before it, which may be the
    /// one an operator rolled back from); else the newest complete release completed before it.
    pub fn previous(&self, current: &str) -> Option<ReleaseInfo> {
        let current = self.info(current)?;
        if let Some(before) = current
            .previous
            .as_deref()
            .filter(|p| *p != current.run)
            .and_then(|p| self.info(p))
        {
            return Some(before);
        }
        self.complete()
            .into_iter()
            .rev()
            .find(|r| (r.seq, &r.run) < (current.seq, &current.run))
    }

    /// Removes what a killed run left: releases without a marker (not `current`), markers
    /// without a release, `current.tmp-*` links, and git's entries for worktrees that are gone
    /// (unlocking those a killed `git worktree add` left locked as "initializing").
    pub(super) async fn clean_incomplete(
        &self,
        repo: &Repo,
        log: &RunLog,
    ) -> Result<(), StepError> {
        let current = self.current();
        let dir = self.releases_dir();
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = entry.path();
            if let Some(id) = name.strip_suffix(MARKER_SUFFIX) {
                if !self.release_dir(id).is_dir() {
                    remove_path(&path)?;
                }
            } else if name.ends_with(".tmp") {
                remove_path(&path)?;
            } else if is_release_id(&name)
                && self.info(&name).is_none()
                && current.as_deref() != Some(name.as_str())
            {
                log.line(&format!(
                    "removing release {name}: its run never completed its build"
                ));
                remove_path(&path)?;
            }
        }
        for entry in std::fs::read_dir(&self.root)
            .into_iter()
            .flatten()
            .flatten()
        {
            if entry
                .file_name()
                .to_string_lossy()
                .starts_with(TMP_LINK_PREFIX)
            {
                remove_path(&entry.path())?;
            }
        }
        unlock_orphaned_worktrees(&self.repo_dir());
        repo.worktree_prune().await?;
        Ok(())
    }

    /// Links every `shared` entry into release `dir`, from `<path>/shared/<entry>`. A shared
    /// entry missing so far is seeded from the release when it has that path (moved there),
    /// else created as an empty directory. The release's own copy is replaced by the link.
    pub fn link_shared(&self, dir: &Path, shared: &[PathBuf]) -> Result<(), ReleaseError> {
        for entry in shared {
            let shown = entry.display().to_string();
            let refuse = |reason: &str| ReleaseError::Shared {
                entry: shown.clone(),
                reason: reason.to_owned(),
            };
            let depth = entry.components().count();
            if depth == 0
                || !entry
                    .components()
                    .all(|c| matches!(c, Component::Normal(_)))
            {
                return Err(refuse("not a relative path inside the release"));
            }
            // Every directory on the way must be a real directory of the release: a committed
            // symlink there would put the link (or the removal below) outside the release. The
            // same in `shared`, which builds write: a symlink a build left there would lead the
            // move (or the mkdir) below out of the deployment.
            real_parents(dir, entry).map_err(|e| {
                e.unwrap_or_else(|| refuse("a parent in the release is not a directory"))
            })?;
            let shared_dir = self.shared_dir();
            std::fs::create_dir_all(&shared_dir).map_err(io(&shared_dir))?;
            real_parents(&shared_dir, entry).map_err(|e| {
                e.unwrap_or_else(|| refuse("a parent in shared is not a directory"))
            })?;
            let in_release = dir.join(entry);
            let target = self.shared_dir().join(entry);
            let present = std::fs::symlink_metadata(&in_release).ok();
            if std::fs::symlink_metadata(&target).is_err() {
                let seeded = present.as_ref().is_some_and(|m| !m.is_symlink())
                    && std::fs::rename(&in_release, &target).is_ok();
                if !seeded {
                    std::fs::create_dir(&target).map_err(io(&target))?;
                }
            }
            if std::fs::symlink_metadata(&in_release).is_ok() {
                remove_path(&in_release)?;
            }
            // Relative, so the tree can be moved or mounted elsewhere: up to the release, out of
            // `releases/<run>`, into `shared`.
            let mut link = PathBuf::new();
            for _ in 0..depth + 1 {
                link.push("..");
            }
            link.push("shared");
            link.push(entry);
            std::os::unix::fs::symlink(&link, &in_release).map_err(io(&in_release))?;
        }
        Ok(())
    }

    /// Makes release `id` complete: its marker, durably.
    pub fn mark_complete(&self, info: &ReleaseInfo) -> Result<(), ReleaseError> {
        let marker = self.marker(&info.run);
        let tmp = marker.with_extension("tmp");
        let text = serde_json::to_vec(info).unwrap_or_default();
        let written = std::fs::File::create(&tmp)
            .and_then(|mut f| f.write_all(&text).and_then(|()| f.sync_all()));
        written.map_err(io(&tmp))?;
        std::fs::rename(&tmp, &marker).map_err(io(&marker))?;
        sync_dir(&self.releases_dir())
    }

    /// Points `current` at release `id`, atomically: a new relative symlink renamed over it.
    pub fn switch(&self, id: &str) -> Result<(), ReleaseError> {
        if self.info(id).is_none() {
            return Err(ReleaseError::NoSuchRelease(id.to_owned()));
        }
        let tmp = self.root.join(format!("{TMP_LINK_PREFIX}{id}"));
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(Path::new("releases").join(id), &tmp).map_err(io(&tmp))?;
        sync_dir(&self.root)?;
        test_hold("switch-before-rename");
        let current = self.current_link();
        std::fs::rename(&tmp, &current).map_err(io(&current))?;
        sync_dir(&self.root)?;
        test_hold("switch-after-rename");
        Ok(())
    }

    /// Removes release `id` and its marker (the marker first: a crash in between leaves an
    /// incomplete release, which the next run removes).
    fn remove(&self, id: &str) -> Result<(), ReleaseError> {
        let marker = self.marker(id);
        if std::fs::symlink_metadata(&marker).is_ok() {
            remove_path(&marker)?;
        }
        let dir = self.release_dir(id);
        if std::fs::symlink_metadata(&dir).is_ok() {
            remove_path(&dir)?;
        }
        Ok(())
    }

    /// Keeps the newest `keep` complete releases, and always those in `protect` (the live one
    /// and the one it replaced); removes the others and git's entries for them.
    pub(super) async fn prune(
        &self,
        repo: &Repo,
        keep: usize,
        protect: &[&str],
        log: &RunLog,
    ) -> Result<(), StepError> {
        let complete = self.complete();
        let excess = complete.len().saturating_sub(keep);
        for r in complete.iter().take(excess) {
            if protect.contains(&r.run.as_str()) {
                continue;
            }
            log.line(&format!("removing old release {} ({})", r.run, r.sha));
            self.remove(&r.run)?;
        }
        repo.worktree_prune().await?;
        Ok(())
    }
}

/// Makes every parent of `entry` under `base` a real directory (creating the missing ones);
/// `Err(None)` when one is something else (a symlink, a file).
fn real_parents(base: &Path, entry: &Path) -> Result<(), Option<ReleaseError>> {
    let mut parent = base.to_path_buf();
    for part in entry.parent().into_iter().flat_map(Path::components) {
        parent.push(part);
        match std::fs::symlink_metadata(&parent) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => return Err(None),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir(&parent).map_err(|e| Some(io(&parent)(e)))?;
            }
            Err(e) => return Err(Some(io(&parent)(e))),
        }
    }
    Ok(())
}

fn remove_path(path: &Path) -> Result<(), ReleaseError> {
    let removed = match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    };
    removed.map_err(io(path))
}

fn sync_dir(dir: &Path) -> Result<(), ReleaseError> {
    std::fs::File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(io(dir))
}

/// `git worktree add` locks the new entry ("initializing") until it is done; killed half-way,
/// the lock stays and `git worktree prune` would keep the entry for good. An entry whose
/// worktree directory is gone is unlocked here so that prune can forget it.
fn unlock_orphaned_worktrees(repo_dir: &Path) {
    let admin = repo_dir.join(".git").join("worktrees");
    for entry in std::fs::read_dir(admin).into_iter().flatten().flatten() {
        let Ok(gitdir) = std::fs::read_to_string(entry.path().join("gitdir")) else {
            continue;
        };
        let worktree_git = PathBuf::from(gitdir.trim());
        let gone = worktree_git.parent().is_none_or(|dir| !dir.exists());
        if gone {
            let _ = std::fs::remove_file(entry.path().join("locked"));
        }
    }
}

/// A test hook: while `DURHACK_DEPLOYER_TEST_HOLD_AT` names `point`, the run stops there for
/// good after creating the file named by `DURHACK_DEPLOYER_TEST_HOLD_FILE`, so that a test can
/// SIGKILL the daemon at exactly that moment. Unset in production, where this does nothing.
fn test_hold(point: &str) {
    if std::env::var("DURHACK_DEPLOYER_TEST_HOLD_AT")
        .ok()
        .as_deref()
        != Some(point)
    {
        return;
    }
    if let Some(file) = std::env::var_os("DURHACK_DEPLOYER_TEST_HOLD_FILE") {
        let _ = std::fs::write(file, point);
    }
    loop {
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
}

impl Worker {
    /// The releases layout's steps: a new release at `sha`, built; `current` switched to it only
    /// once every build command succeeded; restart commands; sites from the new release; old
    /// releases pruned. A failed build removes the new release and leaves `current` alone.
    pub(super) async fn release_steps(
        &self,
        a: &Attempt<'_>,
        p: &Pending,
        sha: &str,
        deployed: Option<&str>,
    ) -> Result<(), StepError> {
        let d = &self.deployment;
        let (repo, log) = (a.repo, a.log);
        let releases = Releases::new(&d.path);
        // Another holder's build in progress is an incomplete release too: only the holder of
        // the latest fencing token clears them.
        if !a.still_ours(&self.ledger).await {
            return Err(StepError::Fenced);
        }
        releases.clean_incomplete(repo, log).await?;
        let changed = self.changed_since(repo, deployed, sha, log).await?;
        let dir = releases.release_dir(a.id);
        std::fs::create_dir_all(releases.releases_dir())
            .map_err(io(&releases.releases_dir()))
            .map_err(StepError::from)?;
        log.line(&format!("new release {}", dir.display()));
        repo.worktree_add(&dir, sha, log, a.cancel, a.remaining())
            .await?;
        let built = async {
            releases.link_shared(&dir, &d.shared)?;
            let env = self.command_env(p, sha)?;
            self.run_commands(a, &d.commands, &dir, &env).await
        }
        .await;
        if let Err(e) = built {
            log.line("the build failed: current stays at the release it was at");
            if let Err(removed) = releases.remove(a.id) {
                log.line(&format!("cannot remove the failed release: {removed}"));
            }
            let _ = repo.worktree_prune().await;
            return Err(e);
        }
        let previous = releases.current();
        let info = ReleaseInfo {
            run: a.id.to_owned(),
            sha: sha.to_owned(),
            seq: releases.next_seq(),
            previous: previous.clone(),
        };
        releases.mark_complete(&info)?;
        self.go_live(a, p, &releases, &info, changed.as_deref())
            .await?;
        let mut protect = vec![a.id];
        protect.extend(previous.as_deref());
        releases.prune(repo, d.keep_releases, &protect, log).await?;
        Ok(())
    }

    /// A rollback's steps: `current` back to the kept release the request names, restart
    /// commands, that release's sites republished. Nothing is fetched or built.
    pub(super) async fn rollback_steps(
        &self,
        a: &Attempt<'_>,
        p: &Pending,
        sha: &str,
    ) -> Result<(), StepError> {
        let d = &self.deployment;
        if d.layout != Layout::Releases {
            return Err(ReleaseError::NotReleasesLayout(d.name.clone()).into());
        }
        let id = p.req.release.clone().unwrap_or_default();
        if !is_release_id(&id) {
            return Err(ReleaseError::BadId(id).into());
        }
        let releases = Releases::new(&d.path);
        let info = releases
            .info(&id)
            .ok_or_else(|| ReleaseError::NoSuchRelease(id.clone()))?;
        if info.sha != sha {
            return Err(ReleaseError::WrongCommit {
                release: id,
                expected: sha.to_owned(),
                actual: info.sha,
            }
            .into());
        }
        a.log.line(&format!(
            "rolling back to release {id} ({sha}); current was {}",
            releases.current().as_deref().unwrap_or("none")
        ));
        // Every site is written from the older release: what it serves is its confs, whatever
        // the release in between changed.
        self.go_live(a, p, &releases, &info, None).await
    }

    /// Switches `current` to a complete release (only while the deployment is still ours),
    /// runs the restart commands in it, and publishes its sites.
    async fn go_live(
        &self,
        a: &Attempt<'_>,
        p: &Pending,
        releases: &Releases,
        info: &ReleaseInfo,
        changed: Option<&[PathBuf]>,
    ) -> Result<(), StepError> {
        let d = &self.deployment;
        if !a.still_ours(&self.ledger).await || a.cancel.is_cancelled() {
            return Err(StepError::Fenced);
        }
        releases.switch(&info.run)?;
        a.log
            .line(&format!("current -> releases/{} ({})", info.run, info.sha));
        let env = self.command_env(p, &info.sha)?;
        self.run_commands(a, &d.restart, &releases.current_link(), &env)
            .await?;
        // Site paths are relative to the release root; they are read from the live release.
        let mut live = d.clone();
        live.path = releases.release_dir(&info.run);
        self.publish_sites(a, &live, changed).await
    }

    /// Paths changed since `deployed` (`None` when there is nothing to compare with).
    pub(super) async fn changed_since(
        &self,
        repo: &Repo,
        deployed: Option<&str>,
        sha: &str,
        log: &RunLog,
    ) -> Result<Option<Vec<PathBuf>>, GitError> {
        Ok(match deployed {
            Some(prev) if repo.has_commit(prev).await? => {
                let files = repo.changed_files(prev, sha).await?;
                log.line(&format!("{} file(s) changed since {prev}", files.len()));
                Some(files)
            }
            _ => None,
        })
    }
}

/// The repository a run fetches into: the working tree in place, `<path>/repo` for releases.
pub fn fetch_repo(d: &Deployment) -> Result<Repo, ReleaseError> {
    match d.layout {
        Layout::InPlace => Ok(Repo::new(&d.path).with_ssh_key(d.ssh_key_file.as_deref())),
        Layout::Releases => {
            if d.path.join(".git").exists() {
                return Err(ReleaseError::InPlaceCheckout(d.path.clone()));
            }
            Ok(Repo::new(&Releases::new(&d.path).repo_dir())
                .with_ssh_key(d.ssh_key_file.as_deref()))
        }
    }
}

/// The commit of what is live: the working tree's HEAD in place, `current`'s release otherwise.
pub async fn live_commit(d: &Deployment, repo: &Repo) -> Result<Option<String>, GitError> {
    match d.layout {
        Layout::InPlace => repo.checked_out().await,
        Layout::Releases => {
            let releases = Releases::new(&d.path);
            Ok(releases
                .current()
                .and_then(|id| releases.info(&id))
                .map(|i| i.sha))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn release_ids_are_plain_names() {
        assert!(is_release_id("20261129T053300Z-3f9a1c"));
        for bad in ["", "..", "a/b", "-x", "a b", "x.complete"] {
            assert!(!is_release_id(bad), "{bad}");
        }
    }

    #[test]
    fn switch_only_to_complete_releases_and_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let r = Releases::new(dir.path());
        std::fs::create_dir_all(r.release_dir("a")).unwrap();
        assert!(
            r.switch("a").is_err(),
            "an incomplete release never goes live"
        );
        assert_eq!(r.current(), None);
        r.mark_complete(&ReleaseInfo {
            run: "a".into(),
            sha: "1".into(),
            seq: 1,
            previous: None,
        })
        .unwrap();
        r.switch("a").unwrap();
        assert_eq!(r.current().as_deref(), Some("a"));
        assert_eq!(
            std::fs::read_link(r.current_link()).unwrap(),
            Path::new("releases/a")
        );
    }

    /// a, b, c went live in turn; c was rolled back to b; d went live from b. The release before
    /// d is b (what was live, and what prune keeps), not c, which the operator rolled away from.
    #[test]
    fn the_release_before_is_the_one_that_was_live_not_the_last_built() {
        let dir = tempfile::tempdir().unwrap();
        let r = Releases::new(dir.path());
        for (seq, (id, previous)) in [
            ("a", None),
            ("b", Some("a")),
            ("c", Some("b")),
            ("d", Some("b")),
        ]
        .into_iter()
        .enumerate()
        {
            std::fs::create_dir_all(r.release_dir(id)).unwrap();
            let marker = serde_json::json!({
                "run": id, "sha": format!("sha-{id}"), "seq": seq + 1, "previous": previous,
            });
            std::fs::write(r.marker(id), marker.to_string()).unwrap();
        }
        r.switch("d").unwrap();
        assert_eq!(r.previous("d").map(|i| i.run).as_deref(), Some("b"));
        // A marker of before this field (or whose previous release is gone) goes by order.
        std::fs::write(r.marker("d"), r#"{"run":"d","sha":"sha-d","seq":4}"#).unwrap();
        assert_eq!(r.previous("d").map(|i| i.run).as_deref(), Some("c"));
    }

    #[test]
    fn shared_entries_replace_the_checkout_and_persist() {
        let dir = tempfile::tempdir().unwrap();
        let r = Releases::new(dir.path());
        let rel = r.release_dir("a");
        std::fs::create_dir_all(rel.join("uploads")).unwrap();
        std::fs::write(rel.join("uploads/seed"), "from the repo").unwrap();
        std::fs::write(rel.join(".env"), "X=1").unwrap();
        let shared = [
            PathBuf::from("uploads"),
            PathBuf::from("node_modules/.cache"),
        ];
        r.link_shared(&rel, &shared).unwrap();
        assert!(
            std::fs::symlink_metadata(rel.join("uploads"))
                .unwrap()
                .is_symlink()
        );
        assert_eq!(
            std::fs::read_to_string(rel.join("uploads/seed")).unwrap(),
            "from the repo"
        );
        assert!(r.shared_dir().join("node_modules/.cache").is_dir());
        assert_eq!(
            std::fs::read_link(rel.join("node_modules/.cache")).unwrap(),
            Path::new("../../../shared/node_modules/.cache")
        );
        // A committed symlink on the way is refused, never followed.
        let rel_b = r.release_dir("b");
        std::fs::create_dir_all(&rel_b).unwrap();
        std::os::unix::fs::symlink(dir.path(), rel_b.join("node_modules")).unwrap();
        assert!(r.link_shared(&rel_b, &shared[1..]).is_err());
    }
}
