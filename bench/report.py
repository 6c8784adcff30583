#!/usr/bin/python3
"""Turns the raw results of bench/run.sh into one table: printed, and written to BENCHMARKS.md
with the machine facts and the commands.

  report.py RESULTS_DIR BENCHMARKS_MD

Percentiles are nearest-rank over the samples (with 100 samples p99 is the second largest, with
20 it is the largest); wrk computes its own from every request.
"""

import json
import math
import os
import sys

res, out_path = sys.argv[1], sys.argv[2]


def kv(name):
    d = {}
    with open(os.path.join(res, name)) as f:
        for line in f:
            if "=" in line:
                k, v = line.rstrip("\n").split("=", 1)
                d[k] = v
    return d


def load(name):
    with open(os.path.join(res, name)) as f:
        return json.load(f)


def pct(samples, p):
    s = sorted(samples)
    return s[max(0, math.ceil(p / 100 * len(s)) - 1)]


def ms(v):
    return f"{v:.1f}" if v >= 10 else f"{v:.2f}"


def ratio(a, b):
    return f"{a / b:.2f}" if b else "-"


def mib(kib):
    return f"{int(kib) / 1024:.1f} MiB" if kib else "-"


facts = kv("facts.txt")
mem = kv("memory.txt")
size25m = open(os.path.join(res, "size-25m.txt")).read().strip()

def ingest():
    """Parses bench/ingest/run.sh's table: server conc requests req/s p50 p99 failed."""
    cells, note = {}, None
    with open(os.path.join(res, "ingest.txt")) as f:
        for line in f:
            w = line.split()
            if len(w) == 7 and w[0] in ("durhack-deployer", "webhook") and w[1].isdigit():
                cells[(w[0], int(w[1]))] = {
                    "requests": int(w[2]), "rps": float(w[3]), "p50": float(w[4]),
                    "p99": float(w[5]), "failed": int(w[6]),
                }
            elif line.startswith("payload "):
                # "payload N bytes; accepted by durhack-deployer (202) A; in its ledger afterwards L"
                w = line.replace(";", " ").split()
                note = {"bytes": int(w[1]), "accepted": int(w[7]), "ledger": int(w[-1])}
    return cells, note


rows = []  # (measure, ours, peer, ratio)
cells, ingest_note = ingest()
for c in (1, 16):
    o, t = cells[("durhack-deployer", c)], cells[("webhook", c)]
    conns = f"{c} connection{'s' if c > 1 else ''}"
    rows.append((f"ingest, {conns}: requests/s", f"{o['rps']:.0f}", f"{t['rps']:.0f}",
                 ratio(o["rps"], t["rps"])))
    rows.append((f"ingest, {conns}: latency p50 / p99 (ms)",
                 f"{ms(o['p50'])} / {ms(o['p99'])}", f"{ms(t['p50'])} / {ms(t['p99'])}",
                 f"{ratio(o['p50'], t['p50'])} / {ratio(o['p99'], t['p99'])}"))
    if o["failed"] or t["failed"]:
        rows.append((f"ingest, {conns}: failed requests (non-2xx or socket errors)",
                     f"{o['failed']} of {o['requests']}", f"{t['failed']} of {t['requests']}", ""))

pickup = load("pickup.json")
n = len(pickup["first_command_ms"])
rows.append((f"pickup: 202 → run starts, p50 / p99 (ms, n={n})",
             f"{ms(pct(pickup['run_start_ms'], 50))} / {ms(pct(pickup['run_start_ms'], 99))}", "n/a", ""))
rows.append((f"pickup: 202 → first deploy command starts, p50 / p99 (ms, n={n})",
             f"{ms(pct(pickup['first_command_ms'], 50))} / {ms(pct(pickup['first_command_ms'], 99))}", "n/a", ""))

rows.append(("memory: idle RSS, deployer / webhook",
             mib(mem.get("ours_idle_rss_kib")), mib(mem.get("theirs_idle_rss_kib")),
             ratio(int(mem["ours_idle_rss_kib"]), int(mem["theirs_idle_rss_kib"]))))
