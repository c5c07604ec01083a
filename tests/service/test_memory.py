"""Memory stays bounded by the settings: the largest legal request (max_queue_size rows), sent again
and again, runs in max_batch_size chunks and leaves the server's resident memory within a stated
bound of what it was when ready (deploy/README.md derives the pod's memory from the bench's figure)."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import numpy as np
import psutil
from service_helpers import child_server

from export.manifest import Manifest
from service.settings import Settings

REPEATS = 6
GROWTH_BOUND_MB = 120  # over the ready server's RSS, after all repeats


def test_the_largest_legal_request_leaves_memory_bounded(
    bundle_path: Path, manifest: Manifest, tmp_path: Path
) -> None:
    rows = Settings.model_fields["max_queue_size"].default
    x = np.random.default_rng(0).standard_normal((rows, *manifest.input.shape[1:])).astype(np.float32)
    body = json.dumps({"inputs": x.tolist()}).encode()
    assert len(body) < Settings.model_fields["max_body_bytes"].default  # legal: under the body limit
    with child_server(bundle_path, tmp_path / "server.log") as server:
        process = psutil.Process(server.proc.pid)
        ready_mb = process.memory_info().rss / 2**20
        peak_mb = ready_mb
        with httpx.Client(base_url=server.url, timeout=60) as http:
            for _ in range(REPEATS):
                r = http.post(f"/v1/models/{manifest.name}/predict", content=body)
                assert r.status_code == 200 and len(r.json()["predictions"]) == rows, r.text[:300]
                assert r.json()["batch_size"] <= Settings.model_fields["max_batch_size"].default
                peak_mb = max(peak_mb, process.memory_info().rss / 2**20)
        assert peak_mb - ready_mb < GROWTH_BOUND_MB, (ready_mb, peak_mb)
