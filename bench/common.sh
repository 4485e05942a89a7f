# What the feature benchmarks share (sourced by overhead.sh and instructions.sh, run
# from the repository root).

# `install_missing COMMAND=PACKAGE ...` installs (apt) the package of each command that
# is not on PATH.
install_missing() {
    local missing=() pair
    for pair in "$@"; do
        command -v "${pair%%=*}" >/dev/null || missing+=("${pair#*=}")
    done
    [ ${#missing[@]} -gt 0 ] || return 0
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}"
}

# `with_work_dir` makes a temporary directory, $WORK, and an array, `pids`, of the
# background processes started: when the script exits, they are killed and it is removed.
with_work_dir() {
    WORK=$(mktemp -d)
    pids=()
    trap cleanup EXIT INT TERM
}

cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$WORK"
}

# The remora configs the feature benchmarks compare.
#
# `template VARIANT` prints a config template with @NAME@ placeholders: `plain` is the
# bare proxy, `policies` carries every resilience policy, `traced` traces every request,
# and `only-<policy>` is the policies config keeping that one policy (timeout, retry,
# breaker, endpoint_breaker, rate_limit, max_in_flight, fallback): what it costs alone.
template() {
    case $1 in
        plain) cat bench/remora.yaml.in ;;
        only-*)
            awk -v keep="${1#only-}" '
                /^    (timeout|retry|breaker|endpoint_breaker|rate_limit|max_in_flight|fallback):/ {
                    key = substr($1, 1, length($1) - 1)
                    if (key != keep) next
                }
                { print }' bench/remora-policies.yaml.in
            ;;
        *) cat "bench/remora-$1.yaml.in" ;;
    esac
}
