#!/usr/bin/env bash
# The project's test command (`make test`, and so `.ci/run`): services, lint, types, the suite.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin

# PostgreSQL: the registry tests run on it too (never skipped in CI). Start it if it is down.
if ! pg_isready -h 127.0.0.1 -p 5432 -q 2>/dev/null; then
  echo "PostgreSQL is down: starting it"
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start
  for _ in $(seq 1 30); do pg_isready -h 127.0.0.1 -p 5432 -q && break; sleep 1; done
fi

# Headless Chromium for the dashboard's browser tests (Debian's package; nothing downloads a browser).
if [ ! -x /usr/bin/chromium ] && [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null; then
  echo "Installing Debian's chromium for the browser tests"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi

echo "== ruff"
$BIN/ruff check reloop_service tests migrations
echo "== mypy"
$BIN/mypy reloop_service
echo "== pytest"
mkdir -p test-artifacts
# One pytest-xdist worker per core, up to 4 (TEST_WORKERS overrides; 0 runs in this process).
# Workers are isolated (tests/conftest.py): own PostgreSQL database, tmp folders and ports each.
# loadgroup keeps a module that shares a module-scoped fixture on one worker; the order tests/conftest.py
# gives (longest first) is kept, so no long test starts last.
WORKERS=${TEST_WORKERS:-$(nproc)}
if [ "$WORKERS" -gt 4 ]; then WORKERS=4; fi
$BIN/pytest -q -p no:cacheprovider --durations=15 -n "$WORKERS" --dist loadgroup --no-loadscope-reorder "$@"
