import json

import pytest
import torch

from model.train import TrainConfig, load_checkpoint, shift_images, train

TINY = TrainConfig(dataset="digits", epochs=2, preset="tiny", batch_size=128)


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


def test_loss_falls_in_short_run():
    losses = []
    cfg = TrainConfig(dataset="digits", epochs=1, preset="tiny", batch_size=64)
    from model.data import load_dataset
    from model.train import build_model

    data = load_dataset("digits")
    torch.manual_seed(0)
    model = build_model(cfg, data)
    mean, std = (torch.from_numpy(a) for a in data.normalization())
    x, y = torch.from_numpy(data.train.x[:256]), torch.from_numpy(data.train.y[:256])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(60):
        loss = torch.nn.functional.cross_entropy(model((x - mean) / std), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-5:]) / 5 < 0.8 * sum(losses[:5]) / 5


def test_checkpoint_round_trip(tiny_run):
    model, meta, out = tiny_run
    loaded, meta2 = load_checkpoint(out)
    assert meta2 == json.loads(json.dumps(meta))
    x = torch.randn(3, 8, 8)
    torch.testing.assert_close(loaded(x), model.eval()(x))
    assert set(meta["test_accuracy"]) == {"outdegree", "random"}
    assert set(meta["test_accuracy"]["outdegree"]) == {"1", "1/2", "1/4", "1/8"}
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
