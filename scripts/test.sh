#!/usr/bin/env bash
# Runs every ferrovia test. On a fresh Debian bookworm machine (as root) it first installs
# what the tests need: the real BGP peers (BIRD 2, FRR, GoBGP), iproute2 and tcpdump.
# Network tests create their own namespaces and remove them, also on failure.
set -euo pipefail
cd "$(dirname "$0")/.."

need=(bird2 frr gobgpd iproute2 tcpdump procps iputils-ping curl prometheus python3-venv nftables)
# kubectl for the Kubernetes datastore tests (tests/kube_cluster.rs): Debian's kubernetes-client
# when no kubectl is installed yet (another kubectl package would conflict on /usr/bin/kubectl).
command -v kubectl >/dev/null 2>&1 || need+=(kubernetes-client)
missing=()
for p in "${need[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "==> installing ${missing[*]}"
  if [[ $(id -u) -ne 0 ]]; then
    echo "the tests need root (network namespaces) and these packages: ${missing[*]}" >&2
    exit 1
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# The packaged daemons must not run in the root namespace; tests start their own.
for svc in bird frr gobgpd prometheus; do
  command -v systemctl >/dev/null 2>&1 && systemctl disable --now "$svc" >/dev/null 2>&1 || true
done

# The Kubernetes tests run a real kube-apiserver: build it from Debian's source once (a few
# minutes), cached outside the checkout; the fixture (tests/common/kube.rs) reads its path here.
# The chart's offline checks (tests/chart.rs) run Helm through helm-python-sdk and
# kubernetes-validate, in a virtual environment of Debian's python3 outside the checkout
# (PEP 668: never pip into the system's Python).
chart_venv=${FERROVIA_CHART_VENV:-/var/cache/ferrovia/chart-venv}
if ! "$chart_venv/bin/python" -c 'import helm_python, kubernetes_validate' 2>/dev/null; then
  echo "==> chart-check environment in $chart_venv"
  mkdir -p "$(dirname "$chart_venv")"
  /usr/bin/python3 -m venv "$chart_venv"
  "$chart_venv/bin/pip" install -q helm-python-sdk kubernetes-validate
fi
export FERROVIA_CHART_VENV=$chart_venv

echo "==> kube-apiserver"
FERROVIA_KUBE_APISERVER=$(scripts/kube-apiserver.sh | tail -n1)
export FERROVIA_KUBE_APISERVER

if ! command -v cargo >/dev/null 2>&1; then
  echo "cargo is missing: install a Rust toolchain (rustup) first" >&2
  exit 1
fi

echo "==> formatting and lints"
cargo fmt --all --check
cargo clippy --workspace --all-targets --quiet -- -D warnings

echo "==> tests"
cargo test --workspace --no-fail-fast
