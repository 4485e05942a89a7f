#!/usr/bin/env bash
# Instructions remora executes per request, counted by valgrind's callgrind: a figure
# that does not drift with the machine's load or clock, so a change of 1% shows as 1%
# (the timing runs of overhead.sh need many rounds to see that on a shared machine).
#
# For each variant (as in overhead.sh: plain, policies, traced, only-<policy>) and each
# of HTTP/1.1 GET and unary gRPC: remora under callgrind, 2000 warm-up requests, then
# N requests counted (h2load, 4 connections; gRPC x 4 streams). Prints a table of
# instructions per request and the ratio to plain. User-space instructions only: the
# kernel's share of a request (sockets, epoll) is the same for every variant and is
# not in these figures, so a ratio here overstates what the variant costs in time.
#
# Traced variants export to a local OTLP sink (examples/otlp_sink.rs, a process of its
# own, so not counted): without one, failed exports and their retries would be counted.
#
# Usage: bash bench/instructions.sh   (VARIANTS="plain policies", N=5000 by default;
# REMORA_BIN=path measures that build of remora; CARGO_FEATURES=... builds remora and the
# helpers with those features; UPSTREAM_PORT, PORT, ADMIN_PORT and OTLP_PORT, 28480 to
# 28483 by default, move it off ports another run holds). remora inherits the
# environment: CARGO_FEATURES=otlp-sdk-exporter REMORA_OTLP_EXPORTER=sdk measures the
# traced variants with opentelemetry-otlp's exporter instead of remora's encoder.
set -euo pipefail
cd "$(dirname "$0")/.."

N=${N:-5000}
read -r -a variants <<<"${VARIANTS:-plain policies}"
if [ "${variants[0]}" != plain ]; then
    echo "instructions.sh: VARIANTS must start with plain" >&2
    exit 2
fi

# shellcheck source=bench/common.sh
source bench/common.sh
install_missing valgrind=valgrind h2load=nghttp2-client protoc=protobuf-compiler

features=()
[ -z "${CARGO_FEATURES:-}" ] || features=(--features "$CARGO_FEATURES")
cargo build --release --locked "${features[@]}" --example bench_upstream --example otlp_sink >&2
BIN=${CARGO_TARGET_DIR:-target}/release
# REMORA_BIN measures a prebuilt remora (say, the build of another commit) instead.
if [ -z "${REMORA_BIN:-}" ]; then
    cargo build --release --locked "${features[@]}" --bin remora >&2
    REMORA_BIN=$BIN/remora
fi
with_work_dir

UPSTREAM_PORT=${UPSTREAM_PORT:-28480}
PORT=${PORT:-28481}
ADMIN_PORT=${ADMIN_PORT:-28482}
OTLP_PORT=${OTLP_PORT:-28483}
"$BIN/examples/bench_upstream" serve "$UPSTREAM_PORT" >"$WORK/upstream.log" 2>&1 &
pids+=($!)
"$BIN/examples/otlp_sink" "$OTLP_PORT" >"$WORK/sink.log" 2>&1 &
pids+=($!)
printf '\x00\x00\x00\x00\x07\x0a\x05hello' >"$WORK/echo-request.bin"


load() {
    local test=$1 requests=$2
    if [ "$test" = http1 ]; then
        h2load --h1 -c4 -n "$requests" "http://127.0.0.1:$PORT/" >"$WORK/h2load.out" 2>&1
    else
        h2load -c4 -m4 -n "$requests" -d "$WORK/echo-request.bin" \
            -H 'content-type: application/grpc' -H 'te: trailers' \
            "http://127.0.0.1:$PORT/remora.echo.v1.Echo/Unary" >"$WORK/h2load.out" 2>&1
    fi
    grep -q "$requests succeeded" "$WORK/h2load.out" || {
        echo "instructions.sh: not every request succeeded:" >&2
        cat "$WORK/h2load.out" >&2
        exit 1
    }
}

# Prints the instructions per request of one variant and test.
count() {
    local variant=$1 test=$2
    template "$variant" | sed -e "s/@REMORA_ADMIN_PORT@/$ADMIN_PORT/" \
        -e "s/@REMORA_PORT@/$PORT/" -e "s/@UPSTREAM_PORT@/$UPSTREAM_PORT/" \
        -e "s/@OTLP_PORT@/$OTLP_PORT/" >"$WORK/remora.yaml"
    rm -f "$WORK"/callgrind.*
    valgrind --tool=callgrind --callgrind-out-file="$WORK/callgrind.%p" \
        "$REMORA_BIN" run --config "$WORK/remora.yaml" >"$WORK/remora.log" 2>&1 &
    local pid=$!
    for _ in $(seq 1 200); do
        curl -s -o /dev/null "http://127.0.0.1:$PORT/" && break
        sleep 0.2
    done
    load "$test" 2000
    callgrind_control -z "$pid" >/dev/null
    load "$test" "$N"
    callgrind_control -d "$pid" >/dev/null
    # The dump of the counted requests (callgrind names a requested dump <file>.1).
    local dump="$WORK/callgrind.$pid.1"
    for _ in $(seq 1 50); do
        [ -s "$dump" ] && break
        sleep 0.1
    done
    awk -v n="$N" '/^(summary|totals):/ {printf "%.0f\n", $2 / n; exit}' "$dump"
    # What became of the spans (a traced variant must have exported, never dropped).
    curl -s "http://127.0.0.1:$ADMIN_PORT/metrics" |
        grep -E '^remora_spans_(exported|dropped)_total' |
        sed "s/^/instructions.sh: $variant $test: /" >&2 || true
    grep -h REMORA_OTLP_EXPORTER "$WORK/remora.log" >&2 || true
    kill "$pid"
    wait "$pid" 2>/dev/null || true
}

echo "## remora instructions per request, $(date -u '+%Y-%m-%d %H:%M UTC')"
echo
echo "valgrind callgrind, user-space instructions of the remora process over $N requests after 2000 warm-up ones; x plain = this variant's count over plain's (lower is better)."
echo
echo "| test | remora | instructions/request | x plain |"
echo "| --- | --- | ---: | ---: |"
for test in http1 grpc; do
    base=""
    for variant in "${variants[@]}"; do
        ir=$(count "$variant" "$test")
        base=${base:-$ir}
        ratio=$(awk -v a="$ir" -v b="$base" 'BEGIN {printf "%.3f", a / b}')
        label=$([ "$test" = http1 ] && echo "HTTP/1.1" || echo "gRPC unary")
        echo "| $label | $variant | $ir | $ratio |"
    done
done
