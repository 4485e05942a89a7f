#!/usr/bin/env bash
# What mutual TLS between two sidecars costs, in one run on this machine: the topology
# of a mesh call, load generator -> client sidecar (outbound port) -> server sidecar
# (inbound) -> upstream, once in plaintext and once with mTLS between the sidecars
# (strict inbound, the client checking the server's identity). Variants alternate over
# ROUNDS rounds; medians are reported, mTLS as a ratio to plaintext:
#
# - keep-alive throughput at saturation: HTTP/1.1 (wrk), HTTP/2 (h2load, h2c to the
#   client sidecar, h2 over TLS between the sidecars) and unary gRPC;
# - p99 latency at a fixed moderate rate (h2load --rps, RATE requests/s in all) that
#   both variants sustain, and what mTLS adds to it;
# - new TLS connections per second into the server sidecar's inbound (openssl s_time
#   with a client certificate): full handshakes, and with session reuse asked for.
#
# Layout: load generator and upstream on CPU 0, both sidecars on CPU 1 (each a
# current-thread runtime). Usage: bash bench/mtls.sh  (ROUNDS=3 DURATION=8 RATE=4000 by
# default; binaries from $CARGO_TARGET_DIR when set, else target/)
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-8}
CONNECTIONS=${CONNECTIONS:-64}
STREAMS=${STREAMS:-10}
RATE=${RATE:-4000}                        # fixed-rate test: requests/s in all
RATE_CONNECTIONS=${RATE_CONNECTIONS:-16}  # ... spread over this many connections
UPSTREAM_PORT=${UPSTREAM_PORT:-28480}
BASE_PORT=${BASE_PORT:-28500}

# shellcheck source=bench/common.sh
source bench/common.sh
install_missing wrk=wrk h2load=nghttp2-client protoc=protobuf-compiler openssl=openssl >&2

if [ $((RATE % RATE_CONNECTIONS)) -ne 0 ]; then
    echo "mtls.sh: RATE ($RATE) must be a multiple of RATE_CONNECTIONS ($RATE_CONNECTIONS)" >&2
    exit 2
fi

cargo build --release --locked --bin remora --example bench_upstream >&2
BIN=${CARGO_TARGET_DIR:-target}/release
with_work_dir

# A trust domain and the two sidecars' certificates, as a user makes them.
mesh_certs "$BIN/remora" "$WORK" bench.example

taskset -c 0 "$BIN/examples/bench_upstream" serve "$UPSTREAM_PORT" >"$WORK/upstream.log" 2>&1 &
pids+=($!)

# `config VARIANT ROLE`: the client or server sidecar's config for plain or mtls.
# Ports: BASE_PORT + 10 * variant index + (0 client outbound, 1 client admin,
# 2 server inbound, 3 server admin).
declare -A base
base[plain]=$BASE_PORT
base[mtls]=$((BASE_PORT + 10))
config() {
    mesh_config "$2" "${base[$1]}" "$WORK" "$UPSTREAM_PORT" "$1"
}

variants=(plain mtls)
for variant in "${variants[@]}"; do
    for role in server client; do
        config "$variant" "$role" >"$WORK/$variant-$role.yaml"
        "$BIN/remora" validate "$WORK/$variant-$role.yaml" >/dev/null
        TOKIO_WORKER_THREADS=1 taskset -c 1 "$BIN/remora" run --config "$WORK/$variant-$role.yaml" \
            >"$WORK/$variant-$role.log" 2>&1 &
        pids+=($!)
    done
done
for variant in "${variants[@]}"; do
    ok=0
    for _ in $(seq 1 50); do
        curl -sf -o /dev/null "http://127.0.0.1:${base[$variant]}/" && ok=1 && break
        sleep 0.1
    done
    [ "$ok" = 1 ] || {
        echo "mtls.sh: $variant does not answer; logs:" >&2
        cat "$WORK/$variant-"*.log >&2
        exit 1
    }
done
printf '\x00\x00\x00\x00\x07\x0a\x05hello' >"$WORK/echo-request.bin"

