import json

import pytest
import torch
import torch.nn.functional as F

from model import levels
from model.data import load_dataset, shift_images
from model.nac import NAC_FAMILY
from model.train import (
    RECIPES,
    TrainConfig,
    control_order,
    default_threads,
    distill_loss,
    draw_levels,
    load_checkpoint,
    resolve,
    step_loss,
    train,
)

# lr high and no weight averaging: in four epochs the tiny model's loss visibly falls
TINY = TrainConfig(dataset="digits", epochs=4, preset="tiny", batch_size=64, lr=1e-2, ema=0)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ckpt")
    model, meta = train(TINY, out, threads=1)
    return model, meta, out


def test_same_seed_same_weights(tiny_run):
    model, _, _ = tiny_run
    again, _ = train(TINY, threads=1)  # the same thread count: the load may pick another by default
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


def test_default_threads_are_the_idle_cores():
    assert default_threads(2, 0.0) == 2  # an idle machine: torch's default, every core
    assert default_threads(2, 0.4) == 2
    assert default_threads(2, 1.0) == 1  # one other busy process: one thread, not two that wait on it
    assert default_threads(2, 9.0) == 1  # never none
    assert default_threads(16, 3.2) == 13
    assert default_threads(4, -1.0) == 4  # never more than the cores


def test_train_runs_on_the_threads_asked_and_puts_torchs_back(tiny_run):
    before = torch.get_num_threads()
    _, meta = train(TrainConfig(dataset="digits", epochs=1, preset="tiny"), threads=before + 1)
    assert meta["train_threads"] == before + 1 and torch.get_num_threads() == before
    assert tiny_run[1]["train_threads"] == 1


def test_missing_checkpoint_is_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a checkpoint"):
        load_checkpoint(tmp_path)


def test_recipe_fills_what_the_config_leaves_open():
    data = load_dataset("digits")
    cfg = resolve(TrainConfig(), data)
    recipe = RECIPES["digits"]
    assert (cfg.epochs, cfg.augment, cfg.warp, cfg.distill) == (
        *(recipe.epochs, recipe.augment, recipe.warp, recipe.distill),
    )
    mine = resolve(TrainConfig(epochs=7, augment=2, warp=not recipe.warp, distill=0.5), data)
    assert (mine.epochs, mine.augment, mine.warp, mine.distill) == (7, 2, not recipe.warp, 0.5)
    assert resolve(TrainConfig(preset="tiny"), data).epochs == RECIPES["tiny"].epochs


def test_draw_levels_with_and_without_distillation():
    gen = torch.Generator().manual_seed(0)
    plain = TrainConfig(sparsity_aware=False)
    assert all(draw_levels(plain, gen) == [1.0] for _ in range(20))
    one = [draw_levels(TrainConfig(distill=0.0), gen) for _ in range(200)]
    assert all(len(d) == 1 for d in one) and {d[0] for d in one} == {1.0, 0.5, 0.25, 0.125}
    two = [draw_levels(TrainConfig(distill=1.0), gen) for _ in range(200)]
    assert all(d[0] == 1.0 and d[1] < 1 for d in two) and {d[1] for d in two} == {0.5, 0.25, 0.125}
    assert draw_levels(TrainConfig(distill=1.0, levels=[1.0]), gen) == [1.0]  # nothing to distil into


def test_distill_loss_is_zero_on_agreement_and_teaches_only_the_student():
    teacher = torch.randn(8, 10, requires_grad=True)
    assert distill_loss(teacher.detach().clone(), teacher).abs() < 1e-6
    student = torch.zeros(8, 10, requires_grad=True)
    loss = distill_loss(student, teacher, temperature=2.0)
    loss.backward()
    assert loss > 0 and student.grad is not None and student.grad.abs().sum() > 0
    assert teacher.grad is None  # the full level is not pulled towards the pruned one
    # the student's gradient points towards the teacher's distribution
    with torch.no_grad():
        moved = student - 10 * student.grad
    assert distill_loss(moved, teacher, temperature=2.0) < loss


