//! Fifth review: reproductions against the real helper as root and nginx 1.22.

use std::process::{Child, Command};
use std::time::{Duration, Instant};

use testkit::prereq;

mod review_support;
use review_support::{demo_root, publish, refused, reload, start, write};

struct Killed(Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `autoindex` opens the directory with a plain `opendir`: `disable_symlinks` is enforced only
/// by the index module's check of the same path just before (`ngx_http_index_test_dir`). The
/// deployer swaps (`renameat2(RENAME_EXCHANGE)`) a directory it owns with its own symlink to a
/// foreign directory: when the swap lands between the check and the `opendir`, nginx lists the
/// foreign directory. A few thousand requests suffice (2 in 4000 on two loaded cores).
#[test]
fn autoindex_lists_a_foreign_directory_by_racing_a_symlink_swap() {
    if !prereq::require("setpriv", prereq::have_program("setpriv"), "a swapper running as nobody")
        || !prereq::require(
            "python3",
            std::path::Path::new("/usr/bin/python3").exists(),
            "renameat2",
        )
    {
        return;
    }
    let Some((nginx, _helper, client)) = start(|s| s) else {
        return;
    };
    let root = demo_root(&nginx);
    let secret_dir = nginx.prefix().join("private");
    std::fs::create_dir_all(&secret_dir).unwrap();
    std::fs::write(secret_dir.join("secret-name.txt"), "x").unwrap();
    // The deployer owns its tree.
    let nobody = nix::unistd::User::from_name("nobody").unwrap().unwrap();
    nix::unistd::chown(&root, Some(nobody.uid), Some(nobody.gid)).unwrap();
    let conf = format!(
        "server {{ listen {}; server_name demo.test; root {}; autoindex on; }}",
        nginx.listen(),
        root.display()
    );
    let r = write(&client, &conf);
    if refused(&r) {
        return;
    }
    reload(&nginx, &client);
    // As the deployer: x is a directory, y a symlink to the foreign directory; swap forever.
    let swapper = format!(
        "import ctypes,os\nlibc=ctypes.CDLL(None)\nos.chdir({root:?})\nos.mkdir('x')\n\
         os.symlink({secret:?},'y')\nwhile True: libc.renameat2(-100,b'x',-100,b'y',2)\n",
        root = root.display().to_string(),
        secret = secret_dir.display().to_string()
    );
    let _swap = Killed(
        Command::new("setpriv")
            .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups", "/usr/bin/python3", "-c"])
            .arg(&swapper)
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut tries = 0;
    let mut leaked = None;
    while Instant::now() < deadline && leaked.is_none() {
        tries += 1;
        let got = nginx.get("demo.test", "/x/");
        if got.1.contains("secret-name") {
            leaked = Some(got.1);
        }
    }
    eprintln!("after {tries} requests: {leaked:?}");
    assert!(leaked.is_none(), "listed a foreign directory through a raced symlink");
}

/// No race needed: in a regex location an alias names the whole path, and `autoindex` drops the
/// last byte of it (it assumes the `/` a directory URI ends with: `path.len--`), while the
/// index module's `disable_symlinks` check (`ngx_http_index_test_dir`) tests the alias itself.
/// `alias <root>/ab` is checked as the deployer's directory `ab`, then `<root>/a`, the
/// deployer's symlink to a foreign directory, is listed.
#[test]
fn regex_alias_without_slash_makes_autoindex_list_the_one_byte_shorter_path() {
    let Some((nginx, _helper, client)) = start(|s| s) else {
        return;
    };
    let root = nginx.www_dir().join("demo");
    std::fs::create_dir_all(root.join("ab")).unwrap();
    let secret_dir = nginx.prefix().join("private");
    std::fs::create_dir_all(&secret_dir).unwrap();
    std::fs::write(secret_dir.join("secret-name.txt"), "x").unwrap();
    let nobody = nix::unistd::User::from_name("nobody").unwrap().unwrap();
    for owned in [root.clone(), root.join("ab")] {
        nix::unistd::chown(&owned, Some(nobody.uid), Some(nobody.gid)).unwrap();
    }
    let link = root.join("a");
    std::os::unix::fs::symlink(&secret_dir, &link).unwrap();
    nix::unistd::fchownat(
        nix::fcntl::AT_FDCWD,
        &link,
        Some(nobody.uid),
        None,
        nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
    )
    .unwrap();
    let conf = format!(
        "server {{ listen {}; server_name demo.test; root {root};\n\
           location ~ ^/l/$ {{ alias {root}/ab; autoindex on; }}\n\
         }}",
        nginx.listen(),
        root = root.display()
    );
    if !publish(&nginx, &client, &conf) {
        return;
    }
    // The direct way is refused by disable_symlinks, as intended.
    let direct = nginx.get("demo.test", "/a/");
    eprintln!("GET /a/ -> {}", direct.0);
    let got = nginx.get("demo.test", "/l/");
    eprintln!("GET /l/ -> {got:?}");
    assert!(!got.1.contains("secret-name"), "listed a foreign directory through a regex alias");
}
