#!/usr/bin/env bash
# Builds remora with profile-guided optimization (PGO): the release build the benchmarks
# measure and the Dockerfile ships.
#
# 1. An instrumented build of remora (rustc -Cprofile-generate), in target/pgo-generate.
# 2. Training: that build proxies the bench upstream's traffic in every way remora is
#    commonly run (HTTP/1.1, h2c and unary gRPC; bare, with every policy, traced, with
#    the access log on; between two sidecars over mutual TLS), each run started from a
#    config and stopped with SIGTERM, as a user runs it. Each run writes its profile.
# 3. llvm-profdata merges the profiles into target/pgo/remora-<its hash>.profdata, and
#    orders the functions by when the runs first called them (.order, next to it).
# 4. The release build with -Cprofile-use and the linker grouping the code by heat
#    (-z keep-text-section-prefix) and in that order (--symbol-ordering-file): the code
#    an idle remora has run sits together, apart from code the training never ran, so
#    it maps fewer pages of its binary. Relative relocations are packed (DT_RELR) when
#    the C library reads them (glibc 2.36 on).
# 5. That build runs once more, idle, under callgrind: the functions it runs that the
#    profile could not order (the standard library's, C's) go first, and remora's crate
#    is linked again (a few minutes; its dependencies are not rebuilt).
#
# The result is target/<host triple>/release/remora (its absolute path is the last line
# printed). A plain `cargo build --release` stays as it was, without PGO; the
# profile only steers optimization, so a stale one costs speed, never correctness
# (functions changed since it was taken are optimized without it).
#
# Needs: h2load (nghttp2-client), protoc, curl, valgrind, and an llvm-profdata that reads the
# profiles of rustc's LLVM (Debian 12's llvm-19 reads those of rustc 1.95, built on LLVM
# 22); installed when missing. Usage: bash scripts/pgo.sh  (REQUESTS=20000 per run by default;
# BASE_PORT=28600 and the 9 ports after it; CARGO_FEATURES=... builds with them;
# PGO_TRAINEE=path trains an instrumented build made before instead of building one)
set -euo pipefail
cd "$(dirname "$0")/.."

REQUESTS=${REQUESTS:-20000}
BASE_PORT=${BASE_PORT:-28600}
TARGET=$(rustc -vV | sed -n 's/^host: //p')
TARGET_DIR=${CARGO_TARGET_DIR:-target}

# shellcheck source=bench/common.sh
source bench/common.sh
install_missing h2load=nghttp2-client protoc=protobuf-compiler curl=curl >&2

# llvm-profdata: rustup's llvm-tools when installed, else Debian's llvm-19.
profdata=$(find "$(rustc --print sysroot)" -name llvm-profdata -type f 2>/dev/null | head -n 1)
if [ -z "$profdata" ]; then
    install_missing llvm-profdata-19=llvm-19 >&2
    profdata=llvm-profdata-19
fi

# `glibc_at_least MAJOR MINOR`: whether this machine's C library is that version or newer.
glibc_at_least() {
    local have
    have=$(getconf GNU_LIBC_VERSION 2>/dev/null | sed -n 's/^glibc //p')
    [ -n "$have" ] && [ "$(printf '%s\n%s\n' "$1.$2" "$have" | sort -V | head -n 1)" = "$1.$2" ]
}

features=()
[ -z "${CARGO_FEATURES:-}" ] || features=(--features "$CARGO_FEATURES")

# --target keeps RUSTFLAGS off build scripts and proc macros: only remora's code (and
# its dependencies') is instrumented and optimized with the profile.
GENERATE_DIR=$TARGET_DIR/pgo-generate
PROFILE_DIR=$(realpath -m "$TARGET_DIR/pgo")
rm -rf "$PROFILE_DIR"
mkdir -p "$PROFILE_DIR/raw"
if [ -z "${PGO_TRAINEE:-}" ]; then
    # -pgo-temporal-instrumentation: each run also records the order in which its
    # functions were first called, from which the linker's function order is made.
    RUSTFLAGS="-Cprofile-generate=$PROFILE_DIR/raw -Cllvm-args=-pgo-temporal-instrumentation" \
        CARGO_TARGET_DIR=$GENERATE_DIR \
        cargo build --release --locked "${features[@]}" --target "$TARGET" --bin remora >&2
fi
cargo build --release --locked "${features[@]}" --example bench_upstream \
    --example otlp_sink >&2
TRAINEE=${PGO_TRAINEE:-$GENERATE_DIR/$TARGET/release/remora}
HELPERS=$TARGET_DIR/release/examples

