#!/usr/bin/env bash
# TCP passthrough (`protocol: tcp`), in one run on this machine: a direct connection to
# the upstream, remora, and HAProxy in `mode tcp` (one thread), each measured two ways;
# targets alternate over ROUNDS rounds and medians are reported, as ratios to direct
# (the machine is shared and noisy: compare within one run only):
#
# - bulk throughput: CONNECTIONS connections writing 64 KiB chunks as fast as they go,
#   in MiB/s (examples/tcp_bench.rs `bulk`);
# - connection rate: WORKERS loops each opening a connection, exchanging one byte and
#   closing, in connections/s (`connect`).
#
# Layout as in run.sh: load generator and upstream on CPU 0, the proxy under test on
# CPU 1. Usage: bash bench/tcp.sh  (ROUNDS=3 DURATION=8 by default; binaries from
# $CARGO_TARGET_DIR when set, else target/)
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-8}
CONNECTIONS=${CONNECTIONS:-8}
WORKERS=${WORKERS:-32}
BASE_PORT=${BASE_PORT:-28200}
UPSTREAM_PORT=$BASE_PORT
REMORA_PORT=$((BASE_PORT + 1))
REMORA_ADMIN_PORT=$((BASE_PORT + 2))
HAPROXY_PORT=$((BASE_PORT + 3))

# shellcheck source=bench/common.sh
source bench/common.sh
install_missing haproxy=haproxy taskset=util-linux >&2

cargo build --release --locked --bin remora --example tcp_bench >&2
BIN=${CARGO_TARGET_DIR:-target}/release
with_work_dir

taskset -c 0 "$BIN/examples/tcp_bench" serve "$UPSTREAM_PORT" >"$WORK/upstream.log" 2>&1 &
pids+=($!)

sed -e "s/@REMORA_ADMIN_PORT@/$REMORA_ADMIN_PORT/" -e "s/@REMORA_PORT@/$REMORA_PORT/" \
    -e "s/@UPSTREAM_PORT@/$UPSTREAM_PORT/" bench/remora-tcp.yaml.in >"$WORK/remora.yaml"
taskset -c 1 "$BIN/remora" run --config "$WORK/remora.yaml" >"$WORK/remora.log" 2>&1 &
pids+=($!)

cat >"$WORK/haproxy.cfg" <<HAPROXY
global
    nbthread 1
    maxconn 8000
    log stderr format short local0 err

defaults
    mode tcp
    log global
    timeout connect 1s
    timeout client 1h
    timeout server 1h

frontend bench_tcp
    bind 127.0.0.1:$HAPROXY_PORT
    default_backend upstream_tcp

backend upstream_tcp
    server s1 127.0.0.1:$UPSTREAM_PORT
HAPROXY
haproxy -c -q -f "$WORK/haproxy.cfg"
taskset -c 1 haproxy -db -f "$WORK/haproxy.cfg" >"$WORK/haproxy.log" 2>&1 &
pids+=($!)

declare -A port=([direct]=$UPSTREAM_PORT [remora]=$REMORA_PORT [haproxy]=$HAPROXY_PORT)
targets=(direct remora haproxy)
listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
for target in "${targets[@]}"; do
    for _ in $(seq 1 50); do
        listening "${port[$target]}" && break
        sleep 0.1
    done
    if ! listening "${port[$target]}"; then
        echo "tcp.sh: $target is not listening on ${port[$target]}; its log:" >&2
        cat "$WORK/$target.log" "$WORK/upstream.log" >&2 2>/dev/null || true
        exit 1
    fi
done

bench() { timeout $((DURATION + 20)) taskset -c 0 "$BIN/examples/tcp_bench" "$@"; }
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

for round in $(seq 1 "$ROUNDS"); do
    for target in "${targets[@]}"; do
        mibs=$(bench bulk "127.0.0.1:${port[$target]}" "$DURATION" "$CONNECTIONS")
        echo "$mibs" >>"$WORK/bulk.$target"
        read -r rate failed < <(bench connect "127.0.0.1:${port[$target]}" "$DURATION" "$WORKERS")
        echo "$rate" >>"$WORK/connect.$target"
        echo "$failed" >>"$WORK/failed.$target"
        echo "round $round $target: $mibs MiB/s, $rate connections/s ($failed failed)" >&2
        # Let TIME_WAIT sockets of the connection test clear a little between runs.
        sleep 1
    done
done

echo "## remora TCP passthrough, $(date -u '+%Y-%m-%d %H:%M UTC')"
echo
echo "$(nproc) CPUs; load generator + upstream on CPU 0, the proxy on CPU 1 (HAProxy \`nbthread 1\`, \`mode tcp\`); median of ${ROUNDS} rounds of ${DURATION}s. Bulk: ${CONNECTIONS} connections writing 64 KiB chunks. Connection rate: ${WORKERS} loops of connect, one byte each way, close."
echo
echo "| target | bulk MiB/s | x direct | connections/s | x direct | failed |"
echo "| --- | ---: | ---: | ---: | ---: | ---: |"
base_bulk=$(median <"$WORK/bulk.direct")
base_rate=$(median <"$WORK/connect.direct")
for target in "${targets[@]}"; do
    mibs=$(median <"$WORK/bulk.$target")
    rate=$(median <"$WORK/connect.$target")
    failed=$(awk '{s += $1} END {print s + 0}' "$WORK/failed.$target")
    echo "| $target | $mibs | $(awk -v a="$mibs" -v b="$base_bulk" 'BEGIN {printf "%.2f", (b > 0 ? a / b : 0)}') | $rate | $(awk -v a="$rate" -v b="$base_rate" 'BEGIN {printf "%.2f", (b > 0 ? a / b : 0)}') | $failed |"
done
