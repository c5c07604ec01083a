#!/bin/sh
# The one install command of circuitserve. CI, the test command and every Dockerfile stage call it,
# so the image installs exactly what CI exercises:
#
#   scripts/install.sh             pip install .             runtime image: the serve deps, no torch
#   scripts/install.sh train       pip install '.[train]'    image stage that trains and exports a bundle
#   scripts/install.sh gpu         pip install '.[gpu]'      CUDA image: the serve deps + CUDA 13 and cuDNN 9
#   scripts/install.sh -e all      pip install -e '.[all]'   CI, the test command, developers
#
# PYTHON picks the interpreter (default: python on PATH). pip reads its other settings from the
# environment as usual (PIP_NO_CACHE_DIR, PIP_EXTRA_INDEX_URL, ...), which keeps this command the same
# everywhere. CIRCUITSERVE_INSTALL_DRY_RUN=1 prints the command instead of running it.
set -eu

usage() {
    echo "usage: $0 [-e] [EXTRAS]   e.g. '$0', '$0 train', '$0 -e all'" >&2
    exit 2
}

editable=""
if [ "${1:-}" = "-e" ]; then
    editable="-e"
    shift
fi
[ "$#" -le 1 ] || usage
extras="${1:-}"
case "$extras" in
    "" | all | train | dev | gpu) ;;
    *) usage ;;
esac

target="."
[ -z "$extras" ] || target=".[$extras]"

cd "$(dirname "$0")/.."
if [ -n "${CIRCUITSERVE_INSTALL_DRY_RUN:-}" ]; then
    echo "${PYTHON:-python} -m pip install ${editable:+$editable }$target"
    exit 0
fi
# shellcheck disable=SC2086  # $editable is empty or one word
exec "${PYTHON:-python}" -m pip install $editable "$target"
