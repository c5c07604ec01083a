#!/usr/bin/env bash
# The device check of issue 20, for a machine with an NVIDIA GPU (driver only; CUDA comes from pip):
#
#   bash scripts/gpu_check.sh [BUNDLE]
#
# 1. a fresh venv (GPU_CHECK_VENV, default /tmp/circuitserve-gpu-venv) gets the gpu extra through the
#    one install command, `scripts/install.sh gpu` (PyPI; offline, point PIP_FIND_LINKS or
#    PIP_INDEX_URL at a wheelhouse; GPU_CHECK_REUSE_VENV=1 keeps an existing venv as it is);
# 2. `python -m bench.gpu_check BUNDLE --provider cuda` prints per-level latency at batch 1, 32,
#    128 and 1024 through the server's runner, 1/8's speedup over full (FP32 and FP16), the same
#    with CUDA graphs, and the latency floor at concurrency 1 (circuitserve vs the bare ASGI app);
#    JSON in GPU_CHECK_OUT (default gpu-check/gpu-check.json).
#
# It trains nothing: BUNDLE (default bundles/gpu-check) is exported beforehand, on any machine, e.g.
#   circuitserve train --dataset digits --out runs/digits
#   circuitserve export runs/digits --out bundles/gpu-check --fp16
# and carried along (a digits bundle is a few MB). Budget on a 16-core GPU machine: the install
# (about 1.4 GB of wheels) plus about two minutes of measuring.
# Without a GPU shown (or GPU_CHECK_PROVIDER=cpu) the same steps run on CPU: the fallback the test
# suite runs (tests/bench/test_gpu_check.py). GPU_CHECK_ARGS adds flags to bench.gpu_check.
set -euo pipefail
cd "$(dirname "$0")/.."

bundle="${1:-bundles/gpu-check}"
venv="${GPU_CHECK_VENV:-/tmp/circuitserve-gpu-venv}"
out="${GPU_CHECK_OUT:-gpu-check}"
provider="${GPU_CHECK_PROVIDER:-}"
if [ -z "$provider" ]; then
    if [ -e /dev/nvidia0 ] || [ -n "$(ls -A /proc/driver/nvidia/gpus 2>/dev/null)" ]; then
        provider=cuda
    else
        provider=cpu
        echo "gpu-check: this host shows no NVIDIA GPU: running the CPU fallback" >&2
    fi
fi
if [ ! -f "$bundle/manifest.json" ]; then
    echo "gpu-check: no bundle at $bundle: export one first (see the top of $0)" >&2
    exit 2
fi

if [ -z "${GPU_CHECK_REUSE_VENV:-}" ] || [ ! -x "$venv/bin/python" ]; then
    echo "gpu-check: installing the gpu extra into a fresh venv at $venv..." >&2
    python3 -m venv --clear "$venv"
    if ! PYTHON="$venv/bin/python" scripts/install.sh gpu; then
        echo "gpu-check: installing the gpu extra failed (offline? set PIP_FIND_LINKS to a wheelhouse," \
            "or GPU_CHECK_VENV to a venv that has it and GPU_CHECK_REUSE_VENV=1)" >&2
        exit 3
    fi
fi

mkdir -p "$out"
# shellcheck disable=SC2086  # GPU_CHECK_ARGS: extra flags, word-split on purpose
timeout "${GPU_CHECK_TIMEOUT_S:-420}" "$venv/bin/python" -m bench.gpu_check "$bundle" \
    --provider "$provider" --cuda-graphs --out "$out/gpu-check.json" ${GPU_CHECK_ARGS:-}
