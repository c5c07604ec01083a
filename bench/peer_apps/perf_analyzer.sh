#!/usr/bin/env bash
# Triton's own load generator, perf_analyzer: an independent measure beside bench/load.py. The bench's
# perf_analyzer section (bench/perf_analyzer.py) runs it against circuitserve, which has what it asks
# a server for (KServe v2 inference over HTTP, /v2/models/NAME/config, the statistics endpoints); by
# hand it runs against any such server, the bench's Triton included (bench/peer_apps/triton_app.py).
# What it needs, set up once under the bench cache by this script (downloads; the bench only when its
# plan allows it, never the quick run):
# - the binary: tritonclient 2.41.1's manylinux wheel is the last one seen to ship it (bin/perf_analyzer,
#   from PyPI; later wheels do not, and the PyPI package `perf-analyzer` 0.1.0 is an empty placeholder);
# - libb64.so.0d (Debian package libb64-0d, fetched with apt-get download, unpacked, not installed);
# - libcudart.so.12, even on a CPU host: PyTriton's wheel carries one (nvidia_pytriton.libs, in the
#   bench's triton-venv: `python -m bench.peer_setup` makes it).
# Usage: perf_analyzer.sh --set-up-only            (set up, print the binary's path, run nothing)
#        perf_analyzer.sh HTTP_PORT [options...]   (the model: $PERF_ANALYZER_MODEL, default "level",
#                                                   the bench's Triton; circuitserve's is its bundle's)
# Random input data is refused by circuitserve as non-finite values: pass --input-data zero or a JSON
# file of real examples (bench/perf_analyzer.py writes one).
set -euo pipefail
cd "$(dirname "$0")/../.."
cache=${CIRCUITSERVE_BENCH_CACHE:-bench/out}
tools=$cache/perf-analyzer
if [[ ! -x $tools/bin/perf_analyzer || ! -e $tools/lib/libb64.so.0d || ! -e $tools/lib/libcudart.so.12 ]]; then
    cudart=$(ls "$cache"/triton-venv/lib/python3*/site-packages/nvidia_pytriton.libs/libcudart-*.so.12* \
        2>/dev/null | head -n 1 || true)
    if [[ -z $cudart ]]; then
        echo "perf_analyzer needs libcudart.so.12 from $cache/triton-venv: run python -m bench.peer_setup" >&2
        exit 3
    fi
    mkdir -p "$tools/bin" "$tools/lib" "$tools/download"
    python3 -m pip download --no-deps --only-binary=:all: --platform manylinux1_x86_64 \
        tritonclient==2.41.1 -d "$tools/download"
    unzip -oqj "$tools"/download/tritonclient-2.41.1-*.whl '*/bin/perf_analyzer' -d "$tools/bin"
    (cd "$tools/download" && apt-get download libb64-0d && dpkg -x libb64-0d_*.deb unpacked)
    cp "$tools"/download/unpacked/usr/lib/x86_64-linux-gnu/libb64.so.0d "$tools/lib/"
    ln -sf "$(realpath "$cudart")" "$tools/lib/libcudart.so.12"
    chmod +x "$tools/bin/perf_analyzer"
fi
if [[ ${1:-} == --set-up-only ]]; then
    echo "$tools/bin/perf_analyzer"
    exit 0
fi
port=$1; shift
LD_LIBRARY_PATH=$tools/lib exec "$tools/bin/perf_analyzer" -m "${PERF_ANALYZER_MODEL:-level}" \
    -u "127.0.0.1:$port" -i http -b 1 "$@"
