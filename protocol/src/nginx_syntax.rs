//! A small nginx-syntax tokenizer and parser: words, quoted strings, `;`, `{`, `}`, comments.
//!
//! It follows nginx's own `ngx_conf_read_token` closely, because the helper's policy check is
//! only as good as its agreement with nginx about where directives start and end:
//! - `#` starts a comment only at the start of a token (`a#b` is one word);
//! - a word ends at whitespace, `;` or `{` (a `}` inside a word is part of it), except that a
//!   `{` right after `$` does not end it, and (as in nginx 1.22's `variable` flag) neither does
//!   any further `{` until another character comes: `${{{` is one word;
//! - quotes open a string only at the start of a token, and a closing quote must be followed by
//!   whitespace, `;`, `{` or `)`;
//! - `\"`, `\'`, `\\`, `\t`, `\r`, `\n` are unescaped; other backslashes are kept.
//!
//! Anything nginx would reject (unbalanced braces, a stray `;`, a missing `;` at the end) is
//! rejected here too, and so is a control character inside a name or an argument.
//!
//! The helper does not rely on this agreement for safety: it writes [`render`]'s canonical form
//! of the checked tree, never the client's text, so nginx reads exactly what was checked even
//! where this tokenizer and some nginx version disagree.

use std::fmt;

/// One directive: `name args...;` or `name args... { block }`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Directive {
    pub name: String,
    pub args: Vec<String>,
    pub block: Option<Vec<Directive>>,
    /// 1-based line of the directive's name.
    pub line: usize,
}

/// Why text is not valid nginx syntax.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyntaxError {
    pub line: usize,
    pub message: String,
}

impl fmt::Display for SyntaxError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.message)
    }
}

impl std::error::Error for SyntaxError {}

/// Deepest block nesting accepted: real site confs need three or four levels; the limit keeps
/// hostile input from recursing deeply.
pub const MAX_DEPTH: usize = 16;

#[derive(Debug, PartialEq, Eq)]
enum Token {
    /// A word or quoted string, and whether it was quoted.
    Word(String, bool),
    Semicolon,
    Open,
    Close,
}

fn err<T>(line: usize, message: impl Into<String>) -> Result<T, SyntaxError> {
    Err(SyntaxError {
        line,
        message: message.into(),
    })
}

fn unescape(raw: &[char]) -> String {
    let mut out = String::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        if raw[i] == '\\' && i + 1 < raw.len() {
            match raw[i + 1] {
                '"' | '\'' | '\\' => out.push(raw[i + 1]),
                't' => out.push('\t'),
                'r' => out.push('\r'),
                'n' => out.push('\n'),
                other => {
                    out.push('\\');
                    out.push(other);
                }
            }
            i += 2;
        } else {
            out.push(raw[i]);
            i += 1;
        }
    }
    out
}

fn tokenize(text: &str) -> Result<Vec<(Token, usize)>, SyntaxError> {
    let chars: Vec<char> = text.chars().collect();
    let mut tokens = Vec::new();
    let mut line = 1;
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match c {
            '\n' => {
                line += 1;
                i += 1;
            }
            ' ' | '\t' | '\r' => i += 1,
            ';' => {
                tokens.push((Token::Semicolon, line));
                i += 1;
            }
            '{' => {
                tokens.push((Token::Open, line));
                i += 1;
            }
            '}' => {
                tokens.push((Token::Close, line));
                i += 1;
            }
            '#' => {
                while i < chars.len() && chars[i] != '\n' {
                    i += 1;
                }
            }
            '"' | '\'' => {
                let start_line = line;
                let quote = c;
                i += 1;
                let start = i;
                loop {
                    match chars.get(i) {
                        None => return err(start_line, "unterminated quoted string"),
                        Some('\\') => {
                            if chars.get(i + 1) == Some(&'\n') {
                                line += 1;
                            }
                            i += 2;
                        }
                        Some(&q) if q == quote => break,
                        Some('\n') => {
                            line += 1;
                            i += 1;
                        }
                        Some(_) => i += 1,
                    }
                }
                let raw = &chars[start..i.min(chars.len())];
                i += 1;
                match chars.get(i) {
                    None | Some(' ' | '\t' | '\r' | '\n' | ';' | '{' | ')') => {}
                    Some(other) => {
                        return err(line, format!("unexpected {other:?} after a quoted string"));
                    }
                }
                tokens.push((Token::Word(unescape(raw), true), start_line));
            }
            _ => {
                let start_line = line;
                let start = i;
                let mut variable = false;
                while i < chars.len() {
                    let ch = chars[i];
                    if ch == '\\' {
                        if chars.get(i + 1) == Some(&'\n') {
                            line += 1;
                        }
                        i += 2;
                        variable = false;
                        continue;
                    }
                    // nginx keeps its variable flag across `{`: `${{` is one word.
                    if ch == '{' && variable {
                        i += 1;
                        continue;
                    }
                    if matches!(ch, ' ' | '\t' | '\r' | '\n' | ';' | '{') {
                        break;
                    }
                    variable = ch == '$';
                    i += 1;
                }
                let raw = &chars[start..i.min(chars.len())];
                tokens.push((Token::Word(unescape(raw), false), start_line));
            }
        }
    }
    Ok(tokens)
}

