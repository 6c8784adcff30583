#!/usr/bin/env bash
# The test command (README.md): sets up what the tests need on a fresh Debian/Ubuntu machine,
# then runs formatting, lints and every test in the workspace.
#
# As root it installs missing packages (nginx, nginx-dev, gcc, make, libpcre2-dev, certbot, pebble,
# webhook, wrk, systemd-container, bubblewrap) and starts PostgreSQL and Redis when they are not answering.
# Without root it only reports what is missing; the tests that need it then say so loudly (and
# fail under CI=true).
set -euo pipefail
cd "$(dirname "$0")/.."

# programs[i] (a command, or a file path when it has a "/") comes from packages[i]. nginx-dev, gcc,
# make and libpcre2-dev build the test-only nginx module of the tree oracle (testkit/nginx-tree);
# systemd-container gives systemd-nspawn, which boots the systemd suite's container
# (deployer/tests/systemd_units.rs). unshare and ip (util-linux, iproute2):
# privhelper/tests/ports_80_443.rs runs nginx on 80/443 in a private network namespace.
# bubblewrap is the build sandbox (deployer/src/worker/sandbox.rs, tests/sandbox_hostile_build.rs).
packages=(nginx certbot pebble webhook wrk openssl git curl nginx-dev gcc make libpcre2-dev systemd-container util-linux iproute2 bubblewrap)
programs=(nginx certbot pebble webhook wrk openssl git curl /usr/share/nginx/src/configure gcc make /usr/include/pcre2.h systemd-nspawn unshare ip bwrap)
missing=()
for i in "${!programs[@]}"; do
    if [[ "${programs[$i]}" == */* ]]; then
        [ -e "${programs[$i]}" ] || missing+=("${packages[$i]}")
    else
        command -v "${programs[$i]}" >/dev/null 2>&1 || [ -x "/usr/sbin/${programs[$i]}" ] || missing+=("${packages[$i]}")
    fi
done
if [ "${#missing[@]}" -gt 0 ]; then
    if [ "$(id -u)" = 0 ]; then
        echo "==> installing ${missing[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    else
        echo "==> missing (not root, not installing): ${missing[*]}" >&2
    fi
fi
# Debian's nginx package may start a default instance on port 80; the tests run their own.

if command -v pg_isready >/dev/null 2>&1 && ! pg_isready -q -h 127.0.0.1 -p 5432; then
    if [ "$(id -u)" = 0 ] && ls /etc/postgresql >/dev/null 2>&1; then
        echo "==> starting PostgreSQL"
        pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start || true
    fi
fi
if command -v redis-cli >/dev/null 2>&1 && ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
    if command -v redis-server >/dev/null 2>&1; then
        echo "==> starting Redis"
        mkdir -p /var/lib/redis /var/log/redis 2>/dev/null || true
        redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
            --dir "${TMPDIR:-/tmp}" --logfile "${TMPDIR:-/tmp}/durhack-test-redis.log" || true
    fi
fi

echo "==> cargo fmt --check"
cargo fmt --all -- --check
echo "==> cargo clippy -D warnings"
cargo clippy --workspace --all-targets --quiet -- -D warnings
echo "==> cargo test"
cargo test --workspace --no-fail-fast "$@"
