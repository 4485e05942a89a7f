#!/usr/bin/env bash
# What a rate limit shared through Redis costs, in one run on this machine: remora with
# no rate limit, with a local one, and with a shared one (a Redis round trip per call,
# batch 1; and batch 10), every limit set so high that nothing is refused:
#
# - p99 latency at a fixed moderate rate (h2load --rps, RATE requests/s in all over
#   RATE_CONNECTIONS keep-alive HTTP/1.1 connections) and what each limit adds to it;
# - throughput at saturation (wrk, CONNECTIONS connections).
#
# Variants alternate over ROUNDS rounds; medians are reported. Load generator, upstream
# and redis-server on CPU 0, the remoras on CPU 1. The shared limits fail open, so the
# Redis errors each run counted are printed: those calls were admitted without Redis.
# Usage: bash bench/global-rate-limit.sh  (ROUNDS=3 DURATION=6 RATE=2000 by default;
# binaries from $CARGO_TARGET_DIR when set, else target/)
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-6}
CONNECTIONS=${CONNECTIONS:-64}
RATE=${RATE:-2000}
RATE_CONNECTIONS=${RATE_CONNECTIONS:-16}
UPSTREAM_PORT=${UPSTREAM_PORT:-28680}
REDIS_PORT=${REDIS_PORT:-28679}
BASE_PORT=${BASE_PORT:-28700}

# shellcheck source=bench/common.sh
source bench/common.sh
install_missing wrk=wrk h2load=nghttp2-client redis-server=redis-server protoc=protobuf-compiler

cargo build --release --locked --bin remora --example bench_upstream >&2
BIN=${CARGO_TARGET_DIR:-target}/release
with_work_dir

taskset -c 0 "$BIN/examples/bench_upstream" serve "$UPSTREAM_PORT" >"$WORK/upstream.log" 2>&1 &
pids+=($!)
taskset -c 0 redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --save "" --appendonly no \
    --dir "$WORK" >"$WORK/redis.log" 2>&1 &
pids+=($!)

# The limit every limited variant uses: far above what this machine serves.
limit="rate: 10000000/s, burst: 10000000"
redis="redis: \"redis://127.0.0.1:$REDIS_PORT\", timeout: 5ms, on_error: open"
# The template ends inside the service's block: `rate_limit: high` joins it, then the
# policies follow at the top level.
config() {
    sed -e "s/@REMORA_ADMIN_PORT@/$3/" -e "s/@REMORA_PORT@/$2/" \
        -e "s/@UPSTREAM_PORT@/$UPSTREAM_PORT/" bench/remora.yaml.in
    local shared
    case $1 in
        none) return ;;
        local) shared="" ;;
        shared) shared=", shared: { $redis, batch: 1 }" ;;
        shared-batch10) shared=", shared: { $redis, batch: 10 }" ;;
    esac
    printf '    rate_limit: high\npolicies:\n  rate_limits:\n    high: { %s%s }\n' "$limit" "$shared"
}

variants=(none local shared shared-batch10)
declare -A port admin
i=0
for variant in "${variants[@]}"; do
    port[$variant]=$((BASE_PORT + 2 * i))
    admin[$variant]=$((BASE_PORT + 2 * i + 1))
    config "$variant" "${port[$variant]}" "${admin[$variant]}" >"$WORK/$variant.yaml"
    "$BIN/remora" validate --config "$WORK/$variant.yaml" >&2
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

# Prints "requests/s p99_ms failed" for one saturation run.
saturation() {
    timeout $((DURATION + 20)) taskset -c 0 wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" --latency "http://127.0.0.1:$1/" >"$WORK/wrk.out" 2>&1
    awk '
        function ms(v) {
            if (v ~ /us$/) return v / 1000
            if (v ~ /ms$/) return v + 0
            if (v ~ /s$/) return v * 1000
            return v + 0
        }
        /^Requests\/sec/ { rps = $2 }
        $1 == "99%" { p99 = ms($2) }
        /Non-2xx or 3xx responses:/ { failed += $NF }
        /Socket errors:/ { gsub(/,/, ""); failed += $4 + $6 + $8 + $10 }
        END { printf "%s %.3f %d\n", rps, p99, failed }' "$WORK/wrk.out"
}
# Prints "requests/s p50_ms p99_ms failed" for one fixed-rate run (a refusal counts as
# failed: none is expected).
fixed_rate() {
    rm -f "$WORK/h2load.log"
    timeout $((DURATION + 20)) taskset -c 0 h2load -t1 --h1 -c"$RATE_CONNECTIONS" \
        --rps=$((RATE / RATE_CONNECTIONS)) -D "$DURATION" --log-file="$WORK/h2load.log" \
        "http://127.0.0.1:$1/" >"$WORK/h2load.out" 2>&1 || true
    local rps failed p50 p99
    rps=$(awk '/^finished in/ {gsub(",", "", $4); print $4}' "$WORK/h2load.out")
    failed=$(awk '/^requests:/ {gsub(/,/, ""); n += $10 + $12 + $14} /^status codes:/ {gsub(/,/, ""); n += $7 + $9} END {print n + 0}' "$WORK/h2load.out")
    sort -n -k3,3 "$WORK/h2load.log" | awk '{print $3 / 1000}' >"$WORK/latencies"
    p50=$(awk '{a[NR]=$1} END {if (NR) print a[int(NR*0.50)]; else print 0}' "$WORK/latencies")
    p99=$(awk '{a[NR]=$1} END {if (NR) print a[int(NR*0.99)]; else print 0}' "$WORK/latencies")
    echo "${rps:-0} $p50 $p99 ${failed:-0}"
}
# Redis calls the variant's limit counted as failed so far (0 without a shared limit).
redis_errors() {
    curl -s "http://127.0.0.1:${admin[$1]}/metrics" |
        awk '/^remora_rate_limit_shared_errors_total/ {n += $NF} END {printf "%d\n", n}'
}
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
sum() { awk '{n += $1} END {print n + 0}'; }

