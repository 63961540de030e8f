#!/usr/bin/env bash
# Builds (or finds cached) the real control-plane components of the local test bed:
#   kube-apiserver, kube-controller-manager, kube-scheduler, kubectl  (k8s.io/kubernetes, via a wrapper module)
#   kubelet and kube-proxy (the same way) with containerd, runc and the CNI plugins from Debian: the bed's real node
#   etcd (go.etcd.io/etcd/server/v3), kwok (sigs.k8s.io/kwok), helm (helm.sh/helm/v3)
# and installs Prometheus from Debian. Everything built goes to $LLMSCALE_CACHE (default
# ~/.cache/llmscale), one directory per component and version, so only a fresh machine pays.
# Idempotent: a component whose binaries exist is skipped.
#
# Usage: e2e/bin/build-components.sh [k8s|node|etcd|kwok|helm|prometheus|all]...
set -euo pipefail

KUBE_VERSION=${KUBE_VERSION:-v1.36.3}
ETCD_VERSION=${ETCD_VERSION:-v3.6.16}
KWOK_VERSION=${KWOK_VERSION:-v0.8.0}
HELM_VERSION=${HELM_VERSION:-v3.21.4}
CACHE=${LLMSCALE_CACHE:-$HOME/.cache/llmscale}
LOGDIR=${LLMSCALE_BUILD_LOGS:-$CACHE/build-logs}
export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-buildvcs=false

mkdir -p "$CACHE" "$LOGDIR"
say() { printf '[build] %s\n' "$*" >&2; }
fail() {
  say "FAILED: $1"
  say "  log: $2"
  say "  retry: $0 $3"
  tail -n 25 "$2" >&2 || true
  exit 1
}
need() { command -v "$1" >/dev/null 2>&1 || { say "missing tool '$1': $2"; exit 1; }; }

build_k8s_bins() { # directory-name binary... (from k8s.io/kubernetes/cmd/<binary>)
  local dir=$1; shift
  local out="$CACHE/$dir-$KUBE_VERSION" log="$LOGDIR/$dir-$KUBE_VERSION.log" b missing=0
  for b in "$@"; do [ -x "$out/$b" ] || missing=1; done
  if [ $missing = 0 ]; then say "$dir $KUBE_VERSION: cached in $out"; return; fi
  need go "install Go >= 1.26 (the machine image ships it)"
  say "$dir $KUBE_VERSION ($*): building (cold: ~3-30 min on 2 cores); log $log"
  local started=$SECONDS svers="v0.${KUBE_VERSION#v1.}" minor tools=() pkgs=()
  minor=$(echo "$KUBE_VERSION" | cut -d. -f2)
  for b in "$@"; do tools+=("k8s.io/kubernetes/cmd/$b@$KUBE_VERSION"); pkgs+=("k8s.io/kubernetes/cmd/$b"); done
  local work; work=$(mktemp -d)
  (
    set -euo pipefail
    cd "$work"
    go mod init local.invalid/k8sbin
    kmod=$(go mod download -json "k8s.io/kubernetes@$KUBE_VERSION" | sed -n 's|.*"GoMod": "\(.*\)".*|\1|p')
    [ -f "$kmod" ] || { echo "could not download k8s.io/kubernetes@$KUBE_VERSION go.mod"; exit 1; }
    # Only the main module's godebug line counts: keep upstream's runtime defaults.
    grep -E '^godebug ' "$kmod" >> go.mod || true
    for m in $(sed -n 's|.*\(k8s\.io/[^[:space:]]*\) => \./staging/src/k8s\.io/.*|\1|p' "$kmod"); do
      go mod edit -replace="$m=$m@$svers"
    done
    go get -tool "${tools[@]}"
    go mod tidy
    d=$(date -u +%Y-%m-%dT%H:%M:%SZ); ldf="-s -w"
    for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
      ldf="$ldf -X $p.gitVersion=$KUBE_VERSION -X $p.gitMajor=1 -X $p.gitMinor=$minor -X $p.gitTreeState=clean -X $p.buildDate=$d"
    done
    mkdir -p "$out.tmp"
    go build -trimpath -tags selinux,notest,grpcnotrace -ldflags "$ldf" -o "$out.tmp/" "${pkgs[@]}"
    "$out.tmp/$1" --version
  ) >"$log" 2>&1 || { rm -rf "$work" "$out.tmp"; fail "$dir $KUBE_VERSION build" "$log" "$dir"; }
  rm -rf "$work" "$out"; mv "$out.tmp" "$out"
  say "$dir $KUBE_VERSION: built in $((SECONDS - started)) s"
}
build_k8s() { build_k8s_bins kubernetes kube-apiserver kube-controller-manager kube-scheduler kubectl; }

