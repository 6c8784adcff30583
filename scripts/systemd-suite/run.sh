#!/usr/bin/env bash
# The systemd suite (issue 11): boots a real systemd in a container over a throwaway overlay of /
# and runs, inside it, docs/install.md's walk-through with the shipped units unchanged
# (scripts/systemd-suite/inside.sh). Driven by `cargo test` (deployer/tests/systemd_units.rs).
#
#   scripts/systemd-suite/run.sh BIN_DIR     # BIN_DIR holds durhack-deployer and durhack-privhelper
#
# DD_SUITE_SOURCE=DIR installs from another checkout (its deploy/ units and install.sh, its
# sudoers/privhelper.toml) with this suite: how it was shown to fail on the tree before the helper
# kept CAP_NET_BIND_SERVICE (`nginx: [emerg] bind() to 0.0.0.0:80 failed (13: Permission denied)`).
#
# Exit 0: passed; 77: cannot run here (not root, no systemd-nspawn, the container did not boot),
# said loudly; anything else: failed. Every exit path powers the container off (or kills it) and
# unmounts the overlay and its tmpfs, so nothing is left behind. Nothing reaches the real /.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
source_dir=$(cd "${DD_SUITE_SOURCE:-$repo}" && pwd)
[ $# = 1 ] || { echo "usage: $0 BIN_DIR" >&2; exit 2; }
bin_dir=$(cd "$1" && pwd)

log() { printf '[%s] %s\n' "$(date -u +%T)" "$*"; }
skip() {
    echo "*** systemd suite cannot run here: $* ***" >&2
    exit 77
}
[ "$(id -u)" = 0 ] || skip "needs root (overlay mount, systemd-nspawn)"
for p in systemd-nspawn nsenter mount umount; do
    command -v "$p" >/dev/null 2>&1 || skip "$p not found (apt-get install systemd-container util-linux)"
done
for b in durhack-deployer durhack-privhelper; do
    [ -x "$bin_dir/$b" ] || { echo "$bin_dir/$b not found" >&2; exit 2; }
done

t=$(mktemp -d /tmp/dd-systemd-suite.XXXXXX)
name="dd-suite-$$"
nspawn_pid=
cpid=
mounted_tmpfs=0
mounted_root=0
started=$(date +%s)

# The container's init is the child of systemd-nspawn that runs systemd. Not just any child:
# nspawn forks helpers first, and a pid taken too early is gone (or someone else) by the time
# it is used, so the name is checked and the pid looked up again until boot has finished.
container_init() {
    local c
    for c in /proc/[0-9]*; do
        [ "$(cat "$c/comm" 2>/dev/null)" = systemd ] || continue
        if [ "$(sed -n 's/^PPid:[[:space:]]*//p' "$c/status" 2>/dev/null)" = "$nspawn_pid" ]; then
            echo "${c#/proc/}"
            return 0
        fi
    done
    return 1
}

cleanup() {
    local rc=$?
    set +e
    trap - EXIT INT TERM
    if [ -n "$nspawn_pid" ] && kill -0 "$nspawn_pid" 2>/dev/null; then
        log "powering the container off"
        cpid=$(container_init || true)
        [ -n "$cpid" ] && kill -s SIGRTMIN+4 "$cpid" 2>/dev/null
        local i
        for i in $(seq 1 600); do
            kill -0 "$nspawn_pid" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$nspawn_pid" 2>/dev/null; then
            log "the container did not power off within 60 s: killing it"
            [ -n "$cpid" ] && kill -9 "$cpid" 2>/dev/null
            kill -9 "$nspawn_pid" 2>/dev/null
        fi
        wait "$nspawn_pid" 2>/dev/null
    fi
    if [ "$rc" != 0 ] && [ -f "$t/console.log" ]; then
        echo "---- container console (last 40 lines)"
        tail -n 40 "$t/console.log"
    fi
    if [ "$mounted_root" = 1 ]; then umount "$t/root" 2>/dev/null || umount -l "$t/root"; fi
    if [ "$mounted_tmpfs" = 1 ]; then umount "$t" 2>/dev/null || umount -l "$t"; fi
    rmdir "$t" 2>/dev/null
    log "suite finished (exit $rc) after $(($(date +%s) - started)) s; overlay and container gone"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

mount -t tmpfs -o mode=0700 tmpfs "$t"
mounted_tmpfs=1
mkdir -p "$t/upper" "$t/work" "$t/root"
mount -t overlay overlay -o "lowerdir=/,upperdir=$t/upper,workdir=$t/work" "$t/root" ||
    skip "cannot mount an overlay of / (kernel or container restrictions)"
mounted_root=1

# Units that are installed on the machine but have nothing to do with this suite would slow the
# boot and the power-off (databases, brokers); nginx stays, it is one of the real parts.
wants=$(ls "$t/root/etc/systemd/system/"*.wants/ 2>/dev/null | grep -E '\.(service|socket|timer)$' |
    grep -vx -e nginx.service | sort -u || true)
if [ -n "$wants" ]; then
    # shellcheck disable=SC2086
    systemctl --root="$t/root" mask --quiet $wants getty@tty1.service console-getty.service 2>/dev/null || true
fi
# A previous install on the host must not leak in (the suite installs from scratch).
rm -f "$t/root/etc/systemd/system/durhack-"*

log "booting systemd in a container ($name)"
boot_start=$(date +%s.%N)
systemd-nspawn -D "$t/root" --private-network --register=no --keep-unit --boot \
    --machine="$name" --console=read-only \
    --bind-ro="$source_dir:/mnt/dd-src" --bind-ro="$repo/scripts/systemd-suite:/mnt/dd-suite" \
    --bind-ro="$bin_dir:/mnt/dd-bins" \
    </dev/null >"$t/console.log" 2>&1 &
nspawn_pid=$!
C() {
    nsenter -t "$cpid" -a env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        HOME=/root LANG=C.UTF-8 TERM=dumb CI="${CI:-}" "$@"
}
state=
for _ in $(seq 1 180); do
    cpid=$(container_init || true)
    if [ -n "$cpid" ]; then
        state=$(C timeout 10 systemctl is-system-running 2>/dev/null || true)
    fi
    case "$state" in running | degraded) break ;; esac
    kill -0 "$nspawn_pid" 2>/dev/null || break
    sleep 1
done
case "$state" in
running | degraded) ;;
*) skip "the container's systemd did not finish booting within 180 s (state: ${state:-none}, init pid: ${cpid:-none})" ;;
esac
log "container booted: $state, in $(awk -v a="$boot_start" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }') s (systemd pid $cpid on the host)"
if [ "$state" = degraded ]; then
    C systemctl --failed --no-pager --plain --no-legend || true
fi

[ "$source_dir" = "$repo" ] || log "installing from $source_dir (DD_SUITE_SOURCE)"
C bash /mnt/dd-suite/inside.sh
