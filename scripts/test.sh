#!/usr/bin/env bash
# The test command (README, second command; .ci/run runs exactly this): install the test
# dependencies into .venv, then lint, type-check and run the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
PYTHON=.venv/bin/python scripts/install.sh -e all
# promtool checks /metrics and the Prometheus rules; it comes from Debian's prometheus package.
if ! command -v promtool >/dev/null && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    echo "installing promtool (Debian package prometheus)..."
    apt-get update -qq && apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi
# Chromium renders /docs offline in tests/service/test_docs.py; Debian's package chromium.
if ! command -v chromium >/dev/null && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    echo "installing chromium (Debian package chromium)..."
    apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium >/dev/null
fi
.venv/bin/ruff check .
.venv/bin/mypy
.venv/bin/python -m pytest -q "$@"