/// Parses `text` as a sequence of directives (the content of an nginx `http` context include).
pub fn parse(text: &str) -> Result<Vec<Directive>, SyntaxError> {
    if text.contains('\0') {
        return err(1, "NUL byte");
    }
    let tokens = tokenize(text)?;
    for (token, line) in &tokens {
        let Token::Word(w, _) = token else { continue };
        if w.chars().any(char::is_control) {
            return err(*line, "control character in a name or argument");
        }
        // nginx reads confs through a 4 KiB buffer: a word, with what follows it up to the next
        // token, must fit (the differential test pins this against nginx's own tokenizer), so
        // an argument whose rendering (quotes, escapes) would not fit is refused here.
        if rendered_len(w) > MAX_RENDERED_WORD {
            let why = format!("a name or argument over {MAX_RENDERED_WORD} bytes once quoted");
            return err(*line, why);
        }
    }
    let mut pos = 0;
    let directives = parse_block(&tokens, &mut pos, 0)?;
    if let Some((_, line)) = tokens.get(pos) {
        return err(*line, "unexpected \"}\"");
    }
    Ok(directives)
}

fn parse_block(
    tokens: &[(Token, usize)],
    pos: &mut usize,
    depth: usize,
) -> Result<Vec<Directive>, SyntaxError> {
    let mut out = Vec::new();
    loop {
        let Some((token, line)) = tokens.get(*pos) else {
            return Ok(out);
        };
        let line = *line;
        match token {
            Token::Close => return Ok(out),
            Token::Semicolon => return err(line, "unexpected \";\""),
            Token::Open => return err(line, "unexpected \"{\""),
            Token::Word(name, _) => {
                *pos += 1;
                let mut args = Vec::new();
                loop {
                    match tokens.get(*pos) {
                        None => {
                            return err(
                                line,
                                format!("directive \"{name}\" is not terminated by \";\""),
                            );
                        }
                        Some((Token::Word(w, _), _)) => {
                            args.push(w.clone());
                            *pos += 1;
                        }
                        Some((Token::Semicolon, _)) => {
                            *pos += 1;
                            out.push(Directive {
                                name: name.clone(),
                                args,
                                block: None,
                                line,
                            });
                            break;
                        }
                        Some((Token::Open, open_line)) => {
                            if depth + 1 > MAX_DEPTH {
                                return err(*open_line, "blocks nested too deeply");
                            }
                            *pos += 1;
                            let block = parse_block(tokens, pos, depth + 1)?;
                            match tokens.get(*pos) {
                                Some((Token::Close, _)) => *pos += 1,
                                _ => {
                                    return err(
                                        line,
                                        format!("block of \"{name}\" is not closed by \"}}\""),
                                    );
                                }
                            }
                            out.push(Directive {
                                name: name.clone(),
                                args,
                                block: Some(block),
                                line,
                            });
                            break;
                        }
                        Some((Token::Close, close_line)) => {
                            return err(*close_line, "unexpected \"}\"");
                        }
                    }
                }
            }
        }
    }
}

/// Every `server_name` argument anywhere in `directives`, in order.
pub fn server_names(directives: &[Directive]) -> Vec<String> {
    let mut out = Vec::new();
    for d in directives {
        if d.name == "server_name" {
            out.extend(d.args.iter().cloned());
        }
        if let Some(block) = &d.block {
            out.extend(server_names(block));
        }
    }
    out
}

