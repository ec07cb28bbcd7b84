#!/usr/bin/env bash
# Fetch the Prometheus Operator's API models with their JSON-schema validators (npm package
# @kubernetes-models/prometheus-operator, generated from prometheus-operator's Go types), so the chart's
# ServiceMonitor/PodMonitor/PrometheusRule are validated without a cluster that has those CRDs.
# Idempotent, cached outside git. Prints the install directory (holding node_modules/) on stdout.
set -euo pipefail
dir="${KUBERL_CACHE:-$HOME/.cache/kuberl}/tools/prometheus-operator-models-6.0.0"
if [ ! -f "$dir/node_modules/@kubernetes-models/prometheus-operator/package.json" ]; then
  mkdir -p "$dir"
  npm install --silent --no-audit --no-fund --prefix "$dir" "@kubernetes-models/prometheus-operator@6.0.0" >&2
fi
echo "$dir"
