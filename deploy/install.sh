#!/usr/bin/env bash
# Installs durhack-deployer and durhack-privhelper as a pair of systemd services on Debian/Ubuntu.
#
#   sudo deploy/install.sh                 # install or upgrade (idempotent)
#   sudo deploy/install.sh --uninstall     # remove binaries and units, keep config and data
#
# Options:
#   --root DIR      install into DIR instead of / (also DESTDIR=DIR); the user is created in
#                   DIR/etc/passwd with `useradd --prefix`, and nothing outside DIR is touched.
#                   An empty DIR gets the user database useradd needs (root only) first.
#   --bin-dir DIR   where the built binaries are (default: <repo>/target/release).
#   --uninstall     undo the install but keep config, secret, state, logs, deployments and the user.
#
# It replaces the old hand-made set-up: there is no sudo rule and no ACL. The deployer runs as an
# unprivileged system user; everything that needs root goes through durhack-privhelper, which
# checks each request against /etc/durhack-deployer/privhelper.toml.
set -euo pipefail
# Directories made along the way (/var/www, …) must be traversable by nginx whatever the caller's
# umask; every file and directory that matters gets an explicit mode below anyway.
umask 022

NAME=durhack-deployer
USER_NAME=durhack-deployer
GROUP_NAME=durhack-deployer

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
root=${DESTDIR:-/}
bin_dir="$repo/target/release"
uninstall=0

die() {
    echo "install.sh: $*" >&2
    exit 1
}
say() { echo "==> $*"; }

while [ $# -gt 0 ]; do
    case "$1" in
    --root)
        [ $# -ge 2 ] || die "--root needs a directory"
        root=$2
        shift 2
        ;;
    --root=*)
        root=${1#--root=}
        shift
        ;;
    --bin-dir)
        [ $# -ge 2 ] || die "--bin-dir needs a directory"
        bin_dir=$2
        shift 2
        ;;
    --bin-dir=*)
        bin_dir=${1#--bin-dir=}
        shift
        ;;
    --uninstall)
        uninstall=1
        shift
        ;;
    -h | --help)
        sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"
        exit 0
        ;;
    *) die "unknown argument: $1 (see --help)" ;;
    esac
done

[ "$(id -u)" = 0 ] || die "run as root (it creates a system user and sets owners): sudo $0 $*"
[ -d "$root" ] || die "--root $root is not a directory"
root=$(cd "$root" && pwd)
# `R` prefixes every path written; it is empty for a real install so messages show real paths.
if [ "$root" = / ]; then R=; else R=$root; fi

bindir=/usr/local/bin
confdir=/etc/$NAME
statedir=/var/lib/$NAME
logdir=/var/log/$NAME
unitdir=/etc/systemd/system
units=(durhack-deployer.service durhack-privhelper.service durhack-privhelper.socket)
# What `systemctl enable` acts on: the helper's service is started by its socket.
enable_units=(durhack-privhelper.socket durhack-deployer.service)

# Is this a real install on a machine where systemd is running (and so can be told to reload)?
live_systemd() { [ -z "$R" ] && [ -d /run/systemd/system ]; }
systemctl_offline() { command -v systemctl >/dev/null 2>&1 && systemctl --root="$root" "$@"; }

# ---- users and ids ----

user_uid() {
    if [ -n "$R" ]; then
        awk -F: -v n="$1" '$1 == n { print $3; found = 1 } END { exit !found }' "$R/etc/passwd" 2>/dev/null
    else
        id -u "$1" 2>/dev/null
    fi
}
group_gid() {
    if [ -n "$R" ]; then
        awk -F: -v n="$1" '$1 == n { print $3; found = 1 } END { exit !found }' "$R/etc/group" 2>/dev/null
    else
        getent group "$1" | cut -d: -f3
    fi
}