/// The names of the variables an argument refers to, as nginx's script compiler reads them:
/// `$name` (letters, digits, `_`) or `${name}`. A `$` with no name yields `""`.
pub fn variables(arg: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = arg;
    while let Some(at) = rest.find('$') {
        rest = &rest[at + 1..];
        let (name, after) = match rest.strip_prefix('{') {
            Some(braced) => match braced.find('}') {
                Some(end) => (&braced[..end], &braced[end + 1..]),
                None => ("", ""),
            },
            None => {
                let end = rest
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(rest.len());
                (&rest[..end], &rest[end..])
            }
        };
        out.push(name);
        rest = after;
    }
    out
}

/// Whether no `.` or `..` path segment can come out of `arg` when each of its variables holds a
/// path that starts with `/` and has no such segment (nginx's `$uri` and what is built from it,
/// given that every URI a conf produces is checked with this too): the text has no all-dots
/// segment, and no variable is followed by a `.` that a name character does not follow
/// (`$uri.html` is fine; `$uri.` turns `/` into `/.`, and `$uri.$uri.` then climbs).
pub fn dot_segment_free(arg: &str) -> bool {
    let name = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-';
    let mut rest = arg;
    while let Some(at) = rest.find('$') {
        rest = &rest[at + 1..];
        let end = match rest.strip_prefix('{') {
            Some(braced) => braced.find('}').map_or(rest.len(), |e| e + 2),
            None => rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len()),
        };
        rest = &rest[end..];
        if rest
            .strip_prefix('.')
            .is_some_and(|after| !after.starts_with(name))
        {
            return false;
        }
    }
    !arg.split('/')
        .any(|s| !s.is_empty() && s.bytes().all(|c| c == b'.'))
}

/// The port of a `proxy_pass` URL naming a loopback upstream (`http://127.0.0.1:P`,
/// `http://[::1]:P` or `http://localhost:P`, then nothing or a `/path` without variables), as
/// nginx would read it; `None` for anything else (another scheme or host, `unix:`, variables).
pub fn loopback_port(url: &str) -> Option<u16> {
    let rest = url.strip_prefix("http://")?;
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let port = ["127.0.0.1:", "[::1]:", "localhost:"]
        .iter()
        .find_map(|h| authority.strip_prefix(h));
    port.filter(|_| !path.contains('$'))?.parse().ok()
}

/// Whether `alias` is safe in the location with arguments `location`: nginx replaces the
/// location's prefix by the alias, so `location /img { alias /srv/x/; }` serves `/img../etc`
/// from `/srv/x/../etc`. In a prefix location both must end with `/`; exact (`=`) and regex
/// locations name whole files.
pub fn alias_fits(location: &[String], alias: &str) -> bool {
    match location {
        [m, _] if matches!(m.as_str(), "=" | "~" | "~*") => true,
        [prefix] | [_, prefix] => prefix.ends_with('/') && alias.ends_with('/'),
        _ => false,
    }
}

/// The longest word [`render`] writes that nginx 1.22 reads back, quotes and escapes included:
/// its 4096-byte buffer must also hold the closing quote, the separator and the next byte.
pub const MAX_RENDERED_WORD: usize = 4093;

fn rendered_len(word: &str) -> usize {
    word.len() + 2 + word.matches(['\\', '"']).count()
}

/// The canonical text of `directives`: one directive per line, four spaces of indent per level,
/// names bare, every argument double-quoted with `\\` and `"` escaped. nginx reads a quoted
/// argument back byte for byte (only `\\` and `"` are special inside double quotes, in every
/// version of its tokenizer), so the file means exactly the tree, whatever the text it came from.
/// Names must be words (the checker allows only allow-listed ones); arguments must have no
/// control characters ([`parse`] refuses them).
pub fn render(directives: &[Directive]) -> String {
    let mut out = String::new();
    render_into(&mut out, directives, 0);
    out
}

