#!/usr/bin/env bash
# Ingest benchmark: signed ~10 KB GitHub push deliveries posted with wrk at concurrency 1 and 16
# to durhack-deployer (verify, fsync to the inbox, 202; the dispatcher drains in the background)
# and, in the same run and under the same load, to adnanh/webhook (Debian package `webhook`)
# verifying the same signature and running /bin/true. Prints figures only; asserts nothing about
# speed. It does check that every delivery durhack-deployer accepted reached its ledger.
#
# Usage: bench/ingest/run.sh            (DURATION=10s SIZE=10240 DEPLOYER_BIN=... to override)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
duration="${DURATION:-10s}"
size="${SIZE:-10240}"
secret="bench-secret-$RANDOM$RANDOM"

for tool in wrk webhook python3 curl; do
    command -v "$tool" >/dev/null || { echo "missing: $tool (apt-get install wrk webhook python3 curl)" >&2; exit 1; }
done
if [ -z "${DEPLOYER_BIN:-}" ]; then
    echo "==> cargo build --release -p deployer" >&2
    cargo build --release -p deployer --quiet --manifest-path "$root/Cargo.toml" >&2
    target="${CARGO_TARGET_DIR:-$root/target}"
    DEPLOYER_BIN="$target/release/durhack-deployer"
fi

# On disk, not tmpfs: fsync must cost what it costs in production.
work="$(mktemp -d "${BENCH_DIR:-/var/tmp}/durhack-ingest-bench.XXXXXX")"
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_http() {
    for _ in $(seq 1 100); do
        curl -s -o /dev/null "$1" && return 0
        sleep 0.1
    done
    echo "nothing answers at $1" >&2
    return 1
}

body="$work/push.json"
signature="$(python3 "$here/payload.py" "$body" "$size" "$secret")"
echo "==> payload: $(stat -c %s "$body") bytes, signed once" >&2

# --- durhack-deployer: pushes to main, which no deployment watches, so nothing deploys ---
dport="$(free_port)"
printf '%s' "$secret" > "$work/secret"
cat > "$work/config.toml" <<TOML
listen = "127.0.0.1:$dport"
state_dir = "$work/state"
[github]
webhook_secret_file = "$work/secret"
[deployments.site]
repository = "octo-org/site"
branch = "production"
path = "$work/www"
TOML
RUST_LOG=warn "$DEPLOYER_BIN" serve --config "$work/config.toml" 2>"$work/deployer.log" &
pids+=($!)
wait_http "http://127.0.0.1:$dport/"
deployer_url="http://127.0.0.1:$dport/github-webhook"

# --- adnanh/webhook with the same secret and signature check ---
wport="$(free_port)"
cat > "$work/hooks.json" <<JSON
[{
  "id": "github",
  "execute-command": "/bin/true",
  "trigger-rule-mismatch-http-response-code": 401,
  "trigger-rule": {
    "match": {
      "type": "payload-hmac-sha256",
      "secret": "$secret",
      "parameter": { "source": "header", "name": "X-Hub-Signature-256" }
    }
  }
}]
JSON
webhook -hooks "$work/hooks.json" -ip 127.0.0.1 -port "$wport" >"$work/webhook.log" 2>&1 &
pids+=($!)
wait_http "http://127.0.0.1:$wport/"
webhook_url="http://127.0.0.1:$wport/hooks/github"

# Both must refuse a bad signature and accept the good one, or the comparison means nothing.
check() {
    local url="$1" sig="$2" want="$3" got
    got="$(curl -s -o /dev/null -w '%{http_code}' -X POST -H 'Content-Type: application/json' \
        -H 'X-GitHub-Event: push' -H "X-GitHub-Delivery: check-$RANDOM" \
        -H "X-Hub-Signature-256: $sig" --data-binary "@$body" "$url")"
    case "$got" in
        $want) ;;
        *) echo "sanity check: $url answered $got, expected $want" >&2; exit 1 ;;
    esac
}
bad="sha256=$(printf '0%.0s' $(seq 1 64))"
check "$deployer_url" "$signature" 202
check "$deployer_url" "$bad" 401
check "$webhook_url" "$signature" 200
# webhook answers a signature mismatch with 500 ("Error occurred while evaluating hook rules").
check "$webhook_url" "$bad" '[45][0-9][0-9]'

declare -A rps p50 p99 reqs non2xx
run() {
    local name="$1" url="$2" conc="$3" threads=1 line
    [ "$conc" -gt 1 ] && threads=2
    line="$(wrk -t"$threads" -c"$conc" -d"$duration" --timeout 10s -s "$here/post.lua" "$url" \
        -- "$body" "$signature" "bench-$name-c$conc" | grep '^RESULT')"
    eval "local ${line#RESULT }"
    reqs[$name,$conc]=$requests
    non2xx[$name,$conc]=$((status_errors + socket_errors))
    rps[$name,$conc]="$(python3 -c "print(f'{$requests / ($duration_us / 1e6):.0f}')")"
    p50[$name,$conc]="$(python3 -c "print(f'{$p50_us / 1000:.2f}')")"
    p99[$name,$conc]="$(python3 -c "print(f'{$p99_us / 1000:.2f}')")"
}

for conc in 1 16; do
    echo "==> concurrency $conc, $duration each" >&2
    run deployer "$deployer_url" "$conc"
    run webhook "$webhook_url" "$conc"
done

# Every delivery the deployer accepted must reach its ledger once the dispatcher has drained.
echo "==> waiting for the dispatcher to drain the inbox" >&2
for _ in $(seq 1 600); do
    [ -z "$(ls -A "$work/state/queues/inbox")" ] && break
    sleep 0.5
done
accepted=$(( ${reqs[deployer,1]} - ${non2xx[deployer,1]} + ${reqs[deployer,16]} - ${non2xx[deployer,16]} ))
recorded="$("$DEPLOYER_BIN" history --config "$work/config.toml" --json --limit 100000000 |
    python3 -c 'import json,sys; print(sum(1 for d in json.load(sys.stdin) if d["delivery"].startswith("bench-deployer-")))')"

printf '\n%-18s %5s %10s %9s %9s %9s %8s\n' server conc requests "req/s" "p50 ms" "p99 ms" failed
for conc in 1 16; do
    for name in deployer webhook; do
        label="$name"; [ "$name" = deployer ] && label=durhack-deployer
        printf '%-18s %5s %10s %9s %9s %9s %8s\n' "$label" "$conc" "${reqs[$name,$conc]}" \
            "${rps[$name,$conc]}" "${p50[$name,$conc]}" "${p99[$name,$conc]}" "${non2xx[$name,$conc]}"
    done
done
echo
for conc in 1 16; do
    python3 -c "print(f'req/s ratio durhack-deployer / webhook at concurrency $conc: {${rps[deployer,$conc]} / max(${rps[webhook,$conc]}, 1):.2f}')"
done
echo "payload $(stat -c %s "$body") bytes; accepted by durhack-deployer (202) $accepted; in its ledger afterwards $recorded"
if [ "$recorded" -lt "$accepted" ]; then
    echo "LOST DELIVERIES: $((accepted - recorded))" >&2
    exit 1
fi
