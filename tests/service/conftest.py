"""Fixtures for the service tests. Every test takes its bundle from `bundle_path`, so the same tests
run against a real trained bundle by overriding that fixture; inputs are shaped from its manifest."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import tritonclient.http as triton
from fastapi.testclient import TestClient
from service_helpers import asgi_client, make_settings
from synthetic_bundle import write_bundle

from export.manifest import Manifest, read_manifest
from service.app import create_app


@pytest.fixture(scope="session")
def bundle_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_bundle(tmp_path_factory.mktemp("bundle") / "synthetic")


@pytest.fixture(scope="session")
def manifest(bundle_path: Path) -> Manifest:
    return read_manifest(bundle_path)


@pytest.fixture(scope="module")
def client(bundle_path: Path) -> Iterator[TestClient]:
    with asgi_client(create_app(make_settings(bundle_path))) as c:
        yield c


@pytest.fixture(scope="module")
def triton_client(address: str) -> Iterator[triton.InferenceServerClient]:
    """tritonclient.http on the module's live server (each module that uses it has an `address`)."""
    client = triton.InferenceServerClient(address)
    yield client
    client.close()
