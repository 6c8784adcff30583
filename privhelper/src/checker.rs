//! The site-conf checker: every directive must be on the allow-list below, every path must stay
//! inside what the policy allows, and every server_name must be one of the site's domains.
//!
//! Top level: only `server` blocks. Inside them, the directives in [`ALLOWED`]; blocks only for
//! `location` and `if`. Anything not listed is refused, which covers `load_module`, `user`,
//! `*_by_lua*`, `perl*`, `js_*`, `*_temp_path`, `proxy_cache_path`, `auth_basic_user_file`,
//! `ssl_password_file` and everything else that reads or writes files as root or runs code.

use std::path::{Component, Path};

use protocol::SiteName;
use protocol::nginx_syntax::{self, Directive};

use crate::policy::Policy;

/// The allow-list. `server` (top level only), `location` and `if` are the only blocks.
/// Arguments are checked for the directives in [`Ctx::args`]; the rest have no file-system or
/// socket meaning.
const ALLOWED: &str = "\
    listen server_name location if root alias index try_files return rewrite set break \
    internal allow deny autoindex default_type charset expires etag error_page add_header \
    absolute_redirect port_in_redirect server_tokens client_max_body_size keepalive_timeout \
    sendfile tcp_nopush http2 proxy_pass proxy_set_header proxy_http_version \
    proxy_read_timeout proxy_connect_timeout proxy_send_timeout proxy_redirect proxy_buffering \
    proxy_request_buffering proxy_hide_header proxy_cache_bypass gzip gzip_types \
    gzip_min_length gzip_comp_level gzip_vary gzip_proxied gzip_disable gzip_http_version \
    gzip_buffers ssl_certificate ssl_certificate_key ssl_protocols ssl_ciphers \
    ssl_prefer_server_ciphers ssl_session_timeout ssl_session_tickets include access_log \
    error_log";

/// The names on the allow-list, for documentation and `check`.
pub fn allowed_directives() -> impl Iterator<Item = &'static str> {
    std::iter::once("server").chain(ALLOWED.split_whitespace())
}

/// Checks `text` as the conf of `site`. The error says which line and why.
pub fn check(policy: &Policy, site: &SiteName, text: &str) -> Result<(), String> {
    let directives = nginx_syntax::parse(text).map_err(|e| format!("syntax: {e}"))?;
    let Some(domains) = policy.sites.get(site) else {
        return Err(format!("site {site} is not in the policy"));
    };
    if directives.is_empty() {
        return Err("no server block".into());
    }
    let ctx = Ctx {
        policy,
        site,
        domains: domains.iter().map(|d| d.as_str()).collect(),
    };
    for d in &directives {
        if d.name != "server" {
            return Err(refuse(d, "only server blocks are allowed at the top level"));
        }
        let Some(block) = &d.block else {
            return Err(refuse(d, "server must be a block"));
        };
        if !d.args.is_empty() {
            return Err(refuse(d, "server takes no arguments"));
        }
        if !block.iter().any(|d| d.name == "server_name") {
            return Err(refuse(
                d,
                "every server block needs a server_name (a nameless server would catch other hosts)",
            ));
        }
        ctx.block(block, true)?;
    }
    Ok(())
}

fn refuse(d: &Directive, why: &str) -> String {
    format!("line {}: \"{}\": {why}", d.line, d.name)
}

struct Ctx<'a> {
    policy: &'a Policy,
    site: &'a SiteName,
    domains: Vec<&'a str>,
}

