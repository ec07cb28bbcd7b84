#!/usr/bin/env bash
# Install the real tools the tests drive: Prometheus and promtool (Debian package). helm and kubectl come
# from hack/cluster/build.sh. Idempotent; nothing is started here (tests start what they need).
set -euo pipefail
if ! command -v prometheus >/dev/null 2>&1 || ! command -v promtool >/dev/null 2>&1; then
  sudo_cmd=""
  [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $sudo_cmd apt-get update -qq
  $sudo_cmd apt-get install -y -qq --no-install-recommends prometheus >/dev/null
  # The package may start a system service where an init system runs; tests use their own instance.
  if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet prometheus 2>/dev/null; then
    $sudo_cmd systemctl stop prometheus || true
  fi
fi
prometheus --version 2>&1 | head -1
