//! Commands run as root act as the owner of `state_dir`. install.md suggests `sudo
//! durhack-deployer status`, and a `sudo … migrate` before the first start used to leave a
//! root-owned ledger (and `-wal`/`-shm`) that the service could then only read. Dropping to the
//! owner (rather than refusing) keeps `sudo …` working for every command, and whatever a command
//! creates belongs to the service user. It happens right after the configuration is read (root
//! may be needed to read the secret) and before anything in `state_dir` is opened, and before
//! any thread starts.

use std::ffi::CString;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use anyhow::Context;
use nix::unistd::{Gid, Uid, User};

use crate::config::Config;

/// What a command does with `state_dir`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum StateUse {
    /// Reads only; creates nothing when it is missing. Also the daemon's: run as root on a
    /// missing `state_dir`, it is root's daemon and creates its own state.
    ReadOnly,
    /// A one-off command that creates or writes files in it.
    Writes,
}

/// When running as root, becomes the owner of `config.state_dir` (its uid, its gid and that
/// user's supplementary groups) if that is another user. A missing `state_dir` is judged by its
/// nearest existing parent: a command that creates it as root, under a root-owned parent, says
/// that the service user must be given it.
pub(super) fn become_state_owner(config: &Config, state_use: StateUse) -> anyhow::Result<()> {
    if !Uid::effective().is_root() {
        return Ok(());
    }
    let dir = &config.state_dir;
    let existing = dir
        .ancestors()
        .find(|a| a.exists())
        .unwrap_or(Path::new("/"));
    let meta = std::fs::metadata(existing)
        .with_context(|| format!("cannot stat {}", existing.display()))?;
    if meta.uid() != 0 {
        return drop_to(
            existing,
            Uid::from_raw(meta.uid()),
            Gid::from_raw(meta.gid()),
        );
    }
    if existing != dir.as_path() && state_use == StateUse::Writes {
        eprintln!(
            "note: creating state_dir {} as root; before starting the service, give it to the \
             service user (chown -R <user>: {}), as deploy/install.sh does",
            dir.display(),
            dir.display()
        );
    }
    Ok(())
}

fn drop_to(dir: &Path, uid: Uid, gid: Gid) -> anyhow::Result<()> {
    let user = User::from_uid(uid).ok().flatten();
    let name = user
        .as_ref()
        .map_or_else(|| uid.to_string(), |u| u.name.clone());
    let failed = |step: &str, e: nix::Error| {
        anyhow::anyhow!(
            "cannot become {name}, the owner of {}, to run this ({step}: {e}): run it as that \
             user instead (sudo -u {name} …)",
            dir.display()
        )
    };
    match &user {
        Some(u) => {
            let c_name = CString::new(u.name.as_str())
                .map_err(|_| anyhow::anyhow!("the user name of uid {uid} contains a NUL byte"))?;
            nix::unistd::initgroups(&c_name, gid).map_err(|e| failed("initgroups", e))?;
        }
        None => nix::unistd::setgroups(&[gid]).map_err(|e| failed("setgroups", e))?,
    }
    nix::unistd::setgid(gid).map_err(|e| failed("setgid", e))?;
    nix::unistd::setuid(uid).map_err(|e| failed("setuid", e))?;
    // What root read (the webhook secret, the token) stays in this process's memory and
    // environment; the kernel leaves it dumpable after the uid change where fs.suid_dumpable
    // is 1, and then the owner could ptrace it or read /proc/<pid>/environ.
    nix::sys::prctl::set_dumpable(false).map_err(|e| failed("prctl(PR_SET_DUMPABLE)", e))?;
    Ok(())
}
