#!/usr/bin/env bash
# A burst on a cold pool: failed calls when 640 h2c streams (one connection) or 1,000
# HTTP/1.1 connections (one request each) arrive at once on a freshly started remora
# whose service speaks HTTP/1.1 to the bench upstream. Each burst gets a new remora, so
# its pool holds no connection when the burst lands.
#
# Usage: bash bench/burst.sh   (MAX_CONNECTING=16 by default: upstream.max_connecting_per_endpoint)
set -euo pipefail
cd "$(dirname "$0")/.."

# shellcheck source=bench/common.sh
source bench/common.sh
install_missing h2load=nghttp2-client

cargo build --release --locked --bin remora --example bench_upstream >&2
BIN=${CARGO_TARGET_DIR:-target}/release
with_work_dir

UPSTREAM_PORT=${UPSTREAM_PORT:-28490}
PORT=${PORT:-28491}
ADMIN_PORT=${ADMIN_PORT:-28492}
MAX_CONNECTING=${MAX_CONNECTING:-16}
"$BIN/examples/bench_upstream" serve "$UPSTREAM_PORT" >"$WORK/upstream.log" 2>&1 &
pids+=($!)

cat >"$WORK/remora.yaml" <<YAML
admin: { listen: "127.0.0.1:$ADMIN_PORT" }
log: { level: warn }
tracing: { access_log: false }
upstream: { max_connecting_per_endpoint: $MAX_CONNECTING }
services:
  upstream:
    listen: "127.0.0.1:$PORT"
    protocol: http1
    endpoints: ["127.0.0.1:$UPSTREAM_PORT"]
YAML

# `burst NAME H2LOAD-ARGS...`: a fresh remora, one burst, a table row.
burst() {
    local name=$1
    shift
    "$BIN/remora" run --config "$WORK/remora.yaml" >"$WORK/remora.log" 2>&1 &
    local pid=$!
    for _ in $(seq 1 100); do
        curl -s -o /dev/null "http://127.0.0.1:$ADMIN_PORT/metrics" && break
        sleep 0.1
    done
    h2load "$@" "http://127.0.0.1:$PORT/" >"$WORK/h2load.out" 2>&1 || true
    # Every call that did not get a 2xx failed (5xx, reset, timed out, never sent).
    local total ok queue
    total=$(awk '/^requests:/ {print $2}' "$WORK/h2load.out")
    ok=$(awk '/^status codes:/ {print $3}' "$WORK/h2load.out")
    queue=$(curl -s "http://127.0.0.1:$ADMIN_PORT/metrics" |
        awk '/^remora_upstream_pending_(overflow|timeouts)_total/ {n += $2} END {print n + 0}')
    echo "| $name | $total | $((total - ${ok:-0})) | $queue |"
    kill "$pid"
    wait "$pid" 2>/dev/null || true
}

echo "## burst on a cold pool, $(date -u '+%Y-%m-%d %H:%M UTC'), max_connecting_per_endpoint $MAX_CONNECTING"
echo
echo "| burst | calls | failed (not 2xx) | of them refused or timed out in the queue |"
echo "| --- | ---: | ---: | ---: |"
burst "640 h2c streams, 1 connection" -c1 -m640 -n640
burst "1,000 HTTP/1.1 connections, 1 request each" --h1 -c1000 -n1000
