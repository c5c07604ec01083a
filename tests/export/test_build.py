import json
import shutil
from fractions import Fraction

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from typer.testing import CliRunner

from circuitserve import app
from export.build import PARITY_ATOL, ExportError, export_bundle
from export.calibration import wilson_interval
from export.manifest import CPU_PROVIDER, BundleError, Manifest, load_bundle, read_manifest
from export.plot import error_bars
from model.families import get
from model.train import load_checkpoint


@pytest.fixture
def tiny_ckpt(trained_checkpoint):
    return trained_checkpoint


@pytest.fixture
def bundle(trained_bundle):
    return trained_bundle


def test_round_trip_levels_and_files(bundle):
    manifest = load_bundle(bundle)
    assert [lv.name for lv in manifest.sorted_levels()] == ["full", "1/2", "1/4", "1/8"]
    assert [lv.units for lv in manifest.sorted_levels()] == [8, 4, 2, 1]
    assert (manifest.schema_version, manifest.family, manifest.unit) == (3, "nac", "modules")
    assert (bundle / "tradeoff.png").stat().st_size > 1000
    assert not list(bundle.parent.glob(".tiny*")), "temporary directory left behind"
    for lv in manifest.levels:
        assert set(lv.latency) == {CPU_PROVIDER} and lv.precision == "fp32"
        assert [s.batch_size for s in lv.latency_on(CPU_PROVIDER)] == [1, 8, 32, 128]
        assert all(s.p95_ms >= s.median_ms > 0 for s in lv.latency_on(CPU_PROVIDER))
    flops = [lv.flops for lv in manifest.sorted_levels()]
    assert flops == sorted(flops, reverse=True)


def test_graphs_hold_only_kept_modules_with_dynamic_batch(bundle):
    manifest = read_manifest(bundle)
    for lv in manifest.levels:
        graph = onnx.load(str(bundle / lv.file)).graph
        assert graph.input[0].type.tensor_type.shape.dim[0].dim_param  # symbolic batch axis
        # every per-module constant has the kept module count as its first axis, none the full count
        lead = {t.dims[0] for t in graph.initializer if len(t.dims) == 2}
        if lv.units != 8:
            assert lv.units in lead and 8 not in lead, (lv.name, lead)
        session = ort.InferenceSession(str(bundle / lv.file), providers=["CPUExecutionProvider"])
        for b in (1, 5):
            logits, probs = session.run(None, {"input": np.random.rand(b, 8, 8).astype(np.float32) * 16})
            assert logits.shape == (b, 10) and np.allclose(probs.sum(-1), 1, atol=1e-5)


def test_parity_with_torch_per_level(bundle, tiny_ckpt):
    """Each graph is the family's level at the manifest's temperature: the raw model's logits over T."""
    model, meta = load_checkpoint(tiny_ckpt)
    family = get(meta["family"])
    order = torch.tensor(meta["ranking"]["outdegree"])
    mean, std = torch.tensor(meta["normalization"]["mean"]), torch.tensor(meta["normalization"]["std"])
    x = np.random.default_rng(1).uniform(0, 16, (64, 8, 8)).astype(np.float32)
    for lv in read_manifest(bundle).levels:
        assert lv.calibration is not None
        small = family.level(model, order[: lv.units])
        with torch.no_grad():
            raw = family.forward(small, (torch.from_numpy(x) - mean.reshape(8, 8)) / std.reshape(8, 8), None)
        got = ort.InferenceSession(str(bundle / lv.file)).run(["logits"], {"input": x})[0]
        # the manifest rounds T to 4 decimals: compare at that precision
        assert np.abs(got * lv.calibration.temperature - raw.numpy()).max() <= 1e-3 * max(
            1.0, lv.calibration.temperature
        )
        exported = family.export_module(small, mean, std, lv.calibration.temperature)
        with torch.no_grad():
            expected = exported(torch.from_numpy(x))[0].numpy()
        assert np.abs(got - expected).max() <= PARITY_ATOL


def test_manifest_says_how_sure_each_accuracy_is(bundle):
    """Test-set size, 95% Wilson interval around the accuracy, ECE before and after the temperature."""
    for lv in read_manifest(bundle).levels:
        assert lv.test_size == 359 and lv.accuracy_interval is not None and lv.calibration is not None
        low, high = wilson_interval(round(lv.accuracy * lv.test_size), lv.test_size)
        assert (lv.accuracy_interval.low, lv.accuracy_interval.high) == (round(low, 4), round(high, 4))
        assert lv.accuracy_interval.low <= lv.accuracy <= lv.accuracy_interval.high
        cal = lv.calibration
        assert cal.temperature > 0 and 0 <= cal.ece <= 1 and 0 <= cal.ece_uncalibrated <= 1
        if cal.temperature == 1:  # not kept: nothing changed
            assert cal.ece == cal.ece_uncalibrated and cal.validation_ece == cal.validation_ece_uncalibrated
        else:  # kept because it lowered the validation ECE
            assert cal.validation_ece < cal.validation_ece_uncalibrated


