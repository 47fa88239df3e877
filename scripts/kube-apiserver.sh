#!/usr/bin/env bash
# Builds kube-apiserver 1.20.2 from Debian bookworm's `kubernetes` source package, offline once the
# source is fetched, and caches the binary outside the checkout (GUIDE §6). The Kubernetes tests run
# this API server (with etcd) in a network namespace of their own.
#
# Idempotent: with the cache present it only checks the stamp and prints the path. The last line of
# output is always the binary's path. Needs root on Debian bookworm (apt installs).
#
#   FERROVIA_KUBE_CACHE   cache directory (default /var/cache/ferrovia/kube-apiserver-1.20.2)
set -euo pipefail

version=1.20.2
cache=${FERROVIA_KUBE_CACHE:-/var/cache/ferrovia/kube-apiserver-$version}
bin=$cache/kube-apiserver
stamp=$cache/stamp

log() { echo "==> $*" >&2; }
die() { echo "kube-apiserver.sh: $*" >&2; exit 1; }

# Packages the build and the tests need: the Go toolchain and build tools, etcd (the tests start it),
# openssl (certificates) and the reflect2 module that replaces the broken vendored one.
need=(golang-go make rsync dpkg-dev patch etcd-server openssl curl golang-github-modern-go-reflect2-dev)
missing=()
for p in "${need[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  [[ $(id -u) -eq 0 ]] || die "run as root: these packages are missing: ${missing[*]}"
  log "installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# Debian's etcd-server package starts a system etcd; the tests start their own, so keep it off.
if command -v systemctl >/dev/null 2>&1; then
  systemctl disable --now etcd >/dev/null 2>&1 || true
fi

# The image's kubectl is optional: the tests do not use it, but it is handy against the fixture.
if command -v kubectl >/dev/null 2>&1; then
  log "kubectl: $(kubectl version --client 2>/dev/null | head -n1) (optional; talks to 1.20 with a skew warning)"
else
  log "kubectl: not installed (optional; the tests do not need it)"
fi

if [[ -x $bin && -f $stamp ]] && [[ $(cat "$stamp") == "$version $(sha256sum "$bin" | cut -d' ' -f1)" ]]; then
  echo "$bin"
  exit 0
fi

[[ $(id -u) -eq 0 ]] || die "run as root to build $bin"
mkdir -p "$cache"
work=$cache/build
rm -rf "$work"
mkdir -p "$work/apt/lists/partial" "$work/apt/archives/partial" "$work/src"

# A private sources list and private apt state, so the system's apt configuration and package lists
# stay as they are.
cat >"$work/apt/sources.list" <<'EOF'
deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bookworm main
EOF
apt_private=(
  -o "Dir::Etc::SourceList=$work/apt/sources.list"
  -o "Dir::Etc::SourceParts=-"
  -o "Dir::State::Lists=$work/apt/lists"
  -o "Dir::Cache=$work/apt/cache"
  -o "Dir::Cache::archives=$work/apt/archives"
  -o "APT::Sandbox::User=root"
)
log "fetching Debian's kubernetes $version source"
apt-get "${apt_private[@]}" update -qq
# Debian versions it 1.20.5+really1.20.2-…: the upstream tree is 1.20.2.
srcver=$(apt-cache "${apt_private[@]}" showsrc kubernetes | awk '/^Version:/ {print $2; exit}')
[[ $srcver == *"really$version"* ]] || die "bookworm's kubernetes source is '$srcver', not $version"
(cd "$work/src" && apt-get "${apt_private[@]}" source -qq "kubernetes=$srcver" >/dev/null) ||
  die "apt-get source kubernetes=$srcver failed (is deb.debian.org reachable?)"
tree=$(find "$work/src" -mindepth 1 -maxdepth 1 -type d -name 'kubernetes-*' | head -n1)
[[ -n $tree && -f $tree/go.mod ]] || die "no kubernetes source tree under $work/src"

# The vendored reflect2 1.0.1 crashes under Go >= 1.18 on the first custom resource; 1.0.2 fixes it.
vendored=$tree/vendor/github.com/modern-go/reflect2
debian=/usr/share/gocode/src/github.com/modern-go/reflect2
[[ -d $vendored ]] || die "no vendored reflect2 at $vendored"
[[ -d $debian ]] || die "no reflect2 sources at $debian (package golang-github-modern-go-reflect2-dev)"
log "replacing vendored reflect2 with Debian's $(dpkg-query -W -f='${Version}' golang-github-modern-go-reflect2-dev)"
find "$vendored" -maxdepth 1 -type f \( -name '*.go' -o -name '*.s' \) -delete
find "$debian" -maxdepth 1 -type f \( -name '*.go' -o -name '*.s' \) ! -name '*_test.go' -exec cp {} "$vendored/" \;

log "building kube-apiserver (several minutes, about 1.3 GB of RAM)"
(
  cd "$tree"
  export GOPROXY=off GOFLAGS=-mod=vendor CGO_ENABLED=0 GOCACHE=$work/gocache GOPATH=$work/gopath
  make WHAT=cmd/kube-apiserver >&2
) || die "make WHAT=cmd/kube-apiserver failed in $tree"
built=$(find "$tree/_output" -type f -name kube-apiserver -perm -u+x | head -n1)
[[ -n $built ]] || die "the build left no kube-apiserver under $tree/_output"
"$built" --version >&2 || die "$built does not run"

install -m 0755 "$built" "$bin.tmp"
mv "$bin.tmp" "$bin"
echo "$version $(sha256sum "$bin" | cut -d' ' -f1)" >"$stamp"
rm -rf "$work"
echo "$bin"
