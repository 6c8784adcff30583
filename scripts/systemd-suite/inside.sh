#!/usr/bin/env bash
# Runs inside the container booted by scripts/systemd-suite/run.sh: docs/install.md's walk-through,
# step for step, as an operator would, against the shipped units unchanged. The test edits only
# the config and the helper's policy: a local bare repository as the remote, pebble as the ACME
# server (its CA given to certbot), challenge names resolved by pebble-challtestsrv, the pushes'
# loopback source allowed. Each check prints what it saw; durations are printed, never asserted.
set -euo pipefail
src=/mnt/dd-src
bins=/mnt/dd-bins
T=/etc/durhack-test # the test's own files: outside /tmp, /root and /home, which the units hide
CONF=/etc/durhack-deployer/config.toml
POLICY=/etc/durhack-deployer/privhelper.toml
PY=/usr/bin/python3
mkdir -p "$T"

now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f s", b - a }'; }
step() { printf '\n[%s] ==== %s\n' "$(date -u +%T)" "$*"; }
ok() { echo "  ok: $*"; }
die() {
    echo "  FAIL: $*" >&2
    exit 1
}
on_exit() {
    local rc=$?
    if [ "$rc" != 0 ]; then
        echo "---- journal of both units (last 60 lines)"
        journalctl -u durhack-deployer -u durhack-privhelper --no-pager -n 60 || true
        echo "---- newest run logs"
        find /var/log/durhack-deployer -name '*.log' -newer "$T" -exec sh -c 'echo "== $1"; tail -n 30 "$1"' _ {} \; 2>/dev/null || true
    fi
}
trap on_exit EXIT
# wait_for WHAT MAX CMD...: polls CMD until it succeeds; MAX seconds only guards against a hang.
wait_for() {
    local what=$1 max=$2 t0
    shift 2
    t0=$(now)
    local deadline=$(($(date +%s) + max))
    until "$@" >/dev/null 2>&1; do
        [ "$(date +%s)" -lt "$deadline" ] || die "gave up waiting for $what after ${max} s"
        sleep 0.3
    done
    echo "  $what: after $(since "$t0")"
}
# The last run of a deployment, as `durhack-deployer status --json` reports it: "ID STATUS SHA".
last_run() {
    durhack-deployer status --json --config "$CONF" |
        "$PY" -c 'import json,sys
for d in json.load(sys.stdin):
    if d["name"] == sys.argv[1] and d["last_run"]:
        r = d["last_run"]; print(r["id"], r["status"], r["sha"])' "$1"
}
# run_done DEPLOYMENT SHA: its last run is for SHA and has finished (success or not).
run_done() {
    local r
    r=$(last_run "$1")
    [ -n "$r" ] && [ "$(echo "$r" | cut -d' ' -f3)" = "$2" ] &&
        case "$(echo "$r" | cut -d' ' -f2)" in success | failed | cancelled) true ;; *) false ;; esac
}
# push DEPLOYMENT SHA: send-test-push through nginx, as docs/install.md shows. `--sha`, because
# root's `git ls-remote` refuses a local repository it does not own (git's safe.directory).
push() {
    durhack-deployer send-test-push --config "$CONF" --url https://deploy.example.local/github-webhook \
        --cacert "$T/pebble/roots.pem" --sha "$2" "$1"
}
expect_success() {
    local r
    r=$(last_run "$1")
    echo "  last run of $1: $r"
    [ "$(echo "$r" | cut -d' ' -f2)" = success ] || die "the $1 run did not succeed: $r"
}

suite_start=$(now)

step "0. test fixtures: pebble (ACME) and pebble-challtestsrv (DNS) as transient units; names in /etc/hosts"
mkdir -p "$T/pebble"
(
    cd "$T/pebble"
    openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 30 -subj "/CN=test pebble CA" 2>/dev/null
    openssl req -newkey rsa:2048 -nodes -keyout key.pem -out srv.csr -subj "/CN=localhost" 2>/dev/null
    printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\n' >ext.cnf
    openssl x509 -req -in srv.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out cert.pem -days 30 -extfile ext.cnf 2>/dev/null
    cat >config.json <<'JSON'
{"pebble": {"listenAddress": "127.0.0.1:14000", "managementListenAddress": "127.0.0.1:15000",
 "certificate": "cert.pem", "privateKey": "key.pem", "httpPort": 80, "tlsPort": 5001,
 "ocspResponderURL": "", "externalAccountBindingRequired": false}}
JSON
)
systemd-run --quiet --unit=dd-challtestsrv pebble-challtestsrv -dns01 127.0.0.1:8053 -http01 "" -https01 "" \
    -tlsalpn01 "" -management 127.0.0.1:8055 -defaultIPv4 127.0.0.1 -defaultIPv6 ""
