#!/usr/bin/env bash
# Reload under load: remora's config file is rewritten every INTERVAL seconds (0.1) for
# DURATION seconds (60) while HTTP/1.1 (wrk), h2c (h2load) and unary gRPC (h2load) calls
# run through it. Each rewrite changes a route's request header, a retry policy and a
# split's weights, so every reload builds new stacks; the file is replaced by a rename,
# as an editor or a ConfigMap does. Prints the calls made and failed per protocol, the
# reloads applied and refused (remora_config_reloads_total), and the sidecar's RSS and
# open descriptors at the start, every 10 s and at the end. A long run, not a test.
#
# Usage: bash scripts/reload-soak.sh   (DURATION, INTERVAL, BASE_PORT (28780))
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/common.sh
. bench/common.sh

DURATION=${DURATION:-60}
INTERVAL=${INTERVAL:-0.1}
BASE_PORT=${BASE_PORT:-28780}
UPSTREAM=$BASE_PORT
PORT=$((BASE_PORT + 1))
ADMIN=$((BASE_PORT + 2))

install_missing wrk=wrk h2load=nghttp2-client curl=curl protoc=protobuf-compiler
cargo build --release --locked --bin remora --example bench_upstream >&2
BIN=${CARGO_TARGET_DIR:-target}/release
with_work_dir

"$BIN/examples/bench_upstream" serve "$UPSTREAM" >"$WORK/upstream.log" 2>&1 &
pids+=($!)

# The config of generation $1: what changes from one to the next is what a reload
# rebuilds (routes, a split's weights, a retry policy).
write_config() {
    local generation=$1 attempts=$((2 + $1 % 2)) weight=$((1 + $1 % 9))
    cat >"$WORK/next.yaml" <<EOF
service: soak
admin: { listen: "127.0.0.1:$ADMIN" }
log: { level: warn }
tracing: { access_log: false }
policies:
  retries:
    safe: { attempts: $attempts, retry_on: [connect_failure] }
services:
  upstream:
    listen: "127.0.0.1:$PORT"
    protocol: auto
    endpoints: ["127.0.0.1:$UPSTREAM"]
    retry: safe
    routes:
      - name: generation
        match: { path_prefix: / }
        backends: { upstream: $weight, twin: $((10 - weight)) }
        request_headers: { set: { x-generation: "$generation" } }
  twin:
    protocol: auto
    endpoints: ["127.0.0.1:$UPSTREAM"]
EOF
    mv "$WORK/next.yaml" "$WORK/remora.yaml"
}

write_config 0
"$BIN/remora" run --config "$WORK/remora.yaml" >"$WORK/remora.log" 2>&1 &
remora=$!
pids+=("$remora")
for _ in $(seq 1 100); do
    curl -s -o /dev/null "http://127.0.0.1:$PORT/" && break
    sleep 0.1
done
printf '\x00\x00\x00\x00\x07\x0a\x05hello' >"$WORK/echo-request.bin"

sample() {
    local rss fds
    rss=$(awk '/^VmRSS/ {print $2}' "/proc/$remora/status")
    fds=$(find "/proc/$remora/fd" -mindepth 1 -maxdepth 1 | wc -l)
    echo "$1 rss_kib=$rss fds=$fds"
}
metric() {
    curl -s "http://127.0.0.1:$ADMIN/metrics" | awk -v series="$1" '$1 == series {print $2}'
}

sample start | tee "$WORK/samples"
wrk -t1 -c16 -d"${DURATION}s" "http://127.0.0.1:$PORT/" >"$WORK/wrk.out" 2>&1 &
loads=($!)
h2load -t1 -c4 -m10 -D "$DURATION" "http://127.0.0.1:$PORT/" >"$WORK/h2c.out" 2>&1 &
loads+=($!)
h2load -t1 -c4 -m10 -D "$DURATION" -d "$WORK/echo-request.bin" \
    -H 'content-type: application/grpc' -H 'te: trailers' \
    "http://127.0.0.1:$PORT/remora.echo.v1.Echo/Unary" >"$WORK/grpc.out" 2>&1 &
loads+=($!)

generation=0
started=$(date +%s)
next_sample=$((started + 10))
while [ $(($(date +%s) - started)) -lt "$DURATION" ]; do
    generation=$((generation + 1))
    write_config "$generation"
    sleep "$INTERVAL"
    if [ "$(date +%s)" -ge "$next_sample" ]; then
        sample "t=$(($(date +%s) - started))s" | tee -a "$WORK/samples"
        next_sample=$((next_sample + 10))
    fi
done
wait "${loads[@]}" || true
sleep 1
sample end | tee -a "$WORK/samples"

wrk_total=$(awk '/requests in/ {print $1}' "$WORK/wrk.out")
wrk_errors=$(awk '/Socket errors/ {n = 0; for (i = 1; i <= NF; i++) if ($i ~ /^[0-9]+,?$/) n += $i; print n}' "$WORK/wrk.out")
wrk_non2xx=$(awk '/Non-2xx/ {print $NF}' "$WORK/wrk.out")
h2() { awk '/^requests:/ {gsub(",", ""); print $2, $10 + $12}' "$1"; } # total, failed + errored
read -r h2c_total h2c_failed <<<"$(h2 "$WORK/h2c.out")"
read -r grpc_total grpc_failed <<<"$(h2 "$WORK/grpc.out")"
non2xx() { awk '/^status codes:/ {gsub(",", ""); print $5 + $7 + $9}' "$1"; }
h2c_non2xx=$(non2xx "$WORK/h2c.out")
grpc_non2xx=$(non2xx "$WORK/grpc.out")

echo
echo "reload soak: ${DURATION}s, a new config every ${INTERVAL}s ($generation written)"
echo "| load | calls | failed (errors + non-2xx) |"
echo "| --- | ---: | ---: |"
echo "| HTTP/1.1 (wrk) | ${wrk_total:-0} | $((${wrk_errors:-0} + ${wrk_non2xx:-0})) |"
echo "| h2c (h2load) | ${h2c_total:-0} | $((${h2c_failed:-0} + ${h2c_non2xx:-0})) |"
echo "| gRPC unary (h2load) | ${grpc_total:-0} | $((${grpc_failed:-0} + ${grpc_non2xx:-0})) |"
echo
echo "reloads applied: $(metric 'remora_config_reloads_total{result="ok"}'), refused: $(metric 'remora_config_reloads_total{result="failed"}')"
echo "sidecar over the run:"
cat "$WORK/samples"
