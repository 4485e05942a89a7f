#!/usr/bin/env bash
# What remora's optional features cost, in one run on this machine: the bare proxy,
# the same proxy with every resilience policy configured but none firing, and with
# tracing at 100% exporting to a local OTLP sink. HTTP/1.1 with wrk and unary gRPC
# with h2load; targets alternate over ROUNDS rounds and medians are reported, as ratios
# to the bare proxy (the machine is shared and noisy: compare within one run only).
#
# Layout as in run.sh: load generator, upstream and OTLP sink on CPU 0, the proxy
# under test on CPU 1. Usage: bash bench/overhead.sh  (ROUNDS=3 DURATION=8 by default)
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-8}
CONNECTIONS=${CONNECTIONS:-64}
STREAMS=${STREAMS:-10}
UPSTREAM_PORT=${UPSTREAM_PORT:-28080}
OTLP_PORT=${OTLP_PORT:-28317}
BASE_PORT=${BASE_PORT:-28100}

missing=()
command -v wrk >/dev/null || missing+=(wrk)
command -v h2load >/dev/null || missing+=(nghttp2-client)
command -v protoc >/dev/null || missing+=(protobuf-compiler)
if [ ${#missing[@]} -gt 0 ]; then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}"
fi

cargo build --release --locked --bin remora --example bench_upstream --example otlp_sink >&2
BIN=target/release
WORK=$(mktemp -d)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

taskset -c 0 "$BIN/examples/bench_upstream" serve "$UPSTREAM_PORT" >"$WORK/upstream.log" 2>&1 &
pids+=($!)
taskset -c 0 "$BIN/examples/otlp_sink" "$OTLP_PORT" >"$WORK/sink.log" 2>&1 &
pids+=($!)

variants=(plain policies traced)
declare -A port
i=0
for variant in "${variants[@]}"; do
    template=bench/remora.yaml.in
    [ "$variant" = plain ] || template="bench/remora-$variant.yaml.in"
    port[$variant]=$((BASE_PORT + 2 * i))
    sed -e "s/@REMORA_ADMIN_PORT@/$((BASE_PORT + 2 * i + 1))/" \
        -e "s/@REMORA_PORT@/${port[$variant]}/" \
        -e "s/@UPSTREAM_PORT@/$UPSTREAM_PORT/" \
        -e "s/@OTLP_PORT@/$OTLP_PORT/" "$template" >"$WORK/$variant.yaml"
    taskset -c 1 "$BIN/remora" run --config "$WORK/$variant.yaml" >"$WORK/$variant.log" 2>&1 &
    pids+=($!)
    i=$((i + 1))
done
for variant in "${variants[@]}"; do
    for _ in $(seq 1 50); do
        curl -s -o /dev/null "http://127.0.0.1:${port[$variant]}/" && break
        sleep 0.1
    done
done
printf '\x00\x00\x00\x00\x07\x0a\x05hello' >"$WORK/echo-request.bin"

# Prints "requests/s p99_ms" for one run.
http1() {
    timeout $((DURATION + 20)) taskset -c 0 wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" --latency "http://127.0.0.1:$1/" >"$WORK/wrk.out" 2>&1
    local rps p99
    rps=$(awk '/^Requests\/sec/ {print $2}' "$WORK/wrk.out")
    p99=$(awk '$1 == "99%" {v=$2; if (v ~ /us$/) {sub(/us$/, "", v); v=v/1000} else if (v ~ /ms$/) {sub(/ms$/, "", v)} else if (v ~ /s$/) {sub(/s$/, "", v); v=v*1000}; print v}' "$WORK/wrk.out")
    echo "$rps ${p99:-0}"
}
grpc() {
    rm -f "$WORK/h2load.log"
    timeout $((DURATION + 20)) taskset -c 0 h2load -t1 -c"$CONNECTIONS" -m"$STREAMS" -D "$DURATION" \
        --log-file="$WORK/h2load.log" -d "$WORK/echo-request.bin" \
        -H 'content-type: application/grpc' -H 'te: trailers' \
        "http://127.0.0.1:$1/remora.echo.v1.Echo/Unary" >"$WORK/h2load.out" 2>&1
    local rps p99
    rps=$(awk '/^finished in/ {gsub(",", "", $4); print $4}' "$WORK/h2load.out")
    p99=$(awk '{print $3 / 1000}' "$WORK/h2load.log" | sort -n | awk '{a[NR]=$1} END {if (NR) print a[int(NR*0.99)]; else print 0}')
    echo "$rps $p99"
}

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

for test in http1 grpc; do
    "$test" "${port[plain]}" >/dev/null   # warm-up
    for round in $(seq 1 "$ROUNDS"); do
        for variant in "${variants[@]}"; do
            read -r rps p99 < <("$test" "${port[$variant]}")
            echo "$rps" >>"$WORK/$test.$variant.rps"
            echo "$p99" >>"$WORK/$test.$variant.p99"
            echo "round $round $test $variant: $rps req/s, p99 $p99 ms" >&2
        done
    done
done

echo "## remora feature overhead, $(date -u '+%Y-%m-%d %H:%M UTC')"
echo
echo "$(nproc) CPUs; load generator + upstream + OTLP sink on CPU 0, remora on CPU 1; ${CONNECTIONS} connections (gRPC x ${STREAMS} streams); median of ${ROUNDS} rounds of ${DURATION}s."
echo
echo "| test | remora | req/s | p99 ms | x bare |"
echo "| --- | --- | ---: | ---: | ---: |"
for test in http1 grpc; do
    base=$(median <"$WORK/$test.plain.rps")
    for variant in "${variants[@]}"; do
        rps=$(median <"$WORK/$test.$variant.rps")
        p99=$(median <"$WORK/$test.$variant.p99")
        ratio=$(awk -v a="$rps" -v b="$base" 'BEGIN {printf "%.3f", (b > 0 ? a / b : 0)}')
        label=$([ "$test" = http1 ] && echo "HTTP/1.1" || echo "gRPC unary")
        echo "| $label | $variant | $rps | $p99 | $ratio |"
    done
done
echo
echo "Spans received by the sink: $(tail -n 1 "$WORK/sink.log" 2>/dev/null || echo 'none printed yet')"
