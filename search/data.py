"""Datasets as train / validation / test ``TensorDataset`` s, resized to a space's input.

Specs: ``fashion-mnist`` (the four IDX files, read from ``--data-dir``, ``$HWNAS_DATA`` or the Debian package
``dataset-fashion-mnist``'s folder, else downloaded into a cache when online), ``digits`` (scikit-learn's handwritten
digits, offline, the tiny fallback), ``cifar10``, ``mnist`` (torchvision, downloaded into ``--data-dir``),
``npz:PATH`` (arrays ``x`` and ``y``) and an image-folder directory (one sub-folder per class). Images become float
tensors N x C x H x W at ``input_size``, grey images are replicated to ``in_channels``, and every split is
normalised with the training split's per-channel mean and std. Splits are fixed by ``seed``. Nothing is downloaded
at import time.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from profiler.errors import UserError
from profiler.fileio import atomic_write_bytes

TORCHVISION = {"cifar10": "CIFAR10", "mnist": "MNIST"}
FMNIST_DEB_DIR = Path("/usr/share/datasets/fashion-mnist")  # apt-get install dataset-fashion-mnist
FMNIST_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"  # the dataset's canonical source
FMNIST_FILES = {("train", "images"): "train-images-idx3-ubyte", ("train", "labels"): "train-labels-idx1-ubyte",
                ("test", "images"): "t10k-images-idx3-ubyte", ("test", "labels"): "t10k-labels-idx1-ubyte"}
FMNIST_COUNTS = {"train": 60000, "test": 10000}
FMNIST_MD5 = {"train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",  # as published upstream
              "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
              "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
              "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310"}
IDX_MAGIC = {"images": 2051, "labels": 2049}  # 0x00000803: uint8, 3 dims; 0x00000801: uint8, 1 dim
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
        return x, y

    (x, y), (xt, yt) = arrays(train), arrays(test)
    return _train_test(x, y, xt, yt, name, input_size, in_channels, seed)


# ------------------------------------------------------------------------------------------------ Fashion-MNIST


def _fmnist_fix(path: Path) -> str:
    if path.is_relative_to(FMNIST_DEB_DIR):
        return "reinstall it: apt-get install --reinstall dataset-fashion-mnist"
    return "delete it (it is downloaded again when online) or point --data-dir at good copies"


def _read_idx(path: Path, kind: str, split: str) -> np.ndarray:
    """One IDX file (gzip or plain), checked: magic, count, 28 x 28, exact length, labels 0..9."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path) as f:
                raw = f.read()
        else:
            raw = path.read_bytes()
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"{path}: corrupt or truncated ({type(e).__name__}: {e}); {_fmnist_fix(path)}") from None
    ndim = 3 if kind == "images" else 1
    head = 4 + 4 * ndim
    if len(raw) < head:
        raise DataError(f"{path}: truncated ({len(raw)} bytes, no IDX header); {_fmnist_fix(path)}")
    magic, *dims = (int.from_bytes(raw[i:i + 4], "big") for i in range(0, head, 4))
    want = [FMNIST_COUNTS[split]] + ([28, 28] if kind == "images" else [])
    if magic != IDX_MAGIC[kind] or dims != want:
        raise DataError(f"{path}: not Fashion-MNIST {split} {kind} (IDX magic {magic}, dims {dims}; expected "
                        f"{IDX_MAGIC[kind]}, {want}); {_fmnist_fix(path)}")
    n = int(np.prod(want))
    if len(raw) != head + n:
        raise DataError(f"{path}: truncated or padded ({len(raw) - head} data bytes, expected {n}); "
                        f"{_fmnist_fix(path)}")
    a = np.frombuffer(raw, dtype=np.uint8, offset=head).reshape(want)
    if kind == "labels" and a.max() > 9:
        raise DataError(f"{path}: label {int(a.max())} outside 0..9; {_fmnist_fix(path)}")
    return a