with_work_dir
UPSTREAM_PORT=$BASE_PORT
PORT=$((BASE_PORT + 1))
ADMIN_PORT=$((BASE_PORT + 2))
OTLP_PORT=$((BASE_PORT + 3))
"$HELPERS/bench_upstream" serve "$UPSTREAM_PORT" >"$WORK/upstream.log" 2>&1 &
pids+=($!)
"$HELPERS/otlp_sink" "$OTLP_PORT" >"$WORK/sink.log" 2>&1 &
pids+=($!)
printf '\x00\x00\x00\x00\x07\x0a\x05hello' >"$WORK/echo-request.bin"
# Every run of the trainee writes a profile of its own.
export LLVM_PROFILE_FILE="$PROFILE_DIR/raw/remora-%p.profraw"

# `load URL TEST [N [CONNECTIONS [STREAMS]]]` sends N requests (REQUESTS by default) of
# TEST (http1, h2c or grpc) to URL over CONNECTIONS connections (8), h2c and gRPC with
# up to STREAMS streams on each (10), and fails unless every one succeeded.
load() {
    local url=$1 test=$2 n=${3:-$REQUESTS} connections=${4:-8} streams=${5:-10} args
    args=(-c "$connections")
    case $test in
        http1) args+=(--h1) ;;
        h2c) args+=(-m "$streams") ;;
        grpc)
            args+=(-m "$streams" -d "$WORK/echo-request.bin"
                -H 'content-type: application/grpc' -H 'te: trailers')
            url=$url/remora.echo.v1.Echo/Unary
            ;;
    esac
    h2load "${args[@]}" -n "$n" "$url" >"$WORK/h2load.out" 2>&1 || true
    grep -q "$n succeeded" "$WORK/h2load.out" || {
        echo "pgo.sh: not every request succeeded ($test, $url):" >&2
        cat "$WORK/h2load.out" >&2
        exit 1
    }
}

# `wait_live NAME ADMIN_PORT SECONDS` waits until the remora NAME (its log in
# WORK/NAME.log) answers on its admin port, and fails after SECONDS.
wait_live() {
    local name=$1 admin=$2 seconds=$3
    for _ in $(seq 1 $((seconds * 10))); do
        curl -sf -o /dev/null "http://127.0.0.1:$admin/live" && return 0
        sleep 0.1
    done
    echo "pgo.sh: remora ($name) did not start:" >&2
    cat "$WORK/$name.log" >&2
    exit 1
}

# `start NAME CONFIG_FILE RUNTIME` runs the trainee on a config with that runtime
# (current-thread, as remora runs when it may use one CPU, or multi-thread, on two
# workers) and waits for its admin port; `stop PID` ends it with SIGTERM, so that it
# writes its profile on the way out.
start() {
    local name=$1 config=$2 runtime=$3 admin
    admin=$(sed -n 's/.*listen: "127.0.0.1:\([0-9]*\)".*/\1/p' "$config" | head -n 1)
    "$TRAINEE" validate "$config" >/dev/null
    LLVM_PROFILE_FILE="$PROFILE_DIR/raw/remora-$name-$runtime-%p.profraw" \
        REMORA_RUNTIME=$runtime TOKIO_WORKER_THREADS=2 "$TRAINEE" run --config "$config" \
        >"$WORK/$name.log" 2>&1 &
    started=$!
    wait_live "$name" "$admin" 10
}
stop() {
    kill -TERM "$1"
    wait "$1" || {
        echo "pgo.sh: remora did not exit cleanly; its profile may be missing" >&2
        exit 1
    }
}

# One sidecar in front of the upstream, in each benchmarked config, on each runtime: code
# the training never runs is optimized for size, as cold.
for runtime in current-thread multi-thread; do
    for variant in plain policies traced logged; do
        template "$variant" | sed -e "s/@REMORA_ADMIN_PORT@/$ADMIN_PORT/" \
            -e "s/@REMORA_PORT@/$PORT/" -e "s/@UPSTREAM_PORT@/$UPSTREAM_PORT/" \
            -e "s/@OTLP_PORT@/$OTLP_PORT/" >"$WORK/$variant.yaml"
        start "$variant" "$WORK/$variant.yaml" "$runtime"
        for test in http1 h2c grpc; do
            load "http://127.0.0.1:$PORT" "$test"
        done
        stop "$started"
        echo "pgo.sh: trained on $variant, $runtime" >&2
    done
done

# Two sidecars over mutual TLS (bench/common.sh's mesh_config, as bench/mtls.sh runs
# them): a client sidecar's outbound to a server sidecar's strict inbound, which
# forwards to the upstream.
mesh_certs "$TRAINEE" "$WORK" pgo.example
MESH_PORT=$((BASE_PORT + 5))
for role in client server; do
    mesh_config "$role" "$MESH_PORT" "$WORK" "$UPSTREAM_PORT" mtls >"$WORK/$role.yaml"
