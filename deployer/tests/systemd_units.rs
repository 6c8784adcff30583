//! The systemd suite (issue 11): the shipped units, as installed by deploy/install.sh, under a real
//! systemd booted in a container (`systemd-nspawn --boot --private-network`) over a throwaway
//! overlay of `/`. Inside it, scripts/systemd-suite/inside.sh follows docs/install.md step for
//! step: install, configure, nginx in front on 80/443, start, a signed push through nginx that
//! publishes a site and gets its certificate from pebble via the root helper, a restart in the
//! middle of a deploy, a self-update (exit 75), the journal and `systemd-analyze security`.
//!
//! Needs root, systemd-nspawn (package systemd-container), nginx, certbot and pebble; fails under
//! `CI=true` when they are missing or the container cannot boot, and skips loudly otherwise.

use std::path::Path;
use std::process::Command;

use testkit::prereq;

const EXE: &str = env!("CARGO_BIN_EXE_durhack-deployer");

#[test]
fn units_work_together_under_a_real_systemd() {
    let programs = [
        "systemd-nspawn",
        "nsenter",
        "nginx",
        "certbot",
        "pebble",
        "pebble-challtestsrv",
        "openssl",
        "git",
        "curl",
    ];
    let missing: Vec<&str> = programs
        .into_iter()
        .filter(|p| !prereq::have_program(p) && !prereq::have_program(&format!("/usr/sbin/{p}")))
        .collect();
    if !prereq::require(
        "root",
        prereq::is_root(),
        "the suite mounts an overlay of / and boots a container",
    ) || !prereq::require(
        &format!("programs {missing:?}"),
        missing.is_empty(),
        "scripts/test.sh installs them (systemd-container, nginx, certbot, pebble)",
    ) {
        return;
    }

    // Both binaries in one directory, bind-mounted read-only into the container.
    let bins = tempfile::tempdir().unwrap();
    std::fs::copy(EXE, bins.path().join("durhack-deployer")).unwrap();
    std::fs::copy(
        testkit::privhelper::binary(),
        bins.path().join("durhack-privhelper"),
    )
    .unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/systemd-suite/run.sh");
    let started = std::time::Instant::now();
    let out = Command::new("bash")
        .arg(&script)
        .arg(bins.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    eprintln!("{stderr}");
    println!("systemd suite: {:.0?} in all", started.elapsed());
    if out.status.code() == Some(77) {
        prereq::require(
            "a container booting systemd (systemd-nspawn over an overlay of /)",
            false,
            stderr.lines().last().unwrap_or("run.sh exited 77"),
        );
        return;
    }
    assert!(
        out.status.success(),
        "the systemd suite failed ({}); its output is above",
        out.status
    );
    assert!(stdout.contains("SYSTEMD SUITE PASSED"), "{stdout}");
    for unit in ["durhack-deployer.service", "durhack-privhelper.service"] {
        let line = stdout
            .lines()
            .find(|l| l.starts_with(&format!("EXPOSURE (online) {unit}:")))
            .unwrap_or_else(|| panic!("no online exposure recorded for {unit}"));
        eprintln!("{line}");
    }
}
