import json

import pytest
import torch

from model.train import TrainConfig, load_checkpoint, shift_images, train

# lr high and no weight averaging: in four epochs the tiny model's loss visibly falls
TINY = TrainConfig(dataset="digits", epochs=4, preset="tiny", batch_size=64, lr=1e-2, ema=0)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ckpt")
    model, meta = train(TINY, out)
    return model, meta, out


def test_same_seed_same_weights(tiny_run):
    model, _, _ = tiny_run
    again, _ = train(TINY)
    for (name, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


def test_training_lowers_the_loss(tiny_run):
    """train() itself, not a hand-written loop: its per-epoch loss must fall, and its full model must
    beat chance (10 classes) on the test split."""
    _, meta, _ = tiny_run
    losses = meta["train_loss"]
    assert len(losses) == TINY.epochs and losses[-1] < 0.96 * losses[0], losses
    assert meta["test_accuracy"]["outdegree"]["full"] > 0.15, meta["test_accuracy"]


def test_checkpoint_round_trip(tiny_run):
    model, meta, out = tiny_run
    loaded, meta2 = load_checkpoint(out)
    assert meta2 == json.loads(json.dumps(meta))
    x = torch.randn(3, 8, 8)
    torch.testing.assert_close(loaded(x), model.eval()(x))
    assert set(meta["test_accuracy"]) == {"outdegree", "random"}
    assert set(meta["test_accuracy"]["outdegree"]) == {"full", "1/2", "1/4", "1/8"}
    assert meta["family"] == "nac"
    assert sorted(meta["ranking"]["outdegree"]) == list(range(model.cfg.modules))


def test_checkpoint_is_tensors_only(tiny_run, tmp_path):
    _, _, out = tiny_run
    # a pickle that is not plain tensors must be refused by the weights-only loader
    (tmp_path / "checkpoint.json").write_text((out / "checkpoint.json").read_text())
    torch.save({"evil": object()}, tmp_path / "model.pt")
    with pytest.raises(Exception, match=r"(?i)weights_only|unsupported|global"):
        load_checkpoint(tmp_path)


def test_missing_checkpoint_is_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a checkpoint"):
        load_checkpoint(tmp_path)


def test_shift_images_moves_pixels_by_at_most_one():
    x = torch.zeros(50, 5, 5)
    x[:, 2, 2] = 1
    gen = torch.Generator().manual_seed(0)
    y = shift_images(x, gen)
    pos = y.flatten(1).argmax(1)
    rows, cols = pos // 5, pos % 5
    assert y.sum() == 50 and rows.sub(2).abs().max() <= 1 and cols.sub(2).abs().max() <= 1
    assert len(set(pos.tolist())) > 1