systemd-run --quiet --unit=dd-pebble -p WorkingDirectory="$T/pebble" -E PEBBLE_VA_NOSLEEP=1 \
    -E PEBBLE_WFE_NONCEREJECT=0 pebble -config config.json -dnsserver 127.0.0.1:8053
wait_for "pebble's ACME directory" 60 curl -fsS --cacert "$T/pebble/ca.pem" https://127.0.0.1:14000/dir
curl -fsS --cacert "$T/pebble/ca.pem" https://127.0.0.1:15000/roots/0 >"$T/pebble/roots.pem"
ok "pebble's issuing root saved (what a browser would trust for the certificates it issues)"
echo "127.0.0.1 app.example.local deploy.example.local" >>/etc/hosts
ACME=(--server https://127.0.0.1:14000/dir)
export REQUESTS_CA_BUNDLE="$T/pebble/ca.pem" # certbot (the operator's run) trusts pebble's API

step "0b. test fixtures: the deployments' remote, a local bare repository (what GitHub would be)"
git init -q --bare -b main /srv/git/app.git
git init -q -b main "$T/work"
g() { git -c safe.directory="*" -C "$T/work" -c user.name=operator -c user.email=operator@example.local "$@"; }
mkdir -p "$T/work/nginx"
echo "app v1" >"$T/work/index.html"
cat >"$T/work/nginx/app.conf" <<'NGINX'
server {
    listen 80;
    listen [::]:80;
    server_name app.example.local;
    root /var/www/app/public;
    include /etc/nginx/snippets/acme-challenge.conf;
}
NGINX
g add -A && g commit -qm "app v1 (plain HTTP: the certificate does not exist yet)"
g push -q /srv/git/app.git main
for b in slow self; do
    g checkout -q -b "$b" main && g commit -q --allow-empty -m "$b" && g push -q /srv/git/app.git "$b"
done
# The hostile branch: a build script that tries to reach the deploy machinery (step 5c).
g checkout -q -b hostile main
cat >"$T/work/hostile.sh" <<'SH'
out=results.txt
: >"$out"
try() {
    name=$1; shift
    if "$@" >/dev/null 2>&1; then echo "$name ESCAPED" >>"$out"; else echo "$name blocked" >>"$out"; fi
}
command -v python3 >/dev/null && echo "python3 ok" >>"$out"
try helper-socket-connect python3 -c 'import socket,sys; s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])' /run/durhack-privhelper/privhelper.sock
try queues-list sh -c 'ls /var/lib/durhack-deployer/queues | grep -q deploy-app'
try queue-write sh -c 'echo "{}" > /var/lib/durhack-deployer/queues/deploy-app/.hostile'
try ledger-read sh -c 'head -c 15 /var/lib/durhack-deployer/ledger.sqlite3 | grep -q SQLite'
try locks-list sh -c 'test -n "$(ls -A /var/lib/durhack-deployer/locks)"'
try run-logs-list sh -c 'ls /var/log/durhack-deployer | grep -q app'
try run-logs-via-state sh -c 'ls /var/lib/durhack-deployer/logs/ | grep -q app'
try config-read grep -q webhook_secret_file /etc/durhack-deployer/config.toml
try secret-read grep -q . /etc/durhack-deployer/webhook-secret
try daemon-in-proc sh -c 'for p in /proc/[0-9]*; do tr "\0" " " <$p/cmdline 2>/dev/null | grep -q "durhack-deploye[r] serve" && exit 0; done; exit 1'
try other-tree-read test -e /var/www/app/index.html
try other-tree-write sh -c 'echo hostile > /var/www/app/hostile.txt'
try git-hook-write sh -c 'echo hostile > .git/hooks/post-checkout'
echo hostile-home >"$HOME/hostile-home.txt" && echo "home-write ok" >>"$out"
echo DONE >>"$out"
SH
g add hostile.sh && g commit -qm "a hostile build" && g push -q /srv/git/app.git hostile
g checkout -q main
ok "branches main, slow and self in /srv/git/app.git"

step "1. Install (docs/install.md: sudo deploy/install.sh, from the built binaries)"
t0=$(now)
"$src/deploy/install.sh" --bin-dir "$bins" | sed 's/^/  | /'
echo "  install.sh: $(since "$t0")"
systemctl is-enabled durhack-privhelper.socket durhack-deployer.service | tr '\n' ' '
echo
# certbot's directories, for the helper's certbot (its unit may write but not create them).
stat -c '  %n %U:%G %a' /etc/letsencrypt /var/lib/letsencrypt /var/log/letsencrypt /var/www/letsencrypt ||
    die "install.sh did not create certbot's directories"
SECRET=$(cat /etc/durhack-deployer/webhook-secret)
[ ${#SECRET} -ge 32 ] || die "no webhook secret generated"

step "2. Configure: the config (the test's deployments) and the policy (the test's site and ACME server)"
cat >"$CONF" <<'TOML'
# The systemd suite's config (scripts/systemd-suite/inside.sh): deploy/config.example.toml with
# the test's deployments; the remote is a local bare repository instead of GitHub.
listen = "127.0.0.1:3400"
state_dir = "/var/lib/durhack-deployer"
helper_socket = "/run/durhack-privhelper/privhelper.sock"
public_url = "https://deploy.example.local"
# Each step sends its own push and counts its runs; a start-up reconcile would deploy every
# branch head at once (and the self-update deployment would restart the service mid-step).
# Reconciliation has its own tests (deployer/tests/robust_reconcile.rs).
reconcile_interval = "0"

[github]
webhook_secret_file = "/etc/durhack-deployer/webhook-secret"
# The test's pushes come from the container's own loopback, through nginx.
allowed_networks = ["127.0.0.0/8", "::1/128"]
trusted_proxy_hops = 1

[deployments.app]
repository = "durhack-test/app"
branch = "main"
remote = "/srv/git/app.git"
path = "/var/www/app"
commands = [
    ["sh", "-c", "mkdir -p public && cp index.html public/index.html"],
    ["sh", "-c", "echo \"restarted with $(cat public/index.html)\" >> \"$HOME/app-restarts\""],
]
sites = { app = "nginx/app.conf" }

# Blocks on its first run, so the suite can restart the deployer in the middle of it.
[deployments.slow]
repository = "durhack-test/app"
branch = "slow"
remote = "/srv/git/app.git"
path = "/var/www/slow"
commands = [
    ["sh", "-c", "f=$HOME/slow-runs; n=$(($(cat $f 2>/dev/null || echo 0) + 1)); echo $n > $f; if [ $n = 1 ]; then touch $HOME/slow-started; exec sleep 600; fi"],
]

# The hostile build (step 5c), in the build sandbox as every deployment is by default.
[deployments.hostile]
repository = "durhack-test/app"
branch = "hostile"
remote = "/srv/git/app.git"
path = "/var/www/hostile"
commands = [["sh", "hostile.sh"]]

# A deployment of the deployer itself: its last command asks for a restart.
[deployments.self]
repository = "durhack-test/app"
branch = "self"
remote = "/srv/git/app.git"
path = "/var/www/self"
self_update = true
commands = [["sh", "-c", "touch \"$DEPLOY_RESTART_FILE\""]]
TOML
# The remote belongs to the service user (git refuses a local repository owned by another
# user); the test's own git commands, as root, pass safe.directory.
chown -R durhack-deployer: /srv/git
# The policy: the test's one site; certbot pointed at pebble and trusting its API certificate.
sed -i -e 's|^allowed_roots = .*|allowed_roots = ["/var/www/app"]|' \
    -e 's|^\(    "--webroot", "-w", "/var/www/letsencrypt",\)$|\1\n    "--server", "https://127.0.0.1:14000/dir",|' \
    -e "s|^env = { PATH = \"/usr/sbin:/usr/bin:/sbin:/bin\" }\$|env = { PATH = \"/usr/sbin:/usr/bin:/sbin:/bin\", REQUESTS_CA_BUNDLE = \"$T/pebble/ca.pem\" }|" \
    -e '/^\[sites\./,$d' "$POLICY"
printf '[sites.app]\ndomains = ["app.example.local"]\n' >>"$POLICY"
grep -q -- '--server' "$POLICY" && grep -q REQUESTS_CA_BUNDLE "$POLICY" || die "the policy edit did not apply"
echo "  (docs: run the installer again after adding deployments: it creates their paths)"
"$src/deploy/install.sh" --bin-dir "$bins" | grep -E 'created deployment path|config checks out|warning' | sed 's/^/  | /'
for p in /var/www/app /var/www/slow /var/www/self /var/www/hostile; do
    [ "$(stat -c %U "$p")" = durhack-deployer ] || die "$p was not created for the service user"
done
runuser -u durhack-deployer -- durhack-deployer check --config "$CONF" | sed 's/^/  | /'
durhack-privhelper check --policy "$POLICY" >"$T/policy-check.txt" || die "durhack-privhelper check: $(cat "$T/policy-check.txt")"
ok "durhack-privhelper check accepts the policy"
durhack-privhelper check-site --policy "$POLICY" app "$T/work/nginx/app.conf" >"$T/check-site.txt" ||
    die "check-site refused the site conf: $(cat "$T/check-site.txt")"
ok "check-site accepts nginx/app.conf"

step "2b. nginx: the ACME snippet and webroot, a default_server for 443, the site in front of the deployer"
cat >/etc/nginx/snippets/acme-challenge.conf <<'NGINX'
location ^~ /.well-known/acme-challenge/ {
    root /var/www/letsencrypt;
    default_type text/plain;
}
NGINX
cat >/etc/nginx/conf.d/default-ssl.conf <<'NGINX'
server {
    listen 443 ssl default_server;
    listen [::]:443 ssl default_server;
    ssl_reject_handshake on;
}
NGINX
cat >/etc/nginx/conf.d/deploy.example.local.conf <<'NGINX'
server {
    listen 80;
    listen [::]:80;
    server_name deploy.example.local;
    include /etc/nginx/snippets/acme-challenge.conf;
}
NGINX
systemctl restart nginx
systemctl is-active nginx >/dev/null || die "nginx is not running"
t0=$(now)
certbot certonly --non-interactive --agree-tos --register-unsafely-without-email "${ACME[@]}" \
    --webroot -w /var/www/letsencrypt -d deploy.example.local >"$T/certbot-deploy.log" 2>&1 ||
    die "certbot for deploy.example.local: $(tail -n 20 "$T/certbot-deploy.log")"
echo "  certbot for deploy.example.local: $(since "$t0")"
cat >/etc/nginx/conf.d/deploy.example.local.conf <<'NGINX'
server {
    listen 80;
    listen [::]:80;
    server_name deploy.example.local;
    include /etc/nginx/snippets/acme-challenge.conf;
}

server {
    listen 443 ssl;
    listen [::]:443 ssl;
    server_name deploy.example.local;
    ssl_certificate     /etc/letsencrypt/live/deploy.example.local/fullchain.pem;
    ssl_certificate_key /etc/letsencrypt/live/deploy.example.local/privkey.pem;

    location = /github-webhook {
        proxy_pass http://127.0.0.1:3400;
        proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
        client_max_body_size 25m;   # GitHub's payload limit
    }
}
NGINX
nginx -t -q && systemctl reload nginx
ok "nginx serves deploy.example.local on 443 with pebble's certificate"

step "3. Start (docs/install.md: systemctl start durhack-privhelper.socket durhack-deployer.service)"
[ "$(systemctl show -p Type --value durhack-deployer)" = notify ] || die "the deployer's unit is not Type=notify"
t0=$(now)
systemctl start durhack-privhelper.socket durhack-deployer.service
echo "  systemctl start returned after $(since "$t0")"
# Type=notify: by the time `systemctl start` returns the daemon has said READY=1, so the endpoint
# answers at once (no waiting here; a connection refused fails the suite).
code=$(curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:3400/github-webhook || true)
state=$(systemctl show -p ActiveState,SubState --value durhack-deployer | tr '\n' ' ')
echo "  right after start: $state; GET /github-webhook -> $code"
[ "$state" = "active running " ] || die "the deployer is not active/running when systemctl start returns"
[ "$code" != 000 ] || die "the endpoint did not answer when systemctl start returned"
helper=$(systemctl is-active durhack-privhelper.service || true)
echo "  durhack-privhelper.service before any use: $helper"
[ "$helper" = inactive ] || die "the helper runs before anyone connected (it should be socket-activated)"
stat -c '  socket %n %U:%G %a' /run/durhack-privhelper/privhelper.sock

step "3b. the helper refuses every peer but the service user (root, a member of its group, anyone else)"
cat >"$T/peer.py" <<'PY'
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.settimeout(20)
try:
    s.connect(sys.argv[1])
except OSError as e:
    print("connect refused:", e.strerror); sys.exit(0)
s.shutdown(socket.SHUT_WR)
data = b""
while True:
    chunk = s.recv(4096)
    if not chunk: break
    data += chunk
print("answer:", "PeerRefused frame" if data.startswith(b"DHPH") and b"not the policy's client user" in data else repr(data[:80]))
PY
chmod 0644 "$T/peer.py"
useradd --system --no-create-home --shell /usr/sbin/nologin -G durhack-deployer dd-intruder
out=$("$PY" "$T/peer.py" /run/durhack-privhelper/privhelper.sock)
echo "  root: $out"
[ "$out" = "answer: PeerRefused frame" ] || die "root was not refused by the helper: $out"
[ "$(systemctl is-active durhack-privhelper.service)" = active ] || die "the first connection did not start the helper"
ok "the first connection started durhack-privhelper.service (socket activation)"
out=$(runuser -u dd-intruder -- "$PY" "$T/peer.py" /run/durhack-privhelper/privhelper.sock)
echo "  dd-intruder (in group durhack-deployer): $out"
[ "$out" = "answer: PeerRefused frame" ] || die "a member of the group was not refused: $out"
out=$(runuser -u nobody -- "$PY" "$T/peer.py" /run/durhack-privhelper/privhelper.sock)
echo "  nobody: $out"
case "$out" in "connect refused:"*) ;; *) die "nobody could connect to the socket: $out" ;; esac

step "4. a signed push through nginx (https://deploy.example.local/github-webhook): checkout, build, restart, site, reload, certificate"
sha1=$(g rev-parse main)
t0=$(now)
push app "$sha1" | sed 's/^/  | /'
wait_for "the app run for ${sha1:0:12}" 300 run_done app "$sha1"
expect_success app
echo "  push to finished deploy (with certbot): $(since "$t0")"
[ "$(cat /var/www/app/public/index.html)" = "app v1" ] || die "the build output is not the pushed commit's"
grep -q "restarted with app v1" /var/lib/durhack-deployer/homes/app/app-restarts || die "the restart command did not run"
ok "checked out, built, restart command ran"
[ -f /etc/nginx/conf.d/app.conf ] || die "the helper did not write /etc/nginx/conf.d/app.conf"
stat -c '  %n %U:%G %a' /etc/nginx/conf.d/app.conf
grep -q disable_symlinks /etc/nginx/conf.d/app.conf || die "app.conf is not the helper's rendering"
body=$(curl -fsS http://app.example.local/) || die "nginx does not serve app.example.local on 80"
[ "$body" = "app v1" ] || die "nginx answered $body for app.example.local"
ok "nginx reloaded: app.example.local answers on 80 with the build"
cert=/etc/letsencrypt/live/app/cert.pem
[ -f "$cert" ] || die "no certificate in /etc/letsencrypt/live/app"
openssl x509 -in "$cert" -noout -subject -issuer -ext subjectAltName | sed 's/^/  | /'
openssl x509 -in "$cert" -noout -ext subjectAltName | grep -q 'DNS:app.example.local' || die "the certificate is not for app.example.local"
openssl x509 -in "$cert" -noout -issuer | grep -qi pebble || die "the certificate was not issued by pebble"

step "4b. the site's conf now serves 443 with that certificate (a second push)"
cat >>"$T/work/nginx/app.conf" <<'NGINX'

server {
    listen 443 ssl;
    listen [::]:443 ssl;
    server_name app.example.local;
    ssl_certificate     /etc/letsencrypt/live/app/fullchain.pem;
    ssl_certificate_key /etc/letsencrypt/live/app/privkey.pem;
    root /var/www/app/public;
}
NGINX
echo "app v2" >"$T/work/index.html"
durhack-privhelper check-site --policy "$POLICY" app "$T/work/nginx/app.conf" >"$T/check-site.txt" ||
    die "check-site refused the 443 conf: $(cat "$T/check-site.txt")"
g commit -qam "app v2 (443 with the issued certificate)"
chown -R root: /srv/git # git pushes only into a repository of its own user
g push -q /srv/git/app.git main
chown -R durhack-deployer: /srv/git
sha2=$(g rev-parse main)
t0=$(now)
push app "$sha2" | sed 's/^/  | /'
wait_for "the app run for ${sha2:0:12}" 300 run_done app "$sha2"
expect_success app
echo "  push to finished deploy: $(since "$t0")"
body=$(curl -fsS --cacert "$T/pebble/roots.pem" https://app.example.local/) || die "app.example.local does not answer on 443 with a certificate pebble's root verifies"
[ "$body" = "app v2" ] || die "https://app.example.local/ answered $body"
served=$(openssl s_client -connect 127.0.0.1:443 -servername app.example.local </dev/null 2>/dev/null | openssl x509 -noout -fingerprint -sha256)
issued=$(openssl x509 -in "$cert" -noout -fingerprint -sha256)
[ "$served" = "$issued" ] || die "443 serves another certificate ($served) than the one certbot issued ($issued)"
ok "https://app.example.local/ answers with the certificate certbot issued against pebble"

step "5. systemctl restart in the middle of a deploy: the run is redone"
shaS=$(g rev-parse slow)
push slow "$shaS" >/dev/null
wait_for "the slow deploy to be running" 120 test -e /var/lib/durhack-deployer/homes/slow/slow-started
pid_before=$(systemctl show -p MainPID --value durhack-deployer)
t0=$(now)
systemctl restart durhack-deployer
echo "  systemctl restart (grace period for the running deploy, then killed): $(since "$t0")"
pid_after=$(systemctl show -p MainPID --value durhack-deployer)
[ "$pid_after" != "$pid_before" ] && [ "$pid_after" != 0 ] || die "the deployer did not restart ($pid_before -> $pid_after)"
# Closing the interrupted run as cancelled comes first, so wait for the redone run's success.
redone() {
    [ "$(cat /var/lib/durhack-deployer/homes/slow/slow-runs)" = 2 ] && [ "$(last_run slow | cut -d' ' -f2,3)" = "success $shaS" ]
}
wait_for "the slow run to be redone" 180 redone
expect_success slow
[ "$(cat /var/lib/durhack-deployer/homes/slow/slow-runs)" = 2 ] || die "the slow deployment ran $(cat /var/lib/durhack-deployer/homes/slow/slow-runs) times, not 2"
ls /var/log/durhack-deployer/slow/ | sed 's/^/  | run log /'
[ "$(ls /var/log/durhack-deployer/slow/ | wc -l)" = 2 ] || die "expected two run logs for slow (interrupted, redone)"
ok "interrupted by the restart, redone after it, and succeeded"

step "5b. self-update: a deploy that touches \$DEPLOY_RESTART_FILE; the daemon exits 75 and systemd restarts it"
restarts_before=$(systemctl show -p NRestarts --value durhack-deployer)
pid_before=$(systemctl show -p MainPID --value durhack-deployer)
shaU=$(g rev-parse self)
push self "$shaU" >/dev/null
restarted() {
    [ "$(systemctl show -p NRestarts --value durhack-deployer)" -gt "$restarts_before" ] &&
        [ "$(systemctl is-active durhack-deployer)" = active ]
}
wait_for "systemd to restart the deployer" 120 restarted
expect_success self
pid_after=$(systemctl show -p MainPID --value durhack-deployer)
echo "  NRestarts $restarts_before -> $(systemctl show -p NRestarts --value durhack-deployer); MainPID $pid_before -> $pid_after"
# Through a file: `journalctl | grep -q` under pipefail fails when grep's early exit SIGPIPEs
# journalctl.
journalctl -u durhack-deployer --no-pager -o cat >"$T/journal-deployer.txt"
grep -E 'status=75|Scheduled restart' "$T/journal-deployer.txt" | tail -n 2 | sed 's/^/  | /'
grep -q 'status=75' "$T/journal-deployer.txt" || die "the journal shows no exit status 75"
ok "exit 75, restarted by Restart=on-failure"

step "5c. a hostile build under the installed unit: the sandbox hides the machinery"
journalctl -u durhack-deployer --no-pager -o cat >"$T/journal-deployer.txt"
grep -q "hostile: commands run in the sandbox" "$T/journal-deployer.txt" || die "the daemon does not say the hostile deployment is sandboxed"
shaH=$(g rev-parse hostile)
push hostile "$shaH" >/dev/null
wait_for "the hostile run" 120 run_done hostile "$shaH"
expect_success hostile
sed 's/^/  | /' /var/www/hostile/results.txt
tail -n 1 /var/www/hostile/results.txt | grep -qx DONE || die "the hostile script did not run to its end"
grep -qx "python3 ok" /var/www/hostile/results.txt || die "no python3 in the sandbox: the socket attempt proves nothing"
[ "$(grep -c ' blocked$' /var/www/hostile/results.txt)" = 13 ] || die "not every attempt was blocked (13 expected)"
! grep -q ESCAPED /var/www/hostile/results.txt || die "an attempt escaped the sandbox"
[ ! -e /var/www/app/hostile.txt ] && [ ! -e /var/lib/durhack-deployer/queues/deploy-app/.hostile ] || die "a file was written from the sandbox"
grep -qx hostile-home /var/lib/durhack-deployer/homes/hostile/hostile-home.txt || die "the build could not write its home"
ok "all 13 attempts blocked; the build wrote its tree and its home"

step "6. journalctl -u durhack-deployer -u durhack-privhelper: errors and secrets"
journalctl -u durhack-deployer -u durhack-privhelper --no-pager -o short-iso >"$T/journal.txt"
echo "  $(wc -l <"$T/journal.txt") journal lines"
if grep -qF "$SECRET" "$T/journal.txt" || grep -qF "${SECRET:0:16}" "$T/journal.txt"; then
    die "the webhook secret appears in the journal"
fi
ok "the webhook secret appears nowhere in the journal"
journalctl -u durhack-deployer -u durhack-privhelper --no-pager -o cat -p err >"$T/journal-errors.txt" || true
# The deployer writes its tracing lines to stderr, all at the journal's default priority, so
# its errors are found by their level too.
grep -E '^[^ ]+ [^ ]+ durhack-deployer\[[0-9]+\]: [^ ]+ +ERROR ' "$T/journal.txt" >>"$T/journal-errors.txt" || true
echo "  lines at priority err or worse, or the deployer's ERROR lines:"
sed 's/^/  | /' "$T/journal-errors.txt"
echo "  the deployer's WARN lines (for the record):"
grep -E 'durhack-deployer\[[0-9]+\]: [^ ]+ +WARN ' "$T/journal.txt" | sed 's/^[^ ]* [^ ]* /  | /' || true
# The refused peers of step 3b are logged at info; anything here is a finding.
unexpected=$(cat "$T/journal-errors.txt")
[ -z "$unexpected" ] || die "unexpected errors in the journal:
$unexpected"
ok "no unexpected errors"

step "6b. the operator's root commands (status, send-test-push) left nothing root-owned in the service's directories"
foreign=$(find /var/lib/durhack-deployer /var/log/durhack-deployer ! -user durhack-deployer -printf '%p %u\n')
[ -z "$foreign" ] || die "files the service user does not own:
$foreign"
ok "everything under /var/lib/durhack-deployer and /var/log/durhack-deployer is durhack-deployer's"

step "7. systemd-analyze security (online, in the container)"
for u in durhack-deployer.service durhack-privhelper.service; do
    systemd-analyze security --no-pager "$u" >"$T/security-$u.txt" 2>&1 || true
    score=$(sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p' "$T/security-$u.txt")
    [ -n "$score" ] || die "no exposure level for $u: $(cat "$T/security-$u.txt")"
    echo "EXPOSURE (online) $u: $score $(sed -n 's/.*Overall exposure level for [^:]*: [0-9.]* \(.*\)$/\1/p' "$T/security-$u.txt")"
done

echo
echo "SYSTEMD SUITE PASSED in $(since "$suite_start") (inside the container)"
