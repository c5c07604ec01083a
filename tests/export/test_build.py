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
from export.manifest import BundleError, Manifest, load_bundle, read_manifest
from model.nac import Frozen
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
    assert [lv.modules for lv in manifest.sorted_levels()] == [8, 4, 2, 1]
    assert (bundle / "tradeoff.png").stat().st_size > 1000
    assert not list(bundle.parent.glob(".tiny*")), "temporary directory left behind"
    for lv in manifest.levels:
        assert [s.batch_size for s in lv.latency] == [1, 8, 32, 128]
        assert all(s.p95_ms >= s.median_ms > 0 for s in lv.latency)
    flops = [lv.flops for lv in manifest.sorted_levels()]
    assert flops == sorted(flops, reverse=True)


def test_graphs_hold_only_kept_modules_with_dynamic_batch(bundle):
    manifest = read_manifest(bundle)
    for lv in manifest.levels:
        graph = onnx.load(str(bundle / lv.file)).graph
        assert graph.input[0].type.tensor_type.shape.dim[0].dim_param  # symbolic batch axis
        # every per-module constant has the kept module count as its first axis, none the full count
        lead = {t.dims[0] for t in graph.initializer if len(t.dims) == 2}
        if lv.modules != 8:
            assert lv.modules in lead and 8 not in lead, (lv.name, lead)
        session = ort.InferenceSession(str(bundle / lv.file), providers=["CPUExecutionProvider"])
        for b in (1, 5):
            logits, probs = session.run(None, {"input": np.random.rand(b, 8, 8).astype(np.float32) * 16})
            assert logits.shape == (b, 10) and np.allclose(probs.sum(-1), 1, atol=1e-5)


def test_parity_with_torch_per_level(bundle, tiny_ckpt):
    model, meta = load_checkpoint(tiny_ckpt)
    order = torch.tensor(meta["ranking"]["outdegree"])
    mean, std = torch.tensor(meta["normalization"]["mean"]), torch.tensor(meta["normalization"]["std"])
    x = np.random.default_rng(1).uniform(0, 16, (64, 8, 8)).astype(np.float32)
    for lv in read_manifest(bundle).levels:
        frozen = Frozen(model.prune(order[: lv.modules]), mean, std)
        with torch.no_grad():
            expected = frozen(torch.from_numpy(x))[0].numpy()
        got = ort.InferenceSession(str(bundle / lv.file)).run(["logits"], {"input": x})[0]
        assert np.abs(got - expected).max() <= PARITY_ATOL


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
    bad = runner.invoke(
        app, ["export", str(tiny_ckpt), "--out", str(tmp_path / "x"), "--levels", "1,1/2,1/2"]
    )
    assert bad.exit_code != 0 and "duplicate" in bad.output
    bad = runner.invoke(app, ["export", str(tiny_ckpt), "--out", str(tmp_path / "x"), "--levels", "1,2"])
    assert bad.exit_code != 0 and "(0, 1]" in bad.output
    missing = runner.invoke(app, ["inspect", str(tmp_path)])
    assert missing.exit_code == 2 and "no manifest.json" in missing.output
