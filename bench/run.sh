#!/usr/bin/env bash
# The benchmarks of issue 6, in one run on one machine: durhack-deployer against the Debian
# `webhook` package (adnanh/webhook) verifying the same signature and running /bin/true.
#
#   bench/run.sh            build, run everything (about 4 minutes), print the table, write
#                           BENCHMARKS.md at the repository root
#   KEEP=1 bench/run.sh     keep the scratch directory (logs, ledgers, raw samples)
#
# Ingest is bench/ingest/run.sh (wrk against both servers, its own instances); this script adds
# pickup latency, memory and deploy overhead, and puts all of it in one table.
#
# Knobs (environment): BENCH_DURATION (each wrk cell, default 10s), PICKUP_N (default 100), DEPLOY_N
# (default 20), CARGO_TARGET_DIR (where the release binaries are built).
#
# Everything listens on 127.0.0.1 on free ports, every wait is bounded, and the trap stops what
# this script started (by PID) however it ends. Needs: cargo, wrk, webhook, git, curl, openssl,
# /usr/bin/python3; root for the helper's idle RSS (it refuses to start otherwise; that row is
# then left empty).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BENCH=$ROOT/bench
PY=/usr/bin/python3
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
DURATION=${BENCH_DURATION:-10s}
PICKUP_N=${PICKUP_N:-100}
DEPLOY_N=${DEPLOY_N:-20}
# On disk, not tmpfs: "durable" has to mean a real fsync.
WORK=$(mktemp -d /var/tmp/durhack-bench.XXXXXX)
RESULTS=$WORK/results
mkdir -p "$RESULTS"

