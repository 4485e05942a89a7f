#!/usr/bin/env bash
# Big bodies through the sidecar (release build), streamed, never held whole: a SIZE
# (1 GiB) request body from curl to an upstream that discards it (bench_upstream
# `/discard`, which answers the length it read), and a SIZE response from the upstream
# (`/bytes/SIZE`) to curl, which discards it; over HTTP/1.1 and over h2c (client and
# upstream alike). Each case runs against a fresh sidecar, whose RSS is sampled from
# /proc/<pid>/status every 50 ms; the table gives its peak (VmHWM) against the goal of
# 64 MB. A measurement, not a test.
#
# Usage: bash scripts/big-bodies.sh   (SIZE (1073741824), BASE_PORT (28980))
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/common.sh
. bench/common.sh

SIZE=${SIZE:-1073741824}
BASE_PORT=${BASE_PORT:-28980}
UPSTREAM=$BASE_PORT
PORT=$((BASE_PORT + 1))
ADMIN=$((BASE_PORT + 2))
GOAL_KIB=62500 # 64 MB

die() {
    echo "big-bodies: $*" >&2
    exit 1
}

install_missing curl=curl
cargo build --release --locked --bin remora --example bench_upstream >&2
BIN=${CARGO_TARGET_DIR:-target}/release
with_work_dir

"$BIN/examples/bench_upstream" serve "$UPSTREAM" >"$WORK/upstream.log" 2>&1 &
pids+=($!)
# A sparse file: curl uploads it with its content-length, reading zeros, not a disk.
truncate -s "$SIZE" "$WORK/body"

# `start_sidecar PROTOCOL` starts a sidecar whose service speaks PROTOCOL (http1 or
# http2) to the upstream; sets $remora.
start_sidecar() {
    cat >"$WORK/remora.yaml" <<EOF
service: big-bodies
admin: { listen: "127.0.0.1:$ADMIN" }
log: { level: warn }
tracing: { access_log: false }
services:
  upstream:
    listen: "127.0.0.1:$PORT"
    protocol: $1
    endpoints: ["127.0.0.1:$UPSTREAM"]
EOF
    "$BIN/remora" run --config "$WORK/remora.yaml" >"$WORK/remora.log" 2>&1 &
    remora=$!
    pids+=("$remora")
    for _ in $(seq 1 100); do
        curl -s -o /dev/null "http://127.0.0.1:$PORT/" && return 0
        sleep 0.1
    done
    die "remora did not start: $(tail -n 5 "$WORK/remora.log")"
}

stop_sidecar() {
    kill "$remora" 2>/dev/null || true
    wait "$remora" 2>/dev/null || true
}

status_kib() { awk -v field="$1:" '$1 == field {print $2}' "/proc/$remora/status"; }

# `sample_rss FILE` appends the sidecar's VmRSS (KiB) to FILE every 50 ms until killed.
sample_rss() {
    while kill -0 "$remora" 2>/dev/null; do
        status_kib VmRSS >>"$1" 2>/dev/null || true
        sleep 0.05
    done
}

# `run_case ID NAME PROTOCOL DIRECTION CURL_FLAGS...` runs one case and appends its row.
run_case() {
    local id=$1 name=$2 protocol=$3 direction=$4
    shift 4
    start_sidecar "$protocol"
    local idle samples=$WORK/samples-$id out=$WORK/curl-$id
    idle=$(status_kib VmRSS)
    : >"$samples"
    sample_rss "$samples" &
    local sampler=$!
    if [ "$direction" = upload ]; then
        curl -sS "$@" -X POST -T "$WORK/body" -w '\n%{http_code} %{size_upload} %{time_total}\n' \
            "http://127.0.0.1:$PORT/discard" >"$out"
    else
        curl -sS "$@" -o /dev/null -w '%{http_code} %{size_download} %{time_total}\n' \
            "http://127.0.0.1:$PORT/bytes/$SIZE" >"$out"
    fi
    local hwm peak_sampled code bytes seconds through
    hwm=$(status_kib VmHWM)
    kill "$sampler" 2>/dev/null || true
    wait "$sampler" 2>/dev/null || true
    stop_sidecar
    peak_sampled=$(sort -n "$samples" | tail -n 1)
    read -r code bytes seconds <<<"$(tail -n 1 "$out")"
    # Through: what the far end got (the upstream's count for an upload).
    if [ "$direction" = upload ]; then
        through=$(awk '/^received / {print $2}' "$out")
    else
        through=$bytes
    fi
    if [ "$code" != 200 ] || [ "$through" != "$SIZE" ]; then
        die "$name: status $code, $through of $SIZE bytes through"
    fi
    awk -v name="$name" -v size="$SIZE" -v s="$seconds" -v idle="$idle" -v hwm="$hwm" \
        -v sampled="$peak_sampled" -v goal="$GOAL_KIB" 'BEGIN {
            printf "| %s | %d | %.1f | %.0f | %.1f | %.1f | %.1f | %s |\n", name, size, s,
                size / s / 1048576, idle / 1024, sampled / 1024, hwm / 1024,
                hwm < goal ? "yes" : "NO"
        }' >>"$WORK/table"
}

: >"$WORK/table"
run_case http1-up "HTTP/1.1 upload" http1 upload
run_case http1-down "HTTP/1.1 download" http1 download
run_case h2c-up "h2c upload" http2 upload --http2-prior-knowledge
run_case h2c-down "h2c download" http2 download --http2-prior-knowledge

echo
echo "big bodies: $SIZE bytes each way through a fresh sidecar per case; RSS in MiB"
echo "| case | bytes | seconds | MiB/s | RSS idle | peak RSS sampled | peak RSS (VmHWM) | under 64 MB |"
echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |"
cat "$WORK/table"
