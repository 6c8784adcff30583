//! Where a site conf is checked, and turned into the only text the helper writes.
//!
//! The client's text is parsed into a tree; every directive must be on the allow-list below and
//! every argument must have the form its directive allows (paths inside the policy's places,
//! `listen` one of the policy's forms, `proxy_pass` a loopback port of the site, no
//! client-controlled variable where a file, URL or upstream is named). The written file is
//! [`nginx_syntax::render`] of the checked tree, with `disable_symlinks if_not_owner;` added to
//! every server: nginx never reads a byte the client wrote, so a tokenizer disagreement between
//! this parser and nginx cannot hide anything.

use std::path::{Path, PathBuf};

use protocol::SiteName;
use protocol::nginx_syntax::{self, Directive, variables};

use crate::policy::Policy;

/// The allow-list. `server` (top level only), `location` and `if` are the only blocks.
/// Arguments are checked for the directives in [`Ctx::args`]; the rest have no file-system or
/// socket meaning. Names are compared as nginx does: exactly.
const ALLOWED: &str = "\
    listen server_name location if root alias index try_files return rewrite set break \
    internal allow deny default_type charset expires etag error_page add_header \
    absolute_redirect port_in_redirect server_tokens client_max_body_size keepalive_timeout \
    sendfile tcp_nopush http2 proxy_pass proxy_set_header proxy_http_version \
    proxy_read_timeout proxy_connect_timeout proxy_send_timeout proxy_redirect proxy_buffering \
    proxy_request_buffering proxy_hide_header gzip gzip_types gzip_min_length gzip_comp_level \
    gzip_vary gzip_proxied gzip_disable gzip_http_version gzip_buffers ssl_certificate \
    ssl_certificate_key ssl_protocols ssl_ciphers ssl_prefer_server_ciphers \
    ssl_session_timeout ssl_session_tickets include access_log error_log";

/// Variables allowed where nginx maps a URI to a file (`try_files`, `index`, `error_page`,
/// `if -f`): normalised by nginx and starting with `/`, so no mix of them with literal text that
/// has no `..` can form a `..` segment. Captures are not among them: `^/(..)x$` captures `..`.
/// `$args`, `$arg_*`, `$http_*`, `$cookie_*`, `$request_uri` (raw) and `set` variables carry
/// raw client input.
const FILE_VARS: &[&str] = &["uri", "document_uri", "document_root", "request_filename"];
/// Allowed in a redirect's URL instead (with `$1`..`$9`), after a host that is literal or
/// `$host` (see [`anchored`]): they choose where on this site the client goes, not what nginx
/// reads, and nginx keeps the raw ones percent-encoded.
const REDIRECT_VARS: &[&str] =
    &["scheme", "host", "server_name", "server_port", "request_uri", "is_args", "args"];

/// What [`check`] puts first in every server block: symlinks are followed only owner to owner,
/// and a backend cannot redirect nginx internally (`X-Accel-Redirect: /..?` becomes `$uri`
/// `/..`: nginx splits an internal redirect's target at `?`).
pub const INJECTED: &str = "disable_symlinks if_not_owner; proxy_ignore_headers X-Accel-Redirect;";

/// The names on the allow-list, for documentation and `check`.
pub fn allowed_directives() -> impl Iterator<Item = &'static str> {
    std::iter::once("server").chain(ALLOWED.split_whitespace())
}

/// Checks `text` as the conf of `site`; returns the conf to write, or which line and why not.
pub fn check(policy: &Policy, site: &SiteName, text: &str) -> Result<String, String> {
    let mut directives = nginx_syntax::parse(text).map_err(|e| format!("syntax: {e}"))?;
    let Some(s) = policy.sites.get(site) else {
        return Err(format!("site {site} is not in the policy"));
    };
    if directives.is_empty() {
        return Err("no server block".into());
    }
    for d in &mut directives {
        if d.name != "server" {
            return Err(refuse(d, "only server blocks are allowed at the top level"));
        }
        if !d.args.is_empty() {
            return Err(refuse(d, "server takes no arguments"));
        }
        let Some(block) = &mut d.block else {
            return Err(refuse(d, "server must be a block"));
        };
        // A nameless server would catch other hosts; one without `listen` gets nginx's `*:80`.
        for needed in ["server_name", "listen"] {
            if !block.iter().any(|d| d.name == needed) {
                return Err(refuse(d, &format!("every server block needs a {needed}")));
            }
        }
        let ctx = Ctx {
            policy,
            site,
            domains: s.domains.iter().map(|d| d.as_str()).collect(),
            proxy_ports: &s.proxy_ports,
            live: [policy.certbot.live_dir.join(s.cert_name.as_str())],
        };
        ctx.block(block, None)?;
        block.splice(0..0, nginx_syntax::parse(INJECTED).map_err(|e| e.to_string())?);
    }
    let header = format!("# written by durhack-privhelper for site {site}; edits are lost\n");
    Ok(header + &nginx_syntax::render(&directives))
}

