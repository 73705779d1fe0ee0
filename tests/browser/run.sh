#!/usr/bin/env bash
# Swagger UI in a real browser (headless Debian Chromium driven by playwright-core).
#
#   tests/browser/run.sh                        build and start the service, check, stop it
#   tests/browser/run.sh http://127.0.0.1:8080  check a service that is already running
#
# Installs what it needs when missing: Debian's chromium (apt-get, as root) and the pinned
# playwright-core (npm ci from package-lock.json; it downloads no browser). The screenshot goes
# to artifacts/swagger-ui.png at the repository root (git-ignored).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
export CHROMIUM="${CHROMIUM:-/usr/bin/chromium}"
export ARTIFACTS_DIR="${ARTIFACTS_DIR:-$root/artifacts}"

log() { printf '[browser] %s\n' "$*"; }

if [ ! -x "$CHROMIUM" ]; then
  log "installing Debian's chromium"
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || { log "chromium is missing and this is not root: apt-get install chromium"; exit 1; }
    sudo="sudo"
  fi
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium >/dev/null
fi

if [ ! -d "$here/node_modules/playwright-core" ]; then
  log "npm ci (playwright-core, pinned by package-lock.json)"
  (cd "$here" && npm ci --no-audit --no-fund --loglevel=error)
fi

base_url="${1:-${BASE_URL:-}}"
service_pid=""
workdir=""
cleanup() {
  if [ -n "$service_pid" ] && kill -0 "$service_pid" 2>/dev/null; then
    kill -TERM "$service_pid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$service_pid" 2>/dev/null || break; sleep 0.2; done
    kill -KILL "$service_pid" 2>/dev/null || true
  fi
  if [ -n "$workdir" ]; then rm -rf "$workdir"; fi
}
trap cleanup EXIT

if [ -z "$base_url" ]; then
  log "cargo build"
  (cd "$root" && cargo build --quiet --bin ingress-egress)
  binary="${CARGO_TARGET_DIR:-$root/target}/debug/ingress-egress"
  port="$(node -e 'const s=require("net").createServer();s.listen(0,"127.0.0.1",()=>{console.log(s.address().port);s.close()})')"
  workdir="$(mktemp -d)"
  base_url="http://127.0.0.1:$port"
  log "starting $binary on $base_url"
  # Development mode with the embedded bus: the check needs no broker and no Twilio account.
  # A sender and credentials make the operator send acceptable; nothing listens where the
  # REST calls would go. Started in the empty work directory, so no .env is read.
  (cd "$workdir" && exec env -u AMQP_URL -u DEBUG_TOKEN -u OPERATOR_TOKEN -u RUST_LOG \
    APP_ENV=development PORT="$port" OUTBOX_DIR="$workdir/outbox" \
    LOG_FORMAT=json LOG_LEVEL=warn \
    TWILIO_ACCOUNT_SID=AC00000000000000000000000000000001 \
    TWILIO_AUTH_TOKEN=browser-check-auth-token TWILIO_PHONE_NUMBER=+15005550001 \
    TWILIO_API_BASE_URL=http://127.0.0.1:9 TWILIO_CONVERSATIONS_BASE_URL=http://127.0.0.1:9 \
    "$binary" serve) >"$workdir/service.log" 2>&1 &
  service_pid=$!

  ready=""
  for _ in $(seq 1 150); do
    if ! kill -0 "$service_pid" 2>/dev/null; then
      log "the service exited early:"; cat "$workdir/service.log"; exit 1
    fi
    if node -e 'fetch(process.argv[1]).then(r=>process.exit(r.status===200?0:1),()=>process.exit(1))' \
      "$base_url/healthz"; then
      ready=1; break
    fi
    sleep 0.2
  done
  [ -n "$ready" ] || { log "no 200 from $base_url/healthz within 30 s"; cat "$workdir/service.log"; exit 1; }
  log "service is up"
  # Our own development service without tokens: also try the operator send.
  export SWAGGER_OPERATOR_SEND=1
fi

status=0
(cd "$here" && node swagger.mjs "$base_url") || status=$?
if [ "$status" -ne 0 ] && [ -n "$workdir" ]; then
  log "service log:"; tail -n 50 "$workdir/service.log" || true
fi
exit "$status"