PIDS=()
cleanup() {
    local status=$?
    for pid in "${PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    if [ "${KEEP:-0}" = 1 ]; then
        echo "kept $WORK" >&2
    else
        rm -rf "$WORK"
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

say() { printf '== %s\n' "$*" >&2; }

# Stops one process this script started and forgets it.
stop() {
    local pid=$1 rest=()
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    for p in "${PIDS[@]}"; do [ "$p" = "$pid" ] || rest+=("$p"); done
    PIDS=("${rest[@]}")
}

free_port() {
    "$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Waits (at most 15 s) until anything answers HTTP at $1.
wait_http() {
    for _ in $(seq 150); do
        if [ "$(curl -s -o /dev/null -w '%{http_code}' "$1" || true)" != 000 ]; then return 0; fi
        sleep 0.1
    done
    echo "nothing answers at $1" >&2
    return 1
}

# VmRSS or VmHWM of a process, in KiB.
mem_kib() { awk -v k="$2:" '$1 == k { print $2 }' "/proc/$1/status"; }

# Waits (at most $2 s) for the queue directory $1 to hold no entries; prints the seconds it took.
wait_drained() {
    local dir=$1 limit=$2 start
    start=$(date +%s%N)
    for _ in $(seq $((limit * 20))); do
        if [ -z "$(find "$dir" -maxdepth 1 -name '*.json' ! -name '.*' -print -quit 2>/dev/null)" ]; then
            awk -v a="$start" -v b="$(date +%s%N)" 'BEGIN { printf "%.2f\n", (b - a) / 1e9 }'
            return 0
        fi
        sleep 0.05
    done
    echo "the inbox $dir did not drain within ${limit}s" >&2
    return 1
}


# ---- the machine and the build ----
say "building release binaries into $TARGET"
(cd "$ROOT" && cargo build --release -p deployer -p privhelper) >&2
DEPLOYER=$TARGET/release/durhack-deployer
HELPER=$TARGET/release/durhack-privhelper

{
    echo "date=$(date -u '+%Y-%m-%d %H:%M UTC')"
    echo "cpu=$(lscpu | sed -n 's/^Model name: *//p' | head -1)"
    echo "nproc=$(nproc)"
    echo "memory=$(free -m | awk '/^Mem:/ { print $2 " MiB" }')"
    echo "kernel=$(uname -sr)"
    echo "rustc=$(rustc --version)"
    echo "webhook=$(webhook -version 2>&1 | head -1)"
    echo "wrk=$(wrk -v 2>&1 | head -1 | cut -d' ' -f1-2)"
    echo "git=$(git --version)"
    echo "disk=$(df -T "$WORK" | awk 'NR == 2 { print $1 " (" $2 ")" }')"
    # BENCH_COMMIT names the source when this runs from an exported copy of the tree.
    commit=${BENCH_COMMIT:-$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)}
    if [ -z "${BENCH_COMMIT:-}" ] && [ -n "$(git -C "$ROOT" status --porcelain --untracked-files=no 2>/dev/null)" ]; then
        commit="$commit plus uncommitted changes"
    fi
    echo "commit=$commit"
    echo "load_start=$(cut -d' ' -f1-3 /proc/loadavg)"
    echo "duration=$DURATION"
} > "$RESULTS/facts.txt"

SECRET=$(openssl rand -hex 32)
printf '%s\n' "$SECRET" > "$WORK/webhook-secret"
chmod 600 "$WORK/webhook-secret"

# The 25 MB delivery, made and signed by the ingest benchmark's generator.
SIG_25M=$("$PY" "$BENCH/ingest/payload.py" "$WORK/push-25m.json" 25000000 "$SECRET")
stat -c %s "$WORK/push-25m.json" > "$RESULTS/size-25m.txt"
SIG_SMALL=$("$PY" "$BENCH/ingest/payload.py" "$WORK/push-small.json" 10240 "$SECRET")

# ---- ingest: bench/ingest/run.sh, which starts its own servers ----
say "ingest (bench/ingest/run.sh, $DURATION per cell)"
DEPLOYER_BIN=$DEPLOYER DURATION=$DURATION BENCH_DIR=/var/tmp bash "$BENCH/ingest/run.sh" > "$RESULTS/ingest.txt"
cat "$RESULTS/ingest.txt" >&2

# ---- the two servers for memory ----
# Ours: SQLite ledger and queues on disk, one deployment that the pushes do not concern (so the
# delivery is verified, fsynced into the inbox, dispatched and recorded, and nothing deploys).
OURS_PORT=$(free_port)
mkdir -p "$WORK/ours"
cat > "$WORK/ours/config.toml" <<EOF
listen = "127.0.0.1:$OURS_PORT"
state_dir = "$WORK/ours/state"
[github]
webhook_secret_file = "$WORK/webhook-secret"
[deployments.site]
repository = "bench/other"
branch = "main"
path = "$WORK/ours/app"
commands = [["true"]]
EOF
OURS_URL=http://127.0.0.1:$OURS_PORT/github-webhook
OURS_INBOX=$WORK/ours/state/queues/inbox

# Theirs: the same signature check and event match, then /bin/true.
THEIRS_PORT=$(free_port)
mkdir -p "$WORK/theirs"
cat > "$WORK/theirs/hooks.json" <<EOF
[
  {
    "id": "bench",
    "execute-command": "/bin/true",
    "command-working-directory": "$WORK/theirs",
    "response-message": "queued",
    "trigger-rule-mismatch-http-response-code": 403,
    "trigger-rule": {
      "and": [
        { "match": { "type": "payload-hmac-sha256", "secret": "$SECRET",
                     "parameter": { "source": "header", "name": "X-Hub-Signature-256" } } },
        { "match": { "type": "value", "value": "push",
                     "parameter": { "source": "header", "name": "X-GitHub-Event" } } }
      ]
    }
  }
]
EOF
THEIRS_URL=http://127.0.0.1:$THEIRS_PORT/hooks/bench

say "memory: durhack-deployer on $OURS_PORT, webhook on $THEIRS_PORT"
"$DEPLOYER" serve --config "$WORK/ours/config.toml" > "$WORK/ours/log" 2>&1 &
OURS_PID=$!
PIDS+=("$OURS_PID")
webhook -hooks "$WORK/theirs/hooks.json" -ip 127.0.0.1 -port "$THEIRS_PORT" > "$WORK/theirs/log" 2>&1 &
THEIRS_PID=$!
PIDS+=("$THEIRS_PID")
wait_http "http://127.0.0.1:$OURS_PORT/"
wait_http "http://127.0.0.1:$THEIRS_PORT/"

# ---- idle memory: before any request ----
say "idle memory"
sleep 2
OURS_IDLE=$(mem_kib "$OURS_PID" VmRSS)
THEIRS_IDLE=$(mem_kib "$THEIRS_PID" VmRSS)
HELPER_RSS=""
if [ "$(id -u)" = 0 ]; then
    # The helper as it runs in production: root, a root-only policy and conf dir, its socket.
    H=$WORK/helper
    mkdir -p "$H/conf.d" "$H/snippets" "$H/www" "$H/logs" "$H/live"
    chmod 700 "$H" "$H/conf.d"
    cat > "$H/policy.toml" <<EOF
client_user = "root"
socket = "$H/privhelper.sock"
conf_dir = "$H/conf.d"
test_command = ["/bin/true"]
reload_command = ["/bin/true"]
snippets_dir = "$H/snippets"
allowed_roots = ["$H/www"]
log_dir = "$H/logs"
[certbot]
argv = ["/bin/false"]
live_dir = "$H/live"
[sites.demo]
domains = ["demo.example.com"]
EOF
    chmod 600 "$H/policy.toml"
    "$HELPER" --policy "$H/policy.toml" > "$H/log" 2>&1 &
    HELPER_PID=$!
    PIDS+=("$HELPER_PID")
    for _ in $(seq 100); do [ -S "$H/privhelper.sock" ] && break; sleep 0.1; done
    if [ -S "$H/privhelper.sock" ]; then
        sleep 2
        HELPER_RSS=$(mem_kib "$HELPER_PID" VmRSS)
    else
        echo "the helper did not start; see below" >&2
        cat "$H/log" >&2
    fi
    stop "$HELPER_PID"
fi
{
    echo "ours_idle_rss_kib=$OURS_IDLE"
    echo "theirs_idle_rss_kib=$THEIRS_IDLE"
    echo "helper_idle_rss_kib=$HELPER_RSS"
} > "$RESULTS/memory.txt"

# ---- one 25 MB delivery each ----
# Both must accept the signed push and refuse a wrong signature, or the numbers mean nothing.
check_server() {
    local url=$1 want=$2 code
    code=$(curl -s -o /dev/null -w '%{http_code}' -X POST "$url" -H 'Content-Type: application/json' \
        -H 'X-GitHub-Event: push' -H "X-GitHub-Delivery: bench-check-$RANDOM" \
        -H "X-Hub-Signature-256: $SIG_SMALL" --data-binary "@$WORK/push-small.json")
    [ "$code" = "$want" ] || { echo "$url answered $code to a signed push, not $want" >&2; return 1; }
    code=$(curl -s -o /dev/null -w '%{http_code}' -X POST "$url" -H 'Content-Type: application/json' \
        -H 'X-GitHub-Event: push' -H "X-GitHub-Delivery: bench-check-$RANDOM" \
        -H "X-Hub-Signature-256: sha256=$(printf '0%.0s' $(seq 64))" --data-binary "@$WORK/push-small.json")
    # webhook answers 500 when a signature rule inside an "and" fails; any refusal will do.
    case $code in 2*|000) echo "$url answered $code to a bad signature" >&2; return 1 ;; esac
}
check_server "$OURS_URL" 202
check_server "$THEIRS_URL" 200
wait_drained "$OURS_INBOX" 30 > /dev/null

