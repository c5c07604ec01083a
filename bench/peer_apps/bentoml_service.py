"""BentoML serving one ONNX level with its adaptive batching on.

Run by the bench with the peers' BentoML: `bentoml serve bentoml_service:OnnxLevel --port PORT` from
this directory; settings in BENCH_* variables (see common.py). Request: {"input": [<one example>]}
(a batch of one: BentoML concatenates requests along axis 0); answer: [{"class_index", "probabilities"}].
"""

from __future__ import annotations

import bentoml
import numpy as np
from common import BATCH_ENV, Classifier, answer, setting

MAX_LATENCY_MS = 10_000


# one worker (2 cores, as for circuitserve); no per-request access log (circuitserve logs none either)
@bentoml.service(workers=1, traffic={"timeout": 30}, logging={"access": {"enabled": False}})
class OnnxLevel:
    def __init__(self) -> None:
        self.model = Classifier()

    @bentoml.api(
        batchable=True,
        batch_dim=0,
        max_batch_size=int(setting(BATCH_ENV)),
        # BentoML's batching knob is a latency bound, not a window: its adaptive dispatcher picks the
        # wait from the batch times it observes and sheds (503) what it predicts past the bound. A
        # generous bound lets it batch at will without shedding.
        max_latency_ms=MAX_LATENCY_MS,
    )
    def predict(self, input: np.ndarray) -> list[dict[str, object]]:
        return [answer(p) for p in self.model(input)]
