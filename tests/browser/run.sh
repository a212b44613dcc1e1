#!/usr/bin/env bash
# Browser test of Strongroom's pages (enroll, sign in, device approval, refusals): Playwright
# (playwright-core) drives Debian's Chromium with the DevTools WebAuthn virtual authenticator
# against a real `strongroom server` on loopback.
#
# Idempotent; works from any directory, in CI (CI=true, no stdin) and as root:
#   - installs Debian's chromium if /usr/bin/chromium is missing (apt-get, non-interactive),
#   - runs `npm ci` if node_modules is missing or older than package-lock.json,
#   - builds the server binary (debug profile; CARGO_TARGET_DIR respected),
#   - runs `node --test` on the suite and exits non-zero on failure.
# Screenshots land in tests/browser/screenshots/ (or $SCREENSHOT_DIR).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
export CHROMIUM="${CHROMIUM:-/usr/bin/chromium}"

log() { printf '[browser-tests] %s\n' "$*" >&2; }

if [ ! -x "$CHROMIUM" ]; then
    if [ "$CHROMIUM" != /usr/bin/chromium ]; then
        log "CHROMIUM=$CHROMIUM is not an executable"; exit 1
    fi
    log "installing Debian's chromium"
    SUDO=""
    if [ "$(id -u)" -ne 0 ]; then SUDO="sudo -n"; fi
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -q </dev/null
    $SUDO apt-get install -y -q chromium fonts-liberation </dev/null
fi

for tool in node npm cargo; do
    command -v "$tool" >/dev/null || { log "$tool is required"; exit 1; }
done

cd "$HERE"
# npm ci when node_modules is missing, or older than the lock file, or lacks playwright-core.
if [ ! -f node_modules/.package-lock.json ] || [ ! -d node_modules/playwright-core ] \
    || [ package-lock.json -nt node_modules/.package-lock.json ]; then
    log "npm ci"
    npm ci --no-audit --no-fund --loglevel=error </dev/null
fi

TARGET_DIR="${CARGO_TARGET_DIR:-$REPO/target}"
case "$TARGET_DIR" in /*) ;; *) TARGET_DIR="$REPO/$TARGET_DIR" ;; esac
if [ -n "${STRONGROOM_BIN:-}" ] && [ -x "${STRONGROOM_BIN}" ]; then
    # scripts/test passes the binary `cargo test --workspace` just built: building it again
    # alone would recompile half the dependency tree with other features.
    log "using $STRONGROOM_BIN"
else
    log "cargo build -p cli --bin strongroom (target dir $TARGET_DIR)"
    (cd "$REPO" && CARGO_TARGET_DIR="$TARGET_DIR" cargo build -p cli --bin strongroom </dev/null)
    export STRONGROOM_BIN="$TARGET_DIR/debug/strongroom"
fi

log "node --test"
start=$(date +%s)
status=0
node --test --test-reporter=spec "$HERE"/*.test.mjs </dev/null || status=$?
log "finished in $(( $(date +%s) - start ))s (exit $status)"
exit "$status"