done
start server "$WORK/server.yaml" current-thread
server=$started
start client "$WORK/client.yaml" multi-thread
client=$started
for test in http1 h2c grpc; do
    load "http://127.0.0.1:$MESH_PORT" "$test"
done
stop "$client"
stop "$server"
echo "pgo.sh: trained on mutual TLS" >&2

"$profdata" merge -o "$PROFILE_DIR/merged.profdata" "$PROFILE_DIR"/raw/*.profraw >&2
# Named by its content: cargo tracks RUSTFLAGS, not the file they name, so a new profile
# under an old name would leave the dependencies built with the old one.
profile=$PROFILE_DIR/remora-$(sha256sum "$PROFILE_DIR/merged.profdata" | cut -c1-16).profdata
mv "$PROFILE_DIR/merged.profdata" "$profile"
# The function order, so that an idle remora maps as few pages of its code as can be:
# first the functions in the order the first run (the bare config on the current-thread
# runtime, remora's choice on one CPU) called them, startup then the request paths;
# then those the other runs called, in llvm-profdata's order for all the runs.
order=${profile%.profdata}.order
"$profdata" merge -o "$PROFILE_DIR/first.profdata" \
    "$PROFILE_DIR"/raw/remora-plain-current-thread-*.profraw >&2
"$profdata" order "$PROFILE_DIR/first.profdata" --output="$PROFILE_DIR/first.order" >&2
"$profdata" order "$profile" --output="$PROFILE_DIR/all.order" >&2
grep -hv '^#' "$PROFILE_DIR/first.order" "$PROFILE_DIR/all.order" | awk '!seen[$0]++' >"$order"
# The release build, with the profile and with the linker keeping hot, ordinary and
# never-run code apart (-z keep-text-section-prefix) and ordering functions as the
# file given says. The link arguments go to remora's crate alone (`cargo rustc ... --`),
# so a build with another order rebuilds only it, not its dependencies.
link=(-Clink-arg=-Wl,-z,keep-text-section-prefix -Clink-arg=-Wl,--no-warn-symbol-ordering)
# Relative relocations packed (DT_RELR: 8 KB instead of 640 KB of .rela.dyn, read at
# every start) where the C library loads them, from glibc 2.36 (Debian 12) on.
if glibc_at_least 2 36; then
    link+=(-Clink-arg=-Wl,-z,pack-relative-relocs)
fi
# `release_build ORDER_FILE`. -no-pgo-warn-mismatch: functions changed since the profile
# are built without it, silently (they are many when the profile is stale, and none when
# it is fresh).
release_build() {
    RUSTFLAGS="-Cprofile-use=$profile -Cllvm-args=-no-pgo-warn-mismatch" \
        cargo rustc --release --locked "${features[@]}" --target "$TARGET" --bin remora \
        -- "${link[@]}" "-Clink-arg=-Wl,--symbol-ordering-file=$1" >&2
}
release_build "$order"
binary=$(realpath "$TARGET_DIR/$TARGET/release/remora")

# What the profile cannot order: the standard library and the C code (built without
# instrumentation), and functions the build renamed (`.1234`). So the build just made
# runs under callgrind as bench/run.sh runs it before it measures idle memory (the bare
# config on the current-thread runtime, 20 calls of each protocol on one connection);
# callgrind names every function it runs as that build does. Those functions go first,
# and remora's crate is linked again.
install_missing valgrind=valgrind >&2
REMORA_RUNTIME=current-thread valgrind --tool=callgrind --demangle=no \
    --callgrind-out-file="$WORK/idle.callgrind" "$binary" run --config "$WORK/plain.yaml" \
    >"$WORK/idle.log" 2>&1 &
idle=$!
wait_live idle "$ADMIN_PORT" 60
for test in http1 h2c grpc; do
    load "http://127.0.0.1:$PORT" "$test" 20 1 1
done
stop "$idle"
idle_order=${profile%.profdata}.idle.order
# Those functions in the profile's order (the ones it lacks after them), then the rest.
sed -n 's/^c\{0,1\}fn=([0-9]*) //p' "$WORK/idle.callgrind" \
    | awk 'NR == FNR { at[$0] = NR; next } !seen[$0]++ { print ($0 in at ? at[$0] : 1e9) "\t" $0 }' \
        "$order" - \
    | sort -s -n -k1,1 | cut -f2- >"$PROFILE_DIR/idle.functions"
[ -s "$PROFILE_DIR/idle.functions" ] || {
    echo "pgo.sh: callgrind named no function" >&2
    exit 1
}
cat "$PROFILE_DIR/idle.functions" "$order" | awk '!seen[$0]++' >"$idle_order"
release_build "$idle_order"
echo "$binary"
