//! The nginx-syntax parser and the helper's conf checker: no panic on any text; whatever the
//! checker accepts only names the site's domains and parses to server blocks; and what it would
//! write reads back as exactly the checked tree (plus the injected directives).
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use privhelper::policy::Policy;
use protocol::SiteName;
use protocol::nginx_syntax;

const POLICY: &str = r#"
client_user = "root"
socket = "/run/durhack-privhelper/privhelper.sock"
conf_dir = "/etc/nginx/conf.d"
test_command = ["/usr/sbin/nginx", "-t"]
reload_command = ["/usr/sbin/nginx", "-s", "reload"]
snippets_dir = "/etc/nginx/snippets"
allowed_roots = ["/srv/durhack"]
log_dir = "/var/log/nginx"
[certbot]
argv = ["/usr/bin/certbot", "certonly"]
[sites.durhack]
domains = ["durhack.com", "www.durhack.com"]
proxy_ports = [3000]
[sites.other]
domains = ["other.com"]
"#;

fn policy() -> &'static Policy {
    static POLICY_CELL: OnceLock<Policy> = OnceLock::new();
    POLICY_CELL.get_or_init(|| Policy::parse(POLICY).expect("fuzz policy"))
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let parsed = nginx_syntax::parse(text);
    let site = SiteName::try_from("durhack").expect("site name");
    if let Ok(written) = privhelper::checker::check(policy(), &site, text) {
        let directives = parsed.expect("accepted text parses");
        let mut expected = directives.clone();
        for server in &mut expected {
            let injected = nginx_syntax::parse(privhelper::checker::INJECTED).expect("parses");
            server.block.as_mut().expect("server block").splice(0..0, injected);
        }
        let reread = nginx_syntax::parse(&written).expect("the written text parses");
        // render ignores line numbers: equal renderings are equal trees.
        assert_eq!(nginx_syntax::render(&reread), nginx_syntax::render(&expected), "{text:?}");
        assert!(written.ends_with(&nginx_syntax::render(&expected)));
        assert!(directives.iter().all(|d| d.name == "server" && d.block.is_some()));
        for name in nginx_syntax::server_names(&directives) {
            assert!(name == "durhack.com" || name == "www.durhack.com", "{name}");
        }
        let allowed: Vec<&str> = privhelper::checker::allowed_directives().collect();
        let mut stack: Vec<&nginx_syntax::Directive> = directives.iter().collect();
        while let Some(d) = stack.pop() {
            assert!(allowed.contains(&d.name.as_str()), "{} accepted in {text:?}", d.name);
            stack.extend(d.block.iter().flatten());
        }
    }
});