rows.append(("memory: idle RSS, durhack-privhelper", mib(mem.get("helper_idle_rss_kib")), "n/a", ""))
rows.append((f"memory: peak RSS (VmHWM) handling one {int(size25m) / 1e6:.1f} MB delivery",
             mib(mem["ours_hwm_after_dispatch_kib"]), mib(mem["theirs_hwm_kib"]),
             ratio(int(mem["ours_hwm_after_dispatch_kib"]), int(mem["theirs_hwm_kib"]))))
rows.append(("25 MB delivery: time to answer (s, curl)",
             f"{float(mem['ours_big_seconds']):.2f}", f"{float(mem['theirs_big_seconds']):.2f}",
             ratio(float(mem["ours_big_seconds"]), float(mem["theirs_big_seconds"]))))

dep = load("deploy.json")
plain = load("plain.json")
plain_min = load("plain-minimal.json")
n = len(dep["run_ms"])
pp = lambda xs: f"{ms(pct(xs, 50))} / {ms(pct(xs, 99))}"
pr = lambda xs, ys: f"{ratio(pct(xs, 50), pct(ys, 50))} / {ratio(pct(xs, 99), pct(ys, 99))}"
rows.append((f"no-op deploy, 202 → run finished, p50 / p99 (ms, n={n}); "
             "peer: plain-deploy.sh, the same git commands + true",
             pp(dep["e2e_ms"]), pp(plain["run_ms"]), pr(dep["e2e_ms"], plain["run_ms"])))
rows.append(("no-op deploy, the run alone: start → finish in the ledger, p50 / p99 (ms); "
             "peer: the same script",
             pp(dep["run_ms"]), pp(plain["run_ms"]), pr(dep["run_ms"], plain["run_ms"])))
rows.append(("no-op deploy, 202 → run finished; "
             "peer: plain-deploy.sh --minimal (fetch + checkout -f + true)",
             pp(dep["e2e_ms"]), pp(plain_min["run_ms"]), pr(dep["e2e_ms"], plain_min["run_ms"])))

header = ("Measure", "durhack-deployer", "peer (webhook, or the shell script)", "ours/peer")
table = [f"| {' | '.join(header)} |", "|---|---:|---:|---:|"]
table += [f"| {' | '.join(r)} |" for r in rows]
table = "\n".join(table)
print(table)

duration = facts.get("duration", "10s")
obs = []
load1 = float(facts["load_start"].split()[0])
if load1 > int(facts["nproc"]) / 2:
    obs.append(
        f"- The machine was not quiet: the 1-minute load average was {load1} on {facts['nproc']} "
        "cores when the run started (other builds and tests were running). Absolute figures are "
        "pessimistic and the p99s noisy; ratios within this run, taken under the same load, "
        "say more.")
body_mib = int(size25m) / 2**20
obs.append(
    f"- The deployer's peak for the {int(size25m) / 1e6:.0f} MB delivery, "
    f"{int(mem['ours_hwm_after_dispatch_kib']) / 1024:.0f} MiB (about "
    f"{(int(mem['ours_hwm_after_dispatch_kib']) - int(mem['ours_idle_rss_kib'])) / 1024 / body_mib:.0f}x "
    "the body above idle), is the endpoint's: the body as received and the inbox entry written "
    "from it. The dispatcher reads the entry back but parses only the fields routing needs "
    "(ref, after, before, deleted, repository, hook_id), skipping the rest unbuilt (VmHWM read "
    f"right after the 202 was {int(mem['ours_hwm_after_202_kib']) / 1024:.0f} MiB).")
