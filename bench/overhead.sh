#!/usr/bin/env bash
# What remora's optional features cost, in one run on this machine: the bare proxy,
# the same proxy with every resilience policy configured but none firing, and with
# tracing at 100% exporting to a local OTLP sink. HTTP/1.1 and unary gRPC, each measured
# two ways; variants alternate over ROUNDS rounds and medians are reported, as ratios
# to the bare proxy (the machine is shared and noisy: compare within one run only):
#
# - throughput at saturation (wrk, h2load), as many requests as the proxy takes;
# - proxy CPU per request at a fixed rate that every variant sustains (h2load --rps,
#   RATE requests/s in all), from the proxy's utime + stime in /proc/<pid>/stat.
#
# Layout as in run.sh: load generator, upstream and OTLP sink on CPU 0, the proxy
# under test on CPU 1. Usage: bash bench/overhead.sh  (ROUNDS=3 DURATION=8 RATE=32000
# by default; binaries from $CARGO_TARGET_DIR when set, else target/; REMORA_BIN=path
# measures that build of remora instead of building one)
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-8}
CONNECTIONS=${CONNECTIONS:-64}
STREAMS=${STREAMS:-10}
RATE=${RATE:-32000}                       # fixed-rate tests: requests/s in all
RATE_CONNECTIONS=${RATE_CONNECTIONS:-32}  # ... spread over this many connections
RATE_STREAMS=${RATE_STREAMS:-4}           # ... and, for gRPC, streams per connection
UPSTREAM_PORT=${UPSTREAM_PORT:-28080}
OTLP_PORT=${OTLP_PORT:-28317}
BASE_PORT=${BASE_PORT:-28100}

# shellcheck source=bench/common.sh
source bench/common.sh
install_missing wrk=wrk h2load=nghttp2-client protoc=protobuf-compiler

if [ $((RATE % RATE_CONNECTIONS)) -ne 0 ] || [ "$RATE" -lt "$RATE_CONNECTIONS" ]; then
    echo "overhead.sh: RATE ($RATE) must be a multiple of RATE_CONNECTIONS ($RATE_CONNECTIONS)" >&2
    exit 2
fi
CLK_TCK=$(getconf CLK_TCK)

cargo build --release --locked --example bench_upstream --example otlp_sink >&2
BIN=${CARGO_TARGET_DIR:-target}/release
if [ -z "${REMORA_BIN:-}" ]; then
    cargo build --release --locked --bin remora >&2
    REMORA_BIN=$BIN/remora
fi
with_work_dir

taskset -c 0 "$BIN/examples/bench_upstream" serve "$UPSTREAM_PORT" >"$WORK/upstream.log" 2>&1 &
pids+=($!)
taskset -c 0 "$BIN/examples/otlp_sink" "$OTLP_PORT" >"$WORK/sink.log" 2>&1 &
pids+=($!)

# VARIANTS: the configs compared, `plain` first. Besides plain, policies and traced,
# `only-<policy>` is the policies config keeping that one policy (timeout, retry,
# breaker, endpoint_breaker, rate_limit, max_in_flight, fallback): what it costs alone.
read -r -a variants <<<"${VARIANTS:-plain policies traced}"
if [ "${variants[0]}" != plain ]; then
    echo "overhead.sh: VARIANTS must start with plain" >&2
    exit 2
fi
declare -A port admin proxy_pid
i=0
for variant in "${variants[@]}"; do
    port[$variant]=$((BASE_PORT + 2 * i))
    admin[$variant]=$((BASE_PORT + 2 * i + 1))
    template "$variant" | sed -e "s/@REMORA_ADMIN_PORT@/${admin[$variant]}/" \
        -e "s/@REMORA_PORT@/${port[$variant]}/" \
        -e "s/@UPSTREAM_PORT@/$UPSTREAM_PORT/" \
        -e "s/@OTLP_PORT@/$OTLP_PORT/" >"$WORK/$variant.yaml"
    taskset -c 1 "$REMORA_BIN" run --config "$WORK/$variant.yaml" >"$WORK/$variant.log" 2>&1 &
    pids+=($!)
    proxy_pid[$variant]=$!
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

