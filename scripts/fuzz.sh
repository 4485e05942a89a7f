#!/usr/bin/env bash
# Coverage-guided fuzzing of remora's parsers (fuzz/README.md says what each target
# covers). Builds the targets with cargo-fuzz on the nightly toolchain, runs each for the
# given seconds in one process, prints a summary and exits non-zero when one crashed,
# naming the input that did (fuzz/artifacts/<target>/).
#
#   scripts/fuzz.sh [target|all] [seconds]     (default: all, 600 s each)
#
# Environment: FUZZ_SANITIZER (none; `address` to build with ASan: remora forbids
# unsafe code, so the default buys speed), FUZZ_RSS_MB (2048, per target).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

targets=(config http1 http1_answer trace_context timing_headers registry)
which=${1:-all}
seconds=${2:-600}
sanitizer=${FUZZ_SANITIZER:-none}
rss_mb=${FUZZ_RSS_MB:-2048}

# Longest input each target is given: a config file, a request head with some body, an
# upstream's answer head with some body, a few trace headers, one header value, one
# registry answer.
max_len() {
    case $1 in
        config) echo 65536 ;;
        http1) echo 8192 ;;
        http1_answer) echo 4096 ;;
        trace_context) echo 4096 ;;
        timing_headers) echo 64 ;;
        registry) echo 16384 ;;
    esac
}

if [ "$which" = all ]; then
    selected=("${targets[@]}")
elif [[ " ${targets[*]} " == *" $which "* ]]; then
    selected=("$which")
else
    echo "fuzz.sh: unknown target '$which' (targets: ${targets[*]}, or all)" >&2
    exit 2
fi
if ! [[ $seconds =~ ^[1-9][0-9]*$ ]]; then
    echo "fuzz.sh: seconds must be a positive whole number, not '$seconds'" >&2
    exit 2
fi

# What the build needs: Rust with a nightly toolchain, cargo-fuzz, a C++ compiler (for
# libFuzzer) and protoc (remora's build script).
if ! command -v cargo >/dev/null 2>&1 || ! command -v rustup >/dev/null 2>&1; then
    echo "fuzz.sh: cargo and rustup are missing: install Rust with rustup first" >&2
    exit 2
fi
if ! rustup toolchain list | grep -q '^nightly'; then
    echo "installing the nightly toolchain (cargo-fuzz needs it)"
    rustup toolchain install nightly --profile minimal
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    echo "installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi
need=()
command -v c++ >/dev/null 2>&1 || need+=(g++)
command -v protoc >/dev/null 2>&1 || need+=(protobuf-compiler)
if [ ${#need[@]} -gt 0 ]; then
    echo "installing: ${need[*]}"
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}"
fi

# Debug assertions on: an arithmetic overflow is a crash, as in the test build.
build=(cargo +nightly fuzz build --sanitizer "$sanitizer" --debug-assertions)
if [ "$which" = all ]; then
    "${build[@]}"
else
    "${build[@]}" "$which"
fi

# Each run's libFuzzer output stays beside its artifacts (ignored by git).
logs=$root/fuzz/artifacts
failed=0
rows=()
for target in "${selected[@]}"; do
    echo "== $target: ${seconds}s, max_len $(max_len "$target")"
    log="$logs/$target.log"
    mkdir -p "fuzz/corpus/$target" "fuzz/artifacts/$target"
    status=0
    # One process, one job (libFuzzer's default; -jobs=N would fork workers).
    cargo +nightly fuzz run --sanitizer "$sanitizer" --debug-assertions "$target" \
        "$root/fuzz/corpus/$target" -- \
        -max_total_time="$seconds" -max_len="$(max_len "$target")" \
        -rss_limit_mb="$rss_mb" -timeout=10 -print_final_stats=1 \
        -artifact_prefix="$root/fuzz/artifacts/$target/" >"$log" 2>&1 || status=$?
    # What libFuzzer printed last (a line found by none of these greps is no error).
    runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -n 1 || true)
    if [ -z "$runs" ]; then
        runs=$(grep -oE '^#[0-9]+' "$log" | tail -n 1 | tr -d '#' || true)
    fi
    coverage=$(grep -oE 'cov: [0-9]+ ft: [0-9]+' "$log" | tail -n 1 | sed 's/cov: //; s/ ft: /\//' || true)
    artifact=$(grep -oE 'Test unit written to [^ ]+' "$log" | tail -n 1 | sed 's/Test unit written to //' || true)
    crashes=0
    if [ "$status" -ne 0 ]; then
        crashes=1
        failed=1
        grep -A 8 -E 'panicked|ERROR: libFuzzer|SUMMARY' "$log" | head -n 40 || tail -n 40 "$log"
        [ -n "$artifact" ] || artifact="(none written; exit status $status)"
    fi
    rows+=("$(printf '%-15s %12s %16s %8s  %s' "$target" "${runs:-?}" "${coverage:-?}" "$crashes" "${artifact:-}")")
done

echo
printf '%-15s %12s %16s %8s  %s\n' target runs "cov/features" crashes artifact
for row in "${rows[@]}"; do
    echo "$row"
done
if [ "$failed" -ne 0 ]; then
    echo "fuzz.sh: a target crashed: reproduce with" \
        "cargo +nightly fuzz run --sanitizer $sanitizer --debug-assertions <target> <artifact>" >&2
fi
exit "$failed"
