#!/usr/bin/env bash
# Triton's own load generator, perf_analyzer, against a running Triton (the bench's, started by
# bench/peer_apps/triton_app.py): one more measure beside bench/load.py, by hand, not in the report.
# What it needs, set up once under the bench cache by this script:
# - the binary: tritonclient 2.41.1's manylinux wheel is the last one seen to ship it (bin/perf_analyzer,
#   from PyPI; later wheels do not, and the PyPI package `perf-analyzer` 0.1.0 is an empty placeholder);
# - libb64.so.0d (Debian package libb64-0d, fetched with apt-get download, unpacked, not installed);
# - libcudart.so.12, even on a CPU host: PyTriton's wheel carries one (nvidia_pytriton.libs).
# Against circuitserve it also needs the model-config endpoint (/v2/models/NAME/config), which the
# server does not have yet. Usage: perf_analyzer.sh HTTP_PORT [perf_analyzer options...]
set -euo pipefail
cd "$(dirname "$0")/../.."
cache=${CIRCUITSERVE_BENCH_CACHE:-bench/out}
tools=$cache/perf-analyzer
port=$1; shift
if [[ ! -x $tools/bin/perf_analyzer ]]; then
    mkdir -p "$tools/bin" "$tools/lib" "$tools/download"
    python3 -m pip download --no-deps --only-binary=:all: --platform manylinux1_x86_64 \
        tritonclient==2.41.1 -d "$tools/download"
    unzip -oqj "$tools"/download/tritonclient-2.41.1-*.whl '*/bin/perf_analyzer' -d "$tools/bin"
    (cd "$tools/download" && apt-get download libb64-0d && dpkg -x libb64-0d_*.deb unpacked)
    cp "$tools"/download/unpacked/usr/lib/x86_64-linux-gnu/libb64.so.0d "$tools/lib/"
    cudart=$(ls "$cache"/triton-venv/lib/python3*/site-packages/nvidia_pytriton.libs/libcudart-*.so.12*)
    ln -sf "$(realpath "$cudart")" "$tools/lib/libcudart.so.12"
    chmod +x "$tools/bin/perf_analyzer"
fi
LD_LIBRARY_PATH=$tools/lib exec "$tools/bin/perf_analyzer" -m level -u "127.0.0.1:$port" -i http -b 1 "$@"