def test_step_loss_adds_the_distillation_term():
    data = load_dataset("digits")
    torch.manual_seed(0)
    from model.train import build_model

    model = build_model(TrainConfig(preset="tiny"), data).eval()  # eval: no sampled edges
    x, y = torch.from_numpy(data.train.x[:32]) / 16, torch.from_numpy(data.train.y[:32])
    losses = {}
    for distill in (0.0, 1.0, 5.0):
        cfg = TrainConfig(preset="tiny", distill=distill, levels=[1.0, 0.25], label_smoothing=0.0)
        gen = torch.Generator().manual_seed(1)
        losses[distill], logits = step_loss(NAC_FAMILY, model, x, y, cfg, gen)
        assert logits.shape == (32, 10)
    # with distillation: CE(full) + CE(1/4) + w * KL(full || 1/4), from the same model
    quarter = NAC_FAMILY.ranking(model)[: NAC_FAMILY.units(model) // 4]
    full_logits, quarter_logits = NAC_FAMILY.forward(model, x, None), NAC_FAMILY.forward(model, x, quarter)
    ce = F.cross_entropy(full_logits, y) + F.cross_entropy(quarter_logits, y)
    kl = distill_loss(quarter_logits, full_logits)
    assert kl > 0
    torch.testing.assert_close(losses[1.0], ce + kl)
    torch.testing.assert_close(losses[5.0], ce + 5 * kl)
    assert losses[0.0] < losses[1.0]  # without it: one level, labels only


def test_shift_images_moves_pixels_by_at_most_one():
    x = torch.zeros(50, 5, 5)
    x[:, 2, 2] = 1
    gen = torch.Generator().manual_seed(0)
    y = shift_images(x, gen)
    pos = y.flatten(1).argmax(1)
    rows, cols = pos // 5, pos % 5
    assert y.sum() == 50 and rows.sub(2).abs().max() <= 1 and cols.sub(2).abs().max() <= 1
    assert len(set(pos.tolist())) > 1


def test_shift_images_reaches_every_offset_up_to_max_shift():
    x = torch.zeros(400, 7, 7)
    x[:, 3, 3] = 1
    y = shift_images(x, torch.Generator().manual_seed(0), max_shift=2)
    pos = y.flatten(1).argmax(1)
    offsets = {(int(p) // 7 - 3, int(p) % 7 - 3) for p in pos}
    assert offsets == {(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)}
    assert torch.equal(shift_images(x, torch.Generator().manual_seed(0), max_shift=0), x)


def test_the_control_order_keeps_the_leading_units_and_permutes_the_rest():
    ranked = torch.tensor([0, 3, 1, 2, 4])
    assert torch.equal(
        control_order(ranked, 0, 7), torch.randperm(5, generator=torch.Generator().manual_seed(7))
    )
    for seed in range(20):
        order = control_order(ranked, 1, seed)
        assert order[0] == 0 and sorted(order.tolist()) == [0, 1, 2, 3, 4]
    assert len({tuple(control_order(ranked, 1, s).tolist()) for s in range(20)}) > 1


def test_an_nfm_control_at_its_fewest_stages_is_its_ranked_level():
    """Pass 1 alone is the NFM's cheapest level in either order: a random control that dropped pass 1
    for a read would be another, costlier model, and ranked-vs-random there would compare the two."""
    cfg = TrainConfig(dataset="digits", family="nfm", epochs=1, preset="tiny", batch_size=64, ema=0)
    _, meta = train(cfg, threads=1)
    assert meta["ranking"]["random"][0] == meta["ranking"]["outdegree"][0] == 0
    cheapest = min(meta["test_accuracy"]["outdegree"], key=levels.parse)
    assert meta["test_accuracy"]["random"][cheapest] == meta["test_accuracy"]["outdegree"][cheapest]