observations = "\n".join(obs) + "\n"
md = f"""# Benchmarks

Produced by `bench/run.sh` (one command; it also wrote this file) on {facts['date']}, at commit
`{facts['commit']}`. The peer is the Debian package of adnanh/webhook ({facts['webhook']}),
configured to verify the same `X-Hub-Signature-256` HMAC (and match `X-GitHub-Event == push`)
and run `/bin/true`; for deploys the peer is the same git commands in a plain shell script. Fuzzing results are in [fuzz/README.md](fuzz/README.md).

## Machine

| | |
|---|---|
| CPU | {facts['cpu']}, {facts['nproc']} cores (`nproc`) |
| Memory | {facts['memory']} |
| Kernel | {facts['kernel']} |
| Rust | {facts['rustc']} (release profile) |
| Tools | {facts['wrk']}, {facts['git']} |
| Scratch disk | {facts['disk']} (the deployer's queues and SQLite ledger; every delivery is fsynced there) |
| Load average (1, 5, 15 min) | {facts['load_start']} at the start, {facts.get('load_end', '?')} at the end |

## Results

{table}

How each figure is taken:

- **ingest**: `bench/ingest/run.sh` (its own fresh instances of both servers): `wrk` for
  {duration} per cell, one connection (`-t1 -c1`) and sixteen (`-t2 -c16`), posting one signed
  {ingest_note['bytes']:,}-byte push payload with a fresh `X-GitHub-Delivery` per request. Ours answers
  202 only after the delivery is written, fsynced and renamed into the inbox queue on disk, while
  its dispatcher concurrently reads each entry back, deduplicates and records it in SQLite and
  routes it (to no deployment: nothing watches the pushed branch, so nothing deploys). webhook
  keeps nothing: it answers once the signature rule passes and starts `/bin/true` (a fork and
  exec per request) without waiting for it. The four cells run one after the other, ours first.
  Afterwards the script waits for the dispatcher and checks that nothing was lost: wrk counted
  {ingest_note['accepted']:,} deliveries answered 202 and the ledger holds {ingest_note['ledger']:,}
  (the ledger may hold a few more: requests still in flight when wrk stopped were accepted too).
  This peer's rule is the signature alone; the event match (a header comparison) is in the
  memory peer's rules.
- **pickup**: {len(pickup['first_command_ms'])} pushes, each of a new commit to a local bare
  repository, sent one at a time after the previous run finished (plus 100 ms), so coalescing
  never merges them. "202" is the wall-clock time the client had read the 202; "run starts"
  is the run's `started_at` in the runs ledger (ms); "first deploy command" is the deployment's
  first command, `sh -c 'date +%s%N >> stamps'`, so it includes the fetch and checkout that
  come before it. The first push (the clone) is a warm-up and not counted.
- **memory**: `VmRSS` from `/proc/<pid>/status` two seconds after start-up (the deployer with
  one deployment, idle; the helper as root with a policy and its socket; webhook with the hook),
  then `VmHWM` (the peak) once each server had handled one signed {int(size25m):,}-byte push
  posted with curl: for ours, after its dispatcher had also read and routed it (it starts on the
  entry as soon as the entry lands in the inbox, so receiving and dispatching overlap and the
  peak covers both). The time to answer is curl's total time for the upload and the answer.
- **deploy overhead**: {len(dep['run_ms'])} no-op deploys of new commits (fetch + checkout +
  `true`, a 22-file repository), timed by the runs ledger from the run's start to its finish,
  and from the 202 to the finish; the peer rows time `bench/plain-deploy.sh` around the script:
  the same git commands the worker runs (remote set-url, fetch, checkout --force --detach,
  reset --hard, clean -ffd, then `true`), and the minimal fetch + checkout -f + true.

Observations:

{observations}
Ratios are ours divided by the peer's: above 1 means ours is higher (better for requests/s,
worse for latency, memory and time).

## Commands

```sh
bench/run.sh        # cargo build --release -p deployer -p privhelper, then everything below
DEPLOYER_BIN=target/release/durhack-deployer DURATION={duration} bench/ingest/run.sh
#   = wrk -t1 -c1 / -t2 -c16 -d{duration} -s bench/ingest/post.lua URL -- push.json sha256=... RUN
webhook -hooks hooks.json -ip 127.0.0.1 -port PORT
durhack-deployer serve --config config.toml
durhack-privhelper --policy policy.toml
curl -X POST --data-binary @push-25m.json -H 'X-Hub-Signature-256: sha256=...' ... URL
bench/deploys.py pickup|deploy|plain ...   # pushes of new commits, timed as above
bench/plain-deploy.sh [--minimal] DIR REMOTE main SHA
```

The full configurations (deployer config, `hooks.json`, helper policy) are written by
`bench/run.sh`; `KEEP=1 bench/run.sh` keeps them with the logs, the ledgers and the raw samples.
"""
with open(out_path, "w") as f:
    f.write(md)
print(f"\nwritten to {out_path}", file=sys.stderr)
