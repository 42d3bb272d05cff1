"""Data loaders: digits splits, npz, image folders, and one-line errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from search.data import DataError, load_data


def test_digits_splits_are_fixed_by_seed_and_resized():
    a = load_data("digits", 16, 3, seed=0)
    b = load_data("digits", 16, 3, seed=0)
    c = load_data("digits", 16, 3, seed=1)
    n = len(a.train) + len(a.val) + len(a.test)
    assert n == 1797 and a.num_classes == 10 and a.name == "digits"
    assert abs(len(a.train) / n - 0.70) < 0.01 and abs(len(a.val) / n - 0.15) < 0.01
    x, y = a.train.tensors
    assert x.shape[1:] == (3, 16, 16) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert torch.equal(x[:, 0], x[:, 2])  # grey replicated to every channel
    assert abs(float(x.mean())) < 1e-4 and abs(float(x.std()) - 1) < 1e-2  # normalised with train statistics
    assert torch.equal(a.train.tensors[1], b.train.tensors[1])
    assert not torch.equal(a.train.tensors[1], c.train.tensors[1])
    one = load_data("digits", 8, 1, seed=0)
    assert one.train.tensors[0].shape[1:] == (1, 8, 8)


def test_npz_and_image_folder(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.random((40, 12, 12)).astype(np.float32)
    y = np.arange(40) % 4
    np.savez(tmp_path / "d.npz", x=x, y=y)
    s = load_data(f"npz:{tmp_path / 'd.npz'}", 8, 3, seed=0)
    assert s.num_classes == 4 and s.train.tensors[0].shape[1:] == (3, 8, 8)
    assert len(s.train) + len(s.val) + len(s.test) == 40

    from PIL import Image

    for cls in ("cat", "dog"):
        (tmp_path / "imgs" / cls).mkdir(parents=True)
        for i in range(5):
            Image.fromarray((rng.random((10, 10, 3)) * 255).astype(np.uint8)).save(tmp_path / "imgs" / cls / f"{i}.png")
    f = load_data(str(tmp_path / "imgs"), 16, 3, seed=0)
    assert f.num_classes == 2 and f.train.tensors[0].shape[1:] == (3, 16, 16)


def test_bad_data_specs_fail_with_one_line(tmp_path):
    with pytest.raises(DataError, match="unknown --data 'nope'.*digits, cifar10"):
        load_data("nope", 16, 3)
    np.savez(tmp_path / "bad.npz", images=np.zeros((3, 4, 4)))
    with pytest.raises(DataError, match="needs arrays 'x'"):
        load_data(f"npz:{tmp_path / 'bad.npz'}", 16, 3)
    with pytest.raises(DataError, match="no such file"):
        load_data(f"npz:{tmp_path / 'missing.npz'}", 16, 3)
    import importlib.util

    if importlib.util.find_spec("torchvision") is None:  # with torchvision this would start a real download
        with pytest.raises(DataError, match="--data-dir"):
            load_data("cifar10", 32, 3, data_dir=str(tmp_path / "nowhere"))
