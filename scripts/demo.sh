#!/usr/bin/env bash
# The README demo. On a Debian bookworm machine, as root, with a Rust toolchain: installs
# what the lab needs (FRR, BIRD 2, iproute2, tcpdump, ping), builds ferrovia, brings up the
# leaf-spine lab (four nodes in two racks, an FRR ToR per rack, an FRR spine) in network
# namespaces — no Docker — starts a pod on each node through the CNI plugin, and shows
# sessions, learned routes and a ping between pods in different racks.
#
# Everything it makes lives in network namespaces and /run/ferrovia-lab/leaf-spine;
# `./target/debug/ferrovia lab down tests/topologies/leaf-spine.clab.yml` removes it all.
# Safe to run again (a lab left up is replaced).
set -euo pipefail
cd "$(dirname "$0")/.."
topo=tests/topologies/leaf-spine.clab.yml
# A dev build: the lab does not need an optimised agent, and it builds in a third of
# the time of --release on two cores.
bin=./target/debug/ferrovia
start=$(date +%s)
step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }

if [[ $(id -u) -ne 0 ]]; then
  echo "the demo needs root (network namespaces and mounts): sudo $0" >&2
  exit 1
fi

need=(frr bird2 iproute2 tcpdump iputils-ping procps util-linux mount nftables)
missing=()
for p in "${need[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  step "installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# The packaged daemons must not run on the host itself; the lab starts its own per node.
for svc in frr bird; do
  if command -v systemctl >/dev/null 2>&1; then
    systemctl disable --now "$svc" >/dev/null 2>&1 || true
  fi
done

if ! command -v cargo >/dev/null 2>&1; then
  echo "cargo is missing: install a Rust toolchain (https://rustup.rs) and run $0 again" >&2
  exit 1
fi
step "building ferrovia"
cargo build --quiet --bin ferrovia

if $bin lab status "$topo" >/dev/null 2>&1; then
  step "a leaf-spine lab is already up: removing it first"
  $bin lab down "$topo"
fi

step "ferrovia lab up $topo"
$bin lab up "$topo"

step "a pod on each node (namespace + ferrovia-cni ADD, as a container runtime does)"
declare -A pod
for n in n1 n2 n3 n4; do
  line=$($bin lab pod add "$topo" "$n" web)
  echo "  $line"
  pod[$n]=$(awk '{print $2}' <<<"$line" | cut -d/ -f1)
done

# A node announces a block when its first pod takes it; give the blocks a moment to reach
# every node (each then routes the three other nodes' blocks).
routed() { $bin lab exec "$topo" "$1" -- ip route show proto 241 | grep -c via || true; }
for _ in $(seq 1 75); do
  done_=1
  for n in n1 n2 n3 n4; do [[ $(routed $n) -ge 3 ]] || done_=0; done
  ((done_)) && break
  sleep 0.2
done

step "ferrovia status on n1 (rack 1) and n3 (rack 2)"
$bin lab exec "$topo" n1 -- ferrovia status
echo
$bin lab exec "$topo" n3 -- ferrovia status

step "what n1 learned: its Loc-RIB and the routes it put in the kernel (proto 241)"
$bin lab exec "$topo" n1 -- ferrovia routes
echo
$bin lab exec "$topo" n1 -- ip route show proto 241

step "ping from the pod on n1 (rack 1) to the pod on n3 (rack 2): ${pod[n1]} -> ${pod[n3]}"
$bin lab pod exec "$topo" n1 web -- ping -c 3 -i 0.2 "${pod[n3]}"

cat <<EOF

Done in $(($(date +%s) - start)) s. The lab is up; explore it:

  $bin lab status $topo                 # nodes, sessions, pods
  $bin lab exec $topo n2 -- ferrovia routes           # any command in a node
  $bin lab exec $topo tor1 -- vtysh -c 'show bgp ipv4 unicast'
  $bin lab exec $topo spine -- ip route
  $bin lab pod exec $topo n4 web -- ping -c 2 ${pod[n1]}
  $bin lab exec $topo tor1 -- tcpdump -ni eth3 icmp     # then ping across racks from another shell:
                                                        # the pods' own addresses on the wire
  $bin lab stop $topo n3   # n3's block leaves every node; 'lab start' brings it back

Tear it all down (namespaces, processes, mounts, state):

  $bin lab down $topo
EOF
