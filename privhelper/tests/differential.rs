//! Differential test of the site-conf checker against the real nginx tokenizer.
//!
//! A seeded generator writes site confs around every feature of nginx's `ngx_conf_read_token`
//! (`$`, `${`, braces inside words, quotes, backslash escapes, `#` at and inside tokens, `;`, line
//! breaks, long tokens, non-ASCII UTF-8). For every conf the checker accepts, the text it would
//! write (`written`) is given to nginx itself (the tree oracle in `testkit::nginx_tree`: a
//! test-only module that records the directives nginx's own parser hands out), and
//!
//!   nginx's tree of `written` == `parse(written)` == the checked tree,
//!
//! where the checked tree is `parse(client text)` with `privhelper::checker::INJECTED` first in
//! every server block. Any difference fails the test and prints the case's seed, both texts and the
//! trees.
//!
//! nginx's reading of the client's *original* text is compared with the checker's too: those
//! differences are what writing a canonical rendering (instead of the client's bytes) closes,
//! so they are counted and printed, not failed; except the `${` family, which the tokenizer fix
//! makes agree, so any such case fails.
//!
//! Knobs (environment):
//! - `DIFFERENTIAL_CASES`: how many confs to generate (default 20000). Long mode:
//!   `DIFFERENTIAL_CASES=1000000 cargo test --release -p privhelper --test differential`.
//! - `DIFFERENTIAL_SEED`: the run's seed (default fixed, so CI is reproducible; printed).
//! - `DIFFERENTIAL_CASE_SEED`: run only the case with this seed (as printed on a mismatch).
//!
//! The summary line (generated, accepted, compared, differing-original, mismatches) and the
//! per-feature coverage line go to stderr: add `-- --nocapture` to see them when the test passes.
//!
//! Needs nginx, nginx-dev, a C compiler, make and libpcre2-dev for the oracle (a loud skip
//! without them; a failure under CI=true).

use std::fmt::Write as _;
use std::time::Instant;

use privhelper::checker::check;
use privhelper::policy::Policy;
use protocol::SiteName;
use protocol::nginx_syntax::{Directive, parse};
use testkit::nginx_tree::{self, Node};

/// What the checker puts first in every server block (`check`'s contract).
fn injected() -> Vec<Node> {
    nodes(&parse(privhelper::checker::INJECTED).expect("the injected directives parse"))
}

const DOMAINS: [&str; 2] = ["durhack.test", "www.durhack.test"];
const BATCH: usize = 400;

fn policy() -> Policy {
    let user = testkit::privhelper::current_user();
    let toml = format!(
        r#"
client_user = "{user}"
socket = "/run/durhack-privhelper/privhelper.sock"
conf_dir = "/etc/nginx/conf.d"
test_command = ["/usr/sbin/nginx", "-t", "-q"]
reload_command = ["/usr/sbin/nginx", "-s", "reload"]
snippets_dir = "/etc/nginx/snippets"
allowed_roots = ["/srv/durhack"]
log_dir = "/var/log/nginx"
[certbot]
argv = ["/usr/bin/certbot", "certonly", "--non-interactive"]
[sites.durhack]
domains = ["{}", "{}"]
proxy_ports = [3000]
"#,
        DOMAINS[0], DOMAINS[1]
    );
    Policy::parse(&toml).expect("test policy")
}

fn nodes(tree: &[Directive]) -> Vec<Node> {
    tree.iter()
        .map(|d| Node {
            name: d.name.as_bytes().to_vec(),
            args: d.args.iter().map(|a| a.as_bytes().to_vec()).collect(),
            children: d.block.as_deref().map(nodes),
        })
        .collect()
}

fn show(tree: &Result<Vec<Node>, String>) -> String {
    match tree {
        Ok(t) => nginx_tree::display(t),
        Err(e) => format!("error: {e}\n"),
    }
}

// --- The generator. ---------------------------------------------------------------------------

/// xorshift64*, seeded through splitmix64.
struct Rng(u64);

fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(splitmix(seed) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    /// `true` with probability 1/`n`.
    fn one_in(&mut self, n: usize) -> bool {
        self.below(n) == 0
    }
    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len())]
    }
}

