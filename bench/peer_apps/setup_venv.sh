#!/usr/bin/env bash
# Set up the bench's peer servers (LitServe and BentoML; Triton through PyTriton) in their own
# virtual environments under the bench cache (bench/out/, or $CIRCUITSERVE_BENCH_CACHE), apart from
# the server's. `circuitserve bench` does this itself when they are missing; this does it ahead of a
# run. Usage: bash bench/peer_apps/setup_venv.sh [--dry-run] [--force] (from any directory)
set -euo pipefail
cd "$(dirname "$0")/../.."
PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} exec "${PYTHON:-python3}" -m bench.peer_setup "$@"
