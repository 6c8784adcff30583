//! Hostile clients against the live helper socket: the fuzz seed frames (fuzz/seeds/frame_decode)
//! as they are and mutated (truncated, bit-flipped, lying lengths, other versions and magics,
//! trailing bytes, two frames, random bodies), clients that stall mid-frame, and the seed frames
//! again from a client running as another uid. The helper answers or drops each, never dies, and
//! never writes outside its conf dir.
//!
//! Needs root and nginx (skips loudly without them; fails under CI=true).
//! `DURHACK_LONG_SUITES=1` sends many more frames; `DURHACK_SEED=<n>` replays a run.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use protocol::client::Client;
use protocol::frame::{HEADER_BYTES, MAX_FRAME_BYTES};
use protocol::{ErrorCode, Request, Response};
use testkit::nginx::Nginx;
use testkit::prereq;
use testkit::privhelper::{PolicySpec, PrivHelper};

/// splitmix64, seeded from `DURHACK_SEED` or the clock; the seed is printed for replays.
struct Rng(u64);

impl Rng {
    fn from_env() -> Rng {
        let seed =
            std::env::var("DURHACK_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
                SystemTime::now()
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(1)
            });
        eprintln!("[hostile_clients] seed {seed} (replay with DURHACK_SEED={seed})");
        Rng(seed)
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next_u64() as u8).collect()
    }
}

fn long() -> bool {
    std::env::var("DURHACK_LONG_SUITES").is_ok_and(|v| !v.is_empty() && v != "0")
}

fn seeds() -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds/frame_decode");
    let mut out: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .flatten()
        .map(|e| (e.file_name().to_string_lossy().into_owned(), std::fs::read(e.path()).unwrap()))
        .collect();
    out.sort();
    assert!(out.len() >= 5, "the seed corpus is there: {out:?}");
    out
}

fn set_len(frame: &mut [u8], len: u32) {
    frame[8..12].copy_from_slice(&len.to_be_bytes());
}

/// One hostile variation of `seed`; the name says which.
fn mutate(rng: &mut Rng, seed: &[u8]) -> (&'static str, Vec<u8>) {
    let mut f = seed.to_vec();
    match rng.below(12) {
        0 => ("seed as is", f),
        1 => {
            f.truncate(rng.below(f.len()));
            ("truncated", f)
        }
        2 => {
            for _ in 0..=rng.below(4) {
                let at = HEADER_BYTES + rng.below(f.len() - HEADER_BYTES);
                f[at] ^= 1 << rng.below(8);
            }
            ("body bits flipped", f)
        }
        3 => {
            let at = rng.below(f.len());
            f[at] = rng.next_u64() as u8;
            ("one byte anywhere replaced", f)
        }
        4 => {
            let lie = match rng.below(4) {
                0 => u32::MAX,
                1 => MAX_FRAME_BYTES as u32 + 1,
                2 => (f.len() - HEADER_BYTES) as u32 + 1 + rng.below(64) as u32,
                _ => rng.below(f.len() - HEADER_BYTES) as u32,
            };
            set_len(&mut f, lie);
            ("length field lies", f)
        }
        5 => {
            let v = [0u32, 2, 0xFFFF_FFFF][rng.below(3)];
            f[4..8].copy_from_slice(&v.to_be_bytes());
            ("other protocol version", f)
        }
        6 => {
            f[rng.below(4)] ^= 0x20;
            ("bad magic", f)
        }
        7 => {
            let n = 1 + rng.below(64);
            f.extend(rng.bytes(n));
            ("trailing bytes", f)
        }
        8 => {
            f.extend_from_slice(seed);
            ("two frames on one connection", f)
        }
        9 => {
            let n = rng.below(2048);
            ("random bytes", rng.bytes(n))
        }
        10 => {
            let n = 1 + rng.below(4096);
            f.truncate(HEADER_BYTES);
            set_len(&mut f, n as u32);
            f.extend(rng.bytes(n));
            ("valid header, random body", f)
        }
        _ => {
            f.truncate(HEADER_BYTES);
            set_len(&mut f, MAX_FRAME_BYTES as u32);
            f.extend(rng.bytes(MAX_FRAME_BYTES));
            ("maximal frame, random body", f)
        }
    }
}