/// Pieces of words, weighted towards the tokenizer's special cases.
const PLAIN: &[&str] = &[
    "a", "b", "x1", "/p", "/", "-", ".", ":", "=", "_", "%", "(", ")", "~", "^", "*", "@", ",",
    "+", "?", "&", "!", "|", "<", ">", "[", "]", "`", "0",
];
const SPECIAL: &[&str] = &[
    "$", "$", "$", "$host", "$uri", "${", "${", "${", "${{", "${{{", "${host}", "${a}b", "$}",
    "$$", "$\\", "$#", "$;", "$\"", "$'", "${\"", "${'", "${#", "${;", "${ ", "$ {", "}", "{",
    "{}", "}{", "\"", "\"", "'", "'", "\\", "\\\"", "\\'", "\\\\", "\\n", "\\t", "\\r", "\\x",
    "\\$", "\\{", "\\}", "\\;", "\\#", "\\ ", "\\\n", "#", "#", "#{", ";", " ", "\t", "\n", "\r\n",
    "\r", "é", "漢字", "😀", "\u{a0}", "\u{2028}", "\u{feff}", ")",
];
const CONTROL: &[&str] = &["\u{1}", "\u{b}", "\u{c}", "\u{1b}", "\u{7f}"];

fn fragment(rng: &mut Rng) -> String {
    match rng.below(20) {
        0..=8 => rng.pick(PLAIN).into(),
        9..=18 => rng.pick(SPECIAL).into(),
        _ if rng.one_in(4) => rng.pick(CONTROL).into(),
        _ => rng.pick(SPECIAL).into(),
    }
}

/// A word around nginx's 4096-byte token buffer (`NGX_CONF_BUFFER`).
fn long_word(rng: &mut Rng) -> String {
    let len = 4080 + rng.below(40);
    let unit = rng.pick(&["a", "é", "${", "x$", "\\\\"]);
    let mut s = String::new();
    while s.len() < len {
        s.push_str(unit);
    }
    s
}

/// One argument: bare or quoted, mostly harmless, sometimes hostile.
fn word(rng: &mut Rng) -> String {
    if rng.one_in(150) {
        return long_word(rng);
    }
    let mut body = String::new();
    for _ in 0..=rng.below(4) {
        body.push_str(&fragment(rng));
    }
    match rng.below(10) {
        0..=5 => body,
        6..=8 => format!("\"{body}\""),
        _ => format!("'{body}'"),
    }
}

/// What goes between tokens.
fn space(rng: &mut Rng) -> String {
    match rng.below(24) {
        0..=14 => " ".into(),
        15 => "\t".into(),
        16 => "\n".into(),
        17 => "\r\n".into(),
        18 => "  \n\t ".into(),
        19 => format!(" #{}\n", comment(rng)),
        20 => "\n#\n".into(),
        _ => " ".into(),
    }
}

fn comment(rng: &mut Rng) -> String {
    if rng.one_in(100) {
        return "c".repeat(4090 + rng.below(20));
    }
    let mut s = String::new();
    for _ in 0..rng.below(4) {
        s.push_str(&fragment(rng).replace(['\n', '\r'], ""));
    }
    s
}

fn directive(rng: &mut Rng, words: &[String], block: Option<String>) -> String {
    let mut s = String::new();
    for (i, w) in words.iter().enumerate() {
        if i > 0 {
            s.push_str(&space(rng));
        }
        s.push_str(w);
    }
    match block {
        None => {
            if rng.one_in(4) {
                s.push_str(&space(rng));
            }
            s.push(';');
        }
        Some(b) => {
            // Glued to the last word half the time: `/a${` + `{` is where nginx keeps reading.
            if rng.one_in(2) {
                s.push_str(&space(rng));
            }
            s.push('{');
            s.push_str(&b);
            s.push('}');
        }
    }
    s.push_str(&space(rng));
    s
}

fn w(s: &str) -> String {
    s.to_string()
}

