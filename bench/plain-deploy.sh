#!/usr/bin/env bash
# The baseline for the deploy-overhead benchmark: what a deploy is without the deployer.
#   plain-deploy.sh DIR REMOTE BRANCH SHA          the git commands the deployer's worker runs
#   plain-deploy.sh --minimal DIR REMOTE BRANCH SHA  just fetch + checkout -f + true
# DIR is an existing clone. The full form mirrors deployer/src/worker/git.rs (remote set-url,
# fetch of the branch, checkout --force --detach, reset --hard, clean -ffd) and then runs the
# deployment's one command, `true`; the deployer's own history queries (cat-file, merge-base,
# rev-parse) and ledger writes are what the comparison shows as its overhead.
set -euo pipefail
minimal=0
if [ "${1:-}" = "--minimal" ]; then minimal=1; shift; fi
dir=$1 remote=$2 branch=$3 sha=$4
export GIT_TERMINAL_PROMPT=0 GIT_ASKPASS=true LC_ALL=C
cd "$dir"
if [ "$minimal" = 1 ]; then
    git fetch --quiet origin "+refs/heads/$branch:refs/remotes/origin/$branch"
    git checkout --quiet -f --detach "$sha"
else
    git remote set-url origin "$remote"
    git fetch --force --prune --no-tags origin "+refs/heads/$branch:refs/remotes/origin/$branch"
    git checkout --force --detach "$sha"
    git reset --hard "$sha"
    git clean -ffd
fi
true
