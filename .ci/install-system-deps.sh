#!/usr/bin/env bash
# System packages the test suite uses beyond Python: headless Chromium for the `slmflow ui` test,
# and a PostgreSQL server (binaries only; the tests initdb a private cluster on loopback) for the
# call-log store tests. Installs only when running as root and the package is missing; otherwise
# the test skips with a reason. Safe to run twice.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
_apt_updated=0
_apt_install() {
  if [ "$_apt_updated" -eq 0 ]; then apt-get update -qq; _apt_updated=1; fi
  apt-get install -y -qq --no-install-recommends "$@"
}

if ! command -v chromium >/dev/null 2>&1 && ! command -v chromium-browser >/dev/null 2>&1; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "install-system-deps: not root, skipping chromium (the UI browser test will skip)" >&2
  else
    _apt_install chromium
  fi
fi

# PostgreSQL server binaries for tests/test_store_postgres.py (the fixture runs initdb as the
# unprivileged 'postgres' user when started as root).
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "install-system-deps: not root, skipping postgresql (the PostgreSQL store tests will skip)" >&2
  else
    _apt_install postgresql
  fi
fi
if [ "$(id -u)" -eq 0 ] && ! id postgres >/dev/null 2>&1; then
  useradd --system --home-dir /var/lib/postgresql --shell /usr/sbin/nologin postgres
fi
