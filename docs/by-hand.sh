#!/usr/bin/env bash
# The steps of docs/by-hand.md, runnable: `by-hand.sh up` builds the two-node
# cluster, starts the CA and agents and sends the page's traffic; `by-hand.sh
# down` stops and removes exactly what `up` made (recorded in $STATE, so
# nothing it did not create is touched). Needs root, iproute2, nsenter,
# python3 and curl, and mesh-agent/meshctl on PATH.
set -euo pipefail

WORK=${WORK:-/tmp/nodemesh-by-hand}
STATE=$WORK/made
CG=$(awk '$9 == "cgroup2" {print $5; exit}' /proc/self/mountinfo)

made() { echo "$*" >> "$STATE"; }

up() {
  mkdir -p "$WORK"; cd "$WORK"; : > "$STATE"
  # 1. Nodes and pods.
  ip netns add underlay; made netns underlay
  ip -n underlay link add br0 type bridge; ip -n underlay link set br0 up
  for i in 1 2; do
    ip netns add node$i; made netns node$i
    ip -n underlay link add n$i type veth peer name eth0 netns node$i
    ip -n underlay link set n$i master br0 up
    ip -n node$i addr add 172.30.0.$i/24 dev eth0; ip -n node$i link set eth0 up; ip -n node$i link set lo up
    ip -n node$i link add br0 type bridge; ip -n node$i addr add 10.$i.0.1/24 dev br0; ip -n node$i link set br0 up
    ip netns exec node$i sysctl -qw net.ipv4.ip_forward=1
  done
  ip -n node1 route add 10.2.0.0/24 via 172.30.0.2
  ip -n node2 route add 10.1.0.0/24 via 172.30.0.1
  pod() {
    ip netns add $1; made netns $1; ip -n $1 link set lo up
    ip -n node$2 link add p$3 type veth peer name eth0 netns $1
    ip -n node$2 link set p$3 master br0 up
    ip -n $1 addr add 10.$2.0.$3/24 dev eth0; ip -n $1 link set eth0 up
    ip -n $1 route add default via 10.$2.0.1
  }
  pod frontend 1 11; pod legacy 1 12; pod cart 2 11

  # 2. cgroups.
  mkdir "$CG/nm"; made cgroup "$CG/nm"
  for d in node1 node2 node1/frontend node1/legacy node2/cart; do mkdir "$CG/nm/$d"; made cgroup "$CG/nm/$d"; done

  # 3. Objects: the page's YAML, extracted from the page itself so the two
  # cannot drift apart.
  mkdir -p cluster
  local page
  page=$(dirname "$(readlink -f "$0")")/by-hand.md
  awk '/^cat > cluster\//,/^EOF$/' "$page" > objects.sh
  CG=$CG bash objects.sh

  # 4. The CA.
  mesh-agent ca init --dir ca > /dev/null
  for n in node1 node2; do mesh-agent ca issue-node --dir ca --node $n --out creds-$n > /dev/null; done
  nsenter --net=/run/netns/node1 mesh-agent ca serve --dir ca --config-dir cluster \
    --listen 172.30.0.1:15012 > ca.log 2>&1 & made pid $!
  sleep 1

  # 5. The agents.
  for i in 1 2; do
    nsenter --net=/run/netns/node$i mesh-agent run --config-dir cluster --node node$i \
      --pods-cgroup "$CG/nm/node$i" --bpffs-dir /sys/fs/bpf/nm-node$i --run-dir /run/nm-node$i \
      --ca 172.30.0.1:15012 --credentials creds-node$i --metrics-listen 127.0.0.1:1502$i \
      > agent-node$i.log 2>&1 & made pid $!
    made bpffs /sys/fs/bpf/nm-node$i; made dir /run/nm-node$i
  done
  for i in 1 2; do
    for _ in $(seq 50); do meshctl --agent /run/nm-node$i/admin.sock status > /dev/null 2>&1 && break; sleep 0.2; done
  done
  meshctl --agent /run/nm-node1/admin.sock status

  # 6. Traffic.
  in_pod() {
    local pod=$1 cg=$2; shift 2
    sh -c 'echo $$ > "$0/cgroup.procs"; exec nsenter --net=/run/netns/'$pod' "$@"' "$cg" "$@"
  }
  in_pod cart "$CG/nm/node2/cart" python3 -m http.server 8080 > /dev/null 2>&1 & made pid $!
  sleep 1
  echo "== frontend -> the cart Service (allowed, mTLS):"
  in_pod frontend "$CG/nm/node1/frontend" curl -s -o /dev/null -w '%{http_code}\n' http://10.96.0.20/
  echo "== legacy (outside the mesh) -> cart (refused: STRICT):"
  in_pod legacy "$CG/nm/node1/legacy" curl -sS --max-time 3 -o /dev/null http://10.2.0.11:8080/ || true

  # 7. What happened.
  meshctl --agent /run/nm-node2/admin.sock flows
  meshctl --agent /run/nm-node1/admin.sock why shop/frontend 10.2.0.11:8080 || true
}

down() {
  [ -f "$STATE" ] || { echo "nothing recorded in $STATE"; return 0; }
  # Processes first (agents detach their programs as they stop), then the
  # rest in reverse order of creation.
  { grep '^pid ' "$STATE" || true; } | while read -r _ pid; do kill "$pid" 2>/dev/null || true; done
  sleep 1
  tac "$STATE" | while read -r kind what; do
    case $kind in
      bpffs) [ -d "$what" ] && mesh-agent uninstall --bpffs-dir "$what" > /dev/null || true ;;
      netns) ip netns del "$what" 2>/dev/null || true ;;
      cgroup)
        # Whatever still runs in a pod's cgroup was started there by `up`
        # (or by hand, into the cgroup `up` made): cgroup.kill ends it all.
        if [ -d "$what" ]; then
          echo 1 > "$what/cgroup.kill" 2>/dev/null || true
          for _ in $(seq 50); do [ -s "$what/cgroup.procs" ] || break; sleep 0.1; done
          rmdir "$what" 2>/dev/null || true
        fi ;;
      dir) rm -rf "$what" ;;
    esac
  done
  rm -rf "$WORK"
}

case ${1:-} in
  up) up ;;
  down) down ;;
  *) echo "usage: $0 up|down" >&2; exit 2 ;;
esac
