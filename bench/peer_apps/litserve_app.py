"""LitServe serving one ONNX level with its dynamic batching on.

Run by the bench with the peers' Python: `python litserve_app.py PORT`; settings in BENCH_* variables
(see common.py). Request: {"input": <one example, nested>}; answer: {"class_index", "probabilities"}.
One inference worker and one API server process: the machine has 2 cores, as for circuitserve;
BENCH_API_SERVERS sets LitServe's num_api_servers, BENCH_INSTANCES its workers_per_device (the workers
section runs each with 2)."""

import os
import sys

import litserve as ls
import numpy as np
from common import BATCH_ENV, DELAY_ENV, Classifier, answer, setting


class OnnxAPI(ls.LitAPI):
    # no annotations on decode_request/encode_response: LitServe would turn them into a request schema
    def setup(self, device: str) -> None:
        self.model = Classifier()

    def decode_request(self, request):
        return np.asarray(request["input"], dtype=np.float32)  # batched by LitServe with np.stack

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.model(x)

    def encode_response(self, output):
        return answer(output)


def main() -> None:
    port = int(sys.argv[1])
    api = OnnxAPI(max_batch_size=int(setting(BATCH_ENV)), batch_timeout=float(setting(DELAY_ENV)) / 1000)
    # fast_queue: ZeroMQ between the API server and the worker, LitServe's advice above ~100 requests/s
    workers = int(os.environ.get("BENCH_INSTANCES", "1"))  # inference worker processes
    server = ls.LitServer(api, accelerator="cpu", devices=1, workers_per_device=workers, fast_queue=True)
    server.run(
        host="127.0.0.1",
        port=port,
        num_api_servers=int(os.environ.get("BENCH_API_SERVERS", "1")),
        log_level="warning",
        generate_client_file=False,
    )


if __name__ == "__main__":
    main()
