#!/usr/bin/env bash
# The benchmark of issues #3 and #17: remora beside nginx and HAProxy, with a direct connection
# to the upstream as the limit, on HTTP/1.1, h2c and unary gRPC. See bench/README.md.
#
# Layout: load generator and upstream on CPU $LOAD_CPU, the proxy under test alone on
# CPU $PROXY_CPU, every proxy with one worker. Everything listens on 127.0.0.1 only,
# every run is bounded in time, and every process started here is killed on exit.
#
# Settings (environment): ROUNDS (3), DURATION seconds per measured run (10), WARMUP
# seconds per target and test before the rounds (3), CONNECTIONS (64), STREAMS per h2
# connection (10), IDLE_CONNECTIONS (1000), PORT_BASE (28000), LOAD_CPU (0),
# PROXY_CPU (1), TESTS ("http1 h2c grpc"), TARGETS ("direct remora nginx haproxy"),
# JOBS for cargo (2), PGO (1: remora as the image builds it, with scripts/pgo.sh; 0: a
# plain release build), REMORA_BIN (a prebuilt remora to measure instead of building one),
# UPSTREAM_BIN (a prebuilt examples/bench_upstream, likewise), NICE (-10) for every
# process of the benchmark, so that other work on a shared machine disturbs all targets
# less, NO_INSTALL=1 to skip the apt-get step, QUIET_MAX (15) % of a CPU that other
# processes may use before a run starts and QUIET_WAIT (20) seconds to wait for that.
#
# After the saturation rounds, a fixed-rate phase loads every target at one rate per
# test (h2load --rps): FIXED_RATE_HTTP1, FIXED_RATE_H2C, FIXED_RATE_GRPC req/s in all,
# else FIXED_RATE, else half of nginx's median saturation req/s for that test; 0 skips
# the test (FIXED_RATE=0: the whole phase). The rate is spread over FIXED_CONNECTIONS
# (32) connections, h2c and gRPC with up to FIXED_STREAMS (4) streams each.
set -euo pipefail

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10}
DURATION=${DURATION%s}
WARMUP=${WARMUP:-3}
WARMUP=${WARMUP%s}
CONNECTIONS=${CONNECTIONS:-64}
STREAMS=${STREAMS:-10}
IDLE_CONNECTIONS=${IDLE_CONNECTIONS:-1000}
PORT_BASE=${PORT_BASE:-28000}
LOAD_CPU=${LOAD_CPU:-0}
PROXY_CPU=${PROXY_CPU:-1}
TESTS=${TESTS:-"http1 h2c grpc"}
TARGETS=${TARGETS:-"direct remora nginx haproxy"}
JOBS=${JOBS:-2}
NICE=${NICE:--10}
QUIET_MAX=${QUIET_MAX:-15}
QUIET_WAIT=${QUIET_WAIT:-20}
FIXED_RATE=${FIXED_RATE:-}
FIXED_CONNECTIONS=${FIXED_CONNECTIONS:-32}
FIXED_STREAMS=${FIXED_STREAMS:-4}

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BENCH=$ROOT/bench
OUT=$BENCH/out
WORK=$OUT/work
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}

UPSTREAM_PORT=$((PORT_BASE + 0))
REMORA_PORT=$((PORT_BASE + 1))
REMORA_ADMIN_PORT=$((PORT_BASE + 2))
NGINX_H1_PORT=$((PORT_BASE + 3))
NGINX_H2C_PORT=$((PORT_BASE + 4))
NGINX_GRPC_PORT=$((PORT_BASE + 5))
HAPROXY_H1_PORT=$((PORT_BASE + 6))
HAPROXY_H2_PORT=$((PORT_BASE + 7))

# The unary call of the gRPC test: its path and h2load's arguments to send one request.
GRPC_PATH=/remora.echo.v1.Echo/Unary
GRPC_ARGS=(-d "$WORK/echo-request.bin" -H 'content-type: application/grpc' -H 'te: trailers')

log() { printf '[bench %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() {
    log "error: $*"
    exit 1
}

# ---------------------------------------------------------------- processes

STARTED=()

