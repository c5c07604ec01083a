"""How each peer server is started (bench/peer_apps/, each in its own venv) and asked for one
example: LitServe and BentoML in their own JSON, Triton in KServe v2 JSON."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench.measure import BENTOML, LITSERVE, Api, Body
from bench.peer_setup import PEERS_VENV, TRITON_VENV, Venv
from bench.plan import SERVER
from bench.servers import Server, free_port, process

PEERS_DIR = Path(__file__).resolve().parent / "peer_apps"
TRITON_MODEL = "level"  # bench/peer_apps/triton_app.py binds the level under this name

Launcher = Callable[[Path], AbstractContextManager[Server]]  # one instance, its log in that folder


def _v2_batch_of_one(example: Any) -> Body:
    x = np.asarray(example, dtype=np.float32)
    tensor = {"name": "input", "shape": [1, *x.shape], "datatype": "FP32", "data": x.ravel().tolist()}
    return {"inputs": [tensor]}


TRITON = Api("triton", f"/v2/models/{TRITON_MODEL}/infer", _v2_batch_of_one)


@dataclass(frozen=True)
class Peer:
    name: str
    venv: Venv  # where it is installed (bench.peer_setup)
    api: Api


PEERS = (
    Peer("litserve", PEERS_VENV, LITSERVE),
    Peer("bentoml", PEERS_VENV, BENTOML),
    Peer("triton", TRITON_VENV, TRITON),
)


def peer_env(onnx: Path, cache: Path) -> dict[str, str]:
    return {
        "BENCH_ONNX": str(onnx),
        "BENCH_INTRA_OP_THREADS": str(SERVER.intra_op_threads),
        "BENCH_MAX_BATCH_SIZE": str(SERVER.max_batch_size),
        "BENCH_MAX_DELAY_MS": str(SERVER.max_queue_delay_ms),
        "BENTOML_HOME": str(cache / "bentoml-home"),
        "BENTOML_DO_NOT_TRACK": "true",
        "PYTHONPATH": str(PEERS_DIR),
    }


def _command(peer: Peer, python: Path, port: int) -> tuple[list[str], str]:
    """The peer's command line and its health route."""
    if peer.name == "litserve":
        return [str(python), str(PEERS_DIR / "litserve_app.py"), str(port)], "/health"
    if peer.name == "bentoml":
        bentoml = str(python.parent / "bentoml")
        return [
            bentoml,
            "serve",
            "bentoml_service:OnnxLevel",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ], "/readyz"
    grpc, metrics = free_port(), free_port()
    return [
        str(python),
        str(PEERS_DIR / "triton_app.py"),
        str(port),
        str(grpc),
        str(metrics),
    ], f"/v2/models/{TRITON_MODEL}/ready"  # the server is ready before PyTriton loads the model


def launcher(peer: Peer, python: Path, onnx: Path, cache: Path) -> Launcher:
    @contextmanager
    def start(log_dir: Path) -> Iterator[Server]:
        port = free_port()
        cmd, health = _command(peer, python, port)
        env = peer_env(onnx, cache)
        with process(
            peer.name, cmd, port=port, health_path=health, log_dir=log_dir, env=env, cwd=PEERS_DIR
        ) as server:
            yield server

    return start