/// Sends `bytes`, closes the sending side (so the helper need not wait out its deadline), and
/// returns the decoded answer, `Ok(None)` if the helper dropped the connection without one.
fn exchange(socket: &Path, bytes: &[u8]) -> Result<Option<Response>, String> {
    let mut s = UnixStream::connect(socket).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(120))).unwrap();
    // The helper may answer and close before reading everything (a lying length).
    let _ = s.write_all(bytes);
    let _ = s.shutdown(std::net::Shutdown::Write);
    let mut answer = Vec::new();
    match s.read_to_end(&mut answer) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Err(e) => return Err(format!("reading the answer: {e}")),
    }
    if answer.is_empty() {
        return Ok(None);
    }
    protocol::frame::decode::<Response>(&answer)
        .map(Some)
        .map_err(|e| format!("an answer that is not a response frame ({e}): {answer:02x?}"))
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next().map(|st| st != "Z"))
        })
        .unwrap_or(false)
}

/// Every file under `root` with its size and modification time, skipping `skip` subtrees.
fn snapshot(root: &Path, skip: &[PathBuf]) -> BTreeMap<PathBuf, (u64, SystemTime)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if skip.iter().any(|s| path.starts_with(s)) {
                continue;
            }
            let Ok(meta) = std::fs::symlink_metadata(&path) else {
                continue;
            };
            if meta.is_dir() {
                stack.push(path.clone());
            }
            out.insert(path, (meta.len(), meta.modified().unwrap()));
        }
    }
    out
}

fn outcome_name(answer: &Result<Option<Response>, String>) -> String {
    match answer {
        Ok(None) => "dropped".into(),
        Ok(Some(Response::Hello { .. })) => "hello".into(),
        Ok(Some(Response::Done { outcome, .. })) => format!("done: {outcome}"),
        Ok(Some(Response::Error { code, .. })) => format!("error: {code}"),
        Err(e) => format!("BROKEN: {e}"),
    }
}

