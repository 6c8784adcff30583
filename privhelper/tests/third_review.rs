//! Third review (attacker with the client uid, at 978fe61): reproductions against the real
//! helper as root and a real nginx 1.22. Each test fails on 978fe61.

mod review_support;
use review_support::{demo_root, publish, refused, reload, start, write};

/// `$uri` is "normalised" only for the request line: a literal internal rewrite (or
/// error_page/try_files/index URI) sets it to `/.`, and then `$uri.` is `/..`. Neither argument
/// contains `..`, and `$uri` is a FILE_VAR, so the checker accepts it.
#[test]
fn literal_rewrite_to_dot_then_uri_dot_climbs_to_etc_passwd() {
    let Some((nginx, _helper, client)) = start(|s| s) else {
        return;
    };
    let root = demo_root(&nginx);
    let up = "$uri.".repeat(root.components().count() + 2);
    let conf = format!(
        "server {{ listen {}; server_name demo.test; root {};\n\
           location = /t {{ rewrite ^ /. last; }}\n\
           location = /e {{ error_page 404 /.; return 404; }}\n\
           location / {{ try_files {up}/etc/passwd =404; }}\n\
         }}",
        nginx.listen(),
        root.display()
    );
    if !publish(&nginx, &client, &conf) {
        return;
    }
    let mut leaked = Vec::new();
    for path in ["/t", "/e"] {
        let got = nginx.get("demo.test", path);
        eprintln!("GET {path} -> {} {:?}", got.0, got.1.lines().next());
        if got.1.contains("root:x:0:0") {
            leaked.push(path);
        }
    }
    assert!(leaked.is_empty(), "served /etc/passwd via {leaked:?}");
}

/// No literal `.` segment is needed: a FILE_VAR followed by `.` in any internal-redirect
/// position (`error_page`, `index`, the `try_files` fallback) turns `GET /` into `/.`, and the
/// next hop's `$uri.` is `/..`. A fix that only refuses a literal `/.` does not close it.
#[test]
fn uri_dot_redirects_need_no_literal_dot_segment() {
    let Some((nginx, _helper, client)) = start(|s| s) else {
        return;
    };
    let root = demo_root(&nginx);
    let up = "$uri.".repeat(root.components().count() + 2);
    let mut leaked = Vec::new();
    for first_hop in
        ["error_page 404 $uri.; return 404;", "try_files /nonexistent $uri.;", "index $uri.;"]
    {
        let conf = format!(
            "server {{ listen {}; server_name demo.test; root {};\n\
               location = / {{ {first_hop} }}\n\
               location / {{ try_files {up}/etc/passwd =404; }}\n\
             }}",
            nginx.listen(),
            root.display()
        );
        let r = write(&client, &conf);
        eprintln!("WriteSite ({first_hop}): {r:?}");
        if refused(&r) {
            continue;
        }
        reload(&nginx, &client);
        let got = nginx.get("demo.test", "/");
        eprintln!("GET / -> {} {:?}", got.0, got.1.lines().next());
        if got.1.contains("root:x:0:0") {
            leaked.push(first_hop);
        }
    }
    assert!(leaked.is_empty(), "served /etc/passwd via {leaked:?}");
}

/// `try_files` appends its value right after the root, without a `/`: `root <R>; try_files
/// -secret/x` opens `<R>-secret/x`, a sibling of the allowed root (as does a literal internal
/// rewrite to a URI without a leading `/`; and `alias <root>` without a trailing `/` in an exact
/// location, where try_files strips the location's name off `$uri-private/key` = `/c-private/key`,
/// leaving `-private/key`). Only siblings whose name starts with the root's.
#[test]
fn try_files_without_a_slash_reads_a_sibling_of_the_root() {
    let Some((nginx, _helper, client)) = start(|mut s| {
        s.allowed_roots = vec![s.allowed_roots[0].join("demo")];
        s
    }) else {
        return;
    };
    let root = demo_root(&nginx);
    let sibling = nginx.www_dir().join("demo-private");
    std::fs::create_dir_all(&sibling).unwrap();
    std::fs::write(sibling.join("key"), "outside the allowed root").unwrap();
    let conf = format!(
        "server {{ listen {}; server_name demo.test; root {};\n\
           location = /a {{ try_files -private/key =404; }}\n\
           location = /b {{ rewrite ^ -private/key break; }}\n\
           location = /c {{ alias {}; try_files $uri-private/key =404; }}\n\
         }}",
        nginx.listen(),
        root.display(),
        root.display()
    );
    if !publish(&nginx, &client, &conf) {
        return;
    }
    let mut leaked = Vec::new();
    for path in ["/a", "/b", "/c"] {
        let got = nginx.get("demo.test", path);
        eprintln!("GET {path} -> {} {:?}", got.0, got.1.lines().next());
        if got.1.contains("outside the allowed root") {
            leaked.push(path);
        }
    }
    assert!(leaked.is_empty(), "read a sibling of the allowed root via {leaked:?}");
}

/// A redirect is supposed to be anchored on this site's host (the second review's fix), but
/// `error_page` with a value not starting with `/` or `@` is a 302 to that value, and `$uri`
/// is a FILE_VAR: `error_page 404 https:/$uri` sends GET /evil.example/ to https://evil.example/.
#[test]
fn error_page_is_an_unanchored_redirect() {
    let Some((nginx, _helper, client)) = start(|s| s) else {
        return;
    };
    let conf = format!(
        "server {{ listen {}; server_name demo.test;\n\
           location / {{ error_page 404 https:/$uri; return 404; }}\n\
         }}",
        nginx.listen()
    );
    if !publish(&nginx, &client, &conf) {
        return;
    }
    let out = std::process::Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{redirect_url}",
            "-H",
            "Host: demo.test",
        ])
        .arg(format!("http://127.0.0.1:{}/evil.example/phish", nginx.port()))
        .output()
        .unwrap();
    let got = String::from_utf8_lossy(&out.stdout).to_string();
    eprintln!("GET /evil.example/phish -> {got}");
    assert!(!got.contains("https://evil.example/"), "open redirect: {got}");
}
