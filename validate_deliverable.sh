#!/usr/bin/env bash
# Checks the whole deliverable: build, format, lint, tests against RabbitMQ, Swagger UI in a real
# browser, and a smoke run of the release binary that receives a signed SMS and publishes it
# (in a temporary RabbitMQ vhost, deleted afterwards, when rabbitmqctl is at hand).
set -euo pipefail
cd "$(dirname "$0")"

step() { printf '\n==> %s\n' "$*"; }
AMQP_URL="${AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}"

step "build"
cargo build --locked --all-targets
cargo build --locked --release

step "format"
cargo fmt --all -- --check

step "lint"
cargo clippy --locked --all-targets -- -D warnings
cargo clippy --locked --all-targets --features websocket -- -D warnings

step "tests (RabbitMQ and Redis required)"
REQUIRE_AMQP=1 REQUIRE_REDIS=1 cargo test --locked

step "AsyncAPI document (AsyncAPI parser)"
bash tests/asyncapi/run.sh

step "alerting rules (promtool)"
promtool check rules deploy/prometheus/alerts.yaml
(cd deploy/prometheus && promtool test rules alerts.test.yaml)

step "WebSocket transport: emulator proven against Twilio's SDK, then our client and service"
bash tests/twilio-emulator/run.sh
REQUIRE_AMQP=1 cargo test --locked --features websocket --lib --test websocket

step "Swagger UI in headless Chromium"
bash tests/browser/run.sh

step "smoke run: signed SMS -> RabbitMQ"
workdir=$(mktemp -d)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
vhost=""
if command -v rabbitmqctl >/dev/null 2>&1 && [ "$AMQP_URL" = "amqp://guest:guest@127.0.0.1:5672/%2f" ]; then
  # A vhost of its own, deleted afterwards with everything in it: the run leaves nothing behind.
  vhost="ingress-egress-smoke-$$"
  rabbitmqctl -q add_vhost "$vhost"
  rabbitmqctl -q set_permissions -p "$vhost" guest '.*' '.*' '.*'
  AMQP_URL="amqp://guest:guest@127.0.0.1:5672/$vhost"
else
  echo "(no local rabbitmqctl: exchange smoke-$$ and queue smoke-$$.egress stay on the broker)"
fi
# Where cargo put it: CARGO_TARGET_DIR (absolute, or relative to here) or ./target.
target_dir="${CARGO_TARGET_DIR:-target}"
case "$target_dir" in /*) ;; *) target_dir="$PWD/$target_dir" ;; esac
binary="$target_dir/release/ingress-egress"
service=""
cleanup() {
  if [ -n "$service" ]; then kill "$service" 2>/dev/null || true; fi
  rm -rf "$workdir"
  if [ -n "$vhost" ]; then rabbitmqctl -q delete_vhost "$vhost" || true; fi
}
trap cleanup EXIT
export PORT="$port" AMQP_URL TWILIO_ENABLED=true \
  TWILIO_ACCOUNT_SID=AC00000000000000000000000000000001 \
  TWILIO_AUTH_TOKEN=smoke-test-auth-token \
  TWILIO_PHONE_NUMBER=+15005550006 \
  AMQP_EXCHANGE="smoke-$$" AMQP_EGRESS_QUEUE="smoke-$$.egress" AMQP_EGRESS_QUEUE_TYPE=classic \
  OUTBOX_DIR="$workdir/outbox" LOG_FORMAT=json
# From an empty directory, so a developer's .env cannot change what is checked.
cd "$workdir"
"$binary" >"$workdir/service.log" 2>&1 &
service=$!
for _ in $(seq 1 100); do
  curl -fsS "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && break
  sleep 0.2
done
curl -fsS "http://127.0.0.1:$port/readyz"
echo
"$binary" simulate sms --from +14155550100 --body "smoke test" | tee "$workdir/simulate.out"
grep -q '"type": "chat.message.v1"' "$workdir/simulate.out"
kill -TERM $service
wait $service || true
if grep -q 'smoke-test-auth-token' "$workdir/service.log"; then
  echo "the auth token leaked into the log" >&2
  exit 1
fi
if grep -q '"severity":"ERROR"' "$workdir/service.log"; then
  echo "a healthy run logged an error:" >&2; grep '"severity":"ERROR"' "$workdir/service.log" >&2
  exit 1
fi
grep -q '"message":"stopped"' "$workdir/service.log" || { echo "service did not shut down cleanly" >&2; cat "$workdir/service.log"; exit 1; }
cd - >/dev/null

step "all checks passed"