# Fixed rate: RATE requests/s over RATE_CONNECTIONS connections, h2load --rps being per
# connection. Prints "cpu_us_per_request completed_per_s proxy_cpu_percent failed
# spans_dropped".
rate_run() {
    local variant=$1
    shift
    local before after start end dropped
    rm -f "$WORK/h2load-rate.out"
    dropped=$(spans_dropped "$variant")
    before=$(proc_cpu_ticks "${proxy_pid[$variant]}")
    start=$(date +%s%N)
    timeout $((DURATION + 20)) taskset -c 0 h2load -t1 -c"$RATE_CONNECTIONS" \
        --rps=$((RATE / RATE_CONNECTIONS)) -D "$DURATION" "$@" >"$WORK/h2load-rate.out" 2>&1 || true
    end=$(date +%s%N)
    after=$(proc_cpu_ticks "${proxy_pid[$variant]}")
    dropped=$(($(spans_dropped "$variant") - dropped))
    awk -v ticks=$((after - before)) -v hz="$CLK_TCK" -v ns=$((end - start)) -v dropped="$dropped" '
        /^finished in/ {gsub(",", "", $4); rps = $4}
        /^requests:/ {ok = $8; failed = $10}
        END {
            cpu = ticks / hz
            printf "%.2f %s %.1f %d %d\n", (ok > 0 ? cpu * 1e6 / ok : 0), (rps == "" ? 0 : rps),
                (ns > 0 ? cpu * 1e11 / ns : 0), failed + 0, dropped
        }' "$WORK/h2load-rate.out"
}
# Spans the variant's exporter dropped so far (queue full or export failed), from its
# admin /metrics; 0 without tracing.
spans_dropped() {
    curl -s "http://127.0.0.1:${admin[$1]}/metrics" |
        awk '/^remora_spans_dropped_total/ {d += $NF} END {printf "%d\n", d}'
}
http1_rate() { rate_run "$1" --h1 "http://127.0.0.1:${port[$1]}/"; }
grpc_rate() {
    rate_run "$1" -m"$RATE_STREAMS" -d "$WORK/echo-request.bin" \
        -H 'content-type: application/grpc' -H 'te: trailers' \
        "http://127.0.0.1:${port[$1]}/remora.echo.v1.Echo/Unary"
}
# A process's user + system CPU time in clock ticks (fields 14 and 15 of
# /proc/<pid>/stat, counted after the ") " that closes the command name).
proc_cpu_ticks() { awk '{sub(/^.*\) /, ""); print $12 + $13}' "/proc/$1/stat"; }

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

# The fixed-rate tests follow the saturation tests, so every proxy is warm by now.
for test in http1_rate grpc_rate; do
    for round in $(seq 1 "$ROUNDS"); do
        for variant in "${variants[@]}"; do
            read -r us rps cpu failed dropped < <("$test" "$variant")
            echo "$us" >>"$WORK/$test.$variant.us"
            echo "$rps" >>"$WORK/$test.$variant.rps"
            echo "$cpu" >>"$WORK/$test.$variant.cpu"
            echo "$failed" >>"$WORK/$test.$variant.failed"
            echo "$dropped" >>"$WORK/$test.$variant.dropped"
            echo "round $round $test $variant: $us us CPU/request, $rps req/s, proxy CPU $cpu%, $failed failed, $dropped spans dropped" >&2
        done
    done
done

echo "## remora feature overhead, $(date -u '+%Y-%m-%d %H:%M UTC')"
echo
echo "$(nproc) CPUs; load generator + upstream + OTLP sink on CPU 0, remora on CPU 1; ${CONNECTIONS} connections (gRPC x ${STREAMS} streams); median of ${ROUNDS} rounds of ${DURATION}s."
echo
echo "### Throughput at saturation"
echo
echo "As many requests as remora takes: req/s and p99 latency, x bare = req/s over the bare proxy's. Measures remora only when its core is the bottleneck, and is noisy on a shared machine."
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
echo "### Proxy CPU per request at a fixed rate"
echo
echo "${RATE} req/s in all (h2load --rps, ${RATE_CONNECTIONS} connections; gRPC x ${RATE_STREAMS} streams), which every variant sustains; remora's utime + stime over the run divided by the requests completed. x bare = bare CPU/request over this variant's: the throughput it would reach relative to bare once its core saturates."
echo
echo "| test | remora | CPU us/request | x bare | completed req/s | proxy CPU % | failed | spans dropped |"
echo "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"
for test in http1_rate grpc_rate; do
    base=$(median <"$WORK/$test.plain.us")
    for variant in "${variants[@]}"; do
        us=$(median <"$WORK/$test.$variant.us")
        rps=$(median <"$WORK/$test.$variant.rps")
        cpu=$(median <"$WORK/$test.$variant.cpu")
        failed=$(awk '{n += $1} END {print n + 0}' "$WORK/$test.$variant.failed")
        dropped=$(awk '{n += $1} END {print n + 0}' "$WORK/$test.$variant.dropped")
        ratio=$(awk -v a="$us" -v b="$base" 'BEGIN {printf "%.3f", (a > 0 ? b / a : 0)}')
        label=$([ "$test" = http1_rate ] && echo "HTTP/1.1" || echo "gRPC unary")
        if awk -v a="$rps" -v r="$RATE" 'BEGIN {exit !(a < 0.95 * r)}'; then
            rps="$rps (!)"
            short=1
        fi
        echo "| $label | $variant | $us | $ratio | $rps | $cpu | $failed | $dropped |"
    done
done
echo
if [ -n "${short:-}" ]; then
    echo "(!) below 95% of the rate asked: that variant did not sustain it, so its row is not comparable; run again with a lower RATE."
    echo
fi
echo "Spans dropped (summed over the rounds) were never encoded or exported, so a traced row with drops understates what tracing costs."
echo
if [ -n "${admin[traced]:-}" ]; then
    spans=$(curl -s "http://127.0.0.1:${admin[traced]}/metrics" |
        awk '/^remora_spans_exported_total/ {e += $NF} /^remora_spans_dropped_total/ {d += $NF} END {printf "%d exported, %d dropped", e, d}') || spans="unknown"
    echo "Spans of the traced remora over the whole run, saturation tests included (its /metrics): $spans. The sink's last count: $(tail -n 1 "$WORK/sink.log" 2>/dev/null || echo 'none printed yet')"
fi