/// A directive the checker allows in a server or location, with generated arguments.
fn inner(rng: &mut Rng, depth: usize) -> String {
    let (words, body): (Vec<String>, Option<String>) = match rng.below(18) {
        0 => {
            let mut ws = vec![w("add_header"), word(rng), word(rng)];
            if rng.one_in(2) {
                ws.push(w("always"));
            }
            (ws, None)
        }
        1 => {
            let code = rng.pick(&["200", "301", "302", "403", "404"]);
            (vec![w("return"), w(code), word(rng)], None)
        }
        2 => {
            let name = format!("${}", rng.pick(&["a", "b", "var", "x_1"]));
            (vec![w("set"), name, word(rng)], None)
        }
        3 => {
            let flag = rng.pick(&["last", "break", "redirect", "permanent"]);
            (vec![w("rewrite"), word(rng), word(rng), w(flag)], None)
        }
        4 => (vec![w("try_files"), w("$uri"), word(rng), w("=404")], None),
        5 => (vec![w("proxy_set_header"), word(rng), word(rng)], None),
        6 => (vec![w("default_type"), word(rng)], None),
        7 => (vec![w("error_page"), w("404"), word(rng)], None),
        8 => (vec![w("index"), word(rng), w("index.html")], None),
        9 => (vec![w("charset"), word(rng)], None),
        10 => (vec![w("expires"), word(rng)], None),
        11 => (vec![w("root"), w("/srv/durhack/www")], None),
        12 => {
            let host = rng.pick(&["127.0.0.1", "[::1]", "localhost"]);
            let mut url = format!("http://{host}:3000");
            if rng.one_in(2) {
                url = format!("{url}/{}", word(rng));
            }
            (vec![w("proxy_pass"), url], None)
        }
        13 => {
            let name = rng.pick(&["gzip", "etag", "sendfile"]);
            (vec![w(name), w("on")], None)
        }
        14 | 15 if depth < 3 => {
            let mut ws = vec![w("location")];
            if rng.one_in(3) {
                ws.push(w(rng.pick(&["=", "~", "~*", "^~"])));
            }
            ws.push(word(rng));
            (ws, Some(block(rng, depth + 1)))
        }
        16 if depth < 3 => {
            let op = rng.pick(&["=", "!=", "~"]);
            let ws = vec![w("if"), w("($a"), w(op), format!("{})", word(rng))];
            let body = format!("{}return 403;{}", space(rng), space(rng));
            (ws, Some(body))
        }
        _ => (vec![w("add_header"), w("X-Test"), word(rng)], None),
    };
    directive(rng, &words, body)
}

fn block(rng: &mut Rng, depth: usize) -> String {
    let mut s = space(rng);
    for _ in 0..rng.below(4) {
        s.push_str(&inner(rng, depth));
    }
    s
}

fn server(rng: &mut Rng) -> String {
    let mut body = space(rng);
    let listen = match rng.below(4) {
        0 => vec![w("listen"), w("[::]:80")],
        1 => vec![w("listen"), w("443"), w("ssl")],
        _ => vec![w("listen"), w("80")],
    };
    body.push_str(&directive(rng, &listen, None));
    let mut names = vec![w("server_name")];
    for d in DOMAINS {
        if rng.one_in(2) || names.len() == 1 {
            names.push(match rng.below(8) {
                0 => format!("\"{d}\""),
                1 => format!("'{d}'"),
                _ => d.into(),
            });
        }
    }
    body.push_str(&directive(rng, &names, None));
    for _ in 0..rng.below(6) {
        body.push_str(&inner(rng, 1));
    }
    directive(rng, &[w("server")], Some(body))
}

/// Byte-level damage at a random character boundary, for what the structured generator misses.
fn mutate(rng: &mut Rng, text: &mut String) {
    let bounds: Vec<usize> = (0..=text.len()).filter(|&i| text.is_char_boundary(i)).collect();
    let at = bounds[rng.below(bounds.len())];
    match rng.below(3) {
        0 => text.insert_str(at, &fragment(rng)),
        1 => {
            if let Some(&end) = bounds.iter().find(|&&b| b > at) {
                text.replace_range(at..end, "");
            }
        }
        _ => text.insert_str(at, rng.pick(&["${", "${{", "$", "{", "}", "#", "\\", "\"", "'"])),
    }
}

