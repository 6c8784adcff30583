//! A real-nginx tree oracle: how nginx itself tokenizes a conf file into directives.
//!
//! `nginx -T` only echoes file text, so this builds a tiny test-only dynamic module
//! (`testkit/nginx-tree/ngx_dump_tree_module.c`) against the `nginx-dev` headers in
//! `/usr/share/nginx/src`. It adds a main-context directive `dump_tree <out> <conf>...;` that runs
//! nginx's own `ngx_conf_parse`/`ngx_conf_read_token` over each conf file and writes every
//! directive (name, arguments exactly as nginx unescaped them, block nesting) hex-encoded to
//! `<out>`. [`Oracle::trees`] runs `nginx -t` once per batch of files with a minimal main conf:
//!
//! ```text
//! pid <tmp>/nginx.pid;
//! load_module <module.so>;
//! dump_tree <out> <file1> <file2> ...;
//! events {}
//! ```
//!
//! The module is built once (in a copy of `/usr/share/nginx/src`, never in place) and cached
//! next to the test binaries, in `<target>/<profile>/nginx-tree-<hash>/`, keyed by a hash of
//! the module's source, the configure flags and `nginx -V`. It is configured with the minimum
//! that still gives the package's module signature (`--with-compat`, PCRE on, no zlib), so it
//! needs `nginx-dev`, a C compiler, `make` and `libpcre2-dev` (see `scripts/test.sh`) to build it;
//! once built for this nginx, only nginx.
//!
//! ```no_run
//! # use testkit::nginx_tree;
//! let Some(oracle) = nginx_tree::oracle() else { return };
//! let trees = oracle.trees(&[std::path::PathBuf::from("/tmp/site.conf")]);
//! ```

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use crate::nginx::find_program;
use crate::prereq;

const MODULE_C: &str = include_str!("../nginx-tree/ngx_dump_tree_module.c");
const MODULE_CONFIG: &str = include_str!("../nginx-tree/config");
const MODULE_SO: &str = "ngx_dump_tree_module.so";
/// Where Debian's `nginx-dev` puts nginx's headers and `configure`.
pub const NGINX_SRC: &str = "/usr/share/nginx/src";
/// `--with-compat` makes the module loadable by the packaged binary; PCRE stays on because
/// it is part of the module signature; gzip is off so zlib's headers are not needed.
const CONFIGURE_FLAGS: &[&str] = &["--with-compat", "--without-http_gzip_module"];

/// One directive as nginx read it: `name args...;` (`children` is `None`) or
/// `name args... { children }`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    pub name: Vec<u8>,
    pub args: Vec<Vec<u8>>,
    pub children: Option<Vec<Node>>,
}

/// The built module and the nginx binary that loads it.
#[derive(Debug)]
pub struct Oracle {
    nginx: PathBuf,
    module: PathBuf,
}

/// The oracle, built on first use (once per process). `None` after [`prereq::require`]'s loud
/// notice (a failure under CI) when nginx, `nginx-dev`, a C compiler, `make` or PCRE2's headers
/// are missing. Panics if they are present but the module does not build or load.
pub fn oracle() -> Option<&'static Oracle> {
    static ORACLE: OnceLock<Option<Oracle>> = OnceLock::new();
    ORACLE.get_or_init(build).as_ref()
}

/// [`Oracle::trees`] on the shared oracle; `None` when it is unavailable (see [`oracle`]).
pub fn nginx_trees(files: &[PathBuf]) -> Option<Vec<Result<Vec<Node>, String>>> {
    Some(oracle()?.trees(files))
}

fn build() -> Option<Oracle> {
    let nginx = find_program("nginx");
    if !prereq::require(
        "nginx",
        nginx.is_some(),
        "the nginx tree oracle runs nginx -t",
    ) {
        return None;
    }
    let nginx = nginx?;
    let version = Command::new(&nginx)
        .arg("-V")
        .output()
        .expect("run nginx -V");
    let mut key = Vec::new();
    for part in [
        MODULE_C.as_bytes(),
        MODULE_CONFIG.as_bytes(),
        CONFIGURE_FLAGS.join(" ").as_bytes(),
        &version.stderr,
        &version.stdout,
    ] {
        key.extend_from_slice(part);
        key.push(0);
    }
    let cache = cache_root().join(format!("nginx-tree-{:016x}", fnv1a(&key)));
    let module = cache.join(MODULE_SO);
    // The build tools are needed only when this module for this nginx is not built yet.
    if !module.is_file() {
        let src = Path::new(NGINX_SRC);
        let cc = ["cc", "gcc"].into_iter().any(prereq::have_program);
        for (what, ok) in [
            (
                "nginx-dev (/usr/share/nginx/src/configure)",
                src.join("configure").is_file(),
            ),
            ("a C compiler (gcc)", cc),
            ("make", prereq::have_program("make")),
            ("libpcre2-dev", Path::new("/usr/include/pcre2.h").is_file()),
        ] {
            if !prereq::require(what, ok, "building the nginx tree oracle module") {
                return None;
            }
        }
        compile(src, &cache);
    }
    let oracle = Oracle { nginx, module };
    oracle.self_test();
    Some(oracle)
}

