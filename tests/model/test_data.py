import numpy as np
import pytest

from model.data import DatasetError, load_dataset


def test_digits_split_is_seeded_and_disjoint():
    a, b = load_dataset("digits", seed=3), load_dataset("digits", seed=3)
    assert np.array_equal(a.test.x, b.test.x)
    assert a.input_shape == (8, 8) and len(a.labels) == 10
    assert len(a.train.y) + len(a.val.y) + len(a.test.y) == 1797
    c = load_dataset("digits", seed=4)
    assert not np.array_equal(a.test.y, c.test.y)


def test_normalization_has_no_zero_std():
    d = load_dataset("digits")
    mean, std = d.normalization()
    assert mean.shape == (8, 8) and (std > 0).all()
    assert np.unique(std).size == 1  # images share one scale: no per-pixel blow-up


def test_npz_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "toy.npz"
    np.savez(path, x=rng.normal(size=(60, 6)), y=np.arange(60) % 3, label_names=np.array(["a", "b", "c"]))
    d = load_dataset(str(path))
    assert d.labels == ["a", "b", "c"] and d.input_shape == (6,) and d.preset == "features"


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"x": np.zeros((10, 3))}, "missing array"),
        ({"x": np.zeros((10, 3)), "y": np.zeros(9, int)}, "y must be integer with shape"),
        ({"x": np.full((10, 3), np.nan), "y": np.arange(10) % 2}, "NaN"),
        ({"x": np.zeros((10, 3)), "y": np.zeros(10, int)}, "at least 2 classes"),
        ({"x": np.zeros((10, 3)), "y": np.arange(10) % 2, "label_names": np.array(["a"])}, "label_names"),
        ({"x": np.array(["a"] * 10), "y": np.arange(10) % 2}, "x must be numeric"),
    ],
)
def test_npz_errors_say_what_is_wrong(tmp_path, arrays, message):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(DatasetError, match=message):
        load_dataset(str(path))


def test_not_a_zip_and_unknown_name(tmp_path):
    path = tmp_path / "junk.npz"
    path.write_text("not a zip")
    with pytest.raises(DatasetError, match="not a readable"):
        load_dataset(str(path))
    with pytest.raises(DatasetError, match="unknown dataset"):
        load_dataset("imagenet")
    with pytest.raises(DatasetError, match="no such file"):
        load_dataset(str(tmp_path / "absent.npz"))


def test_warp_images_identity_shape_and_seed():
    import torch

    from model.data import warp_images

    x = torch.from_numpy(load_dataset("digits").train.x[:16])
    assert torch.equal(warp_images(x, torch.Generator(), degrees=0, scale=0, shift=0), x)
    a = warp_images(x, torch.Generator().manual_seed(1))
    assert a.shape == x.shape and not torch.allclose(a, x)
    assert torch.equal(a, warp_images(x, torch.Generator().manual_seed(1)))
    rgb = torch.rand(4, 3, 8, 8)
    assert warp_images(rgb, torch.Generator().manual_seed(0)).shape == rgb.shape


def test_warp_images_moves_the_ink_by_at_most_the_shift():
    import torch

    from model.data import warp_images

    x = torch.zeros(200, 9, 9)
    x[:, 3:6, 3:6] = 1  # a centred square
    y = warp_images(x, torch.Generator().manual_seed(0), degrees=0, scale=0, shift=0.5)
    coords = torch.arange(9.0)

    def centroid(img: torch.Tensor) -> torch.Tensor:  # (B, H, W) -> (B, 2): ink's row, column
        mass = img.sum((1, 2))
        return torch.stack([(img.sum(2) * coords).sum(1) / mass, (img.sum(1) * coords).sum(1) / mass], 1)

    moved = centroid(y) - centroid(x)
    assert moved.abs().max() <= 0.5 + 1e-4 and moved.abs().max() > 0.3  # sub-pixel, both ways
    assert (moved > 0).any() and (moved < 0).any()
    torch.testing.assert_close(y.sum((1, 2)), x.sum((1, 2)), rtol=1e-4, atol=1e-4)  # bilinear keeps ink


def test_shift_signals_moves_each_signal_within_the_bound():
    import torch

    from model.data import shift_signals

    x = torch.zeros(300, 11)
    x[:, 5] = 1
    y = shift_signals(x, torch.Generator().manual_seed(0), max_shift=2)
    assert y.shape == x.shape and torch.equal(y.sum(1), x.sum(1))  # one sample each, none lost
    assert set((y.argmax(1) - 5).tolist()) == {-2, -1, 0, 1, 2}
    edge = torch.arange(1.0, 5.0).repeat(50, 1)  # what leaves one end is gone, zeros come in
    moved = shift_signals(edge, torch.Generator().manual_seed(1), max_shift=1)
    assert {tuple(r) for r in moved.tolist()} == {(0, 1, 2, 3), (1, 2, 3, 4), (2, 3, 4, 0)}