fn generate(seed: u64) -> String {
    let mut rng = Rng::new(seed);
    let mut text = String::new();
    if rng.one_in(4) {
        text.push_str(&format!("#{}\n", comment(&mut rng)));
    }
    for _ in 0..=usize::from(rng.one_in(5)) {
        text.push_str(&server(&mut rng));
    }
    if rng.one_in(3) {
        for _ in 0..=rng.below(3) {
            mutate(&mut rng, &mut text);
        }
    }
    text
}

// --- The test. --------------------------------------------------------------------------------

/// Which of the tokenizer's special cases `text` exercises (for the coverage line).
fn features(text: &str) -> Vec<&'static str> {
    let mut out: Vec<&'static str> = [
        "$", "${", "${{", "{", "}", "\"", "'", "\\\"", "\\\\", "\\n", "\\t", "\\x", "#", ";", "\r",
        "\t",
    ]
    .into_iter()
    .filter(|f| text.contains(f))
    .collect();
    let bytes = text.as_bytes();
    if (1..bytes.len()).any(|i| bytes[i] == b'#' && !b" \t\r\n;{}".contains(&bytes[i - 1])) {
        out.push("a#b");
    }
    if (1..bytes.len()).any(|i| bytes[i] == b'{' && bytes[i - 1] > b' ' && bytes[i - 1] != b'$') {
        out.push("glued {");
    }
    if !text.is_ascii() {
        out.push("non-ASCII");
    }
    if text.chars().any(|c| c.is_control() && !"\n\r\t".contains(c)) {
        out.push("control");
    }
    if text.len() > 4000 {
        out.push("4 KiB word or comment");
    }
    out
}

struct Case {
    seed: u64,
    text: String,
    written: String,
    /// `parse(client text)`.
    checker_tree: Vec<Node>,
}

#[derive(Default)]
struct Tally {
    generated: usize,
    accepted: usize,
    compared: usize,
    differing_original: usize,
    dollar_brace: usize,
    too_long: usize,
    mismatch_count: usize,
    /// The first few mismatches, in full.
    mismatches: Vec<String>,
    /// Of the mismatches, those where nginx refused a word too long for its 4 KiB buffer.
    mismatches_too_long: usize,
    /// Accepted confs per tokenizer feature in the client text.
    coverage: std::collections::BTreeMap<&'static str, usize>,
    dollar_brace_cases: Vec<String>,
    other_original: Vec<String>,
}

impl Tally {
    fn mismatch(&mut self, report: String) {
        self.mismatch_count += 1;
        if self.mismatches.len() < 5 {
            self.mismatches.push(report);
        }
    }
}

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    let v = v.trim();
    let parsed = match v.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => v.parse(),
    };
    Some(parsed.unwrap_or_else(|_| panic!("{name}={v:?} is not a number")))
}

/// `text` with every run of one character longer than 64 shortened to `c×N`, so the 4 KiB
/// words stay readable in a report.
fn abbreviate(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::new();
    let mut i = 0;
    while i < chars.len() {
        let mut j = i;
        while j < chars.len() && chars[j] == chars[i] {
            j += 1;
        }
        if j - i > 64 {
            let _ = write!(out, "{}⟨×{}⟩", chars[i], j - i);
        } else {
            out.extend(&chars[i..j]);
        }
        i = j;
    }
    out
}

