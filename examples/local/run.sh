#!/usr/bin/env bash
# The example topology on one machine, without Docker: etcd, frontend -> orders ->
# inventory x3 with a remora sidecar each, all on loopback, and the load generator.
# Ctrl-C stops everything. Traces go to $OTLP_ENDPOINT (e.g. http://127.0.0.1:4317)
# when it is set. See README.md "Run it without Docker" for the ports.
set -euo pipefail

cd "$(dirname "$0")/../.."
CONFIG=examples/local/config
PROFILE=${PROFILE:-release}
TARGET_DIR=${CARGO_TARGET_DIR:-target}
BIN=$TARGET_DIR/$PROFILE
RUN_DIR=$(mktemp -d "${TMPDIR:-/tmp}/remora-local.XXXXXX")
export ETCD_ENDPOINT=http://127.0.0.1:${ETCD_PORT:-2379}
export OTLP_ENDPOINT=${OTLP_ENDPOINT:-}

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
if ! command -v protoc >/dev/null; then
  as_root apt-get update && as_root apt-get install -y protobuf-compiler
fi
if ! command -v etcd >/dev/null; then
  as_root apt-get update && as_root apt-get install -y etcd-server
fi

profile_flag=()
[ "$PROFILE" = release ] && profile_flag=(--release)
cargo build "${profile_flag[@]}" --bin remora \
  --example frontend --example orders --example inventory --example loadgen

pids=()
stop() {
  trap - INT TERM EXIT
  echo; echo "stopping..."
  # Newest first: load, then sidecars (they drain), apps, etcd last.
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do kill "${pids[i]}" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$RUN_DIR"
}
trap stop INT TERM EXIT

# start NAME VAR=value... -- COMMAND...: runs COMMAND in the background, logging to
# $RUN_DIR/NAME.log.
start() {
  local name=$1; shift
  local vars=()
  while [ "$1" != -- ]; do vars+=("$1"); shift; done; shift
  env "${vars[@]}" "$@" >"$RUN_DIR/$name.log" 2>&1 &
  pids+=($!)
  echo "started $name (pid $!), log $RUN_DIR/$name.log"
}

# wait_port PORT: until something listens on 127.0.0.1:PORT (bash's /dev/tcp).
wait_port() {
  for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "nothing listens on 127.0.0.1:$1; logs in $RUN_DIR" >&2; exit 1
}

# Mutual TLS between the sidecars: a CA for the trust domain and a day-long certificate
# per service, in $RUN_DIR/certs (the configs read $CERT_DIR).
export CERT_DIR=$RUN_DIR/certs
"$BIN/remora" cert ca --trust-domain remora.example --out "$RUN_DIR/ca" >/dev/null
mkdir -p "$CERT_DIR"
cp "$RUN_DIR/ca/ca.pem" "$CERT_DIR/ca.pem"
for service in frontend orders inventory; do
  "$BIN/remora" cert issue --ca "$RUN_DIR/ca" --service "$service" --out "$CERT_DIR" >/dev/null
done

start etcd -- etcd --name=local --data-dir="$RUN_DIR/etcd" \
  --listen-client-urls="$ETCD_ENDPOINT" --advertise-client-urls="$ETCD_ENDPOINT" \
  --listen-peer-urls=http://127.0.0.1:${ETCD_PEER_PORT:-2380} \
  --initial-advertise-peer-urls=http://127.0.0.1:${ETCD_PEER_PORT:-2380} \
  --initial-cluster=local=http://127.0.0.1:${ETCD_PEER_PORT:-2380}
wait_port "${ETCD_PORT:-2379}"

# inventory-N: app on 809N, sidecar admin 15020/15030/15040, inbound 15026/15036/15046.
for n in 1 2 3; do
  admin=$((15010 + 10 * n)); inbound=$((15016 + 10 * n))
  start "inventory-$n" LISTEN=127.0.0.1:809$n INSTANCE=inventory-$n \
    LATENCY=${INVENTORY_LATENCY:-5ms} ERROR_RATE=${INVENTORY_ERROR_RATE:-0} \
    -- "$BIN/examples/inventory"
  start "inventory-$n-sidecar" INSTANCE=inventory-$n ADMIN_LISTEN=127.0.0.1:$admin \
    INBOUND_LISTEN=127.0.0.1:$inbound APP_ADDR=127.0.0.1:809$n \
    REGISTER_ADDR=127.0.0.1:$inbound \
    -- "$BIN/remora" run --config "$CONFIG/inventory.yaml"
done

start orders LISTEN=127.0.0.1:8081 INVENTORY_URL=http://127.0.0.1:15102 \
  LATENCY=${ORDERS_LATENCY:-0ms} ERROR_RATE=${ORDERS_ERROR_RATE:-0} \
  -- "$BIN/examples/orders"
start orders-sidecar -- "$BIN/remora" run --config "$CONFIG/orders.yaml"

start frontend LISTEN=127.0.0.1:8080 ORDERS_URL=http://127.0.0.1:15101 \
  LATENCY=${FRONTEND_LATENCY:-0ms} ERROR_RATE=${FRONTEND_ERROR_RATE:-0} \
  -- "$BIN/examples/frontend"
start frontend-sidecar -- "$BIN/remora" run --config "$CONFIG/frontend.yaml"
wait_port 15006

cat <<INFO

  try:      curl -i http://127.0.0.1:15006/checkout/apple
  admin:    frontend :15000, orders :15010, inventory :15020 :15030 :15040
            (/endpoints, /breakers, /metrics)
  break a replica: kill the pid of inventory-2-sidecar above
  mTLS:     sidecars speak mutual TLS (certificates in $CERT_DIR); see a peer's
            identity with: openssl s_client -connect 127.0.0.1:15016 \\
              -cert $CERT_DIR/frontend.pem -key $CERT_DIR/frontend-key.pem \\
              -CAfile $CERT_DIR/ca.pem </dev/null | grep -A1 'Subject Alternative'
            and in the sidecars' access logs (peer_identity)
  traces:   ${OTLP_ENDPOINT:-not exported (set OTLP_ENDPOINT)}
  Ctrl-C stops everything.

INFO
env TARGET=http://127.0.0.1:15006 RATE="${RATE:-20}" "$BIN/examples/loadgen" &
pids+=($!)
wait
