"""Op or network -> one self-contained ONNX file, checked, compared with PyTorch, cached by key."""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from .keys import parse_key
from .ops import build_op

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


def export_module(module: nn.Module, input_shape: tuple[int, ...], path: Path,
                  metadata: dict[str, str] | None = None, check: bool = True) -> float:
    """Export ``module`` (eval mode) to ``path`` atomically; return max |onnxruntime - torch| on one input."""
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
    err = float(np.max(np.abs(_ort_run(data, x.numpy()) - ref))) if check else float("nan")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)
    return err


def export_key(key: str, out_dir: Path | None = None) -> ExportResult:
    """Export the block a key names (cached: a second call for the same key reuses the file)."""
    out_dir = out_dir or cache_dir()
    digest = hashlib.sha256(key.encode()).hexdigest()[:20]
    path = out_dir / f"{digest}.onnx"
    meta_path = path.with_suffix(".err")
    shape = parse_key(key).input_shape
    if path.exists() and meta_path.exists():
        return ExportResult(key, path, OPSET, float(meta_path.read_text()), shape)
    module, _ = module_for_key(key)
    err = export_module(module, shape, path, metadata={"hwnas_key": key})
    meta_path.write_text(repr(err))
    return ExportResult(key, path, OPSET, err, shape)