say "one 25 MB delivery each"
post_big() {
    curl -s -o /dev/null -w '%{http_code} %{time_total}\n' -X POST "$1" -H 'Content-Type: application/json' \
        -H 'X-GitHub-Event: push' -H "X-GitHub-Delivery: bench-big-$RANDOM" \
        -H "X-Hub-Signature-256: $SIG_25M" --data-binary "@$WORK/push-25m.json"
}
read -r code secs < <(post_big "$OURS_URL")
[ "$code" = 202 ] || { echo "ours answered $code to the 25 MB push" >&2; exit 1; }
echo "ours_big_seconds=$secs" >> "$RESULTS/memory.txt"
echo "ours_hwm_after_202_kib=$(mem_kib "$OURS_PID" VmHWM)" >> "$RESULTS/memory.txt"
# The dispatcher then reads the entry back and routes it: part of handling one delivery.
wait_drained "$OURS_INBOX" 60 > /dev/null
sleep 1
echo "ours_hwm_after_dispatch_kib=$(mem_kib "$OURS_PID" VmHWM)" >> "$RESULTS/memory.txt"
read -r code secs < <(post_big "$THEIRS_URL")
[ "$code" = 200 ] || { echo "webhook answered $code to the 25 MB push" >&2; exit 1; }
sleep 1
echo "theirs_big_seconds=$secs" >> "$RESULTS/memory.txt"
echo "theirs_hwm_kib=$(mem_kib "$THEIRS_PID" VmHWM)" >> "$RESULTS/memory.txt"

