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

# `mesh_certs REMORA CERT_DIR TRUST_DOMAIN` issues, as a user does with `remora cert`,
# a trust domain's CA (CERT_DIR/ca, its certificate copied to CERT_DIR/ca.pem) and the
# certificates of the mesh's two sidecars (CERT_DIR/client.pem, CERT_DIR/server.pem and
# their keys), which mesh_config's mtls configs read.
mesh_certs() {
    local remora=$1 dir=$2 domain=$3 role
    "$remora" cert ca --trust-domain "$domain" --out "$dir/ca" >/dev/null
    for role in client server; do
        "$remora" cert issue --ca "$dir/ca" --service "$role" --out "$dir" >/dev/null
    done
    cp "$dir/ca/ca.pem" "$dir/ca.pem"
}

# `mesh_config ROLE BASE CERT_DIR UPSTREAM_PORT [mtls]` prints the config of the client
# or server sidecar of a mesh call: client outbound -> server inbound -> the upstream.
# Ports: BASE the client's outbound, +1 its admin, +2 the server's inbound, +3 its
# admin. With mtls, the sidecars speak mutual TLS (strict inbound, the client checking
# the server's identity) with CERT_DIR/ROLE.pem, CERT_DIR/ROLE-key.pem and
# CERT_DIR/ca.pem, as `remora cert` issues them.
mesh_config() {
    local role=$1 b=$2 certs=$3 upstream=$4 variant=${5:-plain}
    local tls="" inbound_tls="tls: off" service_tls=""
    if [ "$variant" = mtls ]; then
        tls="tls: { cert: $certs/$role.pem, key: $certs/$role-key.pem, bundle: $certs/ca.pem }"
        inbound_tls="tls: strict"
        service_tls="tls: { mesh: true }"
    fi
    if [ "$role" = client ]; then
        cat <<EOF
service: client
admin: { listen: "127.0.0.1:$((b + 1))" }
log: { level: warn }
tracing: { access_log: false }
$tls
services:
  server:
    listen: "127.0.0.1:$b"
    protocol: auto
    endpoints: ["127.0.0.1:$((b + 2))"]
    $service_tls
EOF
    else
        cat <<EOF
service: server
admin: { listen: "127.0.0.1:$((b + 3))" }
log: { level: warn }
tracing: { access_log: false }
$tls
inbound:
  listen: "127.0.0.1:$((b + 2))"
  app: "127.0.0.1:$upstream"
  protocol: auto
  $inbound_tls
EOF
    fi
}
