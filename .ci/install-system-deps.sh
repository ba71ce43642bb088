#!/usr/bin/env bash
# System packages the test suite uses beyond Python: headless Chromium for the `slmflow ui` test.
# Installs only when running as root and the package is missing; otherwise the test skips with a
# reason. Safe to run twice.
set -euo pipefail
if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "install-system-deps: not root, skipping chromium (the UI browser test will skip)" >&2
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends chromium
