"""Whole models end to end: export a derived network to ONNX and time it with a table's protocol.

The same runner and the same protocol that measured the table's entries time the whole network, so a verification
compares like with like. :func:`measure_model` times any ONNX file (``hwprof measure-model``);
:func:`measure_network` builds, exports and times one architecture of a space.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Sequence

import onnx

from .devices import Device
from .export import cache_dir, export_module
from .network import build_network
from .protocol import Protocol
from .runners import MeasureRequest, MeasureResult, Runner, make_runner
from .spaces import Space
from .stats import summarize


def onnx_input_shape(onnx_path: Path) -> tuple[int, ...]:
    """The static shape of a model's first input; a one-line error when it is missing or symbolic."""
    try:
        model = onnx.load(str(onnx_path), load_external_data=False)
    except Exception as e:
        raise ValueError(f"{onnx_path}: not a readable ONNX model ({type(e).__name__}: {e})") from None
    inits = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    if not inputs:
        raise ValueError(f"{onnx_path}: the model has no graph input")
    dims = inputs[0].type.tensor_type.shape.dim
    shape = tuple(d.dim_value for d in dims)
    if not shape or any(d <= 0 for d in shape):
        named = ["?" if d.dim_value <= 0 else str(d.dim_value) for d in dims]
        raise ValueError(f"{onnx_path}: input {inputs[0].name!r} has a dynamic shape {'x'.join(named)}; "
                         f"export it with a fixed shape")
    return shape


def measure_with_retries(runner: Runner, request: MeasureRequest, protocol: Protocol) -> MeasureResult:
    """One measurement, re-measured like a table entry when its CV exceeds the protocol's threshold."""
    best = runner.measure(request, protocol)
    attempts = 1
    while best.ok and summarize(best.samples_ms).cv > protocol.cv_threshold and attempts <= protocol.retries:
        attempts += 1
        again = runner.measure(request, protocol)
        if again.ok and summarize(again.samples_ms).cv < summarize(best.samples_ms).cv:
            best = again
    info = dict(best.info)
    info["attempts"] = attempts
    return MeasureResult(best.key, best.samples_ms, best.calls_per_sample, best.error, best.variant, info)


def measure_model(onnx_path: Path, device: Device, protocol: Protocol | None = None) -> MeasureResult:
    """Time one ONNX model end to end on ``device`` (protocol: ``protocol`` or the device's). Failures are values."""
    onnx_path = Path(onnx_path)
    try:
        shape = onnx_input_shape(onnx_path)
    except ValueError as e:
        return MeasureResult.failed(str(onnx_path), str(e))
    runner = make_runner(device)
    try:
        return measure_with_retries(runner, MeasureRequest(str(onnx_path), onnx_path, shape),
                                    protocol or device.protocol)
    finally:
        runner.close()


def arch_label(choices: Sequence[str]) -> str:
    return "+".join(choices)


def network_onnx_path(space: Space, choices: Sequence[str], root: Path | None = None) -> Path:
    digest = hashlib.sha256(f"{space.spec}|{arch_label(choices)}".encode()).hexdigest()[:20]
    return (root or cache_dir() / "networks") / f"{digest}.onnx"


def export_network(space: Space, choices: Sequence[str], root: Path | None = None) -> tuple[Path, float]:
    """Build and export the derived network of ``choices`` (cached by space and architecture)."""
    import torch

    path = network_onnx_path(space, choices, root)
    err_path = path.with_suffix(".err")
    if path.exists() and err_path.exists():
        return path, float(err_path.read_text())
    torch.manual_seed(0)
    net = build_network(space, list(choices))
    err = export_module(net, (1, *space.input_shape), path,
                        metadata={"hwnas_space": space.spec, "hwnas_arch": arch_label(choices)})
    err_path.write_text(repr(err))
    return path, err


def measure_network(space: Space, choices: Sequence[str], runner: Runner, protocol: Protocol,
                    root: Path | None = None) -> tuple[MeasureResult, dict[str, Any]]:
    """Export and time one architecture; returns the result and export info (path, max_abs_err)."""
    label = arch_label(choices)
    try:
        path, err = export_network(space, choices, root)
    except Exception as e:  # a failure is a value
        return MeasureResult.failed(label, f"export failed: {type(e).__name__}: {e}"), {"max_abs_err": float("nan")}
    res = measure_with_retries(runner, MeasureRequest(label, path, (1, *space.input_shape)), protocol)
    return res, {"path": str(path), "max_abs_err": err}
