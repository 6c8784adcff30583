//! Real git repositories for deploy tests: a bare repository playing the remote, and a working
//! clone to make commits in and push from.
//!
//! ```no_run
//! let repo = testkit::git::Remote::new("main");
//! let sha = repo.commit("first", &[("index.html", "hello")]);
//! repo.push();
//! assert_eq!(testkit::git::head(&repo.work()), sha);
//! ```

use std::path::{Path, PathBuf};
use std::process::Command;

/// Runs `git args` in `dir` and returns its trimmed stdout; panics (with git's stderr) on
/// failure, since a broken fixture is a broken test.
pub fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_TERMINAL_PROMPT", "0")
        // Tests must not depend on the machine's or user's git configuration.
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_AUTHOR_NAME", "Test Author")
        .env("GIT_AUTHOR_EMAIL", "author@example.test")
        .env("GIT_COMMITTER_NAME", "Test Committer")
        .env("GIT_COMMITTER_EMAIL", "committer@example.test")
        .output()
        .expect("run git");
    assert!(
        out.status.success(),
        "git {args:?} in {}: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// The commit `HEAD` points at in `repo`.
pub fn head(repo: &Path) -> String {
    git(repo, &["rev-parse", "HEAD"])
}

/// A bare repository (the remote) with a working clone, both in a temporary directory that is
/// removed on drop.
#[derive(Debug)]
pub struct Remote {
    dir: tempfile::TempDir,
    branch: String,
}

impl Remote {
    pub fn new(branch: &str) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("testkit-git-")
            .tempdir()
            .expect("tempdir");
        let root = dir.path();
        git(
            root,
            &[
                "init",
                "--quiet",
                "--bare",
                "--initial-branch",
                branch,
                "remote.git",
            ],
        );
        git(
            root,
            &["init", "--quiet", "--initial-branch", branch, "work"],
        );
        let remote = root.join("remote.git");
        let work = root.join("work");
        git(
            &work,
            &["remote", "add", "origin", &remote.display().to_string()],
        );
        Self {
            dir,
            branch: branch.to_owned(),
        }
    }

    /// The bare repository's path, usable as a git remote URL.
    pub fn url(&self) -> String {
        self.bare().display().to_string()
    }

    pub fn bare(&self) -> PathBuf {
        self.dir.path().join("remote.git")
    }

    /// The working clone commits are made in.
    pub fn work(&self) -> PathBuf {
        self.dir.path().join("work")
    }

    pub fn branch(&self) -> &str {
        &self.branch
    }

    /// Writes `files` (path relative to the repository, contents) and commits everything,
    /// including deletions; an empty `files` makes an empty commit. Returns the new commit. Does
    /// not push.
    pub fn commit(&self, message: &str, files: &[(&str, &str)]) -> String {
        let work = self.work();
        for (path, contents) in files {
            let path = work.join(path);
            std::fs::create_dir_all(path.parent().expect("a file has a parent"))
                .expect("create dirs");
            std::fs::write(&path, contents).expect("write file");
        }
        git(&work, &["add", "--all"]);
        git(
            &work,
            &["commit", "--quiet", "--allow-empty", "--message", message],
        );
        head(&work)
    }

    /// Deletes `path` from the working clone and commits.
    pub fn remove(&self, message: &str, path: &str) -> String {
        let work = self.work();
        git(&work, &["rm", "--quiet", "--", path]);
        git(&work, &["commit", "--quiet", "--message", message]);
        head(&work)
    }

    /// Pushes the working clone's HEAD to the branch; returns the pushed commit.
    pub fn push(&self) -> String {
        let refspec = format!("HEAD:refs/heads/{}", self.branch);
        git(&self.work(), &["push", "--quiet", "origin", &refspec]);
        head(&self.work())
    }

    /// Force-pushes the working clone's HEAD, rewriting the branch.
    pub fn force_push(&self) -> String {
        let refspec = format!("+HEAD:refs/heads/{}", self.branch);
        git(
            &self.work(),
            &["push", "--quiet", "--force", "origin", &refspec],
        );
        head(&self.work())
    }

    /// Moves the working clone back to `rev` (to build a diverging history).
    pub fn reset_hard(&self, rev: &str) {
        git(&self.work(), &["reset", "--quiet", "--hard", rev]);
    }

    /// The branch head in the remote.
    pub fn remote_head(&self) -> String {
        git(
            &self.bare(),
            &["rev-parse", &format!("refs/heads/{}", self.branch)],
        )
    }
}