cleanup() {
    local pid
    for pid in "${STARTED[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for _ in 1 2 3 4 5 6 7 8 9 10; do
        local alive=0
        for pid in "${STARTED[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
        ((alive)) || break
        sleep 0.2
    done
    for pid in "${STARTED[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Starts "$@" pinned to CPU $1 with output to $WORK/$2.log; sets STARTED_PID.
start_pinned() {
    local cpu=$1 name=$2
    shift 2
    nice -n "$NICE" taskset -c "$cpu" "$@" >"$WORK/$name.log" 2>&1 &
    STARTED_PID=$!
    STARTED+=("$STARTED_PID")
}

# Drops an ended process from the list cleanup kills (its pid may be reused).
forget() {
    local pid kept=()
    for pid in "${STARTED[@]}"; do [[ $pid == "$1" ]] || kept+=("$pid"); done
    STARTED=("${kept[@]}")
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() {
    local port=$1 name=$2
    for _ in $(seq 100); do
        port_open "$port" && return 0
        sleep 0.1
    done
    tail -n 20 "$WORK/$name.log" >&2 || true
    die "$name did not listen on 127.0.0.1:$port within 10 s"
}

# The pids whose CPU and memory count for a target: the process and its children
# (nginx: master and worker).
pids_of() {
    local main=$1
    echo "$main"
    ps -o pid= --ppid "$main" 2>/dev/null || true
}

cpu_ticks() {
    local total=0 pid ticks
    for pid in $(pids_of "$1"); do
        ticks=$(awk '{print $14 + $15}' "/proc/$pid/stat" 2>/dev/null || echo 0)
        total=$((total + ticks))
    done
    echo "$total"
}

rss_kib() {
    status_kib "$1" VmRSS
}

# The private part of it (RssAnon: heap, stacks), without the pages of the binary and
# its libraries, which are page cache shared with every process running the same file.
anon_kib() {
    status_kib "$1" RssAnon
}

# `status_kib TARGET FIELD` sums FIELD of /proc/PID/status over the target's processes.
status_kib() {
    local total=0 pid kib
    for pid in $(pids_of "$1"); do
        kib=$(awk -v field="$2:" '$1 == field {print $2}' "/proc/$pid/status" 2>/dev/null || echo 0)
        total=$((total + ${kib:-0}))
    done
    echo "$total"
}

# ---------------------------------------------------------------- setup

install_tools() {
    [[ ${NO_INSTALL:-0} == 1 ]] && return 0
    local missing=()
    command -v wrk >/dev/null || missing+=(wrk)
    command -v h2load >/dev/null || missing+=(nghttp2-client)
    command -v haproxy >/dev/null || missing+=(haproxy)
    command -v taskset >/dev/null || missing+=(util-linux)
    command -v ps >/dev/null || missing+=(procps)
    local need_nginx=0
    command -v nginx >/dev/null || need_nginx=1
    ((${#missing[@]} || need_nginx)) || return 0
    local sudo=()
    [[ $(id -u) == 0 ]] || sudo=(sudo)
    log "installing: ${missing[*]} $( ((need_nginx)) && echo nginx-light)"
    "${sudo[@]}" apt-get update -q
    export DEBIAN_FRONTEND=noninteractive
    if ((${#missing[@]})); then
        "${sudo[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}"
    fi
    if ((need_nginx)); then
        "${sudo[@]}" apt-get install -y -q --no-install-recommends nginx-light ||
            "${sudo[@]}" apt-get install -y -q --no-install-recommends nginx
    fi
}

build() {
    # Separately, so that the remora binary measured is the one users build (no
    # dev-dependency features unified into it). REMORA_BIN measures a binary built
    # elsewhere (an earlier commit, say) instead; UPSTREAM_BIN likewise.
    if [[ -n ${REMORA_BIN:-} ]]; then
        log "measuring REMORA_BIN=$REMORA_BIN"
    elif [[ ${PGO:-1} == 1 ]]; then
        log "building remora with profile-guided optimization (scripts/pgo.sh)"
        REMORA_BIN=$(cd "$ROOT" && CARGO_BUILD_JOBS=$JOBS bash scripts/pgo.sh)
    else
        log "building remora (release, -j $JOBS)"
        (cd "$ROOT" && cargo build --release -j "$JOBS" --bin remora)
        REMORA_BIN=$TARGET_DIR/release/remora
    fi
    if [[ -n ${UPSTREAM_BIN:-} ]]; then
        log "upstream UPSTREAM_BIN=$UPSTREAM_BIN"
    else
        log "building the bench upstream (release, -j $JOBS)"
        (cd "$ROOT" && cargo build --release -j "$JOBS" --example bench_upstream)
        UPSTREAM_BIN=$TARGET_DIR/release/examples/bench_upstream
    fi
    [[ -x $REMORA_BIN ]] || die "remora binary $REMORA_BIN not found"
    [[ -x $UPSTREAM_BIN ]] || die "bench upstream binary $UPSTREAM_BIN not found"
}

render() {
    sed -e "s|@OUT@|$WORK|g" \
        -e "s|@UPSTREAM_PORT@|$UPSTREAM_PORT|g" \
        -e "s|@REMORA_PORT@|$REMORA_PORT|g" \
        -e "s|@REMORA_ADMIN_PORT@|$REMORA_ADMIN_PORT|g" \
        -e "s|@NGINX_H1_PORT@|$NGINX_H1_PORT|g" \
        -e "s|@NGINX_H2C_PORT@|$NGINX_H2C_PORT|g" \
        -e "s|@NGINX_GRPC_PORT@|$NGINX_GRPC_PORT|g" \
        -e "s|@HAPROXY_H1_PORT@|$HAPROXY_H1_PORT|g" \
        -e "s|@HAPROXY_H2_PORT@|$HAPROXY_H2_PORT|g" \
        "$1" >"$2"
}

prepare() {
    rm -rf "$WORK"
    mkdir -p "$WORK"/nginx-tmp "$WORK"/results
    render "$BENCH/nginx.conf.in" "$WORK/nginx.conf"
    render "$BENCH/haproxy.cfg.in" "$WORK/haproxy.cfg"
    render "$BENCH/remora.yaml.in" "$WORK/remora.yaml"
    # One gRPC message: uncompressed flag, 4-byte length, EchoRequest{message: "hello"}.
    printf '\x00\x00\x00\x00\x07\x0a\x05hello' >"$WORK/echo-request.bin"
    local port
    for port in $UPSTREAM_PORT $REMORA_PORT $REMORA_ADMIN_PORT $NGINX_H1_PORT \
        $NGINX_H2C_PORT $NGINX_GRPC_PORT $HAPROXY_H1_PORT $HAPROXY_H2_PORT; do
        port_open "$port" && die "127.0.0.1:$port is taken; set PORT_BASE to a free range"
    done
    if [[ $(nice -n "$NICE" nice 2>/dev/null) != "$NICE" ]]; then
        log "cannot run at nice $NICE here; using 0"
        NICE=0
    fi
    ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" || true
    (($(ulimit -n) >= IDLE_CONNECTIONS * 2 + 256)) ||
        die "open-file limit $(ulimit -n) is too low for $IDLE_CONNECTIONS idle connections"
}

declare -A PID

start_all() {
    start_pinned "$LOAD_CPU" upstream "$UPSTREAM_BIN" serve "$UPSTREAM_PORT"
    PID[direct]=$STARTED_PID
    wait_port "$UPSTREAM_PORT" upstream

    nginx -t -q -c "$WORK/nginx.conf" -p "$WORK" -e "$WORK/nginx-error.log" ||
        die "nginx config is invalid"
    haproxy -c -q -f "$WORK/haproxy.cfg" || die "haproxy config is invalid"
    "$REMORA_BIN" validate "$WORK/remora.yaml" >/dev/null || die "remora config is invalid"

    # Pinned to one CPU, remora runs a current-thread runtime; should it build a
    # multi-thread one (REMORA_RUNTIME=multi-thread), this variable keeps it to one worker.
    TOKIO_WORKER_THREADS=1 start_pinned "$PROXY_CPU" remora \
        "$REMORA_BIN" run -c "$WORK/remora.yaml"
    PID[remora]=$STARTED_PID
    start_pinned "$PROXY_CPU" nginx \
        nginx -c "$WORK/nginx.conf" -p "$WORK" -e "$WORK/nginx-error.log"
    PID[nginx]=$STARTED_PID
    start_pinned "$PROXY_CPU" haproxy haproxy -db -f "$WORK/haproxy.cfg"
    PID[haproxy]=$STARTED_PID

    wait_port "$REMORA_PORT" remora
    wait_port "$NGINX_H1_PORT" nginx
    wait_port "$NGINX_GRPC_PORT" nginx
    wait_port "$HAPROXY_H1_PORT" haproxy
    wait_port "$HAPROXY_H2_PORT" haproxy
    local workers
    workers=$(cat /proc/"${PID[remora]}"/task/*/comm 2>/dev/null | grep -c '^tokio-r' || true)
    log "remora runs $workers tokio worker thread(s) (0: a current-thread runtime)"
}

# The port a test reaches a target on.
port_for() {
    local test=$1 target=$2
    case $target:$test in
    direct:*) echo "$UPSTREAM_PORT" ;;
    remora:*) echo "$REMORA_PORT" ;;
    nginx:http1) echo "$NGINX_H1_PORT" ;;
    nginx:h2c) echo "$NGINX_H2C_PORT" ;;
    nginx:grpc) echo "$NGINX_GRPC_PORT" ;;
    haproxy:http1) echo "$HAPROXY_H1_PORT" ;;
    haproxy:*) echo "$HAPROXY_H2_PORT" ;;
    *) die "unknown target $target" ;;
    esac
}

# ---------------------------------------------------------------- load

# CPU seconds used by the children this (sub)shell waited for: in the subshell that runs
# one load, that is the load generator's.
children_cpu_seconds() {
    times | awk 'NR == 2 {
        split($1, u, /[ms]/); split($2, s, /[ms]/)
        print u[1] * 60 + u[2] + s[1] * 60 + s[2]
    }'
}

# Busy ticks of all CPUs, from /proc/stat: user, nice, system and steal. Interrupt and
# softirq time is left out: loopback TCP of the benchmark itself is mostly softirq time,
# which no process is charged for.
machine_busy_ticks() { awk '$1 == "cpu" { print $2 + $3 + $4 + $9 }' /proc/stat; }

# Waits (up to $QUIET_WAIT seconds) until processes outside the benchmark use less than
# $QUIET_MAX % of one CPU: other builds on a shared machine skew every number.
wait_quiet() {
    local hz waited=0 before after busy
    hz=$(getconf CLK_TCK)
    while :; do
        before=$(machine_busy_ticks)
        sleep 1
        after=$(machine_busy_ticks)
        busy=$((100 * (after - before) / hz))
        ((busy < QUIET_MAX)) && return 0
        if ((waited >= QUIET_WAIT)); then
            log "machine still busy (${busy}% of a CPU outside the benchmark); measuring anyway"
            return 0
        fi
        ((waited == 0)) && log "waiting for other load (${busy}% of a CPU) to settle"
        waited=$((waited + 1))
    done
}

# Runs one load of $3 seconds; prints "rps p50_ms p99_ms errors load_cpu_seconds".
load() {
    local test=$1 port=$2 seconds=$3 raw=$WORK/load.txt
    local url=http://127.0.0.1:$port/
    local limit=$((seconds + 30))
    case $test in
    http1)
        timeout "$limit" nice -n "$NICE" taskset -c "$LOAD_CPU" \
            wrk -t1 -c"$CONNECTIONS" -d"${seconds}s" --latency "$url" >"$raw" 2>&1 ||
            die "wrk failed: $(tail -n 5 "$raw")"
        local cpu_seconds
        cpu_seconds=$(children_cpu_seconds)
        echo "$(parse_wrk "$raw") $cpu_seconds"
        ;;
    h2c | grpc)
        local extra=()
        if [[ $test == grpc ]]; then
            url=http://127.0.0.1:$port$GRPC_PATH
            extra=("${GRPC_ARGS[@]}")
        fi
        rm -f "$WORK/h2load.log"
        timeout "$limit" nice -n "$NICE" taskset -c "$LOAD_CPU" \
            h2load -t1 -c"$CONNECTIONS" -m"$STREAMS" -D "$seconds" \
            --log-file="$WORK/h2load.log" "${extra[@]}" "$url" >"$raw" 2>&1 ||
            die "h2load failed: $(tail -n 5 "$raw")"
        local cpu_seconds
        cpu_seconds=$(children_cpu_seconds)
        echo "$(parse_h2load "$raw" "$WORK/h2load.log") $cpu_seconds"
        ;;
    *) die "unknown test $test" ;;
    esac
}

# Runs one load of $3 seconds at $4 requests/s in all, a multiple of FIXED_CONNECTIONS
# (h2load --rps is per connection); prints what load() prints.
load_fixed() {
    local test=$1 port=$2 seconds=$3 rate=$4 raw=$WORK/load.txt
    local url=http://127.0.0.1:$port/
    local args=(-t1 -c"$FIXED_CONNECTIONS" --rps="$((rate / FIXED_CONNECTIONS))" -D "$seconds")
    case $test in
    http1) args+=(--h1) ;;
    h2c) args+=(-m"$FIXED_STREAMS") ;;
    grpc)
        url=http://127.0.0.1:$port$GRPC_PATH
        args+=(-m"$FIXED_STREAMS" "${GRPC_ARGS[@]}")
        ;;
    *) die "unknown test $test" ;;
    esac
    rm -f "$WORK/h2load.log"
    timeout "$((seconds + 30))" nice -n "$NICE" taskset -c "$LOAD_CPU" \
        h2load "${args[@]}" --log-file="$WORK/h2load.log" "$url" >"$raw" 2>&1 ||
        die "h2load failed: $(tail -n 5 "$raw")"
    local cpu_seconds
    cpu_seconds=$(children_cpu_seconds)
    echo "$(parse_h2load "$raw" "$WORK/h2load.log") $cpu_seconds"
}

parse_wrk() {
    awk '
        function ms(v) {
            if (v ~ /us$/) return v / 1000
            if (v ~ /ms$/) return v + 0
            if (v ~ /s$/) return v * 1000
            return v + 0
        }
        /^ +50%/ { p50 = ms($2) }
        /^ +99%/ { p99 = ms($2) }
        / requests in / { requests = $1; seconds = $4 + 0 }
        /Non-2xx or 3xx responses:/ { errors += $NF; failed = $NF }
        /Socket errors:/ {
            gsub(/,/, "")
            errors += $4 + $6 + $8 + $10
        }
        END {
            rps = seconds > 0 ? (requests - failed) / seconds : 0
            printf "%.1f %.3f %.3f %d\n", rps, p50, p99, errors
        }
    ' "$1"
}

# h2load 1.52 prints no percentiles: take them from its per-request log (third column:
# microseconds from sending the request to the end of its response).
parse_h2load() {
    local raw=$1 requests=$2 rps errors percentiles
    # Successful requests per second: failed requests would flatter a target.
    rps=$(awk '/^finished in/ { seconds = $3 + 0 }
               /^requests:/ { gsub(/,/, ""); ok = $8 }
               END { printf "%.1f", (seconds > 0 ? ok / seconds : 0) }' "$raw")
    # failed (non-2xx/3xx) + errored + timed out
    errors=$(awk '/^requests:/ { gsub(/,/, ""); print $10 + $12 + $14 }' "$raw")
    percentiles=$(cut -f3 "$requests" | sort -n | awk '
        { v[NR] = $1 }
        function at(p,   i) { i = int(p * NR); if (i < p * NR) i++; if (i < 1) i = 1; return v[i] / 1000 }
        END { if (NR == 0) print "0 0"; else printf "%.3f %.3f\n", at(0.50), at(0.99) }')
    printf '%s %s %s\n' "${rps:-0}" "$percentiles" "$errors"
}

# A short check that a target answers a test with success before it is measured.
smoke() {
    local test=$1 target=$2 port raw=$WORK/smoke.txt
    port=$(port_for "$test" "$target")
    local args=(-n 20 -c 1 -t 1)
    local url=http://127.0.0.1:$port/
    case $test in
    http1) args+=(--h1) ;;
    grpc)
        url=http://127.0.0.1:$port$GRPC_PATH
        args+=("${GRPC_ARGS[@]}")
        ;;
    esac
    timeout 20 h2load "${args[@]}" "$url" >"$raw" 2>&1 || true
    grep -q '20 succeeded' "$raw" ||
        die "$target does not answer $test: $(grep -E '^(requests|status codes):' "$raw" | tr '\n' ' ')"
}

# One measured run; appends "rps p50 p99 errors cpu% rss_kib other%" to the results
# file: $test.$target at saturation, or, given a rate $3 (req/s in all), fixed.$test.$target.
measure() {
    local test=$1 target=$2 rate=${3:-} port pid ticks0 ticks1 t0 t1 peak=0 rss cpu
    local file=$WORK/results/$test.$target what=$test
    if [[ -n $rate ]]; then
        file=$WORK/results/fixed.$test.$target
        what="$test at $rate req/s"
    fi
    port=$(port_for "$test" "$target")
    pid=${PID[$target]}
    wait_quiet
    local upstream0 upstream1 busy0 busy1
    upstream0=$(cpu_ticks "${PID[direct]}")
    busy0=$(machine_busy_ticks)
    ticks0=$(cpu_ticks "$pid")
    t0=$(date +%s.%N)
    if [[ -n $rate ]]; then
        load_fixed "$test" "$port" "$DURATION" "$rate" >"$WORK/line.txt" &
    else
        load "$test" "$port" "$DURATION" >"$WORK/line.txt" &
    fi
    local loader=$!
    while kill -0 "$loader" 2>/dev/null; do
        rss=$(rss_kib "$pid")
        ((rss > peak)) && peak=$rss
        sleep 0.5
    done
    wait "$loader" || die "load on $target ($what) failed"
    t1=$(date +%s.%N)
    ticks1=$(cpu_ticks "$pid")
    busy1=$(machine_busy_ticks)
    upstream1=$(cpu_ticks "${PID[direct]}")
    local rps p50 p99 errors load_seconds proxy_ticks other hz
    read -r rps p50 p99 errors load_seconds <"$WORK/line.txt"
    hz=$(getconf CLK_TCK)
    proxy_ticks=$((ticks1 - ticks0))
    if [[ $target == direct ]]; then
        proxy_ticks=0
        cpu=nan
        peak=nan
    else
        cpu=$(awk -v d="$proxy_ticks" -v hz="$hz" -v t0="$t0" -v t1="$t1" \
            'BEGIN { printf "%.1f", 100 * d / hz / (t1 - t0) }')
    fi
    # What the machine did beyond the proxy, the upstream and the load generator.
    other=$(awk -v busy=$((busy1 - busy0)) -v ours=$((proxy_ticks + upstream1 - upstream0)) \
        -v load="$load_seconds" -v hz="$hz" -v t0="$t0" -v t1="$t1" \
        'BEGIN { x = 100 * ((busy - ours) / hz - load) / (t1 - t0); printf "%.1f", (x < 0 ? 0 : x) }')
    echo "$rps $p50 $p99 $errors $cpu $peak $other" >>"$file"
    log "$what $target: ${rps} req/s p50=${p50}ms p99=${p99}ms errors=$errors cpu=$cpu% rss=${peak}KiB other=$other%"
}

# ---------------------------------------------------------------- fixed rate

declare -A FIXED_RPS # test -> req/s in all of the fixed-rate phase (0: not run)

# Sets FIXED_RPS for every test: FIXED_RATE_<TEST>, else FIXED_RATE, else half of nginx's
# median saturation req/s, rounded to a whole number of requests per connection.
fixed_rates() {
    local test var rate per
    for test in $TESTS; do
        var=FIXED_RATE_${test^^}
        rate=${!var:-$FIXED_RATE}
        if [[ -z $rate ]]; then
            if [[ ! -s $WORK/results/$test.nginx ]]; then
                log "fixed rate: no nginx saturation figure for $test and no $var; skipping $test"
                FIXED_RPS[$test]=0
                continue
            fi
            rate=$(awk -v r="$(median "$WORK/results/$test.nginx" 1)" 'BEGIN { printf "%d", r / 2 }')
        fi
        [[ $rate =~ ^[0-9]+$ ]] || die "$var / FIXED_RATE must be a whole number of requests/s, not '$rate'"
        if ((rate == 0)); then
            FIXED_RPS[$test]=0
            continue
        fi
        per=$(((rate + FIXED_CONNECTIONS / 2) / FIXED_CONNECTIONS))
        ((per >= 1)) || per=1
        FIXED_RPS[$test]=$((per * FIXED_CONNECTIONS))
        log "fixed rate for $test: ${FIXED_RPS[$test]} req/s ($FIXED_CONNECTIONS connections × $per)"
    done
}

# Whether the median achieved rate of "$test.$target" in the fixed-rate phase is below
# 95 % of the rate asked.
fixed_short() {
    local rps
    rps=$(val "fixed.$1.$2.rps")
    [[ $rps != nan ]] && awk -v a="$rps" -v r="${FIXED_RPS[$1]:-0}" 'BEGIN { exit !(a < 0.95 * r) }'
}

# ---------------------------------------------------------------- memory

# Idle RSS of every proxy, then RSS with $IDLE_CONNECTIONS keep-alive connections held.
memory() {
    local target port idle held anon
    for target in remora nginx haproxy; do
        [[ " $TARGETS " == *" $target "* ]] || continue
        idle=$(rss_kib "${PID[$target]}")
        anon=$(anon_kib "${PID[$target]}")
        port=$(port_for http1 "$target")
        start_pinned "$LOAD_CPU" "hold-$target" \
            "$UPSTREAM_BIN" hold "127.0.0.1:$port" "$IDLE_CONNECTIONS" 120
        local holder=$STARTED_PID ready=0
        for _ in $(seq 600); do
            grep -qs '^ready' "$WORK/hold-$target.log" && ready=1 && break
            kill -0 "$holder" 2>/dev/null || break
            sleep 0.1
        done
        ((ready)) || die "holding $IDLE_CONNECTIONS connections to $target failed: $(tail -n 3 "$WORK/hold-$target.log")"
        sleep 1
        held=$(rss_kib "${PID[$target]}")
        kill -TERM "$holder" 2>/dev/null || true
        wait "$holder" 2>/dev/null || true
        forget "$holder"
        echo "$idle $held $anon" >"$WORK/results/memory.$target"
        log "memory $target: idle ${idle} KiB, with $IDLE_CONNECTIONS connections ${held} KiB"
        sleep 1
    done
}

# ---------------------------------------------------------------- report

# Median of column $2 of file $1 ("nan" when the column holds nan).
median() {
    awk -v c="$2" '{ print $c }' "$1" | sort -g | awk '
        { v[NR] = $1 }
        END {
            if (NR == 0 || v[1] == "nan") { print "nan"; exit }
            if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2
        }'
}

# Formats awk expression $1 over the medians with printf format $2, "—" when missing.
calc() {
    [[ $1 == *nan* ]] && echo "—" && return
    local out
    out=$(awk -v fmt="$2" "BEGIN { x = $1; printf fmt, x }" 2>/dev/null) || out="—"
    [[ $out == *nan* || $out == *inf* ]] && out="—"
    echo "$out"
}

declare -A M # "$test.$target.$metric" -> median

# Saturation medians under "$test.$target.$metric", fixed-rate ones under
# "fixed.$test.$target.$metric".
collect() {
    local test target file key
    for test in $TESTS; do
        for target in $TARGETS; do
            for key in "$test.$target" "fixed.$test.$target"; do
                file=$WORK/results/$key
                [[ -s $file ]] || continue
                M[$key.rps]=$(median "$file" 1)
                M[$key.p50]=$(median "$file" 2)
                M[$key.p99]=$(median "$file" 3)
                M[$key.errors]=$(awk '{ s += $4 } END { print s + 0 }' "$file")
                M[$key.cpu]=$(median "$file" 5)
                M[$key.rss]=$(median "$file" 6)
                M[$key.other]=$(awk '{ if ($7 > m) m = $7 } END { print m + 0 }' "$file")
            done
        done
    done
}

val() { echo "${M[$1]:-nan}"; }

ratio() { # rps of $1 over rps of $2 in test $3
    local a b
    a=$(val "$3.$1.rps")
    b=$(val "$3.$2.rps")
    [[ $a == nan || $b == nan || $1 == "$2" ]] && echo "—" && return
    calc "$a / $b" "%.2f×"
}

test_label() {
    case $1 in
    http1) echo "HTTP/1.1" ;;
    h2c) echo "h2c" ;;
    grpc) echo "gRPC unary" ;;
    esac
}

report() {
    local test target label
    echo "### Throughput and latency at saturation (median of $ROUNDS rounds of ${DURATION}s)"
    echo
    echo "| test | target | req/s | p50 ms | p99 ms | p99 added ms | × direct | × nginx | × HAProxy | proxy CPU % | proxy RSS under load MiB | errors | other CPU % (max) |"
    echo "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    for test in $TESTS; do
        label=$(test_label "$test")
        for target in $TARGETS; do
            [[ -n ${M[$test.$target.rps]:-} ]] || continue
            local added="—"
            if [[ $target != direct ]]; then
                added=$(calc "$(val "$test.$target.p99") - $(val "$test.direct.p99")" "%+.3f")
            fi
            printf '| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n' \
                "$label" "$target" \
                "$(calc "$(val "$test.$target.rps")" "%.0f")" \
                "$(calc "$(val "$test.$target.p50")" "%.3f")" \
                "$(calc "$(val "$test.$target.p99")" "%.3f")" \
                "$added" \
                "$(ratio "$target" direct "$test")" \
                "$(ratio "$target" nginx "$test")" \
                "$(ratio "$target" haproxy "$test")" \
                "$(calc "$(val "$test.$target.cpu")" "%.0f")" \
                "$(calc "$(val "$test.$target.rss") / 1024" "%.1f")" \
                "$(val "$test.$target.errors")" \
                "$(calc "$(val "$test.$target.other")" "%.0f")"
        done
    done
    echo
    fixed_report
    echo "### Memory (VmRSS; nginx counts master + worker)"
    echo
    echo "| proxy | idle MiB | idle private (RssAnon) MiB | with $IDLE_CONNECTIONS idle keep-alive connections MiB | KiB per idle connection |"
    echo "| --- | ---: | ---: | ---: | ---: |"
    for target in remora nginx haproxy; do
        local file=$WORK/results/memory.$target idle held anon
        [[ -s $file ]] || continue
        read -r idle held anon <"$file"
        printf '| %s | %s | %s | %s | %s |\n' "$target" \
            "$(calc "$idle / 1024" "%.1f")" "$(calc "$anon / 1024" "%.1f")" "$(calc "$held / 1024" "%.1f")" \
            "$(calc "($held - $idle) / $IDLE_CONNECTIONS" "%.1f")"
    done
    echo
    targets_report
}

fixed_report() {
    local test target label rate achieved added
    echo "### Latency at a fixed rate (median of $ROUNDS rounds of ${DURATION}s)"
    echo
    if [[ $FIXED_RATE == 0 ]]; then
        echo "Not run (FIXED_RATE=0)."
        echo
        return
    fi
    echo "h2load --rps, the rate in all over $FIXED_CONNECTIONS connections (h2c and gRPC: up to" \
        "$FIXED_STREAMS streams each); by default half of nginx's saturation req/s." \
        "(!): achieved less than 95 % of the rate, so that row's latency is not at the rate."
    echo
    echo "| test | rate req/s | target | achieved req/s | p50 ms | p99 ms | p99 added ms | proxy CPU % | errors | other CPU % (max) |"
    echo "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    for test in $TESTS; do
        label=$(test_label "$test")
        rate=${FIXED_RPS[$test]:-0}
        for target in $TARGETS; do
            [[ -n ${M[fixed.$test.$target.rps]:-} ]] || continue
            achieved=$(calc "$(val "fixed.$test.$target.rps")" "%.0f")
            fixed_short "$test" "$target" && achieved="$achieved (!)"
            added="—"
            if [[ $target != direct ]]; then
                added=$(calc "$(val "fixed.$test.$target.p99") - $(val "fixed.$test.direct.p99")" "%+.3f")
            fi
            printf '| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n' \
                "$label" "$rate" "$target" "$achieved" \
                "$(calc "$(val "fixed.$test.$target.p50")" "%.3f")" \
                "$(calc "$(val "fixed.$test.$target.p99")" "%.3f")" \
                "$added" \
                "$(calc "$(val "fixed.$test.$target.cpu")" "%.0f")" \
                "$(val "fixed.$test.$target.errors")" \
                "$(calc "$(val "fixed.$test.$target.other")" "%.0f")"
        done
    done
    echo
}

# The targets' "p99 added at a fixed rate" line for test $1 (label $2, at most $3 ms).
fixed_verdict() {
    local test=$1 label=$2 wanted=$3 rate=${FIXED_RPS[$1]:-0} v mark=""
    v=$(calc "$(val "fixed.$test.remora.p99") - $(val "fixed.$test.direct.p99")" "%.3f")
    if fixed_short "$test" remora || fixed_short "$test" direct; then mark=" (!)"; fi
    local at="not run"
    ((rate > 0)) && at="$rate req/s"
    verdict "$label p99 added at a fixed rate ($at)" "$v ms$mark" \
        "≤ $(printf '%.3f' "$wanted") ms" "$v <= $wanted"
}

# One line of the speed targets (issue #17): name, measured, wanted, met (1/0).
verdict() {
    local met=n/a
    if [[ $4 != *nan* && $2 != *—* ]]; then
        met=$(awk "BEGIN { print (($4) ? \"met\" : \"missed\") }" 2>/dev/null || echo "n/a")
    fi
    printf '| %s | %s | %s | %s |\n' "$1" "$2" "$3" "$met"
}

targets_report() {
    echo "### Targets of issue #17 (remora)"
    echo
    echo "| target | measured | wanted | verdict |"
    echo "| --- | ---: | ---: | --- |"
    local v best
    if [[ -n ${M[http1.remora.rps]:-} ]]; then
        local r=${M[http1.remora.rps]}
        v=$(val http1.nginx.rps)
        verdict "HTTP/1.1 req/s vs nginx" "$(calc "$r / $v" "%.2f×")" "≥ 1.00×" "$r >= $v"
        v=$(val http1.haproxy.rps)
        verdict "HTTP/1.1 req/s vs HAProxy" "$(calc "$r / $v" "%.2f×")" "≥ 1.00×" "$r >= $v"
        v=$(val http1.direct.rps)
        verdict "HTTP/1.1 req/s vs direct" "$(calc "$r / $v" "%.2f×")" "≥ 0.95×" "$r >= 0.95 * $v"
        fixed_verdict http1 HTTP/1.1 0.3
    fi
    local test label
    for test in h2c grpc; do
        [[ -n ${M[$test.remora.rps]:-} ]] || continue
        [[ $test == h2c ]] && label=h2c || label=gRPC
        local r=${M[$test.remora.rps]}
        best=$(awk -v a="$(val "$test.nginx.rps")" -v b="$(val "$test.haproxy.rps")" \
            'BEGIN { if (a == "nan") a = 0; if (b == "nan") b = 0; print ((a > b) ? a : b) }')
        verdict "$label req/s vs better of nginx/HAProxy" "$(calc "$r / $best" "%.2f×")" "≥ 1.10×" "$r >= 1.1 * $best"
        fixed_verdict "$test" "$label" 1.0
    done
    local file=$WORK/results/memory.remora idle held anon
    if [[ -s $file ]]; then
        read -r idle held anon <"$file"
        verdict "idle RSS" "$(calc "$idle / 1024" "%.1f") MiB" "≤ 8 MB (7.6 MiB)" "$idle * 1024 <= 8000000"
        verdict "idle private memory (RssAnon)" "$(calc "$anon / 1024" "%.1f") MiB" "≤ 8 MB (7.6 MiB)" "$anon * 1024 <= 8000000"
        v=$(calc "($held - $idle) / $IDLE_CONNECTIONS" "%.1f")
        verdict "per idle keep-alive connection" "$v KiB" "≤ 10 KiB" "$v <= 10"
    fi
}

# ---------------------------------------------------------------- main

main() {
    install_tools
    build
    mkdir -p "$OUT"
    prepare
    start_all

    local test target
    for test in $TESTS; do
        for target in $TARGETS; do smoke "$test" "$target"; done
    done
    log "all targets answer; memory with $IDLE_CONNECTIONS idle connections"
    memory

    log "warm-up: ${WARMUP}s per target and test"
    for test in $TESTS; do
        for target in $TARGETS; do
            load "$test" "$(port_for "$test" "$target")" "$WARMUP" >/dev/null
        done
    done

    local round order
    read -r -a order <<<"$TARGETS"
    for round in $(seq "$ROUNDS"); do
        log "round $round of $ROUNDS"
        for test in $TESTS; do
            for target in "${order[@]}"; do measure "$test" "$target"; done
        done
        # Rotate so that no target always runs first or right after another.
        order=("${order[@]:1}" "${order[0]}")
    done

    # The p99 added at a moderate rate, which every target should sustain: at saturation
    # latency is mostly queueing, so it says little about what a proxy adds per request.
    if [[ $FIXED_RATE != 0 ]]; then
        fixed_rates
        read -r -a order <<<"$TARGETS"
        for round in $(seq "$ROUNDS"); do
            log "fixed rate: round $round of $ROUNDS"
            for test in $TESTS; do
                ((FIXED_RPS[$test] > 0)) || continue
                for target in "${order[@]}"; do measure "$test" "$target" "${FIXED_RPS[$test]}"; done
            done
            order=("${order[@]:1}" "${order[0]}")
        done
    fi

    collect
    {
        echo "## remora benchmark, $(date -u '+%Y-%m-%d %H:%M UTC')"
        echo
        echo "$(nproc) CPUs, $(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo);" \
            "load generator + upstream on CPU $LOAD_CPU, proxy on CPU $PROXY_CPU, one worker each;" \
            "$CONNECTIONS connections (h2: × $STREAMS streams)."
        echo
        report
    } | tee "$OUT/latest.md"
}

main "$@"
