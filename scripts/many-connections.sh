#!/usr/bin/env bash
# Many concurrent keep-alive connections against a connection cap: a sidecar (release
# build) with `limits.max_connections: COUNT` on a service port; `bench_upstream crowd`
# opens COUNT + EXTRA HTTP/1.1 connections at once, each sending one request, then keeps
# the answered ones idle. Prints the connections answered and refused (closed at accept,
# before any answer), the sidecar's count of them (remora_connections_open,
# remora_connections_rejected_total), and its RSS idle, with every connection open and
# once they closed, with the RSS each connection costs. A measurement, not a test.
#
# Usage: bash scripts/many-connections.sh   (COUNT (10000), EXTRA (500), BASE_PORT (28880))
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/common.sh
. bench/common.sh

COUNT=${COUNT:-10000}
EXTRA=${EXTRA:-500}
BASE_PORT=${BASE_PORT:-28880}
UPSTREAM=$BASE_PORT
PORT=$((BASE_PORT + 1))
ADMIN=$((BASE_PORT + 2))

die() {
    echo "many-connections: $*" >&2
    exit 1
}

# Every connection is a descriptor in the client and one in the sidecar (plus its
# upstream connections): both need more than the usual 1024.
needed=$((COUNT + EXTRA + 1024))
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
[ "$(ulimit -n)" = unlimited ] || [ "$(ulimit -n)" -ge "$needed" ] ||
    die "open files limit $(ulimit -n) (hard $(ulimit -Hn)) is below the $needed needed"

install_missing curl=curl
cargo build --release --locked --bin remora --example bench_upstream >&2
BIN=${CARGO_TARGET_DIR:-target}/release
with_work_dir

"$BIN/examples/bench_upstream" serve "$UPSTREAM" >"$WORK/upstream.log" 2>&1 &
pids+=($!)

# header_read_timeout also bounds how long an idle keep-alive connection is kept: long
# enough for the whole run.
cat >"$WORK/remora.yaml" <<EOF
service: crowd
admin: { listen: "127.0.0.1:$ADMIN" }
log: { level: warn }
tracing: { access_log: false }
limits: { max_connections: $COUNT, header_read_timeout: 600s }
services:
  upstream:
    listen: "127.0.0.1:$PORT"
    protocol: http1
    endpoints: ["127.0.0.1:$UPSTREAM"]
EOF
"$BIN/remora" run --config "$WORK/remora.yaml" >"$WORK/remora.log" 2>&1 &
remora=$!
pids+=("$remora")
for _ in $(seq 1 100); do
    curl -s -o /dev/null "http://127.0.0.1:$PORT/" && break
    sleep 0.1
done
curl -sf -o /dev/null "http://127.0.0.1:$PORT/" || die "remora did not start: $(tail -n 5 "$WORK/remora.log")"

rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$remora/status"; }
fds() { find "/proc/$remora/fd" -mindepth 1 -maxdepth 1 | wc -l; }
metric() {
    curl -s "http://127.0.0.1:$ADMIN/metrics" | awk -v series="$1" '$1 == series {print $2}'
}
listener='listener="service:upstream"'

# A few calls first, so that the idle figure includes the pools and buffers one call
# brings up.
for _ in 1 2 3; do curl -s -o /dev/null "http://127.0.0.1:$PORT/"; done
sleep 1
idle_rss=$(rss_kib)
idle_fds=$(fds)

"$BIN/examples/bench_upstream" crowd "127.0.0.1:$PORT" $((COUNT + EXTRA)) 600 >"$WORK/crowd.out" 2>"$WORK/crowd.err" &
crowd=$!
pids+=("$crowd")
started=$(date +%s.%N)
for _ in $(seq 1 3000); do
    grep -qs '^ready' "$WORK/crowd.out" && break
    kill -0 "$crowd" 2>/dev/null || break
    sleep 0.1
done
grep -qs '^ready' "$WORK/crowd.out" || die "the crowd did not finish: $(cat "$WORK/crowd.err")"
opened=$(awk -v t0="$started" -v t1="$(date +%s.%N)" 'BEGIN {printf "%.1f", t1 - t0}')
sleep 2
held_rss=$(rss_kib)
held_fds=$(fds)
open_metric=$(metric "remora_connections_open{$listener}")
rejected_metric=$(metric "remora_connections_rejected_total{$listener}")
read -r answered refused other failed <<<"$(awk -F'[= ]' '/^answered=/ {print $2, $4, $6, $8}' "$WORK/crowd.out")"

kill "$crowd" 2>/dev/null || true
wait "$crowd" 2>/dev/null || true
for _ in $(seq 1 300); do
    [ "$(metric "remora_connections_open{$listener}")" = 0 ] && break
    sleep 0.1
done
sleep 1
after_rss=$(rss_kib)
after_fds=$(fds)

per_conn=$(awk -v a="$idle_rss" -v b="$held_rss" -v n="$answered" 'BEGIN {printf "%.1f", n ? (b - a) / n : 0}')
echo
echo "many connections: cap $COUNT, $((COUNT + EXTRA)) keep-alive HTTP/1.1 connections opened at once (${opened}s), one request each, then idle"
echo "| measure | value |"
echo "| --- | ---: |"
echo "| connections answered 200 (client) | $answered |"
echo "| refused: closed at accept, no answer (client) | $refused |"
echo "| answered another status / failed otherwise (client) | $other / $failed |"
echo "| remora_connections_open while held | $open_metric |"
echo "| remora_connections_rejected_total | $rejected_metric |"
echo "| sidecar RSS idle (after 3 calls) | $idle_rss KiB |"
echo "| sidecar RSS with the connections open | $held_rss KiB |"
echo "| RSS per open connection | $per_conn KiB |"
echo "| sidecar RSS once they closed | $after_rss KiB |"
echo "| sidecar descriptors idle / held / after (pooled upstream connections included) | $idle_fds / $held_fds / $after_fds |"
if [ -s "$WORK/crowd.err" ]; then
    echo
    echo "client: $(head -n 3 "$WORK/crowd.err")"
fi
