#!/usr/bin/env bash
# Where remora's CPU goes per protocol: `perf record` of a release remora (the bare
# proxy of bench/remora.yaml.in unless VARIANT says another, as in overhead.sh) pinned
# to one CPU while h2load saturates it, then a table of the share of samples per
# component (remora, hyper, h2, tokio, the allocator, the kernel...) and the hottest
# symbols. Shares do not depend on the machine's load the way throughput does, so this
# runs on a shared machine too; the req/s it prints does not.
#
# Usage: bash bench/profile.sh   (TESTS="http1 h2c grpc", DURATION=10 seconds,
# VARIANT=plain, TOP=25 symbols, REMORA_BIN=path to profile a prebuilt remora,
# LOAD_CPU=0, PROXY_CPU=1)
set -euo pipefail
cd "$(dirname "$0")/.."

read -r -a tests <<<"${TESTS:-http1 h2c grpc}"
DURATION=${DURATION:-10}
VARIANT=${VARIANT:-plain}
TOP=${TOP:-25}
LOAD_CPU=${LOAD_CPU:-0}
PROXY_CPU=${PROXY_CPU:-1}

# shellcheck source=bench/common.sh
source bench/common.sh
install_missing perf=linux-perf h2load=nghttp2-client protoc=protobuf-compiler

cargo build --release --locked --example bench_upstream >&2
BIN=${CARGO_TARGET_DIR:-target}/release
if [ -z "${REMORA_BIN:-}" ]; then
    cargo build --release --locked --bin remora >&2
    REMORA_BIN=$BIN/remora
fi
with_work_dir

UPSTREAM_PORT=${UPSTREAM_PORT:-28580}
PORT=${PORT:-28581}
ADMIN_PORT=${ADMIN_PORT:-28582}
taskset -c "$LOAD_CPU" "$BIN/examples/bench_upstream" serve "$UPSTREAM_PORT" \
    >"$WORK/upstream.log" 2>&1 &
pids+=($!)
printf '\x00\x00\x00\x00\x07\x0a\x05hello' >"$WORK/echo-request.bin"

template "$VARIANT" | sed -e "s/@REMORA_ADMIN_PORT@/$ADMIN_PORT/" \
    -e "s/@REMORA_PORT@/$PORT/" -e "s/@UPSTREAM_PORT@/$UPSTREAM_PORT/" \
    -e "s/@OTLP_PORT@/28583/" >"$WORK/remora.yaml"
TOKIO_WORKER_THREADS=1 taskset -c "$PROXY_CPU" "$REMORA_BIN" run --config "$WORK/remora.yaml" \
    >"$WORK/remora.log" 2>&1 &
remora_pid=$!
pids+=("$remora_pid")
for _ in $(seq 1 100); do
    curl -fsS -o /dev/null "http://127.0.0.1:$PORT/" 2>/dev/null && break
    sleep 0.1
done

# `load TEST SECONDS` saturates remora with TEST for SECONDS; h2load's summary goes to
# $WORK/h2load.out.
load() {
    local test=$1 seconds=$2
    local common=(-D "$seconds" --warm-up-time=1)
    case $test in
        http1) taskset -c "$LOAD_CPU" h2load --h1 -c64 "${common[@]}" "http://127.0.0.1:$PORT/" ;;
        h2c) taskset -c "$LOAD_CPU" h2load -c64 -m10 "${common[@]}" "http://127.0.0.1:$PORT/" ;;
        grpc)
            taskset -c "$LOAD_CPU" h2load -c64 -m10 "${common[@]}" -d "$WORK/echo-request.bin" \
                -H 'content-type: application/grpc' -H 'te: trailers' \
                "http://127.0.0.1:$PORT/remora.echo.v1.Echo/Unary"
            ;;
    esac >"$WORK/h2load.out" 2>&1
}

# The component a symbol belongs to, by its crate path (or its library for C code).
component() {
    awk -F'\t' '{
        share = $1; sym = $2; obj = $3
        c = "other"
        if (obj ~ /kernel/) c = "kernel"
        else if (obj ~ /libc/) c = "libc (malloc, memcpy)"
        else if (sym ~ /^remora::/ || sym ~ /<remora::/) c = "remora"
        else if (sym ~ /hyper_util/) c = "hyper-util"
        else if (sym ~ /hyper::/) c = "hyper"
        else if (sym ~ /(^|<)h2::/) c = "h2"
        else if (sym ~ /tokio::/ || sym ~ /mio::/) c = "tokio"
        else if (sym ~ /(^|<)http::/ || sym ~ /httparse/) c = "http, httparse"
        else if (sym ~ /(^|<)bytes::/) c = "bytes"
        else if (sym ~ /hpack|fnv|hashbrown|core::hash/) c = "hashing, hpack"
        else if (sym ~ /^(__)?(malloc|free|realloc|cfree|_int_)/ || sym ~ /alloc::/) c = "allocator"
        else if (sym ~ /^(core|alloc|std)::/) c = "core, std"
        sum[c] += share
    } END { for (c in sum) printf "%s\t%.1f\n", c, sum[c] }' | sort -t$'\t' -k2 -rn
}

for test in "${tests[@]}"; do
    load "$test" 2 # warm the pool and the allocator
    load "$test" "$DURATION" &
    loader=$!
    sleep 1
    perf record -e cpu-clock -F 1999 -g -p "$remora_pid" -o "$WORK/perf.$test" \
        -- sleep $((DURATION - 2)) >/dev/null 2>&1
    wait "$loader"
    rps=$(awk '/^finished in/ {print $4}' "$WORK/h2load.out")
    # Tab-separated (share, library, symbol), flat (no call chains), hottest first.
    perf report -i "$WORK/perf.$test" --no-children -g none --sort dso,sym --stdio \
        -t "$(printf '\t')" 2>/dev/null | awk -F'\t' '!/^#/ && NF >= 3 {
            share = $1; gsub(/[ %]/, "", share)
            dso = $2; sub(/ +$/, "", dso)
            sym = $3; sub(/^\[[.k]\] +/, "", sym); sub(/ +$/, "", sym)
            printf "%s\t%s\t%s\n", share, sym, dso }' >"$WORK/symbols.$test"
    echo
    echo "## $test ($VARIANT, ${rps:-?} req/s while profiled)"
    echo
    echo "| component | share of remora's CPU samples |"
    echo "|---|---:|"
    component <"$WORK/symbols.$test" | awk -F'\t' '{ printf "| %s | %s%% |\n", $1, $2 }'
    echo
    echo "| symbol | share |"
    echo "|---|---:|"
    head -n "$TOP" "$WORK/symbols.$test" |
        awk -F'\t' '{ s = $2; if (length(s) > 110) s = substr(s, 1, 107) "..."; gsub(/\|/, "\\|", s); printf "| `%s` | %s%% |\n", s, $1 }'
done
