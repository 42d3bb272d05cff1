"""Datasets as train / validation / test ``TensorDataset`` s, resized to a space's input.

Specs: ``digits`` (scikit-learn's handwritten digits, offline), ``cifar10``, ``fashion-mnist``, ``mnist``
(torchvision, downloaded into ``--data-dir``), ``npz:PATH`` (arrays ``x`` and ``y``) and an image-folder directory
(one sub-folder per class). Images become float tensors N x C x H x W at ``input_size``, grey images are replicated
to ``in_channels``, and every split is normalised with the training split's per-channel mean and std. Splits are
fixed by ``seed``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from profiler.errors import UserError

TORCHVISION = {"cifar10": "CIFAR10", "fashion-mnist": "FashionMNIST", "mnist": "MNIST"}
IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".ppm", ".tif", ".tiff", ".webp"}


class DataError(UserError, ValueError):
    """A data problem; the message is the one line shown to the user."""


@dataclass
class Splits:
    train: TensorDataset
    val: TensorDataset
    test: TensorDataset
    num_classes: int
    name: str


def _to_nchw(x: np.ndarray, where: str) -> torch.Tensor:
    x = np.asarray(x)
    if x.ndim == 3:  # N H W
        x = x[:, None]
    elif x.ndim == 4 and x.shape[-1] in (1, 3, 4) and x.shape[1] not in (1, 3, 4):  # N H W C
        x = x.transpose(0, 3, 1, 2)
    if x.ndim != 4:
        raise DataError(f"{where}: images must be N x H x W, N x H x W x C or N x C x H x W, got shape {x.shape}")
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))


def _resize(x: torch.Tensor, input_size: int, in_channels: int, where: str) -> torch.Tensor:
    if x.shape[1] == 4:
        x = x[:, :3]
    if x.shape[1] != in_channels:
        if x.shape[1] == 1:
            x = x.expand(-1, in_channels, -1, -1)
        elif in_channels == 1:
            x = x.mean(dim=1, keepdim=True)
        else:
            raise DataError(f"{where}: images have {x.shape[1]} channels, the space wants {in_channels}; "
                            f"use a space with in_channels={x.shape[1]}")
    if tuple(x.shape[-2:]) != (input_size, input_size):
        x = F.interpolate(x, size=(input_size, input_size), mode="bilinear", align_corners=False)
    return x.contiguous()


def _normalise(train: torch.Tensor, *others: torch.Tensor) -> list[torch.Tensor]:
    mean = train.mean(dim=(0, 2, 3), keepdim=True)
    std = train.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6)
    return [(t - mean) / std for t in (train, *others)]


def _split(n: int, fractions: tuple[float, float], seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    perm = np.random.default_rng(seed).permutation(n)
    a = int(round(n * fractions[0]))
    b = a + int(round(n * fractions[1]))
    return perm[:a], perm[a:b], perm[b:]


def _labels(y: np.ndarray, where: str) -> tuple[torch.Tensor, int]:
    y = np.asarray(y).reshape(-1)
    if not np.issubdtype(y.dtype, np.integer):
        if np.issubdtype(y.dtype, np.floating) and np.all(np.equal(np.mod(y, 1), 0)):
            y = y.astype(np.int64)
        else:
            raise DataError(f"{where}: labels y must be integers, got dtype {y.dtype}")
    if y.size and y.min() < 0:
        raise DataError(f"{where}: labels y must be >= 0, got {int(y.min())}")
    return torch.from_numpy(y.astype(np.int64)), int(y.max()) + 1 if y.size else 0


def _from_arrays(x: np.ndarray, y: np.ndarray, name: str, input_size: int, in_channels: int, seed: int,
                 fractions: tuple[float, float] = (0.7, 0.15)) -> Splits:
    xt = _to_nchw(x, name)
    yt, num_classes = _labels(y, name)
    if len(xt) != len(yt):
        raise DataError(f"{name}: {len(xt)} images but {len(yt)} labels")
    if len(xt) < 3:
        raise DataError(f"{name}: {len(xt)} samples are too few for train/val/test splits")
    xt = _resize(xt, input_size, in_channels, name)
    tr, va, te = _split(len(xt), fractions, seed)
    x_tr, x_va, x_te = _normalise(xt[tr], xt[va], xt[te])
    return Splits(TensorDataset(x_tr, yt[tr]), TensorDataset(x_va, yt[va]), TensorDataset(x_te, yt[te]),
                  num_classes, name)


def _digits(input_size: int, in_channels: int, seed: int) -> Splits:
    from sklearn.datasets import load_digits

    d = load_digits()
    return _from_arrays(d.images.astype(np.float32) / 16.0, d.target, "digits", input_size, in_channels, seed)


def _npz(path: str, input_size: int, in_channels: int, seed: int) -> Splits:
    p = Path(path)
    if not p.is_file():
        raise DataError(f"--data npz:{path}: no such file")
    try:
        with np.load(p, allow_pickle=False) as z:
            if "x" not in z or "y" not in z:
                raise DataError(f"{p}: needs arrays 'x' (images) and 'y' (labels); found {', '.join(z.files)}")
            x, y = z["x"], z["y"]
    except ValueError as e:
        raise DataError(f"{p}: not a plain npz ({e})") from None
    return _from_arrays(x, y, f"npz:{p.name}", input_size, in_channels, seed)


def _image_folder(root: Path, input_size: int, in_channels: int, seed: int) -> Splits:
    from PIL import Image

    classes = sorted(d.name for d in root.iterdir() if d.is_dir())
    if not classes:
        raise DataError(f"{root}: an image folder needs one sub-folder per class with images inside")
    xs, ys = [], []
    mode = "L" if in_channels == 1 else "RGB"
    for label, cls in enumerate(classes):
        for f in sorted((root / cls).iterdir()):
            if f.suffix.lower() not in IMAGE_EXTS:
                continue
            try:
                with Image.open(f) as im:
                    im = im.convert(mode).resize((input_size, input_size), Image.BILINEAR)
                    xs.append(np.asarray(im, dtype=np.float32) / 255.0)
            except OSError as e:
                raise DataError(f"{f}: cannot read image ({e})") from None
            ys.append(label)
    if not xs:
        raise DataError(f"{root}: no images ({', '.join(sorted(IMAGE_EXTS))}) in its class folders")
    x = np.stack(xs)
    return _from_arrays(x, np.array(ys), f"folder:{root.name}", input_size, in_channels, seed)


def _torchvision(name: str, input_size: int, in_channels: int, seed: int, data_dir: str | None) -> Splits:
    try:
        import torchvision.datasets as tvd
    except ImportError:
        raise DataError(f"--data {name} needs torchvision (pip install torchvision, CPU build) and the dataset in "
                        f"--data-dir (downloaded when the network is reachable); or use digits / npz:PATH / an "
                        f"image folder") from None
    root = Path(data_dir or "data")
    cls = getattr(tvd, TORCHVISION[name])
    try:
        train = cls(str(root), train=True, download=True)
        test = cls(str(root), train=False, download=True)
    except Exception as e:  # torchvision raises URLError / RuntimeError for network and checksum problems
        raise DataError(f"--data {name}: not in --data-dir {root} and the download failed ({type(e).__name__}); "
                        f"put the dataset files in --data-dir or allow network access") from None

    def arrays(ds) -> tuple[np.ndarray, np.ndarray]:
        x = ds.data.numpy() if isinstance(ds.data, torch.Tensor) else np.asarray(ds.data)
        y = ds.targets.numpy() if isinstance(ds.targets, torch.Tensor) else np.asarray(ds.targets)
        return x.astype(np.float32) / 255.0, y

    x, y = arrays(train)
    xt, yt = arrays(test)
    x_all = _resize(_to_nchw(x, name), input_size, in_channels, name)
    x_te = _resize(_to_nchw(xt, name), input_size, in_channels, name)
    y_all, k = _labels(y, name)
    y_te, _ = _labels(yt, name)
    perm = np.random.default_rng(seed).permutation(len(x_all))
    n_val = len(x_all) // 10
    va, tr = perm[:n_val], perm[n_val:]
    a, b, c = _normalise(x_all[tr], x_all[va], x_te)
    return Splits(TensorDataset(a, y_all[tr]), TensorDataset(b, y_all[va]), TensorDataset(c, y_te), k, name)


def load_data(spec: str, input_size: int, in_channels: int, seed: int = 0, data_dir: str | None = None) -> Splits:
    """Load ``spec`` as fixed train / validation / test splits (70/15/15 unless the dataset has a test split)."""
    if spec == "digits":
        return _digits(input_size, in_channels, seed)
    if spec in TORCHVISION:
        return _torchvision(spec, input_size, in_channels, seed, data_dir)
    if spec.startswith("npz:"):
        return _npz(spec[4:], input_size, in_channels, seed)
    p = Path(spec)
    if p.is_dir():
        return _image_folder(p, input_size, in_channels, seed)
    raise DataError(f"unknown --data {spec!r}: use digits, cifar10, fashion-mnist, mnist, npz:PATH or an image "
                    "folder directory")
