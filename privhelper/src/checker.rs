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

/// How a directive's arguments are checked.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// No file-system meaning.
    Plain,
    /// First argument is a directory that nginx serves from: inside an allowed root.
    ServedPath,
    /// First argument is a file under the snippets directory.
    Include,
    /// First argument is under `<live_dir>/<site>/`.
    Certificate,
    /// First argument is a log file under the log dir (or `off`, for `access_log`).
    Log,
    /// `listen`: no `unix:` sockets (nginx would create them as root), no `default_server`.
    Listen,
    /// `server_name`: each argument one of the site's domains.
    ServerName,
    /// `proxy_pass`: no `unix:` upstream (which would expose a local socket to the web).
    Proxy,
}

/// The allow-list. `server`, `location` and `if` are the only blocks.
const ALLOWED: &[(&str, Kind)] = &[
    ("listen", Kind::Listen),
    ("server_name", Kind::ServerName),
    ("location", Kind::Plain),
    ("if", Kind::Plain),
    ("root", Kind::ServedPath),
    ("alias", Kind::ServedPath),
    ("index", Kind::Plain),
    ("try_files", Kind::Plain),
    ("return", Kind::Plain),
    ("rewrite", Kind::Plain),
    ("set", Kind::Plain),
    ("break", Kind::Plain),
    ("internal", Kind::Plain),
    ("allow", Kind::Plain),
    ("deny", Kind::Plain),
    ("autoindex", Kind::Plain),
    ("default_type", Kind::Plain),
    ("charset", Kind::Plain),
    ("expires", Kind::Plain),
    ("etag", Kind::Plain),
    ("error_page", Kind::Plain),
    ("add_header", Kind::Plain),
    ("absolute_redirect", Kind::Plain),
    ("port_in_redirect", Kind::Plain),
    ("server_tokens", Kind::Plain),
    ("client_max_body_size", Kind::Plain),
    ("keepalive_timeout", Kind::Plain),
    ("sendfile", Kind::Plain),
    ("tcp_nopush", Kind::Plain),
    ("http2", Kind::Plain),
    ("proxy_pass", Kind::Proxy),
    ("proxy_set_header", Kind::Plain),
    ("proxy_http_version", Kind::Plain),
    ("proxy_read_timeout", Kind::Plain),
    ("proxy_connect_timeout", Kind::Plain),
    ("proxy_send_timeout", Kind::Plain),
    ("proxy_redirect", Kind::Plain),
    ("proxy_buffering", Kind::Plain),
    ("proxy_request_buffering", Kind::Plain),
    ("proxy_hide_header", Kind::Plain),
    ("proxy_cache_bypass", Kind::Plain),
    ("gzip", Kind::Plain),
    ("gzip_types", Kind::Plain),
    ("gzip_min_length", Kind::Plain),
    ("gzip_comp_level", Kind::Plain),
    ("gzip_vary", Kind::Plain),
    ("gzip_proxied", Kind::Plain),
    ("gzip_disable", Kind::Plain),
    ("gzip_http_version", Kind::Plain),
    ("gzip_buffers", Kind::Plain),
    ("ssl_certificate", Kind::Certificate),
    ("ssl_certificate_key", Kind::Certificate),
    ("ssl_protocols", Kind::Plain),
    ("ssl_ciphers", Kind::Plain),
    ("ssl_prefer_server_ciphers", Kind::Plain),
    ("ssl_session_timeout", Kind::Plain),
    ("ssl_session_tickets", Kind::Plain),
    ("include", Kind::Include),
    ("access_log", Kind::Log),
    ("error_log", Kind::Log),
];

/// The names on the allow-list, for documentation and `check`.
pub fn allowed_directives() -> impl Iterator<Item = &'static str> {
    std::iter::once("server").chain(ALLOWED.iter().map(|(n, _)| *n))
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
            let Some((_, kind)) = ALLOWED.iter().find(|(n, _)| *n == d.name) else {
                return Err(refuse(d, "directive not allowed"));
            };
            let is_block = matches!(d.name.as_str(), "location" | "if");
            match (&d.block, is_block) {
                (Some(block), true) => self.block(block, false)?,
                (None, false) => {}
                (Some(_), false) => return Err(refuse(d, "may not have a block")),
                (None, true) => return Err(refuse(d, "needs a block")),
            }
            if matches!(kind, Kind::Listen | Kind::ServerName) && !in_server {
                return Err(refuse(d, "allowed only directly in server"));
            }
            self.args(d, *kind)?;
        }
        Ok(())
    }

    fn args(&self, d: &Directive, kind: Kind) -> Result<(), String> {
        let first = d.args.first().map(String::as_str).unwrap_or("");
        match kind {
            Kind::Plain => Ok(()),
            Kind::ServedPath => {
                let roots: Vec<&Path> = self
                    .policy
                    .allowed_roots
                    .iter()
                    .map(|p| p.as_path())
                    .collect();
                self.path_under(d, first, &roots)
            }
            Kind::Include => self.path_under(d, first, &[self.policy.snippets_dir.as_path()]),
            Kind::Certificate => {
                let dir = self.policy.certbot.live_dir.join(self.site.as_str());
                self.path_under(d, first, &[dir.as_path()])
            }
            Kind::Log => {
                if d.name == "access_log" && first == "off" {
                    return Ok(());
                }
                self.path_under(d, first, &[self.policy.log_dir.as_path()])
            }
            Kind::Listen => {
                if first.starts_with("unix:") {
                    return Err(refuse(d, "unix sockets are not allowed"));
                }
                if d.args
                    .iter()
                    .any(|a| a == "default_server" || a == "default")
                {
                    return Err(refuse(
                        d,
                        "default_server would capture other sites' traffic",
                    ));
                }
                Ok(())
            }
            Kind::ServerName => {
                if d.args.is_empty() {
                    return Err(refuse(d, "needs at least one name"));
                }
                match d.args.iter().find(|a| !self.domains.contains(&a.as_str())) {
                    Some(other) => Err(refuse(
                        d,
                        &format!(
                            "{other:?} is not one of site {}'s policy domains",
                            self.site
                        ),
                    )),
                    None => Ok(()),
                }
            }
            Kind::Proxy => {
                if first.contains("unix:") {
                    return Err(refuse(d, "unix-socket upstreams are not allowed"));
                }
                Ok(())
            }
        }
    }

    /// `arg` must be an absolute, variable-free path without `..` inside one of `roots` (a served
    /// directory may be the root itself; files must be below it).
    fn path_under(&self, d: &Directive, arg: &str, roots: &[&Path]) -> Result<(), String> {
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
        if roots
            .iter()
            .any(|root| path.starts_with(root) && (may_equal || path != *root))
        {
            return Ok(());
        }
        let shown: Vec<String> = roots.iter().map(|r| r.display().to_string()).collect();
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