#[test]
fn hostile_frames_are_answered_or_dropped_and_the_helper_holds() {
    let Some(nginx) = Nginx::start() else { return };
    // The seed corpus names the site `durhack` and its two domains; serve exactly those, so that
    // the frames which still decode reach the real write, remove, reload and certificate paths.
    let spec = PolicySpec::new(&nginx).site("durhack", &["durhack.com", "www.durhack.com"]);
    let Some(helper) = PrivHelper::start(&nginx, &spec) else {
        return;
    };
    let started = Instant::now();
    let mut rng = Rng::from_env();
    let seeds = seeds();
    let frames = if long() { 20_000 } else { 700 };
    let socket = helper.socket();
    let helper_dir = socket.parent().unwrap().to_owned();
    let conf_dir = nginx.sites_dir();
    // What the helper or the nginx it tests may legitimately touch: its conf dir, nginx's logs,
    // pid and temp dirs, and its own log.
    let skip = [
        conf_dir.clone(),
        nginx.logs_dir(),
        nginx.prefix().join("tmp"),
        helper_dir.join("privhelper.log"),
    ];
    let before_prefix = snapshot(nginx.prefix(), &skip);
    let before_helper = snapshot(&helper_dir, &skip);

    let mut tally: BTreeMap<(&str, String), usize> = BTreeMap::new();
    let mut broken = Vec::new();
    for i in 0..frames {
        let (name, seed) = &seeds[rng.below(seeds.len())];
        let (kind, bytes) = mutate(&mut rng, seed);
        let answer = exchange(&socket, &bytes);
        let outcome = outcome_name(&answer);
        if answer.is_err() {
            broken.push((i, name.clone(), kind, outcome.clone()));
        }
        *tally.entry((kind, outcome)).or_default() += 1;
        assert!(
            alive(helper.pid()),
            "the helper died on frame {i} ({kind} of {name}: {bytes:02x?}):\n{}",
            helper.log()
        );
    }

    // Clients that stall mid-frame are cut off by the helper's whole-request deadline.
    let mut stalls = Vec::new();
    for partial in [&b"DHP"[..], &seeds[0].1[..HEADER_BYTES + 1]] {
        let mut s = UnixStream::connect(&socket).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        s.write_all(partial).unwrap();
        let t = Instant::now();
        let mut answer = Vec::new();
        let _ = s.read_to_end(&mut answer);
        let response = protocol::frame::decode::<Response>(&answer).ok();
        stalls.push((response, t.elapsed()));
    }

    let client = Client::new(&socket, Duration::from_secs(60));
    let hello = client.call(&Request::Hello);
    let conf_files: Vec<String> = std::fs::read_dir(&conf_dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    let after_prefix = snapshot(nginx.prefix(), &skip);
    let after_helper = snapshot(&helper_dir, &skip);
    eprintln!(
        "[hostile_clients] {frames} hostile frames in {:?}; (mutation, answer) -> count: \
         {tally:?}; stalled clients (answer, after): {stalls:?}; conf dir now {conf_files:?}",
        started.elapsed()
    );

    assert!(alive(helper.pid()), "{}", helper.log());
    assert!(matches!(hello, Ok(Response::Hello { .. })), "still serving: {hello:?}");
    assert!(
        broken.is_empty(),
        "answers that are neither a response frame nor a clean drop: {broken:?}"
    );
    for (response, _) in &stalls {
        assert!(
            matches!(
                response,
                Some(Response::Error { code: ErrorCode::Timeout | ErrorCode::Malformed, .. })
            ),
            "a stalled client is cut off with an answer: {stalls:?}"
        );
    }
    assert!(
        conf_files.iter().all(|f| f == "durhack.conf"),
        "only the policy's site conf may exist in the conf dir: {conf_files:?}"
    );
    assert_eq!(
        before_prefix, after_prefix,
        "nothing outside the conf dir changed in the nginx prefix"
    );
    assert_eq!(before_helper, after_helper, "nothing changed in the helper's own directory");
}

/// The client half of the wrong-uid test: the test binary runs itself as `nobody` with
/// `HOSTILE_CLIENT_SOCKET` and `HOSTILE_CLIENT_FRAMES` set, and this sends each frame file and
/// prints what came back. Without the variables it does nothing.
#[test]
fn wrong_uid_client_child() {
    let (Some(socket), Some(frames)) =
        (std::env::var_os("HOSTILE_CLIENT_SOCKET"), std::env::var_os("HOSTILE_CLIENT_FRAMES"))
    else {
        return;
    };
    let mut names: Vec<PathBuf> =
        std::fs::read_dir(&frames).unwrap().flatten().map(|e| e.path()).collect();
    names.sort();
    for path in names {
        let bytes = std::fs::read(&path).unwrap();
        let outcome = outcome_name(&exchange(Path::new(&socket), &bytes));
        println!("ANSWER {} {outcome}", path.file_name().unwrap().to_string_lossy());
    }
}

#[test]
fn seed_frames_from_another_uid_are_refused_unread() {
    if !prereq::require("setpriv", prereq::have_program("setpriv"), "a client running as nobody") {
        return;
    }
    let Some(nginx) = Nginx::start() else { return };
    let spec = PolicySpec::new(&nginx).site("durhack", &["durhack.com", "www.durhack.com"]);
    let Some(helper) = PrivHelper::start(&nginx, &spec) else {
        return;
    };
    // Defence in depth: with the socket's mode opened up by mistake, the peer check still holds.
    std::fs::set_permissions(helper.socket(), std::fs::Permissions::from_mode(0o666)).unwrap();
    let frames = tempfile::tempdir().unwrap();
    std::fs::set_permissions(frames.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let seeds = seeds();
    for (name, bytes) in &seeds {
        let path = frames.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let out = Command::new("setpriv")
        .args([
            "--reuid=nobody",
            "--regid=nogroup",
            "--clear-groups",
            "--inh-caps=-all",
            "--bounding-set=-all",
        ])
        .arg(std::env::current_exe().unwrap())
        .args(["--exact", "wrong_uid_client_child", "--nocapture", "--test-threads=1"])
        .env("HOSTILE_CLIENT_SOCKET", helper.socket())
        .env("HOSTILE_CLIENT_FRAMES", frames.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the nobody client failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let answers: Vec<&str> = stdout
        .lines()
        // The harness may print its own text before ours on the same line.
        .filter_map(|l| l.split_once("ANSWER ").map(|(_, a)| a))
        .collect();
    eprintln!("[hostile_clients] as nobody: {answers:?}");
    assert_eq!(answers.len(), seeds.len(), "{stdout}");
    for a in &answers {
        assert!(
            a.ends_with("error: PeerRefused") || a.ends_with("dropped"),
            "refused: {answers:?}"
        );
    }
    assert!(std::fs::read_dir(nginx.sites_dir()).unwrap().next().is_none(), "nothing was written");
    let log = helper.log();
    assert_eq!(log.matches("error: PeerRefused").count(), seeds.len(), "{log}");
    assert!(alive(helper.pid()));
    let hello = Client::new(helper.socket(), Duration::from_secs(60)).call(&Request::Hello);
    assert!(matches!(hello, Ok(Response::Hello { .. })), "{hello:?}");
}
