"""NVIDIA Triton (tritonserver, through PyTriton) serving one ONNX level from a Python callable, with
its dynamic batcher on.

Run by the bench with the Triton venv's Python: `python triton_app.py HTTP_PORT GRPC_PORT METRICS_PORT`;
settings in BENCH_* variables (see common.py). Triton's own C++ HTTP frontend and dynamic batcher
(no queue delay, the same batch limit) hand batches to this process, which runs the same onnxruntime
session as the other peers. Request: KServe v2 JSON at /v2/models/level/infer, one example as a batch
of one; answer: the outputs "probabilities" and "class_index"."""

import os
import sys
import sysconfig

import numpy as np
from common import BATCH_ENV, Classifier, setting
from pytriton.decorators import batch
from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
from pytriton.triton import Triton, TritonConfig, TritonSecurityConfig

MODEL = "level"


def _own_libpython() -> None:
    """Triton's Python-backend stub (the process that runs `infer`) links libpython3.X.so and takes
    the first one the loader finds, often the system's (/lib/x86_64-linux-gnu), while its sys.path is
    this interpreter's stdlib. When the two are different patch releases, the stdlib's Python meets
    C code it does not match: Debian's 3.11.2 under pyenv's 3.11.7 stdlib fails in multiprocessing's
    resource_tracker ("'_thread.RLock' object has no attribute '_recursion_count'", added in 3.11.5).
    Put this interpreter's own libpython first; tritonserver and the stub inherit the environment."""
    libdir = sysconfig.get_config_var("LIBDIR")
    if libdir:
        os.environ["LD_LIBRARY_PATH"] = os.pathsep.join(
            filter(None, [libdir, os.environ.get("LD_LIBRARY_PATH")])
        )


def main() -> None:
    _own_libpython()
    http_port, grpc_port, metrics_port = (int(a) for a in sys.argv[1:4])
    model = Classifier()
    shape = tuple(int(d) for d in model.session.get_inputs()[0].shape[1:])

    @batch
    def infer(input):
        probs = model(input)
        return {"probabilities": probs, "class_index": np.argmax(probs, axis=1).astype(np.int64)[:, None]}

    config = TritonConfig(
        http_address="127.0.0.1",
        http_port=http_port,
        grpc_address="127.0.0.1",
        grpc_port=grpc_port,
        metrics_port=metrics_port,
        allow_gpu_metrics=False,
        log_verbose=0,
    )
    # PyTriton guards shared-memory, model-repository and statistics with a token by default; the
    # statistics stay open here (loopback only) so that Triton's perf_analyzer can read them
    security = TritonSecurityConfig(restricted_endpoints=["shared-memory", "model-repository"])
    with Triton(config=config, security_config=security) as triton:
        triton.bind(
            model_name=MODEL,
            infer_func=infer,
            inputs=[Tensor(name="input", dtype=np.float32, shape=shape)],
            outputs=[
                Tensor(name="probabilities", dtype=np.float32, shape=(-1,)),
                Tensor(name="class_index", dtype=np.int64, shape=(1,)),
            ],
            config=ModelConfig(
                max_batch_size=int(setting(BATCH_ENV)),
                batcher=DynamicBatcher(max_queue_delay_microseconds=0),
            ),
            strict=False,
        )
        triton.serve()


if __name__ == "__main__":
    main()
