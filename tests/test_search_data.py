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


# ------------------------------------------------------------------------------------------------ Fashion-MNIST

import gzip  # noqa: E402
import os  # noqa: E402
from pathlib import Path  # noqa: E402

from search import data as data_mod  # noqa: E402

FMNIST = data_mod.find_fmnist()
needs_fmnist = pytest.mark.skipif(FMNIST is None, reason="Fashion-MNIST not installed "
                                                          "(apt-get install dataset-fashion-mnist)")


def _copy_with(tmp_path: Path, key: tuple[str, str], content: bytes, name: str) -> Path:
    """A data dir holding links to the real files, with file ``key`` replaced by ``content`` under ``name``."""
    d = tmp_path / "fm"
    d.mkdir(parents=True)
    for k, p in FMNIST.items():
        if k != key:
            os.symlink(p, d / p.name)
    (d / name).write_bytes(content)
    return d


@needs_fmnist
def test_fashion_mnist_reads_real_idx_subsets():
    s = load_data("fashion-mnist", 16, 3, seed=0, limit=600, download=False)
    assert s.name == "fashion-mnist" and s.num_classes == 10
    assert (len(s.train), len(s.val), len(s.test)) == (540, 60, 600)
    x, y = s.train.tensors
    assert x.shape[1:] == (3, 16, 16) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert torch.equal(x[:, 0], x[:, 1]) and abs(float(x.mean())) < 1e-4
    assert set(y.tolist()) == set(range(10))  # all ten classes in a random 540
    other = load_data("fashion-mnist", 8, 1, seed=1, limit=600, download=False)
    assert other.train.tensors[0].shape[1:] == (1, 8, 8)
    assert not torch.equal(other.train.tensors[1], y)  # the seed picks the subset
    t = s.test.tensors[1]
    assert torch.equal(t, load_data("fashion-mnist", 16, 3, seed=5, limit=600, download=False).test.tensors[1])


@needs_fmnist
def test_fashion_mnist_refuses_truncated_and_corrupt_files(tmp_path):
    key = ("test", "labels")
    good = FMNIST[key].read_bytes()
    raw = gzip.decompress(good) if FMNIST[key].suffix == ".gz" else good
    cases = {
        "t10k-labels-idx1-ubyte.gz": good[: len(good) // 2],  # truncated gzip stream
        "t10k-labels-idx1-ubyte": raw[:-100],  # truncated plain IDX
    }
    bad_magic = bytearray(raw)
    bad_magic[3] = 0x03  # images' magic in a labels file
    for i, (name, content) in enumerate([*cases.items(), ("t10k-labels-idx1-ubyte", bytes(bad_magic))]):
        d = _copy_with(tmp_path / str(i), key, content, name)
        with pytest.raises(DataError) as e:
            load_data("fashion-mnist", 8, 1, data_dir=str(d), limit=50, download=False)
        msg = str(e.value)
        assert "\n" not in msg and str(d / name) in msg
        assert "truncated" in msg or "not Fashion-MNIST" in msg
        assert "--data-dir" in msg or "delete it" in msg
    corrupt = bytearray(gzip.compress(raw))
    corrupt[len(corrupt) // 2] ^= 0xFF
    d = _copy_with(tmp_path / "c", key, bytes(corrupt), "t10k-labels-idx1-ubyte.gz")
    with pytest.raises(DataError, match="corrupt or truncated|truncated|not Fashion-MNIST|outside 0..9"):
        load_data("fashion-mnist", 8, 1, data_dir=str(d), limit=50, download=False)


def test_fashion_mnist_missing_everywhere_names_package_and_flag(tmp_path, monkeypatch):
    monkeypatch.setattr(data_mod, "FMNIST_DEB_DIR", tmp_path / "no-deb")
    monkeypatch.setenv("HWNAS_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("HWNAS_DATA", raising=False)
    with pytest.raises(DataError) as e:
        load_data("fashion-mnist", 16, 3, data_dir=str(tmp_path / "empty"), download=False)
    msg = str(e.value)
    assert "\n" not in msg and "apt-get install dataset-fashion-mnist" in msg and "--data-dir" in msg
    spec, note = data_mod.default_data(str(tmp_path / "empty"))
    assert spec == "digits" and note.startswith("digits (fallback:")


@needs_fmnist
def test_default_data_prefers_fashion_mnist():
    spec, note = data_mod.default_data()
    assert spec == "fashion-mnist" and "fashion-mnist" in note


def test_a_download_must_match_the_published_md5():
    """Downloaded files are kept only when they are byte for byte the published ones (Debian's copies differ)."""
    import gzip

    from search.data import DataError, check_download

    with pytest.raises(DataError, match="MD5") as e:
        check_download("train-labels-idx1-ubyte.gz", gzip.compress(b"\0\0\x08\x01" + bytes(8)))
    assert "\n" not in str(e.value) and "dataset-fashion-mnist" in str(e.value)
