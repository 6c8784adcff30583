#!/usr/bin/python3
"""Pickup latency and deploy overhead against a running durhack-deployer (started by run.sh).

  deploys.py pickup  ...  202 -> run start (ledger) and 202 -> first deploy command (its own
                          `date +%s%N` stamp), one push of a new commit at a time
  deploys.py deploy  ...  a no-op deploy (fetch + checkout + `true`): the run's start to finish
                          from the ledger, and 202 -> finish
  deploys.py plain   ...  the same git commands in a plain shell script, timed around the script

Each push is a new commit, sent only after the previous run has finished (plus a short gap), so
coalescing never merges two of them. Samples are written as JSON for report.py. Everything is
bounded: each wait gives up after WAIT_S and the script fails loudly rather than hang.
Only the standard library, and /usr/bin/python3 (the `python3` shim is not for every user).
"""

import argparse
import hashlib
import hmac
import http.client
import json
import os
import sqlite3
import subprocess
import sys
import time
import urllib.parse
import uuid

WAIT_S = 60
GAP_S = 0.1


def git(src, *args):
    return subprocess.run(
        ["git", "-C", src, *args], check=True, capture_output=True, text=True
    ).stdout.strip()


def new_commit(src, i):
    """Adds a commit that changes a file (so checkout has work to do) and pushes it."""
    before = git(src, "rev-parse", "HEAD")
    with open(os.path.join(src, "version.txt"), "w") as f:
        f.write(f"{i}\n")
    git(src, "add", "version.txt")
    git(src, "commit", "-q", "-m", f"bench {i}")
    git(src, "push", "-q", "origin", "HEAD:main")
    return before, git(src, "rev-parse", "HEAD")


def push_body(repo, before, after):
    owner, name = repo.split("/")
    return json.dumps(
        {
            "ref": "refs/heads/main",
            "before": before,
            "after": after,
            "created": False,
            "deleted": False,
            "forced": False,
            "repository": {"name": name, "full_name": repo, "owner": {"login": owner}},
            "pusher": {"name": "bench", "email": "bench@example.com"},
            "head_commit": {"id": after, "message": "bench"},
            "commits": [{"id": after, "message": "bench", "modified": ["version.txt"]}],
        }
    ).encode()


def send_push(url, secret, repo, before, after):
    """POSTs a signed push; returns the wall-clock ns at which the 202 had been read."""
    body = push_body(repo, before, after)
    sig = "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()
    u = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
    conn.request(
        "POST",
        u.path,
        body=body,
        headers={
            "Content-Type": "application/json",
            "X-GitHub-Event": "push",
            "X-GitHub-Delivery": str(uuid.uuid4()),
            "X-Hub-Signature-256": sig,
        },
    )
    resp = conn.getresponse()
    resp.read()
    t = time.time_ns()
    conn.close()
    if resp.status != 202:
        sys.exit(f"deploys.py: expected 202, got {resp.status}")
    return t


def wait_run(ledger, deployment, sha):
    """Waits for the run of `sha` to finish; returns (started_at_ms, finished_at_ms, status)."""
    deadline = time.monotonic() + WAIT_S
    db = sqlite3.connect(f"file:{ledger}?mode=ro", uri=True, timeout=5)
    try:
        while time.monotonic() < deadline:
            try:
                row = db.execute(
                    "SELECT started_at, finished_at, status FROM runs "
                    "WHERE deployment = ? AND sha = ? AND finished_at IS NOT NULL "
                    "ORDER BY started_at DESC LIMIT 1",
                    (deployment, sha),
                ).fetchone()
            except sqlite3.OperationalError:
                row = None  # the ledger is not created yet, or busy
            if row:
                if row[2] != "success":
                    sys.exit(f"deploys.py: run of {sha} for {deployment} ended {row[2]}")
                return row
            time.sleep(0.005)
    finally:
        db.close()
    sys.exit(f"deploys.py: no finished run of {sha} for {deployment} within {WAIT_S}s")


def wait_stamp(path, count):
    """Waits for the count-th line of the stamp file; returns it (ns)."""
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        try:
            with open(path) as f:
                lines = [l for l in f.read().split("\n") if l.strip()]
        except FileNotFoundError:
            lines = []
        if len(lines) >= count:
            return int(lines[count - 1])
        time.sleep(0.002)
    sys.exit(f"deploys.py: stamp {count} not written within {WAIT_S}s")


def stamp_count(path):
    try:
        with open(path) as f:
            return len([l for l in f.read().split("\n") if l.strip()])
    except FileNotFoundError:
        return 0


def pickup(a, secret):
    out = {"run_start_ms": [], "first_command_ms": []}
    # The first push clones the repository: a warm-up, not a sample.
    for i in range(a.n + 1):
        before, sha = new_commit(a.src, f"pickup-{i}")
        expected = stamp_count(a.stamps) + 1
        t202 = send_push(a.url, secret, a.repo, before, sha)
        stamp = wait_stamp(a.stamps, expected)
        started, _, _ = wait_run(a.ledger, a.deployment, sha)
        if i > 0:
            out["run_start_ms"].append(started - t202 / 1e6)
            out["first_command_ms"].append((stamp - t202) / 1e6)
        time.sleep(GAP_S)
    return out


def deploy(a, secret):
    out = {"run_ms": [], "e2e_ms": []}
    for i in range(a.n + 1):
        before, sha = new_commit(a.src, f"noop-{i}")
        t202 = send_push(a.url, secret, a.repo, before, sha)
        started, finished, _ = wait_run(a.ledger, a.deployment, sha)
        if i > 0:
            out["run_ms"].append(finished - started)
            out["e2e_ms"].append(finished - t202 / 1e6)
        time.sleep(GAP_S)
    return out


def plain(a, _secret):
    out = {"run_ms": []}
    for i in range(a.n + 1):
        _, sha = new_commit(a.src, f"plain-{i}")
        t0 = time.monotonic_ns()
        subprocess.run(
            ["bash", a.script, *(["--minimal"] if a.minimal else []), a.checkout, a.remote, "main", sha],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        t1 = time.monotonic_ns()
        if i > 0:
            out["run_ms"].append((t1 - t0) / 1e6)
        time.sleep(GAP_S)
    return out


def main():
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["pickup", "deploy", "plain"])
    p.add_argument("--url")
    p.add_argument("--secret-file")
    p.add_argument("--src", required=True, help="a clone of the remote to make commits in")
    p.add_argument("--repo", help="owner/name in the push payload")
    p.add_argument("--deployment")
    p.add_argument("--ledger")
    p.add_argument("--stamps")
    p.add_argument("--script", help="plain: the shell script to time")
    p.add_argument("--checkout", help="plain: the working tree it deploys into")
    p.add_argument("--remote", help="plain: the remote it fetches from")
    p.add_argument("--minimal", action="store_true", help="plain: fetch + checkout -f + true only")
    p.add_argument("-n", type=int, default=20)
    p.add_argument("--out", required=True)
    a = p.parse_args()
    secret = open(a.secret_file, "rb").read().rstrip(b"\r\n") if a.secret_file else b""
    result = {"pickup": pickup, "deploy": deploy, "plain": plain}[a.mode](a, secret)
    with open(a.out, "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main()
