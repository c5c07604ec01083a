"""Access: the optional bearer token (which paths, constant-time compare, probes open by default),
request ids (taken or made, returned, logged), and no secret in any log line."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import tritonclient.http as triton
from fastapi.testclient import TestClient
from service_helpers import asgi_client, live_server, make_settings, sample_inputs, v2_tensor, wait_ready
from tritonclient.utils import InferenceServerException

from export.manifest import Manifest
from service import guard, logs
from service.app import create_app

TOKEN = "tok-Zq81xVb3-secret"
WRONG = "tok-Zq81xVb3-secreT"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def locked(bundle_path: Path) -> Iterator[TestClient]:
    with asgi_client(create_app(make_settings(bundle_path, auth_token=TOKEN))) as client:
        yield client


def guarded_calls(manifest: Manifest) -> list[tuple[str, str, dict[str, Any] | None]]:
    x = sample_inputs(manifest, 1)
    tensor = v2_tensor(manifest, x)
    m = manifest.name
    return [
        ("POST", f"/v1/models/{m}/predict", {"inputs": x.tolist()}),
        ("POST", f"/v2/models/{m}/infer", {"inputs": [tensor]}),
        ("POST", f"/v2/models/{m}/versions/{manifest.version}/infer", {"inputs": [tensor]}),
        ("GET", "/v1/models", None),
        ("GET", f"/v1/models/{m}", None),
        ("GET", "/v1/stats", None),
        ("GET", "/v2", None),
        ("GET", f"/v2/models/{m}", None),
        ("GET", f"/v2/models/{m}/ready", None),
    ]


def test_the_token_guards_inference_and_admin(locked: TestClient, manifest: Manifest) -> None:
    refusals = [
        {},
        {"Authorization": f"Bearer {WRONG}"},
        {"Authorization": f"Basic {TOKEN}"},
        {"Authorization": TOKEN},
    ]
    for method, path, body in guarded_calls(manifest):
        for headers in refusals:
            r = locked.request(method, path, json=body, headers=headers)
            assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer", (path, headers)
            assert r.json()["error"] == "missing or wrong bearer token" and TOKEN not in r.text
        assert locked.request(method, path, json=body, headers=AUTH).status_code == 200, path
    assert locked.get("/no/such/path").status_code == 401  # no probing for routes either
    assert locked.get("/no/such/path", headers=AUTH).status_code == 404


def test_probes_metrics_and_docs_stay_open_by_default(locked: TestClient) -> None:
    for path in ("/v2/health/live", "/v2/health/ready", "/metrics", "/docs", "/openapi.json"):
        assert locked.get(path).status_code == 200, path


def test_protecting_probes_and_metrics_is_a_setting(bundle_path: Path) -> None:
    settings = make_settings(bundle_path, auth_token=TOKEN, protect_health_and_metrics=True)
    with asgi_client(create_app(settings), ready=False) as client:
        wait_ready(lambda path: client.get(path, headers=AUTH))
        for path in ("/v2/health/live", "/v2/health/ready", "/metrics"):
            assert client.get(path).status_code == 401, path
            assert client.get(path, headers=AUTH).status_code == 200, path
        assert client.get("/openapi.json").status_code == 200


def test_the_token_is_compared_in_constant_time(locked: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[bytes, bytes]] = []

    def spy(a: bytes, b: bytes) -> bool:
        seen.append((a, b))
        return a == b

    monkeypatch.setattr(guard.hmac, "compare_digest", spy)
    assert locked.get("/v1/models", headers={"Authorization": f"Bearer {WRONG}"}).status_code == 401
    assert seen == [(WRONG.encode(), TOKEN.encode())]


def test_an_empty_token_is_refused(bundle_path: Path) -> None:
    with pytest.raises(ValueError, match="auth_token is empty"):
        make_settings(bundle_path, auth_token="  ")


def test_request_ids_are_taken_or_made_and_returned(client: TestClient, manifest: Manifest) -> None:
    x = sample_inputs(manifest, 1)
    r = client.post(
        f"/v1/models/{manifest.name}/predict", json={"inputs": x.tolist()}, headers={"X-Request-ID": "abc-1"}
    )
    assert r.headers["x-request-id"] == "abc-1" and r.json()["request_id"] == "abc-1"
    tensor = v2_tensor(manifest, x)
    url = f"/v2/models/{manifest.name}/infer"
    r = client.post(url, json={"inputs": [tensor]}, headers={"X-Request-ID": "trace:42/a"})
    body = r.json()
    assert (
        "id" not in body and body["parameters"]["request_id"] == "trace:42/a"
    )  # v2 `id`: echoed only if sent
    r = client.post(url, json={"id": "caller-7", "inputs": [tensor]}, headers={"X-Request-ID": "h-7"})
    assert r.json()["id"] == "caller-7" and r.headers["x-request-id"] == "h-7"
    made = {client.get("/v2/health/live").headers["x-request-id"] for _ in range(3)}
    assert len(made) == 3 and all(len(m) == 32 for m in made)
    for unsafe in ("x" * (logs.MAX_LENGTH + 1), "a b", "<script>", "ü"):
        r = client.get("/v2/health/live", headers={"X-Request-ID": unsafe.encode()})
        assert r.headers["x-request-id"] != unsafe and len(r.headers["x-request-id"]) == 32
    r = client.get("/v1/models/nope", headers={"X-Request-ID": "err-1"})
    assert r.status_code == 404 and r.json()["request_id"] == "err-1"


def test_request_ids_are_in_the_logs_and_secrets_are_not(
    bundle_path: Path, manifest: Manifest, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    settings = make_settings(bundle_path, auth_token=TOKEN, log_level="debug")
    x = sample_inputs(manifest, 1).tolist()
    with asgi_client(create_app(settings)) as client:
        url = f"/v1/models/{manifest.name}/predict"
        client.post(url, json={"inputs": x}, headers={**AUTH, "X-Request-ID": "req-ok"})
        client.post(
            url, json={"inputs": x}, headers={"Authorization": f"Bearer {WRONG}", "X-Request-ID": "req-401"}
        )
        client.post(url, json={"inputs": [[1.0]]}, headers={**AUTH, "X-Request-ID": "req-400"})
    formatter = logging.Formatter(logs.FORMAT)
    text = "\n".join(formatter.format(r) for r in caplog.records)
    for rid, status in (("req-ok", 200), ("req-401", 401), ("req-400", 400)):
        assert f"[{rid}] POST {url} {status}" in text, text[-2000:]
    assert TOKEN not in text and WRONG not in text and "Zq81xVb3" not in text


def test_tritonclient_passes_the_token_as_a_header(bundle_path: Path, manifest: Manifest) -> None:
    with live_server(make_settings(bundle_path, auth_token=TOKEN)) as address:
        client = triton.InferenceServerClient(address)
        try:
            assert client.is_server_live() and client.is_server_ready()  # probes send no token
            x = sample_inputs(manifest, 2)
            inp = triton.InferInput(manifest.input.name, list(x.shape), "FP32")
            inp.set_data_from_numpy(x)
            with pytest.raises(InferenceServerException, match="bearer token"):
                client.infer(manifest.name, [inp])
            result = client.infer(manifest.name, [inp], headers=AUTH)
            assert result.as_numpy("probabilities").shape == (2, len(manifest.labels))
        finally:
            client.close()


def test_made_request_ids_are_distinct_hex_and_a_forked_child_never_repeats_its_parents() -> None:
    made = [logs.request_id(None) for _ in range(3 * logs._POOL + 7)]  # across refills of the pool
    assert len(set(made)) == len(made) and all(len(m) == 32 and int(m, 16) >= 0 for m in made)
    pending = set(logs._fresh)  # what this process hands out next
    assert pending
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its first ids, to the parent
        os.write(write, "".join(logs.request_id(None) for _ in range(4)).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        child = pipe.read()
    assert os.waitpid(pid, 0)[1] == 0 and len(child) == 4 * 32
    assert not {child[i : i + 32] for i in range(0, len(child), 32)} & pending
