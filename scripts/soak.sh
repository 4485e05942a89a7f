#!/usr/bin/env bash
# The long run: `remora demo` (example services, a sidecar each and a load generator
# in one process, the demo's fault scenes cycling: flaky instances, an outage that
# opens the breaker, recovery, bursts, instances leaving and joining) for DURATION,
# sampling every EVERY seconds the process's RSS, private memory, file descriptors,
# threads and the tasks alive on its runtime (`remora_runtime_tasks`). Prints the
# samples as a table, a plot of each column, and the growth of each (the mean of the
# last quarter of the samples after WARMUP over the first quarter's); exits 1 when
# anything grew by more than GROWTH_MAX percent or the demo did not end cleanly.
#
# Usage: bash scripts/soak.sh   (DURATION=3600 seconds, EVERY=60, WARMUP=120,
# GROWTH_MAX=10, REMORA_BIN=path to a prebuilt remora)
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-3600}
EVERY=${EVERY:-60}
WARMUP=${WARMUP:-120}
GROWTH_MAX=${GROWTH_MAX:-10}

if [ -z "${REMORA_BIN:-}" ]; then
    cargo build --release --locked --bin remora >&2
    REMORA_BIN=${CARGO_TARGET_DIR:-target}/release/remora
fi
WORK=$(mktemp -d)
demo_pid=
cleanup() {
    [ -n "$demo_pid" ] && kill "$demo_pid" 2>/dev/null || true
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

"$REMORA_BIN" demo --duration "${DURATION}s" >"$WORK/demo.out" 2>"$WORK/demo.err" &
demo_pid=$!
metrics=
for _ in $(seq 1 300); do
    metrics=$(grep -o -m1 'http://[0-9.:]*/metrics' "$WORK/demo.out" 2>/dev/null || true)
    [ -n "$metrics" ] && break
    kill -0 "$demo_pid" 2>/dev/null || break
    sleep 0.1
done
[ -n "$metrics" ] || {
    echo "soak.sh: the demo printed no metrics address:" >&2
    cat "$WORK/demo.err" >&2
    exit 1
}
echo "soak.sh: remora demo for ${DURATION}s (pid $demo_pid), sampling every ${EVERY}s, runtime tasks from $metrics" >&2

status_kib() { awk -v field="$1:" '$1 == field {print $2}' "/proc/$demo_pid/status"; }
sample() {
    local elapsed=$1 tasks
    tasks=$(curl -fsS --max-time 5 "$metrics" 2>/dev/null |
        awk '$1 == "remora_runtime_tasks" {print $2}')
    printf '%s %s %s %s %s %s\n' "$elapsed" "$(status_kib VmRSS)" "$(status_kib RssAnon)" \
        "$(find "/proc/$demo_pid/fd" -mindepth 1 -maxdepth 1 | wc -l)" \
        "$(status_kib Threads)" "${tasks:-nan}"
}

started=$(date +%s)
next=0
while kill -0 "$demo_pid" 2>/dev/null; do
    now=$(($(date +%s) - started))
    if [ "$now" -ge "$next" ]; then
        sample "$now" >>"$WORK/samples" || true
        next=$((next + EVERY))
    fi
    sleep 1
done
exit_code=0
wait "$demo_pid" || exit_code=$?
demo_pid=

echo "## remora soak: \`remora demo --duration ${DURATION}s\`, $(date -u '+%Y-%m-%d %H:%M UTC')"
echo
echo "| minute | RSS MiB | private MiB | fds | threads | runtime tasks |"
echo "|---:|---:|---:|---:|---:|---:|"
awk '{ printf "| %.1f | %.1f | %.1f | %d | %d | %s |\n", $1 / 60, $2 / 1024, $3 / 1024, $4, $5, $6 }' "$WORK/samples"
echo
echo "Each column from its smallest (left) to its largest (right) value over the run:"
echo
echo '```'
awk 'BEGIN { split("RSS private fds threads tasks", names, " ") }
    { for (c = 2; c <= 6; c++) { v[NR, c] = $c; if (NR == 1 || $c < lo[c]) lo[c] = $c; if (NR == 1 || $c > hi[c]) hi[c] = $c } n = NR }
    END {
        split("▁ ▂ ▃ ▄ ▅ ▆ ▇ █", bars, " ")
        for (c = 2; c <= 6; c++) {
            line = ""
            for (i = 1; i <= n; i++) {
                level = (hi[c] > lo[c]) ? int((v[i, c] - lo[c]) / (hi[c] - lo[c]) * 7.999) + 1 : 1
                line = line bars[level]
            }
            printf "%-8s %s  %s .. %s\n", names[c - 1], line, lo[c], hi[c]
        }
    }' "$WORK/samples"
echo '```'
echo
verdict=0
# The mean of the first quarter of the samples after WARMUP against the last quarter's:
# connections and tasks come and go with the scenes, a leak only grows.
growth=$(awk -v warm="$WARMUP" -v max="$GROWTH_MAX" '
    $1 >= warm { n++; for (c = 2; c <= 6; c++) v[n, c] = $c }
    END {
        split("RSS private fds threads tasks", names, " ")
        q = int(n / 4); if (q < 1) q = 1
        bad = 0
        for (c = 2; c <= 6; c++) {
            a = 0; b = 0
            for (i = 1; i <= q; i++) { a += v[i, c]; b += v[n - q + i, c] }
            if (a == 0 || v[1, c] == "nan") continue
            g = (b - a) * 100 / a
            printf "%s %+.1f%%, ", names[c - 1], g
            if (g > max) bad = 1
        }
        printf "\n%d\n", bad
    }' "$WORK/samples")
echo "Growth, mean of the last quarter of the samples after ${WARMUP}s over the first quarter's: $(echo "$growth" | head -n1 | sed 's/, $//')"
[ "$(echo "$growth" | tail -n1)" = 0 ] || verdict=1
echo "Demo exit code: $exit_code; its summary, and its first scenes (of $(grep -c '^ *[0-9.]*s-[0-9.]*s ' "$WORK/demo.out" || true)):"
echo
echo '```'
# awk reads to the end: a reader that stopped early would fail the pipeline (SIGPIPE).
awk '/^summary over/ { on = 1 } /^scenes:/ { on = 2 } on == 1 { print } on == 2 && shown++ < 40 { print }' \
    "$WORK/demo.out"
echo '```'
[ "$exit_code" = 0 ] || verdict=1
exit "$verdict"
