#!/usr/bin/env bash
# The hosts of examples/compose/docker-compose.yml as Linux network namespaces, for
# running the example topology on one machine without Docker (needs root and iproute2).
#
#   scripts/netns-topology.sh up                  # create (after removing leftovers)
#   scripts/netns-topology.sh exec HOST CMD...    # run CMD on HOST (its addresses, its
#                                                 # /etc/hosts naming every host)
#   scripts/netns-topology.sh link HOST down|up   # cut or restore HOST's cable
#   scripts/netns-topology.sh hosts               # print "address name" per host
#   scripts/netns-topology.sh down                # remove everything `up` made
#
# One namespace per host, named remora-$REMORA_NETNS_ID-<host> (REMORA_NETNS_ID defaults
# to "dev", so parallel runs with other ids do not collide), each with loopback and
# one veth, `eth0`, on $REMORA_NETNS_SUBNET.0/24 (default 10.213.0). The other ends of
# the veths are bridged in one more namespace, remora-$REMORA_NETNS_ID-mesh (the
# compose file's network), so no interface, route or firewall rule of the machine's
# own namespace is touched, and two ids may use the same subnet. `ip netns exec` mounts
# /etc/netns/<namespace>/hosts over /etc/hosts, which names every host as compose's DNS
# does: `orders:15016` reaches orders' sidecar.
set -euo pipefail

ID=${REMORA_NETNS_ID:-dev}
SUBNET=${REMORA_NETNS_SUBNET:-10.213.0}
PREFIX=remora-$ID
MESH=$PREFIX-mesh

# The compose services that hold a network namespace, with their address (host part).
HOSTS=(etcd:2 jaeger:3 frontend:10 orders:11 inventory-1:21 inventory-2:22
  inventory-3:23 inventory-v2:24 loadgen:30)

usage() {
  echo "usage: $0 {up|down|hosts|exec HOST CMD...|link HOST {down|up}}" >&2
  exit 2
}

[[ $ID =~ ^[A-Za-z0-9_.-]+$ ]] || { echo "REMORA_NETNS_ID: letters, digits, _ . - only" >&2; exit 2; }

require_root() {
  if [ "$(id -u)" -ne 0 ]; then
    echo "$0: network namespaces need root (CAP_SYS_ADMIN and CAP_NET_ADMIN)" >&2
    exit 1
  fi
  command -v ip >/dev/null || { echo "$0: the ip command is missing: apt-get install iproute2" >&2; exit 1; }
}

name_of() { echo "${1%%:*}"; }
address_of() { echo "$SUBNET.${1##*:}"; }

# is_host NAME: whether NAME is one of HOSTS.
is_host() {
  local entry
  for entry in "${HOSTS[@]}"; do [ "$(name_of "$entry")" = "$1" ] && return 0; done
  return 1
}

hosts_file() {
  echo "127.0.0.1 localhost"
  local entry
  for entry in "${HOSTS[@]}"; do echo "$(address_of "$entry") $(name_of "$entry")"; done
}

# Every namespace of this id: the hosts, the mesh, and any leftover with the prefix.
own_namespaces() {
  ip netns list | awk -v prefix="$PREFIX-" 'index($1, prefix) == 1 {print $1}'
}

down() {
  local ns
  for ns in $(own_namespaces); do
    # Processes still running there would keep the namespace alive once unnamed.
    ip netns pids "$ns" 2>/dev/null | xargs -r kill -KILL 2>/dev/null || true
    ip netns delete "$ns"
  done
  local dir
  for dir in /etc/netns/"$PREFIX"-*; do
    [ -d "$dir" ] && rm -rf "$dir"
  done
  return 0
}

up() {
  down
  ip netns add "$MESH"
  ip -n "$MESH" link set lo up
  ip -n "$MESH" link add br0 type bridge
  ip -n "$MESH" link set br0 up
  local entry host ns
  for entry in "${HOSTS[@]}"; do
    host=$(name_of "$entry")
    ns=$PREFIX-$host
    ip netns add "$ns"
    ip -n "$ns" link set lo up
    # Made in the mesh namespace with its peer placed in the host's at once: the
    # machine's own namespace never holds either end.
    ip -n "$MESH" link add "v-$host" type veth peer name eth0 netns "$ns"
    ip -n "$MESH" link set "v-$host" master br0 up
    ip -n "$ns" addr add "$(address_of "$entry")/24" dev eth0
    ip -n "$ns" link set eth0 up
    mkdir -p "/etc/netns/$ns"
    hosts_file >"/etc/netns/$ns/hosts"
  done
}

command=${1:-}
[ -n "$command" ] || usage
shift
case $command in
  up) require_root; up ;;
  down) require_root; down ;;
  hosts) hosts_file | tail -n +2 ;;
  exec)
    [ $# -ge 2 ] || usage
    host=$1; shift
    is_host "$host" || { echo "$0: no host $host" >&2; exit 2; }
    require_root
    exec ip netns exec "$PREFIX-$host" "$@"
    ;;
  link)
    [ $# -eq 2 ] || usage
    is_host "$1" || { echo "$0: no host $1" >&2; exit 2; }
    case $2 in up | down) ;; *) usage ;; esac
    require_root
    ip -n "$MESH" link set "v-$1" "$2"
    ;;
  *) usage ;;
esac