def _cache_dir() -> Path:
    base = os.environ.get("HWNAS_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "hwnas")
    return Path(base) / "datasets" / "fashion-mnist"


def fmnist_dirs(data_dir: str | None) -> list[Path]:
    """Where Fashion-MNIST is looked for, in order: --data-dir, $HWNAS_DATA, the Debian folder, the cache."""
    roots = [Path(d) for d in (data_dir, os.environ.get("HWNAS_DATA")) if d]
    dirs = [d for r in roots for d in (r, r / "fashion-mnist", r / "FashionMNIST" / "raw")]
    return dirs + [FMNIST_DEB_DIR, _cache_dir()]


def _find_in(d: Path) -> dict[tuple[str, str], Path] | None:
    found = {}
    for key, name in FMNIST_FILES.items():
        hit = next((d / f for f in (name, name + ".gz") if (d / f).is_file()), None)
        if hit is None:
            return None
        found[key] = hit
    return found


def find_fmnist(data_dir: str | None = None) -> dict[tuple[str, str], Path] | None:
    """The four Fashion-MNIST files from the first folder that holds all of them, or None."""
    for d in fmnist_dirs(data_dir):
        found = _find_in(d)
        if found:
            return found
    return None


def _download_fmnist(dest: Path, timeout: float = 20.0) -> dict[tuple[str, str], Path] | None:
    """Fetch the four .gz files from the canonical source into ``dest``; None when offline."""
    import urllib.error
    import urllib.request

    dest.mkdir(parents=True, exist_ok=True)
    for name in FMNIST_FILES.values():
        target = dest / (name + ".gz")
        if target.is_file():
            continue
        try:
            with urllib.request.urlopen(FMNIST_URL + name + ".gz", timeout=timeout) as r:
                body = r.read()
        except (urllib.error.URLError, OSError, TimeoutError):
            return None
        check_download(name + ".gz", body)
        atomic_write_bytes(target, body)
    return _find_in(dest)


def check_download(name: str, body: bytes) -> None:
    """A downloaded file must be byte for byte the published one (its upstream MD5); nothing else is kept.

    Only downloads are checked this way: Debian re-gzipped its copies, whose decompressed content ``_read_idx``
    checks instead.
    """
    got = hashlib.md5(body, usedforsecurity=False).hexdigest()
    want = FMNIST_MD5.get(name)
    if want is None or got != want:
        raise DataError(f"{FMNIST_URL}{name}: downloaded file has MD5 {got}, the published one is {want}; nothing was "
                        f"kept. Retry later, or install the data with `apt-get install dataset-fashion-mnist`")


def _missing_fmnist(data_dir: str | None) -> DataError:
    where = ", ".join(str(d) for d in fmnist_dirs(data_dir))
    return DataError(f"--data fashion-mnist: the IDX files are in none of {where} and the download from "
                     f"{FMNIST_URL} failed; install them with `apt-get install dataset-fashion-mnist` or pass "
                     f"--data-dir DIR holding {{train,t10k}}-{{images-idx3,labels-idx1}}-ubyte[.gz]")


def _fmnist(input_size: int, in_channels: int, seed: int, data_dir: str | None, limit: int | None,
            download: bool) -> Splits:
    files = find_fmnist(data_dir) or (_download_fmnist(_cache_dir()) if download else None)
    if files is None:
        raise _missing_fmnist(data_dir)
    arrays = {key: _read_idx(p, key[1], key[0]) for key, p in files.items()}
    x, y = arrays["train", "images"], arrays["train", "labels"]
    xt, yt = arrays["test", "images"], arrays["test", "labels"]
    return _train_test(x, y, xt, yt, "fashion-mnist", input_size, in_channels, seed, limit)


def _train_test(x: np.ndarray, y: np.ndarray, xt: np.ndarray, yt: np.ndarray, name: str, input_size: int,
                in_channels: int, seed: int, limit: int | None = None) -> Splits:
    """Validation = a seeded 10 % of the training set; test = the dataset's own test set. ``limit`` caps both."""
    perm = np.random.default_rng(seed).permutation(len(x))
    if limit is not None:
        perm, xt, yt = perm[:limit], xt[:limit], yt[:limit]
    n_val = max(1, len(perm) // 10)
    va, tr = perm[:n_val], perm[n_val:]

    def prep(a: np.ndarray) -> torch.Tensor:
        return _resize(_to_nchw(np.asarray(a, dtype=np.float32) / 255.0, name), input_size, in_channels, name)

    y_all, k = _labels(y, name)
    y_te, k_te = _labels(yt, name)
    a, b, c = _normalise(prep(x[tr]), prep(x[va]), prep(xt))
    return Splits(TensorDataset(a, y_all[tr]), TensorDataset(b, y_all[va]), TensorDataset(c, y_te), max(k, k_te), name)


def default_data(data_dir: str | None = None) -> tuple[str, str]:
    """The data a run uses when none is named: Fashion-MNIST when its files are here, else digits; and a note."""
    files = find_fmnist(data_dir)
    if files:
        return "fashion-mnist", f"fashion-mnist ({files['train', 'images'].parent})"
    return "digits", ("digits (fallback: Fashion-MNIST not found; apt-get install dataset-fashion-mnist or "
                      "--data-dir DIR)")


def load_data(spec: str, input_size: int, in_channels: int, seed: int = 0, data_dir: str | None = None,
              limit: int | None = None, download: bool = True) -> Splits:
    """Load ``spec`` as fixed train / validation / test splits (70/15/15 unless the dataset has a test split).

    ``limit`` (Fashion-MNIST) reads only a seeded ``limit`` of the training set and the first ``limit`` test images;
    ``download=False`` never touches the network.
    """
    if spec == "fashion-mnist":
        return _fmnist(input_size, in_channels, seed, data_dir, limit, download)
    if spec == "digits":
        return _digits(input_size, in_channels, seed)
    if spec in TORCHVISION:
        return _torchvision(spec, input_size, in_channels, seed, data_dir)
    if spec.startswith("npz:"):
        return _npz(spec[4:], input_size, in_channels, seed)
    p = Path(spec)
    if p.is_dir():
        return _image_folder(p, input_size, in_channels, seed)
    raise DataError(f"unknown --data {spec!r}: use fashion-mnist, digits, cifar10, mnist, npz:PATH or an image "
                    "folder directory")