fn render_into(out: &mut String, directives: &[Directive], depth: usize) {
    for d in directives {
        out.push_str(&"    ".repeat(depth));
        out.push_str(&d.name);
        for arg in &d.args {
            out.push_str(" \"");
            for c in arg.chars() {
                if matches!(c, '\\' | '"') {
                    out.push('\\');
                }
                out.push(c);
            }
            out.push('"');
        }
        match &d.block {
            None => out.push_str(";\n"),
            Some(block) => {
                out.push_str(" {\n");
                render_into(out, block, depth + 1);
                out.push_str(&"    ".repeat(depth));
                out.push_str("}\n");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(ds: &[Directive]) -> Vec<String> {
        let mut out = Vec::new();
        for d in ds {
            out.push(d.name.clone());
            if let Some(b) = &d.block {
                out.extend(names(b));
            }
        }
        out
    }

    #[test]
    fn parses_a_site() {
        let text = "# a site\nserver {\n  listen 80;\n  server_name a.example b.example;\n  location / {\n    root /srv/a; # trailing\n  }\n  return 301 https://${host}$request_uri;\n}\n";
        let ds = parse(text).unwrap();
        assert_eq!(
            names(&ds),
            [
                "server",
                "listen",
                "server_name",
                "location",
                "root",
                "return"
            ]
        );
        assert_eq!(server_names(&ds), ["a.example", "b.example"]);
        let server = ds[0].block.as_ref().unwrap();
        assert_eq!(server[2].args, ["/"]);
        assert_eq!(server[3].args, ["301", "https://${host}$request_uri"]);
        assert_eq!(server[1].line, 4);
    }

    #[test]
    fn comments_only_at_token_start() {
        let ds = parse("server { add_header X a#b; }").unwrap();
        assert_eq!(ds[0].block.as_ref().unwrap()[0].args, ["X", "a#b"]);
        // A comment hides nothing from us: the directive after the newline is parsed.
        let ds = parse("server { # hidden \nload_module x.so; }").unwrap();
        assert_eq!(names(&ds), ["server", "load_module"]);
    }

    #[test]
    fn quotes_and_escapes() {
        let ds = parse("add_header \"X-A\" 'b c;d' ;").unwrap();
        assert_eq!(ds[0].args, ["X-A", "b c;d"]);
        let ds = parse(r#"return 200 "a\"b";"#).unwrap();
        assert_eq!(ds[0].args, ["200", "a\"b"]);
        // Brace inside a word is part of it, as in nginx.
        let ds = parse("return 200 a}b;").unwrap();
        assert_eq!(ds[0].args, ["200", "a}b"]);
    }

    #[test]
    fn variable_braces_stay_in_the_word_as_in_nginx() {
        // nginx 1.22 keeps its variable flag across `{`: all of `${{` is one word.
        let ds = parse("a ${{ b;").unwrap();
        assert_eq!(ds[0].args, ["${{", "b"]);
        // The review's smuggling shape: one location to nginx, so one location to us too.
        let text = "location /a${{# { } } log_format x y;\n";
        assert!(
            parse(text).is_err(),
            "nginx reads an unterminated block here"
        );
        let ds = parse("location /a${{# { return 200 x; }\n").unwrap();
        assert_eq!(ds[0].args, ["/a${{#"]);
        assert_eq!(names(&ds), ["location", "return"]);
        let ds = parse("set $a ${x}y{;").unwrap_err();
        assert!(ds.message.contains("not terminated") || ds.message.contains("unexpected"));
    }

    #[test]
    fn errors_name_the_right_line_and_never_panic() {
        // A backslash at the very end escapes nothing: an error, not an index past the end.
        for text in ["a b\\", "a \\", "\\"] {
            assert!(parse(text).is_err(), "{text:?}");
        }
        // A comment running to the end of the input.
        assert_eq!(parse("a;#c").unwrap().len(), 1);
        // A line break inside a token is a control character in it (refused at its line), but
        // lines are still counted inside tokens, for the errors tokenizing reports later.
        for (text, line) in [
            ("a 'x\ny' 'z", 2),
            ("a \"x\\\ny\" 'z", 2),
            ("a x\\\ny 'z", 2),
            ("a 'x\n\ny' 'z", 3),
        ] {
            assert_eq!(parse(text).unwrap_err().line, line, "{text:?}");
        }
        let e = parse("a;\n# c\n\n'x\ny';").unwrap_err();
        assert_eq!(
            (e.line, e.to_string().starts_with("line 4: ")),
            (4, true),
            "{e}"
        );
        assert_eq!(parse("a;\n b x;").unwrap()[1].line, 2);
    }

    #[test]
    fn words_nginx_could_not_read_back_are_refused() {
        let fits = "a".repeat(MAX_RENDERED_WORD - 2);
        assert!(parse(&format!("add_header X {fits};")).is_ok());
        assert!(parse(&format!("add_header X {fits}b;")).is_err());
        // Escapes count: 2,046 quotes render as 4,092 bytes plus the two quotes.
        assert!(parse(&format!("add_header X '{}';", "\\\"".repeat(2046))).is_err());
        assert!(parse(&format!("add_header X '{}';", "\\\"".repeat(2045))).is_ok());
    }

    #[test]
    fn control_characters_are_refused() {
        for bad in ["a \"x\\ny\";", "a x\\ty;", "a \u{7}b;", "a \u{85};"] {
            assert!(parse(bad).is_err(), "{bad:?} should be refused");
        }
        assert!(
            parse("a\tb\r\n c;").is_ok(),
            "whitespace between tokens is fine"
        );
    }

    #[test]
    fn variables_are_found_as_nginx_names_them() {
        assert_eq!(variables("/$uri/${host}x$1$"), ["uri", "host", "1", ""]);
        assert_eq!(variables("$arg_p.html"), ["arg_p"]);
        assert_eq!(variables("${unterminated"), [""]);
        assert!(variables("plain").is_empty());
    }

    #[test]
    fn loopback_ports_aliases_and_captures() {
        assert_eq!(loopback_port("http://127.0.0.1:3000/api/"), Some(3000));
        assert_eq!(loopback_port("http://[::1]:3000"), Some(3000));
        assert_eq!(loopback_port("http://localhost:3000"), Some(3000));
        for bad in [
            "http://UNIX:/x.sock:/",
            "HTTP://127.0.0.1:3000",
            "https://127.0.0.1:3000",
            "http://127.0.0.1:3000/$1",
            "http://127.0.0.1:3000@x",
            "http://127.0.0.2:3000",
            "http://127.0.0.1",
            "http://$host:3000",
        ] {
            assert_eq!(loopback_port(bad), None, "{bad}");
        }
        let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(alias_fits(&args(&["/img/"]), "/srv/x/"));
        assert!(alias_fits(&args(&["^~", "/img/"]), "/srv/x/"));
        assert!(alias_fits(&args(&["=", "/f"]), "/srv/f"));
        assert!(!alias_fits(&args(&["/img"]), "/srv/x/"));
        assert!(!alias_fits(&args(&["/img/"]), "/srv/x"));
        assert!(!alias_fits(&args(&["@named"]), "/srv/x/"));
        // `^~` is a prefix location too.
        assert!(!alias_fits(&args(&["^~", "/img"]), "/srv/x/"));
        assert!(!alias_fits(&args(&["^~", "/img/"]), "/srv/x"));
    }

    #[test]
    fn dot_segments_cannot_be_built() {
        for ok in [
            "/x/$uri",
            "$uri.html",
            "$uri/index.html",
            "${uri}.x",
            "/a.b/$uri",
            "$uri.-x",
            "/",
        ] {
            assert!(dot_segment_free(ok), "{ok}");
        }
        for bad in [
            "$uri.",
            "$uri./etc",
            "$uri.$uri.",
            "${uri}.",
            "/.",
            "/./x",
            "/x/..",
            "..",
            "./x",
            "$uri/.",
            "$uri/../x",
        ] {
            assert!(!dot_segment_free(bad), "{bad}");
        }
    }

    #[test]
    fn render_round_trips_any_argument() {
        let tricky = [
            "${{", "#x", "a;b", "{", "}", "\"", "'", "\\", "\\n", "$", "x\\", "é", "", " ",
            "a\"b'c",
        ];
        let tree = vec![Directive {
            name: "server".into(),
            args: vec![],
            block: Some(vec![Directive {
                name: "add_header".into(),
                args: tricky.iter().map(|s| s.to_string()).collect(),
                block: None,
                line: 2,
            }]),
            line: 1,
        }];
        let text = render(&tree);
        let back = parse(&text).unwrap();
        assert_eq!(
            back[0].block.as_ref().unwrap()[0].args,
            tree[0].block.as_ref().unwrap()[0].args
        );
        assert_eq!(render(&back), text, "rendering is canonical");
    }

    #[test]
    fn rejects_bad_syntax() {
        for bad in [
            "server {",
            "server { listen 80; ",
            "}",
            "server { } }",
            "listen 80",
            ";",
            "{ }",
            "a \"unterminated;",
            "a \"x\"y;",
            "server { listen 80 }",
            "a\0;",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} should be refused");
        }
        let deep = |n: usize| "a {".repeat(n) + &"}".repeat(n);
        assert!(parse(&deep(MAX_DEPTH)).is_ok());
        assert!(parse(&deep(MAX_DEPTH + 1)).is_err());
    }
}