# Prints "requests/s p99_ms failed" for one saturation run.
http1() {
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
h2load_run() {
    rm -f "$WORK/h2load.log"
    timeout $((DURATION + 20)) taskset -c 0 h2load -t1 "$@" -D "$DURATION" \
        --log-file="$WORK/h2load.log" >"$WORK/h2load.out" 2>&1 || true
    local rps failed p99
    rps=$(awk '/^finished in/ {gsub(",", "", $4); print $4}' "$WORK/h2load.out")
    failed=$(awk '/^requests:/ { gsub(/,/, ""); print $10 + $12 + $14 }' "$WORK/h2load.out")
    p99=$(awk '{print $3 / 1000}' "$WORK/h2load.log" | sort -n | awk '{a[NR]=$1} END {if (NR) print a[int(NR*0.99)]; else print 0}')
    echo "${rps:-0} $p99 ${failed:-0}"
}
h2() { h2load_run -c"$CONNECTIONS" -m"$STREAMS" "http://127.0.0.1:$1/"; }
grpc() {
    h2load_run -c"$CONNECTIONS" -m"$STREAMS" -d "$WORK/echo-request.bin" \
        -H 'content-type: application/grpc' -H 'te: trailers' \
        "http://127.0.0.1:$1/remora.echo.v1.Echo/Unary"
}
# Fixed rate, HTTP/1.1 keep-alive: RATE requests/s in all.
http1_rate() {
    h2load_run --h1 -c"$RATE_CONNECTIONS" --rps=$((RATE / RATE_CONNECTIONS)) "http://127.0.0.1:$1/"
}
grpc_rate() {
    h2load_run -c"$RATE_CONNECTIONS" --rps=$((RATE / RATE_CONNECTIONS)) -d "$WORK/echo-request.bin" \
        -H 'content-type: application/grpc' -H 'te: trailers' \
        "http://127.0.0.1:$1/remora.echo.v1.Echo/Unary"
}
# New TLS connections per second into the mTLS server sidecar's inbound; $1: -new or
# -reuse. Prints connections/s.
handshakes() {
    timeout $((DURATION + 20)) taskset -c 0 openssl s_time -connect "127.0.0.1:$((base[mtls] + 2))" \
        -cert "$WORK/client.pem" -key "$WORK/client-key.pem" -CAfile "$WORK/ca.pem" \
        "$1" -time "$DURATION" >"$WORK/s_time.out" 2>&1 || true
    awk '/connections in [0-9.]+s;/ { print $5 + 0; found = 1; exit }
         END { if (!found) print 0 }' "$WORK/s_time.out"
}

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
sum() { awk '{s += $1} END {printf "%d", s}'; }

tests=(http1 h2 grpc http1_rate grpc_rate)
for test in "${tests[@]}"; do
    "$test" "${base[plain]}" >/dev/null # warm-up
    "$test" "${base[mtls]}" >/dev/null
    for round in $(seq 1 "$ROUNDS"); do
        for variant in "${variants[@]}"; do
            read -r rps p99 failed < <("$test" "${base[$variant]}")
            echo "$rps" >>"$WORK/$test.$variant.rps"
            echo "$p99" >>"$WORK/$test.$variant.p99"
            echo "$failed" >>"$WORK/$test.$variant.failed"
            echo "round $round $test $variant: $rps req/s, p99 $p99 ms, $failed failed" >&2
        done
    done
done
for mode in -new -reuse; do
    for round in $(seq 1 "$ROUNDS"); do
        rate=$(handshakes "$mode")
        echo "$rate" >>"$WORK/handshakes$mode"
        echo "round $round handshakes $mode: $rate connections/s" >&2
    done
done

label() {
    case $1 in
        http1) echo "HTTP/1.1 keep-alive" ;;
        h2) echo "HTTP/2" ;;
        grpc) echo "gRPC unary" ;;
        http1_rate) echo "HTTP/1.1 at $RATE req/s" ;;
        grpc_rate) echo "gRPC unary at $RATE req/s" ;;
    esac
}

echo "## mTLS between two sidecars, $(date -u '+%Y-%m-%d %H:%M UTC')"
echo
echo "$(nproc) CPUs; load generator + upstream on CPU 0, both sidecars on CPU 1; ${CONNECTIONS} connections (h2 and gRPC x ${STREAMS} streams); median of ${ROUNDS} rounds of ${DURATION}s. Topology: load -> client sidecar -> server sidecar -> upstream; mTLS between the sidecars only."
echo
echo "### Throughput at saturation"
echo
echo "| test | plaintext req/s | mTLS req/s | mTLS / plaintext | plaintext p99 ms | mTLS p99 ms | failed (plain/mTLS) |"
echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"
for test in http1 h2 grpc; do
    plain=$(median <"$WORK/$test.plain.rps")
    mtls=$(median <"$WORK/$test.mtls.rps")
    ratio=$(awk -v a="$mtls" -v b="$plain" 'BEGIN {printf "%.3f", (b > 0 ? a / b : 0)}')
    echo "| $(label "$test") | $plain | $mtls | $ratio | $(median <"$WORK/$test.plain.p99") | $(median <"$WORK/$test.mtls.p99") | $(sum <"$WORK/$test.plain.failed")/$(sum <"$WORK/$test.mtls.failed") |"
done
echo
echo "### p99 at a fixed moderate rate"
echo
echo "${RATE} req/s in all over ${RATE_CONNECTIONS} keep-alive connections (h2load --rps), which both variants sustain."
echo
echo "| test | plaintext p99 ms | mTLS p99 ms | added by mTLS ms | completed req/s (plain/mTLS) |"
echo "| --- | ---: | ---: | ---: | ---: |"
for test in http1_rate grpc_rate; do
    plain=$(median <"$WORK/$test.plain.p99")
    mtls=$(median <"$WORK/$test.mtls.p99")
    added=$(awk -v a="$mtls" -v b="$plain" 'BEGIN {printf "%.3f", a - b}')
    echo "| $(label "$test") | $plain | $mtls | $added | $(median <"$WORK/$test.plain.rps")/$(median <"$WORK/$test.mtls.rps") |"
done
echo
echo "### New TLS connections per second"
echo
echo "openssl s_time against the server sidecar's strict inbound with a client certificate (ECDSA P-256), one connection at a time, a GET each."
echo
echo "| handshake | connections/s |"
echo "| --- | ---: |"
echo "| full (-new) | $(median <"$WORK/handshakes-new") |"
echo "| session reuse asked (-reuse) | $(median <"$WORK/handshakes-reuse") |"
echo
echo "remora turns session resumption off (a resumed session skips the certificate check, so a rotated-out certificate would outlive its rotation): a -reuse connection does a full handshake too."
