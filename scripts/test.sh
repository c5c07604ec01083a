#!/usr/bin/env bash
# The test command (README, second command; .ci/run runs exactly this): install the test
# dependencies into .venv, then lint, type-check, check the import contracts and run the whole suite.
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
# Tests: strict, but test functions and fixtures need not annotate, and may reach names a module
# imported (monkeypatching). Two runs: tests/ and tests/service/ each have a conftest.py.
TEST_MYPY=(--allow-untyped-defs --allow-incomplete-defs --allow-untyped-calls --implicit-reexport)
.venv/bin/mypy "${TEST_MYPY[@]}" tests/conftest.py tests/test_circuitserve.py tests/model tests/export tests/bench tests/deploy
.venv/bin/mypy "${TEST_MYPY[@]}" tests/service
# The import contracts in pyproject.toml (service below model and bench; no torch in service).
.venv/bin/lint-imports
.venv/bin/python -m pytest -q "$@"
