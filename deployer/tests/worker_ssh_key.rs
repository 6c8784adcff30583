//! A private repository over ssh with a per-deployment deploy key (`ssh_key_file`), through the
//! real daemon binary and a real git: git reaches the remote through `GIT_SSH_COMMAND` naming the
//! key, and the build commands never see it. The `ssh` on the daemon's PATH is a stand-in that
//! records its arguments and runs git's remote command locally, so the clone and fetch are real
//! git over the ssh transport, without an ssh server.

mod robust_support;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use robust_support::{
    Daemon, DeploymentSpec, LedgerView, Setup, push_payload, send_signed, wait_for,
};
use testkit::git::Remote;

const EXE: &str = env!("CARGO_BIN_EXE_durhack-deployer");

fn fake_ssh(dir: &Path) {
    let script = format!(
        "#!/bin/sh\n# git probes the ssh variant with -G: answer as OpenSSH does.\nfor a; do [ \"$a\" = -G ] && exit 0; done\nprintf '%s\\n' \"$@\" >> {log}\necho --- >> {log}\nfor last; do :; done\nexec /bin/sh -c \"$last\"\n",
        log = dir.join("ssh.args").display()
    );
    let ssh = dir.join("ssh");
    std::fs::write(&ssh, script).unwrap();
    std::fs::set_permissions(&ssh, std::fs::Permissions::from_mode(0o755)).unwrap();
}

#[test]
fn git_uses_the_deploy_key_and_builds_never_see_it() {
    let tools = tempfile::tempdir().unwrap();
    fake_ssh(tools.path());
    let key = tools.path().join("deploy key");
    std::fs::write(&key, "not a real key\n").unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let repo = Remote::new("main");
    let remote = format!("ssh://git@private.example/{}", repo.bare().display());
    let seen = tools.path().join("build-saw");
    let setup = Setup::new(
        "",
        vec![DeploymentSpec {
            name: "app".into(),
            repository: "test-owner/private".into(),
            branch: "main".into(),
            remote,
            body: format!(
                "ssh_key_file = \"{}\"\ncommands = [[\"sh\", \"-c\", \"echo \\\"[$GIT_SSH_COMMAND]\\\" > {}\"]]",
                key.display(),
                seen.display()
            ),
        }],
    );
    let check = |config: &Path| {
        Command::new(EXE)
            .arg("check")
            .arg("--config")
            .arg(config)
            .output()
            .unwrap()
    };
    let ok = check(&setup.config_path);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );

    let path = format!(
        "{}:{}",
        tools.path().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut daemon = Daemon::new(&setup).env("PATH", &path);
    daemon.start();
    let ledger = LedgerView::open(&setup.config().effective_database_url());
    let sha = repo.commit("private", &[("v", "1")]);
    repo.push();
    let body = push_payload("test-owner/private", "main", None, &sha);
    assert_eq!(
        send_signed(setup.port, "push", "ssh-1", &body).unwrap(),
        202
    );
    wait_for(
        "the private commit deployed",
        || (ledger.deployed("app").as_deref() == Some(sha.as_str())).then_some(()),
        || format!("{}\n{:?}", daemon.log(), ledger.runs("app")),
    );
    daemon.terminate();

    let args = std::fs::read_to_string(tools.path().join("ssh.args")).unwrap();
    let first: Vec<&str> = args.split("---\n").next().unwrap().lines().collect();
    assert_eq!(
        first[..6],
        [
            "-i",
            &key.display().to_string(),
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "StrictHostKeyChecking=accept-new"
        ],
        "{args}"
    );
    assert!(args.contains("git@private.example"), "{args}");
    assert_eq!(
        std::fs::read_to_string(&seen).unwrap(),
        "[]\n",
        "the build saw no GIT_SSH_COMMAND"
    );

    // A key others may read is refused by `check` (ssh would refuse it at the first fetch).
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o640)).unwrap();
    let refused = check(&setup.config_path);
    let said = String::from_utf8_lossy(&refused.stderr).into_owned();
    assert!(
        !refused.status.success(),
        "a group-readable key was accepted"
    );
    assert!(
        said.contains("deployments.app.ssh_key_file") && said.contains("chmod 600"),
        "{said}"
    );
    // So is one the service's user (here: the state directory's owner) does not own.
    if testkit::prereq::is_root() {
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::os::unix::fs::chown(&key, Some(65534), None).unwrap();
        let refused = check(&setup.config_path);
        let said = String::from_utf8_lossy(&refused.stderr).into_owned();
        assert!(
            !refused.status.success() && said.contains("not by the service's user"),
            "{said}"
        );
    }
}
