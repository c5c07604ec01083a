"""The server reads both manifest schemas: a schema-1 bundle (written before model families, NAC
only, `modules` per level) serves exactly as its schema-2 twin, and the model info names the family
and the unit its levels drop."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from service_helpers import asgi_client, make_settings

from export.manifest import MANIFEST_FILE, BundleError, Manifest, read_manifest
from service.app import create_app


def as_schema_1(bundle: Path, copy: Path) -> Path:
    """The same bundle as an older export would have written it."""
    shutil.copytree(bundle, copy)
    raw = json.loads((copy / MANIFEST_FILE).read_text())
    raw["schema_version"] = 1
    del raw["family"], raw["unit"]
    for lv in raw["levels"]:
        lv["modules"] = lv.pop("units")
        for new in ("knobs", "test_size", "accuracy_interval", "calibration"):
            lv.pop(new, None)
    (copy / MANIFEST_FILE).write_text(json.dumps(raw))
    return copy


def test_a_schema_1_bundle_serves_like_its_schema_2_twin(
    bundle_path: Path, manifest: Manifest, tmp_path: Path
) -> None:
    old = as_schema_1(bundle_path, tmp_path / "old")
    assert json.loads((old / MANIFEST_FILE).read_text())["levels"][0]["modules"] > 0
    x = np.random.default_rng(0).uniform(0, 16, (2, *manifest.input.shape[1:])).tolist()
    answers = []
    for path in (bundle_path, old):
        with asgi_client(create_app(make_settings(path))) as client:
            info = client.get(f"/v1/models/{manifest.name}")
            assert info.status_code == 200, info.text
            body = info.json()
            assert (body["family"], body["unit"]) == ("nac", "modules")
            assert [lv["units"] for lv in body["levels"]] == [lv.units for lv in manifest.sorted_levels()]
            answer = client.post(
                f"/v1/models/{manifest.name}/predict", json={"inputs": x, "sparsity_level": "0.5"}
            )
            assert answer.status_code == 200, answer.text
            answers.append(answer.json()["predictions"])
    assert answers[0] == answers[1]


def test_the_version_is_read_from_the_manifest_and_is_1_when_absent(
    bundle_path: Path, tmp_path: Path
) -> None:
    copy = shutil.copytree(bundle_path, tmp_path / "versioned")
    raw = json.loads((copy / MANIFEST_FILE).read_text())
    raw.pop("version", None)
    (copy / MANIFEST_FILE).write_text(json.dumps(raw))
    assert read_manifest(copy).version == "1"  # bundles written before versions
    (copy / MANIFEST_FILE).write_text(json.dumps({**raw, "version": "12"}))
    assert read_manifest(copy).version == "12"
    for bad in ("0", "v2", "1.5", ""):
        (copy / MANIFEST_FILE).write_text(json.dumps({**raw, "version": bad}))
        with pytest.raises(BundleError, match="version"):
            read_manifest(copy)