stop "$OURS_PID"
stop "$THEIRS_PID"

# ---- pickup latency and deploy overhead ----
say "pickup latency and deploy overhead"
G=$WORK/git
mkdir -p "$G"
make_repo() {
    local name=$1
    git init -q --bare -b main "$G/$name.git"
    git init -q -b main "$G/$name-src"
    git -C "$G/$name-src" config user.name bench
    git -C "$G/$name-src" config user.email bench@example.com
    for i in $(seq 20); do printf 'file %s\n' "$i" > "$G/$name-src/file$i.txt"; done
    printf 'a small app for the benchmark\n' > "$G/$name-src/README"
    git -C "$G/$name-src" add -A
    git -C "$G/$name-src" commit -q -m initial
    git -C "$G/$name-src" remote add origin "$G/$name.git"
    git -C "$G/$name-src" push -q origin main
}
make_repo pickup
make_repo noop
make_repo plain

DEPLOY_PORT=$(free_port)
D=$WORK/deploys
mkdir -p "$D"
cat > "$D/config.toml" <<EOF
listen = "127.0.0.1:$DEPLOY_PORT"
state_dir = "$D/state"
[github]
webhook_secret_file = "$WORK/webhook-secret"
# The first command stamps the moment it starts, in ns, for pickup latency.
[deployments.pickup]
repository = "bench/pickup"
branch = "main"
remote = "$G/pickup.git"
path = "$D/apps/pickup"
commands = [["sh", "-c", "date +%s%N >> $D/pickup-stamps"]]
[deployments.noop]
repository = "bench/noop"
branch = "main"
remote = "$G/noop.git"
path = "$D/apps/noop"
commands = [["true"]]
EOF
"$DEPLOYER" serve --config "$D/config.toml" > "$D/log" 2>&1 &
DEPLOY_PID=$!
PIDS+=("$DEPLOY_PID")
wait_http "http://127.0.0.1:$DEPLOY_PORT/"
DURL=http://127.0.0.1:$DEPLOY_PORT/github-webhook
LEDGER=$D/state/ledger.sqlite3
"$PY" "$BENCH/deploys.py" pickup --url "$DURL" --secret-file "$WORK/webhook-secret" \
    --src "$G/pickup-src" --repo bench/pickup --deployment pickup --ledger "$LEDGER" \
    --stamps "$D/pickup-stamps" -n "$PICKUP_N" --out "$RESULTS/pickup.json"
"$PY" "$BENCH/deploys.py" deploy --url "$DURL" --secret-file "$WORK/webhook-secret" \
    --src "$G/noop-src" --repo bench/noop --deployment noop --ledger "$LEDGER" \
    -n "$DEPLOY_N" --out "$RESULTS/deploy.json"
stop "$DEPLOY_PID"

git clone -q "$G/plain.git" "$WORK/plain-checkout"
"$PY" "$BENCH/deploys.py" plain --src "$G/plain-src" --script "$BENCH/plain-deploy.sh" \
    --checkout "$WORK/plain-checkout" --remote "$G/plain.git" -n "$DEPLOY_N" --out "$RESULTS/plain.json"
"$PY" "$BENCH/deploys.py" plain --minimal --src "$G/plain-src" --script "$BENCH/plain-deploy.sh" \
    --checkout "$WORK/plain-checkout" --remote "$G/plain.git" -n "$DEPLOY_N" --out "$RESULTS/plain-minimal.json"

echo "load_end=$(cut -d' ' -f1-3 /proc/loadavg)" >> "$RESULTS/facts.txt"

# ---- the table ----
"$PY" "$BENCH/report.py" "$RESULTS" "$ROOT/BENCHMARKS.md"