impl Ctx<'_> {
    fn block(&self, directives: &[Directive], in_server: bool) -> Result<(), String> {
        for d in directives {
            if !ALLOWED.split_whitespace().any(|n| n == d.name) {
                return Err(refuse(d, "directive not allowed"));
            }
            let is_block = matches!(d.name.as_str(), "location" | "if");
            match (&d.block, is_block) {
                (Some(block), true) => self.block(block, false)?,
                (None, false) => {}
                (Some(_), false) => return Err(refuse(d, "may not have a block")),
                (None, true) => return Err(refuse(d, "needs a block")),
            }
            if matches!(d.name.as_str(), "listen" | "server_name") && !in_server {
                return Err(refuse(d, "allowed only directly in server"));
            }
            // try_files, index, error_page... name files relative to root: no climbing out.
            if d.args.iter().any(|a| a.split('/').any(|c| c == "..")) {
                return Err(refuse(d, "\"..\" is not allowed in any argument"));
            }
            self.args(d)?;
        }
        Ok(())
    }

    fn args(&self, d: &Directive) -> Result<(), String> {
        let first = d.args.first().map(String::as_str).unwrap_or("");
        let p = self.policy;
        match d.name.as_str() {
            "root" | "alias" => {
                let roots: Vec<&Path> = p.allowed_roots.iter().map(|p| p.as_path()).collect();
                self.path_under(d, first, &roots)
            }
            "include" => self.path_under(d, first, &[&p.snippets_dir]),
            "ssl_certificate" | "ssl_certificate_key" => {
                self.path_under(d, first, &[&p.certbot.live_dir.join(self.site.as_str())])
            }
            "access_log" if first == "off" => Ok(()),
            "access_log" | "error_log" => self.path_under(d, first, &[&p.log_dir]),
            // nginx would create the socket file as root, anywhere.
            "listen" if first.starts_with("unix:") => {
                Err(refuse(d, "unix sockets are not allowed"))
            }
            "listen"
                if d.args
                    .iter()
                    .any(|a| a == "default_server" || a == "default") =>
            {
                Err(refuse(
                    d,
                    "default_server would capture other sites' traffic",
                ))
            }
            // A unix-socket upstream would expose a local socket (docker's, say) to the web.
            "proxy_pass" if first.contains("unix:") => {
                Err(refuse(d, "unix upstreams are not allowed"))
            }
            "server_name" if d.args.is_empty() => Err(refuse(d, "needs at least one name")),
            "server_name" => match d.args.iter().find(|a| !self.domains.contains(&a.as_str())) {
                Some(other) => {
                    let why = format!(
                        "{other:?} is not one of site {}'s policy domains",
                        self.site
                    );
                    Err(refuse(d, &why))
                }
                None => Ok(()),
            },
            _ => Ok(()),
        }
    }

    /// `arg` must be an absolute, variable-free path without `..` inside one of `roots` (a served
    /// directory may be the root itself; files must be below it).
    fn path_under<P: AsRef<Path>>(
        &self,
        d: &Directive,
        arg: &str,
        roots: &[P],
    ) -> Result<(), String> {
        if arg.contains('$') {
            return Err(refuse(d, "variables are not allowed in paths"));
        }
        let path = Path::new(arg);
        if !path.is_absolute() {
            return Err(refuse(d, "path must be absolute"));
        }
        if path
            .components()
            .any(|c| matches!(c, Component::ParentDir | Component::CurDir))
            || arg.contains("..")
        {
            return Err(refuse(d, "path must not contain .. or ."));
        }
        let may_equal = matches!(d.name.as_str(), "root" | "alias");
        let inside = |root: &P| path.starts_with(root) && (may_equal || path != root.as_ref());
        if roots.iter().any(inside) {
            return Ok(());
        }
        let shown: Vec<String> = roots
            .iter()
            .map(|r| r.as_ref().display().to_string())
            .collect();
        Err(refuse(d, &format!("{arg} is outside {}", shown.join(", "))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::tests::sample;

    fn policy() -> Policy {
        Policy::parse(&sample("[sites.other]\ndomains = [\"other.com\"]\n")).unwrap()
    }

    fn site() -> SiteName {
        SiteName::try_from("durhack").unwrap()
    }

    fn server(body: &str) -> String {
        format!("server {{\n listen 80;\n server_name durhack.com;\n{body}\n}}\n")
    }

    #[test]
    fn accepts_typical_sites() {
        let p = policy();
        for body in [
            "root /srv/durhack/www; index index.html; location / { try_files $uri $uri/ /index.html; }",
            "root /srv/durhack;",
            "location /api/ { proxy_pass http://127.0.0.1:3000; proxy_set_header Host $host; proxy_http_version 1.1; proxy_read_timeout 60s; }",
            "gzip on; gzip_types text/css application/javascript; expires 1h; add_header X-Frame-Options DENY always;",
            "listen 443 ssl; ssl_certificate /etc/letsencrypt/live/durhack/fullchain.pem; ssl_certificate_key /etc/letsencrypt/live/durhack/privkey.pem;",
            "include /etc/nginx/snippets/acme-challenge.conf;",
            "access_log /var/log/nginx/durhack.access.log; error_log /var/log/nginx/durhack.error.log warn; access_log off;",
            "if ($scheme = http) { return 301 https://$host$request_uri; }",
            "error_page 404 /404.html; charset utf-8; client_max_body_size 10m; set $x 1;",
            "# just a comment with load_module in it",
        ] {
            let text = server(body);
            assert_eq!(check(&p, &site(), &text), Ok(()), "{text}");
        }
        let two = format!(
            "{}{}",
            server(""),
            server("").replace("durhack.com", "www.durhack.com durhack.com")
        );
        assert_eq!(check(&p, &site(), &two), Ok(()));
    }

    #[test]
    fn refuses_dangerous_confs() {
        let p = policy();
        let refused_in_server = [
            "load_module /tmp/evil.so;",
            "user root;",
            "access_log /etc/cron.d/evil;",
            "error_log /root/.ssh/authorized_keys;",
            "access_log syslog:server=127.0.0.1;",
            "error_log stderr;",
            "content_by_lua_block { os.execute('id') }",
            "access_by_lua_file /tmp/x.lua;",
            "set_by_lua $x 'return 1';",
            "perl_modules /tmp;",
            "perl Evil::handler;",
            "js_import /tmp/x.js;",
            "js_content main.x;",
            "include /etc/shadow;",
            "include /etc/nginx/snippets/../../shadow;",
            "include snippets/x.conf;",
            "include /etc/nginx/snippets;",
            "ssl_certificate /etc/letsencrypt/live/other/fullchain.pem;",
            "ssl_certificate_key /etc/ssl/private/key.pem;",
            "ssl_certificate data:-----BEGIN;",
            "ssl_certificate /etc/letsencrypt/live/durhack/../other/privkey.pem;",
            "root /etc;",
            "root /;",
            "root /srv/durhack/../../etc;",
            "root /srv/durhackx;",
            "root srv/durhack;",
            "root /srv/durhack/$host;",
            "alias /etc/;",
            "client_body_temp_path /etc/x;",
            "proxy_temp_path /etc/x;",
            "proxy_cache_path /etc/x keys_zone=a:1m;",
            "auth_basic_user_file /etc/shadow;",
            "ssl_password_file /etc/shadow;",
            "proxy_pass http://unix:/var/run/docker.sock:/;",
            "listen unix:/etc/evil.sock;",
            "listen 80 default_server;",
            "server_name other.com;",
            "server_name durhack.com other.com;",
            "server_name *.durhack.com;",
            "server_name ~^(.*)$;",
            "server_name \"\";",
            "server { server_name durhack.com; }",
            "location / { listen 8080; }",
            "location / { server_name durhack.com; }",
            "location /;",
            "root /srv/durhack { }",
            "# hide\nload_module /tmp/x.so;",
            "add_header X 1; # ok\n  user root;",
            "types { text/html html; }",
            "location /x { try_files /../../../etc/shadow =404; }",
            "index ../../secret;",
            "error_page 404 /../x;",
            "upstream x { server 127.0.0.1; }",
        ];
        for body in refused_in_server {
            let text = server(body);
            assert!(
                check(&p, &site(), &text).is_err(),
                "should be refused:\n{text}"
            );
        }
        for text in [
            "",
            "# nothing but a comment\n",
            "load_module /tmp/x.so;",
            "user root;",
            "http { server { server_name durhack.com; } }",
            "server durhack.com { server_name durhack.com; }",
            "server;",
            "server { listen 80; }",
            "server { server_name durhack.com; ",
            "server { server_name durhack.com; } }",
            "server { server_name durhack.com }",
            "server { server_name \"durhack.com; }",
            "include /etc/nginx/snippets/x.conf;",
        ] {
            assert!(
                check(&p, &site(), text).is_err(),
                "should be refused:\n{text}"
            );
        }
        // A site outside the policy is refused whatever its conf.
        let unknown = SiteName::try_from("unknown").unwrap();
        assert!(check(&p, &unknown, &server("")).is_err());
        // Another site's domain, even as that site's only name.
        let other = SiteName::try_from("other").unwrap();
        assert!(check(&p, &other, &server("")).is_err());
    }
}