fn refuse(d: &Directive, why: &str) -> String {
    format!("line {}: \"{}\": {why}", d.line, d.name)
}

struct Ctx<'a> {
    policy: &'a Policy,
    site: &'a SiteName,
    domains: Vec<&'a str>,
    proxy_ports: &'a [u16],
    /// `<live_dir>/<cert_name>`: the only place for `ssl_certificate` and its key.
    live: [PathBuf; 1],
}

impl Ctx<'_> {
    /// `location` is the innermost enclosing location block, if any.
    fn block(&self, directives: &[Directive], location: Option<&Directive>) -> Result<(), String> {
        for d in directives {
            if !ALLOWED.split_whitespace().any(|n| n == d.name) {
                return Err(refuse(d, "directive not allowed"));
            }
            let is_block = matches!(d.name.as_str(), "location" | "if");
            match (&d.block, is_block) {
                (Some(block), true) if d.name == "location" => self.block(block, Some(d))?,
                (Some(block), true) => self.block(block, location)?,
                (None, false) => {}
                (Some(_), false) => return Err(refuse(d, "may not have a block")),
                (None, true) => return Err(refuse(d, "needs a block")),
            }
            if matches!(d.name.as_str(), "listen" | "server_name") && location.is_some() {
                return Err(refuse(d, "allowed only directly in server"));
            }
            // try_files, index, error_page... name files relative to root: no climbing out.
            if d.args.iter().any(|a| a.split('/').any(|c| c == "..")) {
                return Err(refuse(d, "\"..\" is not allowed in any argument"));
            }
            self.args(d, location)?;
        }
        Ok(())
    }

    fn args(&self, d: &Directive, location: Option<&Directive>) -> Result<(), String> {
        let first = d.args.first().map(String::as_str).unwrap_or("");
        let last = d.args.last().map(String::as_str).unwrap_or("");
        let (p, ports, tail) =
            (self.policy, self.proxy_ports, &d.args[d.args.len().saturating_sub(1)..]);
        match d.name.as_str() {
            "root" => self.path_under(d, first, &p.allowed_roots),
            "alias" => match location {
                Some(loc) if nginx_syntax::alias_fits(&loc.args, first) => {
                    self.path_under(d, first, &p.allowed_roots)
                }
                _ => Err(refuse(d, "only in a location, both ending in \"/\" for a prefix")),
            },
            "include" => self.path_under(d, first, std::slice::from_ref(&p.snippets_dir)),
            "ssl_certificate" | "ssl_certificate_key" => self.path_under(d, first, &self.live),
            "access_log" if first == "off" => Ok(()),
            // One fixed file each: nginx -t (as root) creates every log file a conf names.
            "access_log" | "error_log" => {
                let file =
                    p.log_dir.join(format!("{}.{}.log", self.site, &d.name[..d.name.len() - 4]));
                match Path::new(first) == file {
                    true => Ok(()),
                    false => Err(refuse(d, &format!("the only log file is {}", file.display()))),
                }
            }
            "listen" if p.listen.contains(&d.args.join(" ")) => Ok(()),
            "listen" => Err(refuse(d, &format!("allowed forms: {}", p.listen.join(", ")))),
            // `proxy_pass http://<loopback>:<port>[/path]`, the port one of the site's.
            "proxy_pass" => match nginx_syntax::loopback_port(first) {
                Some(port) if ports.contains(&port) => Ok(()),
                _ => Err(refuse(
                    d,
                    &format!("only loopback http://host:PORT[/path], PORT in {ports:?}"),
                )),
            },
            "proxy_redirect" if matches!(first, "off" | "default") => Ok(()),
            "proxy_redirect" => Err(refuse(d, "only \"off\" or \"default\"")),
            "server_name" if d.args.is_empty() => Err(refuse(d, "needs at least one name")),
            "server_name" => match d.args.iter().find(|a| !self.domains.contains(&a.as_str())) {
                Some(other) => {
                    Err(refuse(d, &format!("{other:?} is not one of the site's domains")))
                }
                None => Ok(()),
            },
            // error_page to anything but a path or a named location redirects the client.
            "error_page" if !last.starts_with(['/', '@']) => self.vars(d, tail, true),
            // try_files appends its values to the root as they are: `-x` names `<root>-x`.
            "try_files" if d.args.iter().any(|a| !a.starts_with(['/', '$', '=', '@'])) => {
                Err(refuse(d, "its values must start with /, a variable, = or @"))
            }
            // The last value of these is an internal redirect, whose target nginx splits at `?`
            // (`GET /..%3F` makes `$uri` `/..?`): literal only.
            "try_files" | "error_page" if !last.starts_with(['=', '@']) && last.contains('$') => {
                Err(refuse(d, "its internal redirect takes no variables"))
            }
            "try_files" | "index" | "error_page" => self.vars(d, &d.args, false),
            // An internal rewrite sets the URI later mapped to a file: no variables at all (a
            // capture, or `$uri` plus dots, can climb out); a redirect only names a place.
            "rewrite" => match d.args.get(1) {
                Some(to) if redirects(to, last) => self.vars(d, std::slice::from_ref(to), true),
                Some(to) if to.contains('$') || !to.starts_with('/') => {
                    Err(refuse(d, "an internal rewrite names a path starting with /, no variables"))
                }
                Some(to) => self.vars(d, std::slice::from_ref(to), false),
                None => Ok(()),
            },
            // `return URL` or `return 3xx URL` (nginx reads "0301" as 301).
            "return" if first.parse::<u16>().map_or(true, |c| (300..400).contains(&c)) => {
                self.vars(d, tail, true)
            }
            "set" if first.strip_prefix('$').is_some_and(|v| FILE_VARS.contains(&v)) => {
                Err(refuse(d, "may not change a variable paths are built from"))
            }
            // `if (-f X)`: X is a file under the root (else any path's existence leaks), named
            // with the same variables as in `try_files`.
            "if" if d.args.iter().any(|a| file_test(a)) => {
                match ["$request_filename", "$document_root"].iter().any(|v| last.starts_with(v)) {
                    true => self.vars(d, &d.args, false),
                    false => {
                        Err(refuse(d, "a file test names $request_filename or $document_root"))
                    }
                }
            }
            _ => Ok(()),
        }
    }

    /// No `..` and only [`FILE_VARS`] in `args`; for a redirect, also [`REDIRECT_VARS`] and
    /// captures, after an [`anchored`] start.
    fn vars(&self, d: &Directive, args: &[String], redirect: bool) -> Result<(), String> {
        let capture = |v: &str| v.len() == 1 && v.as_bytes()[0].is_ascii_digit();
        // In a redirect, not `$uri` and its kin: nginx decodes them, and a `%0d%0a` would split
        // the response's headers.
        let allowed = |v: &str| match redirect {
            true => REDIRECT_VARS.contains(&v) || capture(v),
            false => FILE_VARS.contains(&v),
        };
        if redirect && !args.iter().all(|a| anchored(a)) {
            return Err(refuse(
                d,
                "a redirect must start with a path, or a scheme and a fixed host",
            ));
        }
        // `$uri` is normalised only as read from the request: every URI a conf makes is checked.
        // One variable at most, so a `$uri` that nginx ever let be `/..` could climb one level,
        // never to `/` (`$uri$uri$uri/etc/passwd`).
        let unsafe_path = |a: &String| {
            a.contains("..") || variables(a).len() > 1 || !nginx_syntax::dot_segment_free(a)
        };
        if !redirect && args.iter().any(unsafe_path) {
            return Err(refuse(
                d,
                "no \"..\", \".\" segment, second variable or variable and \".\" here",
            ));
        }
        match args.iter().flat_map(|a| variables(a)).find(|v| !allowed(v)) {
            // It may carry raw client input into a path or URL.
            Some(var) => Err(refuse(d, &format!("${var} is not allowed here"))),
            None => Ok(()),
        }
    }

    /// `arg` must be an absolute, variable-free path without `..` inside one of `roots` (a served
    /// directory may be the root itself; files must be below it).
    fn path_under(&self, d: &Directive, arg: &str, roots: &[PathBuf]) -> Result<(), String> {
        let path = Path::new(arg);
        // The text, not Path::components, which drops `.` components.
        let dotted = arg.split('/').any(|c| c == "." || c == "..");
        if arg.contains(['$']) || arg.contains("..") || dotted || !path.is_absolute() {
            return Err(refuse(d, "a path must be absolute, without variables, . or .."));
        }
        // An alias that is a root itself must end with `/`: try_files strips the location off a
        // variable value under alias (`$uri-x` at `= /c` would name `<root>-x`).
        let may_equal = d.name == "root" || arg.ends_with('/');
        if roots.iter().any(|root| path.starts_with(root) && (may_equal || path != root)) {
            return Ok(());
        }
        let shown: Vec<String> = roots.iter().map(|r| r.display().to_string()).collect();
        Err(refuse(d, &format!("{arg} is outside {}", shown.join(", "))))
    }
}

