#!/usr/bin/env bash
# Install the bench's peer servers (LitServe, BentoML) into their own virtual environment, apart from
# the server's: bench/out/peers-venv, where `circuitserve bench` looks for them. The package list is
# the `peers` extra of pyproject.toml. Usage: bash bench/peer_apps/setup_venv.sh [PYTHON]
set -euo pipefail
cd "$(dirname "$0")/../.."
python=${1:-python3}
venv=bench/out/peers-venv
packages=$("$python" - <<'PY'
import tomllib
with open("pyproject.toml", "rb") as fh:
    extras = tomllib.load(fh)["project"]["optional-dependencies"]
if "peers" not in extras:
    raise SystemExit("pyproject.toml has no `peers` extra")
print("\n".join(extras["peers"]))
PY
)
"$python" -m venv "$venv"
mapfile -t specs <<<"$packages"
"$venv/bin/pip" install --quiet "${specs[@]}"
"$venv/bin/python" -c "import litserve, bentoml, onnxruntime; print('peers installed in $venv')"