# An empty scratch root has no user database for `useradd --prefix` to add to: seed the one a
# Debian system starts with (root only). Existing files are never touched.
seed_user_db() {
    [ -n "$R" ] || return 0
    local entry file seeded=()
    mkdir -p -- "$R/etc"
    for entry in 'passwd:0644:root:x:0:0:root:/root:/bin/bash' 'group:0644:root:x:0:' \
        'shadow:0640:root:*:19000:0:99999:7:::' 'gshadow:0640:root:*::'; do
        file=${entry%%:*}
        entry=${entry#*:}
        if [ ! -e "$R/etc/$file" ]; then
            printf '%s\n' "${entry#*:}" >"$R/etc/$file"
            chmod "${entry%%:*}" -- "$R/etc/$file"
            seeded+=("$file")
        fi
    done
    if [ ${#seeded[@]} -gt 0 ]; then
        say "seeded $R/etc with ${seeded[*]} (root only), which useradd --prefix needs"
    fi
}

ensure_user() {
    seed_user_db
    if user_uid "$USER_NAME" >/dev/null; then
        say "user $USER_NAME exists"
        return
    fi
    local args=(--system --home-dir "$statedir" --no-create-home --shell /usr/sbin/nologin
        --comment "durhack-deployer (continuous deployment)")
    # A group left over from an earlier, partial install is reused rather than refused.
    if group_gid "$GROUP_NAME" >/dev/null; then
        args+=(--gid "$GROUP_NAME")
    else
        args+=(--user-group)
    fi
    if [ -n "$R" ]; then
        args+=(--prefix "$R")
    fi
    useradd "${args[@]}" "$USER_NAME"
    say "created system user $USER_NAME (no password, no login shell, no sudo rule)"
}

# ---- files ----

# dir MODE OWNER GROUP PATH: create it, or bring an existing one back to this owner and mode.
dir() {
    mkdir -p -- "$R$4"
    chown "$2:$3" -- "$R$4"
    chmod "$1" -- "$R$4"
}

# put MODE OWNER GROUP SRC DEST: replace DEST atomically (a running binary stays intact).
put() {
    local dest="$R$5" tmp
    tmp="$(dirname "$dest")/.$(basename "$dest").install-tmp"
    cp -- "$4" "$tmp"
    chown "$2:$3" -- "$tmp"
    chmod "$1" -- "$tmp"
    mv -f -- "$tmp" "$dest"
}

# put_once MODE OWNER GROUP SRC DEST: like put, but an existing DEST is the operator's and is kept;
# only its owner and mode are restored.
put_once() {
    local dest="$R$5"
    if [ -e "$dest" ]; then
        chown "$2:$3" -- "$dest"
        chmod "$1" -- "$dest"
        if ! cmp -s -- "$4" "$dest"; then
            say "kept your $5 (the shipped version is $4)"
        fi
    else
        put "$@"
        say "installed $5"
    fi
}

# The `path = "/..."` keys of the deployments in the installed config.
deployment_paths() {
    sed -n 's/^[[:space:]]*path[[:space:]]*=[[:space:]]*"\(\/[^"]*\)".*$/\1/p' "$R$confdir/config.toml"
}

config_value() {
    sed -n "s/^[[:space:]]*$1[[:space:]]*=[[:space:]]*\"\\([^\"]*\\)\".*\$/\\1/p" "$R$confdir/config.toml" | head -n1
}

# ---- install ----

do_install() {
    local b
    for b in durhack-deployer durhack-privhelper; do
        [ -x "$bin_dir/$b" ] || die "$bin_dir/$b not found: build first (cargo build --release) or pass --bin-dir"
    done
    [ -f "$repo/sudoers/privhelper.toml" ] || die "$repo/sudoers/privhelper.toml (the helper's policy) is missing"
    command -v useradd >/dev/null 2>&1 || die "useradd not found (Debian/Ubuntu: apt-get install passwd)"
    # The build sandbox; without it, runs of sandboxed deployments fail (saying so).
    command -v bwrap >/dev/null 2>&1 ||
        say "warning: bwrap not found: install bubblewrap (apt-get install bubblewrap); until then deployments fail unless they set sandbox = false"

    ensure_user
    local uid gid
    uid=$(user_uid "$USER_NAME")
    gid=$(group_gid "$GROUP_NAME")
    [ -n "$uid" ] && [ -n "$gid" ] || die "cannot look up $USER_NAME's uid and gid"

    # Binaries: root-owned, so the service user cannot replace what it runs.
    dir 0755 0 0 "$bindir"
    put 0755 0 0 "$bin_dir/durhack-deployer" "$bindir/durhack-deployer"
    put 0755 0 0 "$bin_dir/durhack-privhelper" "$bindir/durhack-privhelper"
    say "installed $bindir/durhack-deployer and $bindir/durhack-privhelper"

    # Configuration: root writes it, the service's group reads it, nobody else sees it.
    dir 0750 0 "$gid" "$confdir"
    put_once 0640 0 "$gid" "$repo/deploy/config.example.toml" "$confdir/config.toml"
    # The policy is read by the root helper only, but holds no secret: world-readable, root-owned.
    put_once 0644 0 0 "$repo/sudoers/privhelper.toml" "$confdir/privhelper.toml"
    if [ -s "$R$confdir/webhook-secret" ]; then
        chown "0:$gid" -- "$R$confdir/webhook-secret"
        chmod 0640 -- "$R$confdir/webhook-secret"
        say "kept the webhook secret in $confdir/webhook-secret"
    else
        (
            umask 077
            od -An -N32 -tx1 /dev/urandom | tr -d ' \n' >"$R$confdir/webhook-secret.tmp"
            echo >>"$R$confdir/webhook-secret.tmp"
        )
        chown "0:$gid" -- "$R$confdir/webhook-secret.tmp"
        chmod 0640 -- "$R$confdir/webhook-secret.tmp"
        mv -f -- "$R$confdir/webhook-secret.tmp" "$R$confdir/webhook-secret"
        say "generated a webhook secret in $confdir/webhook-secret"
    fi

    # State (ledger, queues; also the user's home, for pnpm's store and PM2_HOME) and run logs.
    dir 0750 "$uid" "$gid" "$statedir"
    dir 0750 "$uid" "$gid" "$logdir"
    # Run logs are written under state_dir/logs; they belong in /var/log.
    if [ ! -e "$R$statedir/logs" ] && [ ! -L "$R$statedir/logs" ]; then
        ln -s "$logdir" "$R$statedir/logs"
        chown -h "$uid:$gid" -- "$R$statedir/logs"
    fi

    # Deployment paths: created for the service user; existing ones (with your data) are left
    # alone but checked, since a deploy into a directory the user cannot write fails.
    local p
    while IFS= read -r p; do
        [ -n "$p" ] || continue
        if [ -e "$R$p" ]; then
            local owner
            owner=$(stat -c %u -- "$R$p")
            if [ "$owner" != "$uid" ]; then
                say "warning: $p exists and is not owned by $USER_NAME; the deploy will fail until: chown -R $USER_NAME: $p"
            fi
        else
            mkdir -p -- "$(dirname "$R$p")"
            dir 0755 "$uid" "$gid" "$p"
            say "created deployment path $p"
        fi
    done < <(deployment_paths)

    # certbot's directories and the ACME webroot of the shipped policy (`-w /var/www/letsencrypt`),
    # root's, with certbot's own modes, if absent. The helper's unit may write them
    # (ReadWritePaths=-…) but cannot create them under ProtectSystem=strict, and the `-` skips a
    # missing one silently: on a server where certbot had never run, the helper's first certbot
    # failed with "Read-only file system: '/var/log/letsencrypt'" (found by the systemd suite,
    # deployer/tests/systemd_units.rs). Existing ones are left as they are.
    local le
    for le in /etc/letsencrypt:0755 /var/lib/letsencrypt:0755 /var/log/letsencrypt:0700 /var/www/letsencrypt:0755; do
        if [ ! -e "$R${le%%:*}" ]; then
            dir "${le##*:}" 0 0 "${le%%:*}"
            say "created ${le%%:*} (for certbot, run by the helper)"
        fi
    done

    # Units: always the shipped ones; local changes belong in drop-ins (systemctl edit).
    dir 0755 0 0 "$unitdir"
    local u
    for u in "${units[@]}"; do
        put 0644 0 0 "$repo/deploy/$u" "$unitdir/$u"
    done
    say "installed the units in $unitdir"

    # On a real install, check the config as the service will read it: as the service user,
    # which also proves the group can read the config and the secret.
    local config_ok=1
    if [ -z "$R" ] && command -v runuser >/dev/null 2>&1; then
        if runuser -u "$USER_NAME" -- "$bindir/durhack-deployer" check --config "$confdir/config.toml" >/dev/null; then
            say "config checks out (durhack-deployer check, as $USER_NAME)"
        else
            config_ok=0
            say "warning: $confdir/config.toml does not check yet (above); fix it before starting"
        fi
    fi

    if live_systemd; then
        systemctl daemon-reload
        systemctl enable --quiet "${enable_units[@]}"
        # An upgrade: restart what was running so the new binaries are used (not onto a
        # config that would stop it).
        if [ "$config_ok" = 1 ]; then
            systemctl try-restart durhack-privhelper.service durhack-deployer.service
        fi
    elif ! systemctl_offline enable --quiet "${enable_units[@]}"; then
        say "warning: could not enable the units (no systemctl); enable ${enable_units[*]} yourself"
    fi
    say "enabled ${enable_units[*]}"

    next_steps
}

next_steps() {
    local public_url listen secret
    public_url=$(config_value public_url)
    listen=$(config_value listen)
    secret=$(cat "$R$confdir/webhook-secret")
    cat <<EOF

Installed. Next steps:

  1. Edit $confdir/config.toml (deployments, public_url), then check it:
       sudo -u $USER_NAME $bindir/durhack-deployer check --config $confdir/config.toml
     and the helper's policy, $confdir/privhelper.toml (which sites and domains it may publish).
  2. Proxy the webhook endpoint from nginx to ${listen:-127.0.0.1:3400} (see docs/install.md).
  3. Start both:
       sudo systemctl start durhack-privhelper.socket durhack-deployer.service
  4. In GitHub: repository > Settings > Webhooks > Add webhook
       Payload URL:   ${public_url:-https://<your host>}/github-webhook
       Content type:  application/json
       Secret:        $secret
       Events:        Just the push event
  5. Check it without pushing to GitHub:
       sudo $bindir/durhack-deployer send-test-push --config $confdir/config.toml <deployment>
       sudo $bindir/durhack-deployer status --config $confdir/config.toml
EOF
}

# ---- uninstall ----

do_uninstall() {
    local u
    if live_systemd; then
        systemctl disable --now --quiet durhack-deployer.service durhack-privhelper.socket 2>/dev/null || true
        systemctl stop durhack-privhelper.service 2>/dev/null || true
    else
        systemctl_offline disable --quiet "${enable_units[@]}" 2>/dev/null || true
    fi
    for u in "${units[@]}"; do
        rm -f -- "$R$unitdir/$u"
    done
    if live_systemd; then
        systemctl daemon-reload
    fi
    rm -f -- "$R$bindir/durhack-deployer" "$R$bindir/durhack-privhelper"
    say "removed the units and binaries"
    cat <<EOF

Kept (your data): $R$confdir (config, webhook secret, policy), $R$statedir (ledger, queues),
$R$logdir (run logs), the deployment paths and the $USER_NAME user. To remove those too:
  sudo rm -r $R$confdir $R$statedir $R$logdir && sudo userdel ${R:+--prefix $R }$USER_NAME
EOF
}

if [ "$uninstall" = 1 ]; then
    do_uninstall
else
    do_install
fi