def test_tradeoff_error_bars_are_the_intervals(bundle):
    levels = read_manifest(bundle).sorted_levels()
    below, above = error_bars(levels)
    for lv, lo, hi in zip(levels, below, above, strict=True):
        assert lv.accuracy_interval is not None
        assert lo == pytest.approx(100 * (lv.accuracy - lv.accuracy_interval.low))
        assert hi == pytest.approx(100 * (lv.accuracy_interval.high - lv.accuracy))
        assert lo > 0 and hi > 0  # 359 test images: never a point estimate


def test_schema_1_bundle_is_still_read(bundle, tmp_path):
    """A bundle written before families (schema 1: `modules` per level, no family) loads as schema 2."""
    copy = tmp_path / "old"
    shutil.copytree(bundle, copy)
    raw = json.loads((copy / "manifest.json").read_text())
    raw["schema_version"] = 1
    del raw["family"], raw["unit"]
    for lv in raw["levels"]:
        lv["modules"] = lv.pop("units")
        for new in ("knobs", "test_size", "accuracy_interval", "calibration"):
            del lv[new]  # fields schema 1 never had
    (copy / "manifest.json").write_text(json.dumps(raw))
    old = load_bundle(copy)
    assert (old.schema_version, old.family, old.unit) == (1, "nac", "modules")
    assert [lv.units for lv in old.sorted_levels()] == [8, 4, 2, 1]
    assert all(lv.accuracy_interval is None and lv.calibration is None for lv in old.levels)
    result = CliRunner().invoke(app, ["inspect", str(copy)])
    assert result.exit_code == 0 and "1/8" in result.output, result.output
    raw["levels"][0]["units"] = 3  # schema 1 knows no `units`
    (copy / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(BundleError, match="units"):
        read_manifest(copy)


def test_schema_2_latency_list_is_read_as_the_cpu_table(bundle, tmp_path):
    """Schema 2 wrote one unkeyed latency list per level, measured on CPU."""
    copy = tmp_path / "two"
    shutil.copytree(bundle, copy)
    raw = json.loads((copy / "manifest.json").read_text())
    raw["schema_version"] = 2
    for lv in raw["levels"]:
        lv["latency"] = lv["latency"][CPU_PROVIDER]
        del lv["precision"]  # schema 2 had no precision: FP32
    (copy / "manifest.json").write_text(json.dumps(raw))
    old, new = load_bundle(copy), read_manifest(bundle)
    assert old.schema_version == 2
    assert [lv.latency for lv in old.levels] == [lv.latency for lv in new.levels]
    assert {lv.precision for lv in old.levels} == {"fp32"}


def test_changed_file_is_caught_by_checksum(bundle, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(bundle, copy)
    lv = read_manifest(copy).levels[-1]
    data = bytearray((copy / lv.file).read_bytes())
    data[-1] ^= 0xFF
    (copy / lv.file).write_bytes(bytes(data))
    with pytest.raises(BundleError, match="checksum"):
        load_bundle(copy)


def test_manifest_validation_rejects_inconsistency(bundle):
    raw = json.loads((bundle / "manifest.json").read_text())
    dup = json.loads(json.dumps(raw))
    dup["levels"][1]["name"] = dup["levels"][0]["name"]
    with pytest.raises(ValueError, match="duplicate level names"):
        Manifest.model_validate(dup)
    bad = json.loads(json.dumps(raw))
    bad["levels"][0]["file"] = "../escape.onnx"
    with pytest.raises(ValueError, match="plain file name"):
        Manifest.model_validate(bad)
    short = json.loads(json.dumps(raw))
    short["labels"] = short["labels"][:3]
    with pytest.raises(ValueError, match="classes"):
        Manifest.model_validate(short)


def test_bad_inputs_are_clear_errors(tiny_ckpt, tmp_path):
    with pytest.raises(ExportError, match="duplicate"):
        export_bundle(tiny_ckpt, tmp_path / "b", [Fraction(1), Fraction(1)])
    with pytest.raises(FileNotFoundError, match="not a checkpoint"):
        export_bundle(tmp_path, tmp_path / "b", [Fraction(1)])
    assert not (tmp_path / "b").exists()


def test_cli_inspect_and_level_errors(bundle, tiny_ckpt, tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["inspect", str(bundle)])
    assert result.exit_code == 0, result.output
    assert "1/8" in result.output and "accuracy" in result.output and "b128 ms" in result.output
    manifest = read_manifest(bundle)
    full = manifest.sorted_levels()[0]
    assert full.accuracy_interval is not None and full.calibration is not None
    assert f"[{full.accuracy_interval.low:.4f}, {full.accuracy_interval.high:.4f}] n=359" in result.output
    assert f"T={full.calibration.temperature:.2f}" in result.output
    bad = runner.invoke(
        app, ["export", str(tiny_ckpt), "--out", str(tmp_path / "x"), "--levels", "1,1/2,1/2"]
    )
    assert bad.exit_code != 0 and "duplicate" in bad.output
    bad = runner.invoke(app, ["export", str(tiny_ckpt), "--out", str(tmp_path / "x"), "--levels", "1,2"])
    assert bad.exit_code != 0 and "(0, 1]" in bad.output
    missing = runner.invoke(app, ["inspect", str(tmp_path)])
    assert missing.exit_code == 2 and "no manifest.json" in missing.output
