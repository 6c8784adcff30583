//! Fourth review: reproductions against the real helper as root and nginx 1.22.
//! Each test fails on 8ae0cc0.

mod review_support;
use review_support::{demo_root, publish, refused, reload, start, write};

/// A percent-encoded `?` survives normalisation inside `$uri` (`GET /..%3F` gives `$uri` =
/// `/..?`, a segment `..?` that is not a dot segment). An internal redirect to a value holding
/// it (`try_files` fallback `$uri`) splits at the `?` (ngx_http_split_args): the new URI is
/// `/..`, and `$uri$uri...` in the next location climbs to `/etc/passwd`.
#[test]
fn encoded_question_mark_turns_uri_into_dot_dot_after_a_redirect() {
    let Some((nginx, _helper, client)) = start(|s| s) else {
        return;
    };
    let root = demo_root(&nginx);
    let up = "$uri".repeat(root.components().count() + 2);
    let conf = format!(
        "server {{ listen {}; server_name demo.test; root {};\n\
           location ~ \"[?]\" {{ try_files /nonexistent $uri; }}\n\
           location / {{ try_files {up}/etc/passwd =404; }}\n\
         }}",
        nginx.listen(),
        root.display()
    );
    if !publish(&nginx, &client, &conf) {
        return;
    }
    let got = nginx.get("demo.test", "/..%3F");
    eprintln!("GET /..%3F -> {} {:?}", got.0, got.1.lines().next());
    assert!(!got.1.contains("root:x:0:0"), "served /etc/passwd");
}

/// The same with one directive: the `try_files` fallback `$uri` re-enters the same location as
/// `/..`, and the first value then climbs.
#[test]
fn one_try_files_with_uri_fallback_serves_etc_passwd() {
    let Some((nginx, _helper, client)) = start(|s| s) else {
        return;
    };
    let root = demo_root(&nginx);
    let up = "$uri".repeat(root.components().count() + 2);
    let conf = format!(
        "server {{ listen {}; server_name demo.test; root {};\n\
           location / {{ try_files {up}/etc/passwd $uri; }}\n\
         }}",
        nginx.listen(),
        root.display()
    );
    if !publish(&nginx, &client, &conf) {
        return;
    }
    let got = nginx.get("demo.test", "/..%3F");
    eprintln!("GET /..%3F -> {} {:?}", got.0, got.1.lines().next());
    assert!(!got.1.contains("root:x:0:0"), "served /etc/passwd");
}

/// error_page splits its URI at `?` too: `/$uri` with `$uri` = `/..?` becomes `//..`.
#[test]
fn error_page_uri_fallback_serves_etc_passwd() {
    let Some((nginx, _helper, client)) = start(|s| s) else {
        return;
    };
    let root = demo_root(&nginx);
    let up = "$uri".repeat(root.components().count() + 2);
    let conf = format!(
        "server {{ listen {}; server_name demo.test; root {};\n\
           location / {{ error_page 404 /$uri; try_files {up}/etc/passwd =404; }}\n\
         }}",
        nginx.listen(),
        root.display()
    );
    if !publish(&nginx, &client, &conf) {
        return;
    }
    let got = nginx.get("demo.test", "/..%3F");
    eprintln!("GET /..%3F -> {} {:?}", got.0, got.1.lines().next());
    assert!(!got.1.contains("root:x:0:0"), "served /etc/passwd");
}

/// The site's own backend (the deployer runs it, on one of the site's `proxy_ports`) answers
/// `X-Accel-Redirect: /..?`. nginx checks it with ngx_http_parse_unsafe_uri, which looks for
/// `/../` and a trailing `/..` but splits at `?` first-come: `/..?` passes and the new URI is
/// `/..`. No fallback variable is needed: `try_files $uri$uri.../etc/passwd` climbs.
#[test]
fn backend_x_accel_redirect_sets_uri_to_dot_dot() {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            let _ = s.write_all(
                b"HTTP/1.1 200 OK\r\nX-Accel-Redirect: /..?\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            );
        }
    });
    let Some((nginx, _helper, client)) = start(|mut s| {
        s.proxy_ports = vec![port];
        s
    }) else {
        return;
    };
    let root = demo_root(&nginx);
    let up = "$uri".repeat(root.components().count() + 2);
    let conf = format!(
        "server {{ listen {}; server_name demo.test; root {};\n\
           location /api/ {{ proxy_pass http://127.0.0.1:{port}; }}\n\
           location / {{ try_files {up}/etc/passwd =404; }}\n\
         }}",
        nginx.listen(),
        root.display()
    );
    let r = write(&client, &conf);
    eprintln!("WriteSite: {r:?}");
    if !refused(&r) {
        reload(&nginx, &client);
        let got = nginx.get("demo.test", "/api/x");
        eprintln!("GET /api/x -> {} {:?}", got.0, got.1.lines().next());
        assert!(!got.1.contains("root:x:0:0"), "served /etc/passwd");
    }
    // With one variable (accepted), `X-Accel-Redirect: /..?` would still reach one level up:
    // the helper makes nginx ignore the header in every server it writes.
    std::fs::write(nginx.www_dir().join("index.html"), "one level above the root").unwrap();
    let conf = format!(
        "server {{ listen {}; server_name demo.test; root {};\n\
           location /api/ {{ proxy_pass http://127.0.0.1:{port}; }}\n\
           location / {{ try_files $uri/index.html =404; }}\n\
         }}",
        nginx.listen(),
        root.display()
    );
    assert!(!refused(&write(&client, &conf)));
    reload(&nginx, &client);
    let got = nginx.get("demo.test", "/api/x");
    eprintln!("GET /api/x -> {} {:?}", got.0, got.1);
    assert!(!got.1.contains("one level above the root"), "followed X-Accel-Redirect to /..");
}