/// Whether an `if` argument is an operator that looks a file up.
fn file_test(arg: &str) -> bool {
    matches!(arg.trim_start_matches(['(', '!']), "-f" | "-d" | "-e" | "-x")
}

/// Whether `rewrite … to flag` answers with a redirect (nginx's rule) rather than a new URI.
fn redirects(to: &str, flag: &str) -> bool {
    ["http://", "https://", "$scheme"].iter().any(|s| to.starts_with(s))
        || matches!(flag, "redirect" | "permanent")
}

/// Whether a redirect's target stays on a host the conf names: a path whose first segment is
/// literal (`//x`, `/\x` and `/$x` could name another host), or a scheme, then a literal host,
/// `$host` or `$server_name`, ending before any other variable (`https://$host$args` with
/// `?@evil` would not).
fn anchored(url: &str) -> bool {
    let Some(rest) = ["http://", "https://", "$scheme://"].iter().find_map(|s| url.strip_prefix(s))
    else {
        return url.starts_with('/') && !url[1..].starts_with(['/', '\\', '$']);
    };
    let rest = ["$host", "$server_name", "$server_port"]
        .iter()
        .fold(rest.to_string(), |r, v| r.replace(v, "h"));
    let end = rest.find(['/', '?', '#', '$', '@', '\\']).unwrap_or(rest.len());
    let after = &rest[end..];
    end > 0
        && (after.is_empty()
            || after.starts_with(['/', '?', '#'])
            || after.starts_with("$request_uri"))
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
            let written = check(&p, &site(), &text);
            assert!(written.is_ok(), "{text}\n{written:?}");
        }
        let two = format!(
            "{}{}",
            server(""),
            server("").replace("durhack.com", "www.durhack.com durhack.com")
        );
        assert!(check(&p, &site(), &two).is_ok());
    }

    #[test]
    fn certificates_and_logs_of_dotted_sites_and_kept_lineages() {
        let p = Policy::parse(&sample(
            "[sites.\"api.durhack.com\"]\ndomains = [\"api.durhack.com\"]\n\
             [sites.auth]\ndomains = [\"auth.durhack.com\"]\ncert_name = \"auth.durhack.com\"\n",
        ))
        .unwrap();
        let conf = |name: &str, body: &str| {
            format!("server {{ listen 443 ssl; server_name {name}; {body} }}")
        };
        let tls = |dir: &str| {
            format!(
                "ssl_certificate /etc/letsencrypt/live/{dir}/fullchain.pem; ssl_certificate_key /etc/letsencrypt/live/{dir}/privkey.pem;"
            )
        };
        let api = SiteName::try_from("api.durhack.com").unwrap();
        let logs = "access_log /var/log/nginx/api.durhack.com.access.log; error_log /var/log/nginx/api.durhack.com.error.log;";
        assert!(check(&p, &api, &conf("api.durhack.com", &tls("api.durhack.com"))).is_ok());
        assert!(check(&p, &api, &conf("api.durhack.com", logs)).is_ok());
        // A kept lineage replaces the site-named one: the old certificate directory is used.
        let auth = SiteName::try_from("auth").unwrap();
        assert!(check(&p, &auth, &conf("auth.durhack.com", &tls("auth.durhack.com"))).is_ok());
        for (site, name, body) in [
            (&auth, "auth.durhack.com", tls("auth")),
            (&auth, "auth.durhack.com", tls("durhack")),
            (&api, "api.durhack.com", tls("api.durhack.com/..")),
            (&api, "api.durhack.com", tls("api")),
            (&api, "api.durhack.com", tls("durhack")),
            (&api, "api.durhack.com", "access_log /var/log/nginx/api.access.log;".into()),
            (&api, "api.durhack.com", "access_log /var/log/nginx/durhack.com.access.log;".into()),
        ] {
            let text = conf(name, &body);
            assert!(check(&p, site, &text).is_err(), "should be refused:\n{text}");
        }
    }

    #[test]
    fn the_documented_acme_challenge_location_is_accepted() {
        // docs/install.md's inline form, for a webroot listed in allowed_roots; the snippet
        // form is in accepts_typical_sites.
        let p = Policy::parse(
            &sample("")
                .replace("[\"/srv/durhack\"]", "[\"/srv/durhack\", \"/var/www/letsencrypt\"]"),
        )
        .unwrap();
        let body = "location ^~ /.well-known/acme-challenge/ { root /var/www/letsencrypt; default_type text/plain; }";
        let written = check(&p, &site(), &server(body));
        assert!(written.is_ok(), "{written:?}");
        assert!(check(&policy(), &site(), &server(body)).is_err(), "outside allowed_roots");
    }

    #[test]
    fn writes_the_canonical_rendering_never_the_client_text() {
        let p = policy();
        let text = "server { # a comment\n listen 80 ; server_name 'durhack.com';\n\n root /srv/durhack;\n location / { add_header X \"a\\\"b${x}\"; } }\n";
        let written = check(&p, &site(), text).unwrap();
        assert_eq!(
            written,
            "# written by durhack-privhelper for site durhack; edits are lost\n\
             server {\n    disable_symlinks \"if_not_owner\";\n    proxy_ignore_headers \"X-Accel-Redirect\";\n    listen \"80\";\n    server_name \"durhack.com\";\n    \
             root \"/srv/durhack\";\n    location \"/\" {\n        add_header \"X\" \"a\\\"b${x}\";\n    }\n}\n"
        );
        // Checking what it wrote gives the same text: the rendering is a fixed point.
        let injected = "    disable_symlinks \"if_not_owner\";\n    proxy_ignore_headers \"X-Accel-Redirect\";\n";
        let again = check(&p, &site(), &written.replacen(injected, "", 1));
        assert_eq!(again.as_deref(), Ok(written.as_str()));
    }

    #[test]
    fn allow_list_by_meaning_accepts_safe_forms() {
        let p = policy();
        for body in [
            "location /img/ { alias /srv/durhack/img/; }",
            "location = /favicon.ico { alias /srv/durhack/f.ico; }",
            "rewrite ^/old/(.*)$ /new/$1 permanent;",
            "rewrite ^/old/(.*)$ https://$host/new/$1;",
            "rewrite ^/old$ /new last;",
            "return 302 /login$is_args$args;",
            "return https://durhack.com$request_uri;",
            "return 301 $scheme://$host:$server_port/x?$args;",
            "try_files $uri $uri.html $uri/index.html /index.html;",
            "return 301 https://$host$request_uri;",
            "return 200 \"$arg_x is echoed, not a path\";",
            "proxy_pass http://127.0.0.1:3000/api/;",
            "proxy_pass http://[::1]:3000;",
            "proxy_pass http://localhost:3000;",
            "proxy_redirect off;",
            "if ($http_user_agent ~* bot) { return 403; }",
            "if (-f $request_filename) { break; }",
            "listen [::]:443 ssl;",
            "proxy_set_header X-Q $args;",
        ] {
            let text = server(body);
            let written = check(&p, &site(), &text);
            assert!(written.is_ok(), "{text}\n{written:?}");
        }
    }

    #[test]
    fn allow_list_by_meaning_refuses_the_reviewed_attacks() {
        let p = policy();
        for body in [
            // nginx compares schemes case-insensitively: UNIX: is unix:.
            "listen UNIX:/tmp/victim;",
            "listen unix:/tmp/victim;",
            "listen 127.0.0.1:8080;",
            "listen 80 default_server;",
            "listen 80 reuseport;",
            "listen 80 default;",
            "proxy_pass http://UNIX:/run/x.sock:/;",
            "proxy_pass http://unix:/run/x.sock:/;",
            "proxy_pass http://$arg_u;",
            "proxy_pass HTTP://127.0.0.1:3000;",
            "proxy_pass https://127.0.0.1:3000;",
            "proxy_pass http://127.0.0.1:3001;",
            "proxy_pass http://10.0.0.1:3000;",
            "proxy_pass http://127.0.0.1:3000/$1;",
            "proxy_pass http://127.0.0.1:3000@evil;",
            "proxy_redirect http://x/ http://$arg_y/;",
            // Client-controlled variables where a file is named.
            "try_files /$arg_p =404;",
            "location / { try_files $uri /$http_x =404; }",
            "rewrite ^ /$arg_p break;",
            "rewrite ^ /${arg_p} break;",
            "try_files $request_uri =404;",
            "set $x $arg_p; try_files $x =404;",
            "if ($args ~ (.*)) { set $y 1; } try_files /$1 =404;",
            "index $cookie_x;",
            "error_page 404 /$http_x;",
            "if (-f /srv/durhack/$arg_x) { return 200; }",
            "return 301 $arg_to;",
            "set $uri /x;",
            // A capture can be "..": GET /..x against ^/(..)x$ (the second review).
            "location ~ ^/x/(.*)$ { try_files /$1 =404; }",
            "location / { try_files $uri../$uri../etc/passwd =404; }",
            "rewrite ^ $uri/.;",
            "rewrite ^/(.*)$ /$1 last;",
            "rewrite ^ /x/../../etc/passwd break;",
            // Redirect targets anchored on this site's host.
            "return 0301 $arg_to;",
            "return 301 $args;",
            "return 301 https://$args;",
            // Decoded variables in a Location: `%0d%0a` splits the headers (sixth review).
            "return 301 https://$host/$uri;",
            "return 301 /x$uri;",
            "error_page 404 https:/evil.example;",
            "try_files $uri$uri =404;",
            "try_files /a..b =404;",
            "return 301 https://$host$args;",
            "return 302 //$host/x;",
            "return 302 /$request_uri;",
            "return 302 /\\evil.example;",
            "rewrite ^/(.*)$ $scheme://$1 permanent;",
            "return 301 https:///evil.example;",
            "return 301 /x/$a;",
            // Internal: no variables, whatever a redirect could take.
            "rewrite ^/(.*)$ /x/$1 last;",
            "error_page 404 /x/$request_uri;",
            // One log file of each kind, named after the site.
            "access_log /var/log/nginx/x1;",
            "error_log /var/log/nginx/durhack.access.log;",
            // alias off by a slash, and alias outside a location.
            "location /img { alias /srv/durhack/; }",
            "location /img/ { alias /srv/durhack; }",
            "alias /srv/durhack/;",
            "location @x { alias /srv/durhack/; }",
            // Symlink following is the helper's to set.
            "disable_symlinks off;",
            "location / { disable_symlinks off; }",
            "proxy_cache_bypass $http_x;",
        ] {
            let text = server(body);
            assert!(check(&p, &site(), &text).is_err(), "should be refused:\n{text}");
        }
        // The tokenizer split of the review: whatever nginx makes of it, the checker must not
        // accept a top-level directive, and a control character never reaches a file.
        for text in [
            "location /a${{# { } } log_format evil $arg_x; server { listen 80; server_name durhack.com; }",
            "server { listen 80; server_name durhack.com; location /a${{# { } } log_format evil x; }",
            "server { listen 80; server_name durhack.com; add_header X \"a\\nb\"; }",
        ] {
            assert!(check(&p, &site(), text).is_err(), "should be refused:\n{text}");
        }
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
            assert!(check(&p, &site(), &text).is_err(), "should be refused:\n{text}");
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
            "server { server_name durhack.com; }",
            "server { listen 80; root /srv/durhack; }",
            "server { listen 80; server_name; }",
            "server { server_name durhack.com; root /srv/durhack; }",
            "server { server_name durhack.com; ",
            "server { server_name durhack.com; } }",
            "server { server_name durhack.com }",
            "server { server_name \"durhack.com; }",
            "include /etc/nginx/snippets/x.conf;",
        ] {
            assert!(check(&p, &site(), text).is_err(), "should be refused:\n{text}");
        }
        // A refusal says where and what.
        let why = check(&p, &site(), &server("\n load_module /x.so;")).unwrap_err();
        assert!(why.starts_with("line 5: \"load_module\": "), "{why}");
        let names: Vec<&str> = allowed_directives().collect();
        assert!(names.contains(&"server") && names.contains(&"proxy_pass"), "{names:?}");
        assert!(!names.contains(&"load_module") && !names.contains(&"disable_symlinks"));
        // A site outside the policy is refused whatever its conf.
        let unknown = SiteName::try_from("unknown").unwrap();
        assert!(check(&p, &unknown, &server("")).is_err());
        // Another site's domain, even as that site's only name.
        let other = SiteName::try_from("other").unwrap();
        assert!(check(&p, &other, &server("")).is_err());
    }

    #[test]
    fn review_dot_dot_built_from_variables_is_refused() {
        let p = policy();
        let mut accepted = Vec::new();
        for body in [
            // `$uri` is "/" for GET /, so `$uri..` is "/..".
            "location = / { try_files $uri../$uri../etc/passwd =404; }",
            "location = / { index $uri../$uri../etc/passwd; }",
            // A capture is a substring of $uri: GET /..x captures "..".
            "location ~ ^/(..)x$ { try_files /$1/$1/etc/passwd =404; }",
            "location ~ ^/(..)x$ { error_page 404 /$1/$1/etc/passwd; return 404; }",
            "rewrite ^/(..)x$ /$1/$1/etc/passwd;",
            // Rewriting $uri one dot at a time: /q -> /q/. -> /q/.. -> ...
            "location /q { rewrite ^ $uri/.; rewrite ^ $uri.; rewrite ^ $uri/etc/passwd break; try_files $uri =404; }",
        ] {
            if check(&p, &site(), &server(body)).is_ok() {
                accepted.push(body);
            }
        }
        assert!(accepted.is_empty(), "accepted: {accepted:#?}");
    }

    #[test]
    fn review_redirect_target_is_never_raw_client_input() {
        let p = policy();
        let mut accepted = Vec::new();
        for body in [
            "return 0301 $arg_to;", // nginx reads 0301 as 301
            "return 301 $args;",    // GET /?https://evil/ -> Location: https://evil/
        ] {
            if check(&p, &site(), &server(body)).is_ok() {
                accepted.push(body);
            }
        }
        assert!(accepted.is_empty(), "accepted: {accepted:#?}");
    }

    #[test]
    fn review_implicit_listen_and_unbounded_log_files() {
        let p = policy();
        // No `listen`: nginx listens on *:80 (the master is root), whatever the policy's forms.
        assert!(
            check(&p, &site(), "server { server_name durhack.com; }").is_err(),
            "a server without listen was accepted"
        );
        // nginx -t (as root) creates every one of these in the log dir, kept or not.
        let many: String = (0..1000).map(|i| format!("access_log /var/log/nginx/x{i};")).collect();
        assert!(check(&p, &site(), &server(&many)).is_err(), "1000 log files accepted");
    }
    #[test]
    fn third_review_dots_siblings_and_error_page_redirects_are_refused() {
        let p = policy();
        let mut accepted = Vec::new();
        for body in [
            // $uri is not always normalised: a literal internal URI `/.` (rewrite,
            // error_page, try_files fallback, index) then `$uri.` is `/..`.
            "location = /go { rewrite ^ /. last; } location / { try_files $uri.$uri./etc/passwd =404; }",
            "location = /go { error_page 404 /.; return 404; } location / { try_files $uri.$uri./etc/passwd =404; }",
            // ... and with no literal dot segment at all: GET / -> `$uri.` is `/.`.
            "location = / { error_page 404 $uri.; return 404; } location / { try_files $uri.$uri./etc/passwd =404; }",
            "location = / { try_files /x $uri.; } location / { error_page 404 $uri.$uri./etc/passwd; return 404; }",
            "location = / { index $uri.; } location / { try_files $uri.$uri./etc/passwd =404; }",
            // try_files and internal URIs without a leading `/` name siblings of the root.
            "try_files -private/key =404;",
            "rewrite ^ -private/key break;",
            // try_files strips the location name off a variable value under alias:
            // `/x-private/key` -> `-private/key`, appended to an alias without its `/`.
            "location = /x { alias /srv/durhack; try_files $uri-private/key =404; }",
            // `.` components pass Path::components (it drops them), so root/alias may end in `/.`.
            "root /srv/durhack/.;",
            "location = /x { alias /srv/durhack/.; try_files ./etc =404; }",
            // error_page to a non-path value is a 302 to it: not anchored on this host.
            "error_page 404 https:/$uri;",
        ] {
            if check(&p, &site(), &server(body)).is_ok() {
                accepted.push(body);
            }
        }
        assert!(accepted.is_empty(), "accepted: {accepted:#?}");
        // `if -f` tests only files under the root: any other path's existence would leak.
        for body in
            ["if (-f /etc/ssl/private/x.key) { return 200; }", "if (!-e $uri) { return 404; }"]
        {
            assert!(check(&p, &site(), &server(body)).is_err(), "{body}");
        }
        assert!(check(&p, &site(), &server("if (!-f $request_filename) { return 404; }")).is_ok());
    }
    #[test]
    fn fourth_review_variables_in_internal_redirect_targets_are_refused() {
        // `GET /..%3F`: `$uri` is `/..?` (normalisation sees the segment `..?`); an internal
        // redirect to a value holding it is split at `?` (ngx_http_split_args): `$uri` = `/..`.
        let p = policy();
        let mut accepted = Vec::new();
        for body in [
            "location / { try_files $uri$uri$uri$uri/etc/passwd $uri; }",
            "location / { error_page 404 /$uri; try_files $uri$uri$uri$uri/etc/passwd =404; }",
            "location ~ \"[?]\" { try_files /x $uri; } location / { try_files $uri$uri$uri/etc/passwd =404; }",
            "location / { try_files /x $request_filename; }",
        ] {
            if check(&p, &site(), &server(body)).is_ok() {
                accepted.push(body);
            }
        }
        assert!(accepted.is_empty(), "accepted: {accepted:#?}");
    }
    #[test]
    fn fifth_review_autoindex_lists_paths_disable_symlinks_never_checked() {
        // autoindex drops the last byte of a regex location's alias (it expects a `/`) after the
        // index module checked the alias itself: `<root>/a`, a symlink, is listed. And autoindex
        // opens directories with a plain opendir, so any autoindex races a symlink swap.
        let p = policy();
        let mut accepted = Vec::new();
        for body in [
            "location ~ ^/l/$ { alias /srv/durhack/ab; autoindex on; }",
            "location = /l/ { alias /srv/durhack/ab; autoindex on; }",
            "root /srv/durhack; autoindex on;",
        ] {
            if check(&p, &site(), &server(body)).is_ok() {
                accepted.push(body);
            }
        }
        assert!(accepted.is_empty(), "accepted: {accepted:#?}");
    }

    /// The seventh review (dotted names, `cert_name`, the inline ACME location): what held.
    #[test]
    fn seventh_review_lineages_logs_and_acme_locations_of_dotted_sites() {
        // Lineage collisions are refused whichever site comes first in the table, against a
        // default (site-named) lineage as well as an explicit one; names are lowercase only.
        for extra in [
            "[sites.a]\ndomains = [\"a.com\"]\n[sites.b]\ndomains = [\"b.com\"]\ncert_name = \"a\"\n",
            "[sites.a]\ndomains = [\"a.com\"]\ncert_name = \"b\"\n[sites.b]\ndomains = [\"b.com\"]\n",
            "[sites.a]\ndomains = [\"a.com\"]\ncert_name = \"durhack\"\n",
            "[sites.a]\ndomains = [\"a.com\"]\ncert_name = \"Durhack\"\n",
            "[sites.A]\ndomains = [\"a.com\"]\n",
            "[sites.a]\ndomains = [\"a.com\"]\ncert_name = \"x\"\n[sites.b]\ndomains = [\"b.com\"]\ncert_name = \"x\"\n",
        ] {
            assert!(Policy::parse(&sample(extra)).is_err(), "should be refused:\n{extra}");
        }
        let p = Policy::parse(
            &sample(
                "[sites.a]\ndomains = [\"a.com\"]\n[sites.\"a.b\"]\ndomains = [\"ab.com\"]\n\
                 [sites.\"a.access\"]\ndomains = [\"aa.com\"]\ncert_name = \"a-old\"\n",
            )
            .replace("[\"/srv/durhack\"]", "[\"/srv/durhack\", \"/var/www/letsencrypt\"]"),
        )
        .unwrap();
        let a = SiteName::try_from("a").unwrap();
        let conf = |body: &str| format!("server {{ listen 80; server_name a.com; {body} }}");
        let acme = "location ^~ /.well-known/acme-challenge/ { root /var/www/letsencrypt; }";
        assert!(check(&p, &a, &conf(acme)).is_ok());
        let ssl = |path: &str| format!("ssl_certificate {path};");
        assert!(check(&p, &a, &conf(&ssl("/etc/letsencrypt/live/a/fullchain.pem"))).is_ok());
        for body in [
            // Another site's lineage, a sibling sharing a prefix, the live dir itself, climbing.
            ssl("/etc/letsencrypt/live/a.b/fullchain.pem"),
            ssl("/etc/letsencrypt/live/a-old/fullchain.pem"),
            ssl("/etc/letsencrypt/live/ab/fullchain.pem"),
            ssl("/etc/letsencrypt/live/a.pem"),
            ssl("/etc/letsencrypt/live/"),
            ssl("/etc/letsencrypt/live/a/../a.b/privkey.pem"),
            ssl("/etc/letsencrypt/live/a/./fullchain.pem"),
            ssl("/etc/letsencrypt/live/a$x/privkey.pem"),
            ssl("data:$x"),
            "ssl_certificate_key /etc/letsencrypt/archive/a/privkey1.pem;".into(),
            // Another dotted site's logs, and nginx's own.
            "access_log /var/log/nginx/a.b.access.log;".into(),
            "access_log /var/log/nginx/a.access.access.log;".into(),
            "error_log /var/log/nginx/a.access.log;".into(),
            "access_log /var/log/nginx/access.log;".into(),
            "access_log /var/log/nginx/a.access.log.conf;".into(),
            // The ACME location serving elsewhere: outside the roots, by alias, by a nested or
            // regex location, by a variable.
            "location ^~ /.well-known/acme-challenge/ { root /var/www; }".into(),
            "location ^~ /.well-known/acme-challenge/ { root /var/www/letsencrypt/../..; }".into(),
            "location ^~ /.well-known/acme-challenge/ { alias /etc/; }".into(),
            "location ^~ /.well-known/acme-challenge/ { alias /var/www/letsencrypt; }".into(),
            "location ^~ /.well-known/acme-challenge/ { root /var/www/letsencrypt; location ~ ^/(.*)$ { alias /etc/$1; } }".into(),
            "location ~ ^/.well-known/acme-challenge/(.*)$ { alias /var/www/letsencrypt/$1; }".into(),
            "location ^~ /.well-known/acme-challenge/ { root /var/www/letsencrypt; try_files /../../etc/passwd =404; }".into(),
            "location ^~ /.well-known/acme-challenge/ { root $document_root/..; }".into(),
            "location ^~ /.well-known/acme-challenge/ { root /var/www/letsencrypt-x; }".into(),
        ] {
            assert!(check(&p, &a, &conf(&body)).is_err(), "should be refused: {body}");
        }
    }
}