# The test bed's real node: a kubelet and kube-proxy, and containerd + runc + CNI plugins from Debian.
build_node() {
  build_k8s_bins kubelet kubelet kube-proxy
  local need_apt=() t
  for t in containerd runc; do command -v $t >/dev/null 2>&1 || need_apt+=("$t"); done
  [ -d /usr/lib/cni ] || need_apt+=(containernetworking-plugins)
  if [ ${#need_apt[@]} -gt 0 ]; then
    local log="$LOGDIR/node-apt.log"
    say "node: installing ${need_apt[*]} from Debian; log $log"
    { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${need_apt[@]}"; } >"$log" 2>&1 \
      || fail "apt-get install ${need_apt[*]}" "$log" node
    # The package may start a system containerd; the bed runs its own, with its own socket. Only
    # one this step installed is stopped (a Docker host's containerd is left alone).
    if [[ " ${need_apt[*]} " == *" containerd "* ]]; then
      { systemctl stop containerd 2>/dev/null || service containerd stop 2>/dev/null || true; } >/dev/null 2>&1
    fi
  fi
  say "node: $(containerd --version | cut -d' ' -f1,3), $(runc --version | head -1)"
}

build_etcd() {
  local out="$CACHE/etcd-$ETCD_VERSION" log="$LOGDIR/etcd-$ETCD_VERSION.log"
  if [ -x "$out/etcd" ]; then say "etcd $ETCD_VERSION: cached in $out"; return; fi
  need go "install Go >= 1.26"
  say "etcd $ETCD_VERSION: building (~2-4 min); log $log"
  local started=$SECONDS work; work=$(mktemp -d)
  (
    set -euo pipefail
    cd "$work"
    go mod init local.invalid/etcdbin
    printf 'package main\n\nimport (\n\t"os"\n\n\t"go.etcd.io/etcd/server/v3/etcdmain"\n)\n\nfunc main() { etcdmain.Main(os.Args) }\n' > main.go
    go get "go.etcd.io/etcd/server/v3@$ETCD_VERSION"
    go mod tidy
    mkdir -p "$out.tmp"
    go build -trimpath -ldflags "-s -w" -o "$out.tmp/etcd" .
    "$out.tmp/etcd" --version
  ) >"$log" 2>&1 || { rm -rf "$work" "$out.tmp"; fail "etcd $ETCD_VERSION build" "$log" etcd; }
  rm -rf "$work" "$out"; mv "$out.tmp" "$out"
  say "etcd $ETCD_VERSION: built in $((SECONDS - started)) s"
}

build_go_install() { # name version pkg...
  local name=$1 ver=$2; shift 2
  local out="$CACHE/$name-$ver" log="$LOGDIR/$name-$ver.log"
  if [ -x "$out/$name" ]; then say "$name $ver: cached in $out"; return; fi
  need go "install Go >= 1.26"
  say "$name $ver: building (~3-6 min); log $log"
  local started=$SECONDS pkgs=() p
  for p in "$@"; do pkgs+=("$p@$ver"); done
  mkdir -p "$out.tmp"
  GOBIN="$out.tmp" go install -trimpath -ldflags "-s -w ${LDFLAGS_EXTRA:-}" "${pkgs[@]}" >"$log" 2>&1 \
    || { rm -rf "$out.tmp"; fail "$name $ver build" "$log" "$name"; }
  rm -rf "$out"; mv "$out.tmp" "$out"
  say "$name $ver: built in $((SECONDS - started)) s"
}

install_prometheus() {
  if command -v prometheus >/dev/null 2>&1; then say "prometheus: $(command -v prometheus)"; return; fi
  local log="$LOGDIR/prometheus-apt.log"
  say "prometheus: installing Debian's package; log $log"
  export DEBIAN_FRONTEND=noninteractive
  { apt-get update && apt-get install -y --no-install-recommends prometheus; } >"$log" 2>&1 \
    || fail "apt-get install prometheus" "$log" prometheus
  # The package starts a system service on :9090; the test bed runs its own instance.
  { systemctl stop prometheus 2>/dev/null || service prometheus stop 2>/dev/null || pkill -x prometheus || true; } >/dev/null 2>&1
  say "prometheus: $(prometheus --version 2>&1 | head -1)"
}

targets=("$@"); [ ${#targets[@]} -eq 0 ] && targets=(all)
for t in "${targets[@]}"; do
  case $t in
    k8s) build_k8s ;;
    node) build_node ;;
    etcd) build_etcd ;;
    kwok) build_go_install kwok "$KWOK_VERSION" sigs.k8s.io/kwok/cmd/kwok ;;
    helm) LDFLAGS_EXTRA="-X helm.sh/helm/v3/internal/version.version=$HELM_VERSION -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=36" \
            build_go_install helm "$HELM_VERSION" helm.sh/helm/v3/cmd/helm ;;
    prometheus) install_prometheus ;;
    all) install_prometheus; build_etcd; build_go_install kwok "$KWOK_VERSION" sigs.k8s.io/kwok/cmd/kwok
         LDFLAGS_EXTRA="-X helm.sh/helm/v3/internal/version.version=$HELM_VERSION -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=36" \
           build_go_install helm "$HELM_VERSION" helm.sh/helm/v3/cmd/helm
         build_k8s; build_node ;;
    *) say "unknown component '$t' (choose: k8s node etcd kwok helm prometheus all)"; exit 2 ;;
  esac
done