/// `<target>/<profile>/`: test binaries run from `<target>/<profile>/deps/`.
fn cache_root() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    match exe.parent() {
        Some(deps) if deps.file_name().is_some_and(|n| n == "deps") => {
            deps.parent().unwrap_or(deps).to_path_buf()
        }
        Some(dir) => dir.to_path_buf(),
        None => std::env::temp_dir(),
    }
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn run(cmd: &mut Command, what: &str) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Builds the module in a copy of `src` and moves it into `cache` (atomically, so concurrent
/// test processes never see half a file).
fn compile(src: &Path, cache: &Path) {
    std::fs::create_dir_all(cache).expect("create the oracle cache dir");
    let work = tempfile::Builder::new()
        .prefix("build-")
        .tempdir_in(cache)
        .expect("oracle build dir");
    let tree = work.path().join("nginx");
    run(
        Command::new("cp").arg("-r").arg(src).arg(&tree),
        "copying /usr/share/nginx/src",
    );
    let module_dir = work.path().join("nginx-tree");
    std::fs::create_dir_all(&module_dir).expect("module dir");
    std::fs::write(module_dir.join("ngx_dump_tree_module.c"), MODULE_C).expect("write module");
    std::fs::write(module_dir.join("config"), MODULE_CONFIG).expect("write config");
    run(
        Command::new("sh")
            .arg("./configure")
            .args(CONFIGURE_FLAGS)
            .arg(format!("--add-dynamic-module={}", module_dir.display()))
            .current_dir(&tree),
        "configuring the nginx tree module",
    );
    run(
        Command::new("make")
            .args(["-f", "objs/Makefile", "modules"])
            .current_dir(&tree),
        "building the nginx tree module",
    );
    let staged = work.path().join(MODULE_SO);
    std::fs::copy(tree.join("objs").join(MODULE_SO), &staged).expect("copy the module");
    std::fs::rename(&staged, cache.join(MODULE_SO)).expect("install the module");
}

/// A double-quoted nginx string for a path.
fn quote(path: &Path) -> String {
    let s = path.to_str().expect("oracle paths must be UTF-8");
    let mut out = String::from("\"");
    for c in s.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

impl Oracle {
    /// The module file (for tests that want to `load_module` it themselves).
    pub fn module(&self) -> &Path {
        &self.module
    }

    /// nginx's own tree of each file, or nginx's error message for it. One `nginx -t` run.
    pub fn trees(&self, files: &[PathBuf]) -> Vec<Result<Vec<Node>, String>> {
        if files.is_empty() {
            return Vec::new();
        }
        let dir = tempfile::Builder::new()
            .prefix("testkit-nginx-tree-")
            .tempdir()
            .expect("tempdir");
        let out = dir.path().join("tree.out");
        // `pid`: without root, nginx -t fails if it cannot open the packaged /run/nginx.pid.
        let mut conf = format!(
            "pid {};\nload_module {};\ndump_tree {}",
            quote(&dir.path().join("nginx.pid")),
            quote(&self.module),
            quote(&out)
        );
        for f in files {
            let abs = if f.is_absolute() {
                f.clone()
            } else {
                std::env::current_dir().expect("cwd").join(f)
            };
            let _ = write!(conf, "\n    {}", quote(&abs));
        }
        conf.push_str(";\nevents {}\n");
        let main = dir.path().join("nginx.conf");
        std::fs::write(&main, conf).expect("write the oracle's nginx.conf");
        let result = Command::new(&self.nginx)
            .arg("-t")
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(&main)
            .arg("-e")
            .arg(dir.path().join("error.log"))
            .output()
            .expect("run nginx -t");
        let text = std::fs::read_to_string(&out).unwrap_or_default();
        assert!(
            result.status.success() && text.ends_with("done\n"),
            "the nginx tree oracle did not run ({}): {}",
            result.status,
            String::from_utf8_lossy(&result.stderr)
        );
        let trees = parse_dump(&text);
        assert_eq!(trees.len(), files.len(), "oracle output:\n{text}");
        trees
    }

    /// The oracle on a known input, so a module that loads but misreads structures fails here.
    fn self_test(&self) {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("self-test.conf");
        std::fs::write(&file, "a \"b\\\"c\" d${e {\n  f;\n}\n").expect("write");
        let got = self.trees(&[file]);
        let want = vec![Node {
            name: b"a".to_vec(),
            args: vec![b"b\"c".to_vec(), b"d${e".to_vec()],
            children: Some(vec![Node {
                name: b"f".to_vec(),
                args: vec![],
                children: None,
            }]),
        }];
        assert_eq!(got, vec![Ok(want)], "the nginx tree oracle's self-test");
    }
}

fn unhex(word: &str) -> Vec<u8> {
    let hex = word
        .strip_prefix('x')
        .unwrap_or_else(|| panic!("bad oracle word {word:?}"));
    assert!(hex.len().is_multiple_of(2), "bad oracle word {word:?}");
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex"))
        .collect()
}

fn parse_dump(text: &str) -> Vec<Result<Vec<Node>, String>> {
    let mut files = Vec::new();
    // The open blocks: (directive without children yet, children so far); [0] is the file.
    let mut stack: Vec<(Option<Node>, Vec<Node>)> = Vec::new();
    let mut in_file = false;
    for line in text.lines() {
        let mut words = line.split(' ');
        let kind = words.next().unwrap_or_default();
        match kind {
            "file" => {
                assert!(!in_file, "oracle output: file inside a file");
                in_file = true;
                stack = vec![(None, Vec::new())];
            }
            "d" | "b" => {
                let mut all = words.map(unhex);
                let node = Node {
                    name: all.next().expect("directive name"),
                    args: all.collect(),
                    children: None,
                };
                if kind == "d" {
                    stack.last_mut().expect("open file").1.push(node);
                } else {
                    stack.push((Some(node), Vec::new()));
                }
            }
            "e" => {
                let (node, children) = stack.pop().expect("open block");
                let mut node = node.expect("a block, not the file");
                node.children = Some(children);
                stack.last_mut().expect("enclosing block").1.push(node);
            }
            "ok" => {
                assert!(stack.len() == 1, "oracle output: ok inside a block");
                files.push(Ok(std::mem::take(&mut stack[0].1)));
                in_file = false;
            }
            "err" => {
                let msg = words.next().map(unhex).unwrap_or_default();
                files.push(Err(String::from_utf8_lossy(&msg).trim_end().to_string()));
                in_file = false;
            }
            "done" => break,
            other => panic!("unexpected oracle output line {other:?}"),
        }
    }
    files
}

/// An unambiguous text rendering of a tree (for assertion messages): every word in `"..."` with
/// bytes outside printable ASCII escaped.
pub fn display(nodes: &[Node]) -> String {
    fn word(out: &mut String, w: &[u8]) {
        out.push('"');
        out.push_str(&w.escape_ascii().to_string());
        out.push('"');
    }
    fn go(out: &mut String, nodes: &[Node], depth: usize) {
        for n in nodes {
            out.push_str(&"    ".repeat(depth));
            word(out, &n.name);
            for a in &n.args {
                out.push(' ');
                word(out, a);
            }
            match &n.children {
                None => out.push_str(";\n"),
                Some(c) => {
                    out.push_str(" {\n");
                    go(out, c, depth + 1);
                    out.push_str(&"    ".repeat(depth));
                    out.push_str("}\n");
                }
            }
        }
    }
    let mut out = String::new();
    go(&mut out, nodes, 0);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(name: &str, args: &[&[u8]], children: Option<Vec<Node>>) -> Node {
        Node {
            name: name.as_bytes().to_vec(),
            args: args.iter().map(|a| a.to_vec()).collect(),
            children,
        }
    }

    /// nginx's trees of `texts`, or `None` (skipped) without the prerequisites.
    fn trees(texts: &[&[u8]]) -> Option<Vec<Result<Vec<Node>, String>>> {
        let oracle = oracle()?;
        let dir = tempfile::tempdir().expect("tempdir");
        let files: Vec<PathBuf> = texts
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let p = dir.path().join(format!("{i}.conf"));
                std::fs::write(&p, t).expect("write");
                p
            })
            .collect();
        Some(oracle.trees(&files))
    }

    #[test]
    fn nginx_keeps_the_variable_state_after_dollar_brace() {
        let Some(got) = trees(&[b"a ${{ b;", b"location /a${{# { } }", b"x $ {y;}"]) else {
            return;
        };
        // `${{`: every `{` after `$` stays in the word (nginx keeps `variable` set).
        assert_eq!(got[0], Ok(vec![n("a", &[b"${{", b"b"], None)]));
        // The `#` is inside the word, the first `}` closes the block, the second is stray.
        let err = got[1].as_ref().expect_err("stray }");
        assert!(err.contains("unexpected \"}\""), "{err}");
        // `$` then a space ends the word; `{` opens a block.
        assert_eq!(
            got[2],
            Ok(vec![n("x", &[b"$"], Some(vec![n("y", &[], None)]))])
        );
    }

    #[test]
    fn nginx_unescapes_quotes_and_backslashes() {
        let Some(got) = trees(&[
            b"a \"b c\" 'd;e' f\\\"g \"\\\\\" \"\\n\\t\\r\\x\";",
            b"a#b c; # comment { ;\nd}e f#;",
            b"s { t { u v; } w; }\n",
        ]) else {
            return;
        };
        assert_eq!(
            got[0],
            Ok(vec![n(
                "a",
                &[b"b c", b"d;e", b"f\"g", b"\\", b"\n\t\r\\x"],
                None
            )])
        );
        assert_eq!(
            got[1],
            Ok(vec![n("a#b", &[b"c"], None), n("d}e", &[b"f#"], None)])
        );
        assert_eq!(
            got[2],
            Ok(vec![n(
                "s",
                &[],
                Some(vec![
                    n("t", &[], Some(vec![n("u", &[b"v"], None)])),
                    n("w", &[], None)
                ])
            )])
        );
    }

    #[test]
    fn nginx_errors_come_back_per_file() {
        let Some(got) = trees(&[b"a {", b"a", b"}", b"ok;", b"a \"b\"c;", b";"]) else {
            return;
        };
        for (i, want) in [
            "unexpected end of file, expecting \"}\"",
            "unexpected end of file, expecting \";\" or \"}\"",
            "unexpected \"}\"",
            "",
            "unexpected \"c\"",
            "unexpected \";\"",
        ]
        .iter()
        .enumerate()
        {
            match &got[i] {
                Ok(t) => assert!(want.is_empty(), "file {i}: {t:?}"),
                Err(e) => assert!(!want.is_empty() && e.contains(want), "file {i}: {e}"),
            }
        }
        assert_eq!(got[3], Ok(vec![n("ok", &[], None)]));
    }

    /// nginx reads a conf through a 4096-byte buffer (`NGX_CONF_BUFFER`), and a word's start is
    /// forgotten only when the next token starts: the word, the characters after it up to and
    /// including the next token's first one (or the `;`/`{` ending it) must fit in 4096 bytes.
    /// So a quoted word's content (as written, escapes included) is safe up to 4093 bytes
    /// (`"…" x`, `"…" {`), and 4094 only right before `;`; a bare word up to 4094 (4095 right
    /// before `;`); a comment up to 4095 bytes with its `#`.
    #[test]
    fn nginx_refuses_words_that_do_not_fit_its_buffer() {
        let b = |n: usize| "b".repeat(n);
        let cases: Vec<(String, bool)> = vec![
            (format!("a \"{}\";\n", b(4094)), true),
            (format!("a \"{}\";\n", b(4095)), false),
            (format!("a \"{}\" x;\n", b(4093)), true),
            (format!("a \"{}\" x;\n", b(4094)), false),
            (format!("a \"{}\" {{}}\n", b(4093)), true),
            (format!("a \"{}\" {{}}\n", b(4094)), false),
            (format!("a {};\n", b(4095)), true),
            (format!("a {};\n", b(4096)), false),
            (format!("a {} x;\n", b(4094)), true),
            (format!("a {} x;\n", b(4095)), false),
            (format!("a;\n#{}\nz;\n", "c".repeat(4094)), true),
            (format!("a;\n#{}\nz;\n", "c".repeat(4095)), false),
            (format!("a \"{}\" x;\n", "\\\\".repeat(2046) + "b"), true),
            (format!("a \"{}\" x;\n", "\\\\".repeat(2047)), false),
        ];
        let texts: Vec<&[u8]> = cases.iter().map(|(t, _)| t.as_bytes()).collect();
        let Some(got) = trees(&texts) else {
            return;
        };
        for ((text, ok), got) in cases.iter().zip(&got) {
            let shown = format!("{:?}…{:?}", &text[..4], &text[text.len() - 6..]);
            assert_eq!(got.is_ok(), *ok, "{} bytes, {shown}: {got:?}", text.len());
            if let Err(e) = got {
                assert!(e.contains("too long parameter"), "{e}");
            }
        }
        // 4093 bytes as written: 2046 backslashes and a "b" once unescaped.
        let mut want = vec![b'\\'; 2046];
        want.push(b'b');
        assert_eq!(got[12].as_ref().unwrap()[0].args[0], want);
    }
}