/// Multi-line text with control characters other than line feeds made visible.
fn visible(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c != '\n' && (c.is_control() || c == '\u{feff}') {
                c.escape_unicode().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

fn report(case: &Case, why: &str, nginx: &Result<Vec<Node>, String>, ours: &str) -> String {
    abbreviate(&format!(
        concat!(
            "--- {}; case seed {:#x} (rerun a generated case with DIFFERENTIAL_CASE_SEED)\n",
            "client text:\n{:?}\nwritten:\n{}\nnginx's tree:\n{}our tree:\n{}"
        ),
        why,
        case.seed,
        abbreviate(&case.text),
        visible(&case.written),
        show(nginx),
        ours
    ))
}

fn compare_batch(oracle: &nginx_tree::Oracle, batch: &[Case], tally: &mut Tally) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut files = Vec::new();
    for (i, case) in batch.iter().enumerate() {
        let written = dir.path().join(format!("w{i}.conf"));
        let original = dir.path().join(format!("o{i}.conf"));
        std::fs::write(&written, &case.written).expect("write");
        std::fs::write(&original, &case.text).expect("write");
        files.push(written);
        files.push(original);
    }
    let trees = oracle.trees(&files);
    for (case, pair) in batch.iter().zip(trees.chunks(2)) {
        let (nginx_written, nginx_original) = (&pair[0], &pair[1]);
        tally.compared += 1;
        let parsed = parse(&case.written).map(|t| nodes(&t));
        let mut checked = case.checker_tree.clone();
        for server in &mut checked {
            if server.name == b"server"
                && let Some(children) = &mut server.children
            {
                children.splice(0..0, injected());
            }
        }
        let ours = match &parsed {
            Ok(t) => nginx_tree::display(t),
            Err(e) => format!("parse(written) failed: {e}\n"),
        };
        if parsed.as_ref().ok() != Some(&checked) {
            let why = "parse(written) != the checked tree";
            let ours = format!("{ours}checked tree:\n{}", nginx_tree::display(&checked));
            tally.mismatch(report(case, why, nginx_written, &ours));
        } else if nginx_written.as_ref().ok() != Some(&checked) {
            if matches!(nginx_written, Err(e) if e.contains("too long parameter")) {
                tally.mismatches_too_long += 1;
            }
            let why = "nginx's tree of the written text != parse(written)";
            tally.mismatch(report(case, why, nginx_written, &ours));
        }
        if nginx_original.as_ref().ok() != Some(&case.checker_tree) {
            tally.differing_original += 1;
            let line = || {
                let ours = nginx_tree::display(&case.checker_tree);
                report(case, "nginx reads the original differently", nginx_original, &ours)
            };
            let too_long = matches!(nginx_original, Err(e) if e.contains("too long parameter"));
            if too_long {
                tally.too_long += 1;
            } else if case.text.contains("${") {
                tally.dollar_brace += 1;
                if tally.dollar_brace_cases.len() < 10 {
                    tally.dollar_brace_cases.push(line());
                }
            } else if tally.other_original.len() < 5 {
                tally.other_original.push(line());
            }
        }
    }
}

/// Checks each `(seed, text)` and compares every accepted one with nginx's reading.
fn run(oracle: &nginx_tree::Oracle, cases: impl Iterator<Item = (u64, String)>) -> Tally {
    let policy = policy();
    let site = SiteName::try_from("durhack").expect("site name");
    let mut tally = Tally::default();
    let mut batch = Vec::new();
    for (case_seed, text) in cases {
        tally.generated += 1;
        let Ok(written) = check(&policy, &site, &text) else {
            continue;
        };
        tally.accepted += 1;
        for feature in features(&text) {
            *tally.coverage.entry(feature).or_default() += 1;
        }
        let checker_tree = match parse(&text) {
            Ok(t) => nodes(&t),
            Err(e) => {
                let why = "the checker accepted text parse() refuses";
                tally.mismatch(format!("--- {why} ({e}); case seed {case_seed:#018x}\n{text:?}"));
                continue;
            }
        };
        batch.push(Case { seed: case_seed, text, written, checker_tree });
        if batch.len() == BATCH {
            compare_batch(oracle, &batch, &mut tally);
            batch.clear();
        }
    }
    compare_batch(oracle, &batch, &mut tally);
    tally
}

/// Prints the summary and fails on mismatches and on `${` cases nginx reads differently.
fn summarize(what: &str, tally: &Tally, started: Instant) {
    let mut out = String::new();
    for line in tally.other_original.iter().take(5) {
        let _ = writeln!(out, "{line}");
    }
    if !out.is_empty() {
        eprintln!(
            "examples of nginx reading an accepted original differently (not failures):\n{out}"
        );
    }
    eprintln!(
        "{what}: generated={} accepted={} compared={} differing-original={} \
         (dollar-brace={} too-long={} other={}) mismatches={} (nginx-too-long={}) in {:.1}s",
        tally.generated,
        tally.accepted,
        tally.compared,
        tally.differing_original,
        tally.dollar_brace,
        tally.too_long,
        tally.differing_original - tally.dollar_brace - tally.too_long,
        tally.mismatch_count,
        tally.mismatches_too_long,
        started.elapsed().as_secs_f64()
    );
    let coverage: Vec<String> = tally.coverage.iter().map(|(f, n)| format!("{f:?}={n}")).collect();
    eprintln!("accepted confs per feature: {}", coverage.join(" "));
    let mut failures = String::new();
    if tally.mismatch_count > 0 {
        let _ = writeln!(
            failures,
            "{} cases where the written conf does not read the same to nginx and to us ({} of \
             them words nginx refuses as too long); the first:\n{}",
            tally.mismatch_count,
            tally.mismatches_too_long,
            tally.mismatches.join("\n")
        );
    }
    if !tally.dollar_brace_cases.is_empty() {
        let _ = writeln!(
            failures,
            "{} accepted confs with `${{` that nginx reads differently from the checker; \
             the first:\n{}",
            tally.dollar_brace,
            tally.dollar_brace_cases.join("\n")
        );
    }
    assert!(failures.is_empty(), "{failures}");
}

#[test]
fn checker_output_reads_the_same_to_nginx() {
    let Some(oracle) = nginx_tree::oracle() else {
        return;
    };
    let cases = env_u64("DIFFERENTIAL_CASES").unwrap_or(20_000);
    let seed = env_u64("DIFFERENTIAL_SEED").unwrap_or(0x0d1f_f0ac_1e00_0009);
    let seeds: Vec<u64> = match env_u64("DIFFERENTIAL_CASE_SEED") {
        Some(one) => vec![one],
        None => (0..cases).map(|i| splitmix(seed ^ i)).collect(),
    };
    let started = Instant::now();
    let tally = run(oracle, seeds.into_iter().map(|s| (s, generate(s))));
    summarize(&format!("differential (seed {seed:#x})"), &tally, started);
}

/// Hand-picked confs around each tokenizer rule (the "seed" in a report is the index here).
#[test]
fn known_tricky_confs_read_the_same() {
    let Some(oracle) = nginx_tree::oracle() else {
        return;
    };
    let long = |n: usize| "a".repeat(n);
    let bodies = [
        "add_header X ${{;".to_string(),
        "add_header X a${{{b c;".into(),
        "add_header X $${{ ;".into(),
        "add_header X a${{# { return 200; }".into(),
        "location /a${{# { return 200 x; }".into(),
        "location /a${ { return 200 x; }".into(),
        "location /a$ { return 200 x; }".into(),
        "return 200 \"${{\";".into(),
        "add_header X '${' \"${\";".into(),
        "if ($a = \"b\") { return 403; }".into(),
        "add_header X \"a\")b;".into(),
        "add_header X a\\ b;".into(),
        "add_header X a\\;b;".into(),
        "add_header X a#b c#;".into(),
        "add_header X a}b;".into(),
        "add_header X \"a\\\"b\" 'c\\'d' e\\\\f g\\\"h;".into(),
        "add_header X \"a;b{c}d#e\";".into(),
        "add_header X \"é漢字😀\";".into(),
        "add_header X\r\nY;".into(),
        "add_header X \"\" '';".into(),
        "add_header X \"$\";".into(),
        "add_header X \\x\\$\\{;".into(),
        // nginx's 4096-byte word buffer: as written, a quoted word followed by another may
        // hold 4093 bytes, one right before `;` 4094 (testkit's nginx_tree tests pin the rule).
        // Each of these client texts reads fine to nginx itself.
        format!("add_header X-A {} always;", long(4093)),
        format!("add_header X-A {};", long(4094)),
        format!("add_header X-A {} always;", long(4094)),
        format!("add_header X-A {};", long(4095)),
        format!("add_header X-A '{}';", "\"".repeat(2048)),
    ];
    let texts = bodies.iter().enumerate().map(|(i, body)| {
        (i as u64, format!("server {{\n listen 80;\n server_name durhack.test;\n {body}\n}}\n"))
    });
    let started = Instant::now();
    let tally = run(oracle, texts);
    summarize("known tricky confs", &tally, started);
}
