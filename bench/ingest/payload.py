#!/usr/bin/env python3
"""Writes a GitHub-shaped push payload of about SIZE bytes to OUT and prints its signature
(sha256=<hex HMAC-SHA256 of the body>) for SECRET. Usage: payload.py OUT SIZE SECRET"""
import hashlib
import hmac
import json
import sys

out, size, secret = sys.argv[1], int(sys.argv[2]), sys.argv[3].encode()
repo = "octo-org/site"


def sha(n):
    return f"{n:08x}" + "a" * 32


def user(login, uid):
    return {"login": login, "id": uid, "node_id": f"MDQ6VXNlcn{uid}", "type": "User",
            "avatar_url": f"https://avatars.githubusercontent.com/u/{uid}?v=4",
            "url": f"https://api.github.com/users/{login}",
            "html_url": f"https://github.com/{login}", "site_admin": False}


repository = {"id": 602214076, "node_id": "R_kgDOI-abcd", "name": "site", "full_name": repo,
              "private": False, "owner": user("octo-org", 9919),
              "html_url": f"https://github.com/{repo}", "description": "The website",
              "fork": False, "url": f"https://api.github.com/repos/{repo}",
              "clone_url": f"https://github.com/{repo}.git",
              "ssh_url": f"git@github.com:{repo}.git", "created_at": 1675000000,
              "pushed_at": 1795000000, "size": 2048, "language": "TypeScript",
              "default_branch": "main", "master_branch": "main", "visibility": "public"}


def commit(n, cid):
    return {"id": cid, "tree_id": sha(9000 + n), "distinct": True,
            "message": f"Change {n}: tidy up the landing page and its styles",
            "timestamp": "2026-11-28T10:00:00+00:00",
            "url": f"https://github.com/{repo}/commit/{cid}",
            "author": {"name": "Octo Cat", "email": "octocat@example.com", "username": "octocat"},
            "committer": {"name": "GitHub", "email": "noreply@github.com", "username": "web-flow"},
            "added": [f"src/pages/new-{n}.tsx"], "removed": [],
            "modified": ["src/pages/index.tsx", "src/styles/main.css", "package.json"]}


def build(n):
    commits = [commit(i, sha(5000 + i) if i + 1 < n else sha(2)) for i in range(n)]
    payload = {"ref": "refs/heads/main", "before": sha(1), "after": sha(2),
               "repository": repository,
               "pusher": {"name": "octocat", "email": "octocat@example.com"},
               "sender": user("octocat", 583231), "created": False, "deleted": False,
               "forced": False, "base_ref": None,
               "compare": f"https://github.com/{repo}/compare/{sha(1)[:12]}...{sha(2)[:12]}",
               "commits": commits, "head_commit": commits[-1]}
    return json.dumps(payload, separators=(",", ":")).encode()


# The smallest number of commits that reaches SIZE: doubling, then bisection, so a 25 MB body
# takes a few dozen encodings rather than one per commit.
lo, hi = 0, 1
while len(build(hi)) < size:
    lo, hi = hi, hi * 2
while hi - lo > 1:
    mid = (lo + hi) // 2
    if len(build(mid)) >= size:
        hi = mid
    else:
        lo = mid
body = build(hi)
with open(out, "wb") as f:
    f.write(body)
print("sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest())
