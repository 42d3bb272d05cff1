"""Op or network -> one self-contained ONNX file, checked, compared with PyTorch, cached by key."""

from __future__ import annotations

import hashlib
import io
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
import torch
from torch import nn

from profiler.errors import UserError
from profiler.fileio import atomic_write_bytes, atomic_write_text, exclusive
from profiler.spaces.keys import parse_key
from profiler.spaces.ops import build_op

OPSET = 17


@dataclass(frozen=True)
class ExportResult:
    key: str
    path: Path
    opset: int
    max_abs_err: float
    input_shape: tuple[int, ...]


def cache_dir() -> Path:
    root = os.environ.get("HWNAS_CACHE") or Path.home() / ".cache" / "hwnas"
    return Path(root) / "onnx"


def module_for_key(key: str) -> tuple[nn.Module, tuple[int, ...]]:
    k = parse_key(key)
    torch.manual_seed(0)
    m = build_op(k.op, k.c_in, k.c_out, k.stride, **k.params_dict()).eval()
    return m, k.input_shape


def _ort_run(model_bytes: bytes, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(model_bytes, so, providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def relative_error(out: np.ndarray, ref: np.ndarray) -> float:
    """max |out - ref| / max |ref|: an untrained net's output can be ~1e-7, where an absolute error says nothing."""
    if out.shape != ref.shape:
        return float("inf")
    scale = float(np.max(np.abs(ref))) if ref.size else 0.0
    err = float(np.max(np.abs(out.astype(np.float64) - ref.astype(np.float64)))) if ref.size else 0.0
    return err / scale if scale > 0 else err


def export_module(module: nn.Module, input_shape: tuple[int, ...], path: Path,
                  metadata: dict[str, str] | None = None, check: bool = True, relative: bool = False) -> float:
    """Export ``module`` (eval mode) to ``path`` atomically; return max |onnxruntime - torch| on one input
    (divided by max |torch| when ``relative``)."""
    module = module.eval()
    g = torch.Generator().manual_seed(1234)
    x = torch.randn(*input_shape, generator=g)
    buf = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's constant-folding chatter
        torch.onnx.export(module, (x,), buf, input_names=["input"], output_names=["output"], opset_version=OPSET,
                          dynamo=False, do_constant_folding=True)
        ref = module(x).numpy()
    model = onnx.load_from_string(buf.getvalue())
    if metadata:
        for k, v in metadata.items():
            entry = model.metadata_props.add()
            entry.key, entry.value = k, v
    onnx.checker.check_model(model)
    data = model.SerializeToString()
    err = float("nan")
    if check:
        got = _ort_run(data, x.numpy())
        err = relative_error(got, ref) if relative else float(np.max(np.abs(got - ref)))
    atomic_write_bytes(path, data)
    return err


def export_key(key: str, out_dir: Path | None = None) -> ExportResult:
    """Export the block a key names (cached: a second call for the same key reuses the file)."""
    out_dir = out_dir or cache_dir()
    digest = hashlib.sha256(key.encode()).hexdigest()[:20]
    path = out_dir / f"{digest}.onnx"
    shape = parse_key(key).input_shape

    def build() -> float:
        module, _ = module_for_key(key)
        return export_module(module, shape, path, metadata={"hwnas_key": key})

    err = cached_export(path, {"hwnas_key": key}, build)
    return ExportResult(key, path, OPSET, err, shape)


class CacheError(UserError, RuntimeError):
    """An ONNX cache entry that cannot be written."""


def read_cache_entry(path: Path, expect: dict[str, str]) -> float | None:
    """The stored check error of a complete, intact cache entry (``X.onnx`` + ``X.err``); None when it is not one.

    ``X.err`` is written last, so its presence marks a finished entry; the model must still parse and carry the
    metadata it was exported with (a torn, empty or foreign file is not an entry).
    """
    try:
        err = float(path.with_suffix(".err").read_text())
        model = onnx.load(str(path), load_external_data=False)
    except Exception:  # noqa: BLE001 - missing, empty, torn or foreign: not an entry, export again
        return None
    props = {p.key: p.value for p in model.metadata_props}
    if any(props.get(k) != v for k, v in expect.items()) or not len(model.graph.node):
        return None
    return err


def cached_export(path: Path, expect: dict[str, str], build: Callable[[], float]) -> float:
    """Reuse the verified cache entry at ``path``, or export it again with ``build()`` (one writer at a time)."""
    err = read_cache_entry(path, expect)
    if err is not None:
        return err
    with exclusive(path, "ONNX cache entry", wait_s=300.0):
        err = read_cache_entry(path, expect)  # another process may have just written it
        if err is not None:
            return err
        for stale in (path.with_suffix(".err"), path):  # a bad entry (empty .err, corrupt .onnx): export again
            stale.unlink(missing_ok=True)
        try:
            err = build()
            atomic_write_text(path.with_suffix(".err"), repr(err))
        except UserError as e:
            raise CacheError(f"ONNX cache {path.parent}: cannot write {path.name}: {e}") from None
    return err