fixed_rate "${port[none]}" >/dev/null   # warm-up
for round in $(seq 1 "$ROUNDS"); do
    # Rotate the order from round to round.
    order=("${variants[@]:round % ${#variants[@]}}" "${variants[@]:0:round % ${#variants[@]}}")
    for variant in "${order[@]}"; do
        errors=$(redis_errors "$variant")
        read -r rps p50 p99 failed < <(fixed_rate "${port[$variant]}")
        echo $(($(redis_errors "$variant") - errors)) >>"$WORK/rate.$variant.errors"
        echo "$rps" >>"$WORK/rate.$variant.rps"
        echo "$p50" >>"$WORK/rate.$variant.p50"
        echo "$p99" >>"$WORK/rate.$variant.p99"
        echo "$failed" >>"$WORK/rate.$variant.failed"
        echo "round $round fixed rate $variant: $rps req/s, p50 $p50 ms, p99 $p99 ms, $failed failed" >&2
        errors=$(redis_errors "$variant")
        read -r rps p99 failed < <(saturation "${port[$variant]}")
        echo $(($(redis_errors "$variant") - errors)) >>"$WORK/sat.$variant.errors"
        echo "$rps" >>"$WORK/sat.$variant.rps"
        echo "$p99" >>"$WORK/sat.$variant.p99"
        echo "$failed" >>"$WORK/sat.$variant.failed"
        echo "round $round saturation $variant: $rps req/s, p99 $p99 ms, $failed failed" >&2
    done
done

echo "## Shared (Redis) rate limit against a local one and none, $(date -u '+%Y-%m-%d %H:%M UTC')"
echo
echo "$(nproc) CPUs; wrk/h2load + upstream + redis-server on CPU 0, each remora on CPU 1; HTTP/1.1 keep-alive; limits at 10,000,000/s so that nothing is refused; shared limits: timeout 5ms, on_error open; median of ${ROUNDS} rounds of ${DURATION}s."
echo
echo "### p99 at a fixed moderate rate"
echo
echo "${RATE} req/s in all over ${RATE_CONNECTIONS} connections (h2load --rps). Added = the variant's p99 minus the p99 without a limit."
echo
echo "| remora | p50 ms | p99 ms | p99 added ms | completed req/s | failed | Redis errors |"
echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"
base=$(median <"$WORK/rate.none.p99")
for variant in "${variants[@]}"; do
    p99=$(median <"$WORK/rate.$variant.p99")
    added=$(awk -v a="$p99" -v b="$base" 'BEGIN {printf "%.3f", a - b}')
    echo "| $variant | $(median <"$WORK/rate.$variant.p50") | $p99 | $added | $(median <"$WORK/rate.$variant.rps") | $(sum <"$WORK/rate.$variant.failed") | $(sum <"$WORK/rate.$variant.errors") |"
done
echo
echo "### Throughput at saturation"
echo
echo "wrk, ${CONNECTIONS} connections: req/s and p99; x none = req/s over the remora without a limit."
echo
echo "| remora | req/s | p99 ms | x none | failed | Redis errors |"
echo "| --- | ---: | ---: | ---: | ---: | ---: |"
base=$(median <"$WORK/sat.none.rps")
for variant in "${variants[@]}"; do
    rps=$(median <"$WORK/sat.$variant.rps")
    ratio=$(awk -v a="$rps" -v b="$base" 'BEGIN {printf "%.3f", (b > 0 ? a / b : 0)}')
    echo "| $variant | $rps | $(median <"$WORK/sat.$variant.p99") | $ratio | $(sum <"$WORK/sat.$variant.failed") | $(sum <"$WORK/sat.$variant.errors") |"
done
echo
echo "Redis errors: the rise of remora_rate_limit_shared_errors_total over the runs, summed over the rounds; each is a call whose decision missed the deadline or failed and was admitted by on_error: open without Redis (after each, Redis is not asked for 500 ms)."
