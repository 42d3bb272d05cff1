"""Whole models end to end: export a derived network to ONNX and time it with a table's protocol.

The same runner and the same protocol that measured the table's entries time the whole network, so a verification
compares like with like. :func:`measure_model` times any ONNX file (``hwprof measure-model``);
:func:`measure_network` builds, exports and times one architecture of a space.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import onnx

from profiler.errors import InputError
from profiler.measuring.devices import Device
from profiler.measuring.export import cache_dir, cached_export, export_module
from profiler.measuring.protocol import Protocol
from profiler.measuring.runners import MeasureRequest, MeasureResult, Runner, make_runner
from profiler.measuring.stats import summarize
from profiler.spaces.network import build_network
from profiler.spaces.space import Space


class ModelError(InputError):
    """An ONNX model file or a --shape / --repeats option that cannot be used."""


def _graph_inputs(onnx_path: Path) -> list[Any]:
    try:
        model = onnx.load(str(onnx_path), load_external_data=False)
    except Exception as e:
        raise ModelError(f"{onnx_path}: not a readable ONNX model ({type(e).__name__}: {e})") from None
    inits = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    if not inputs:
        raise ModelError(f"{onnx_path}: the model has no graph input")
    if len(inputs) > 1:
        raise ModelError(f"{onnx_path}: the model has {len(inputs)} inputs ({', '.join(i.name for i in inputs)}); "
                         f"measure-model feeds one input tensor")
    return inputs


def onnx_input_shape(onnx_path: Path, overrides: Sequence[str] = ()) -> tuple[int, ...]:
    """The shape fed to a model's (one) input: its static shape, with dynamic axes set by ``overrides``.

    An override is a whole shape (``1x3x224x224``, optionally ``NAME:1x3x224x224``) or a named dynamic axis
    (``batch=1``, as onnxruntime_perf_test's ``-f``). A one-line ``ValueError`` names what is missing or wrong.
    """
    inp = _graph_inputs(onnx_path)[0]
    dims = list(inp.type.tensor_type.shape.dim)
    shape: list[int | None] = [d.dim_value if d.dim_value > 0 else None for d in dims]
    names = [d.dim_param or "?" for d in dims]
    for o in overrides:
        o = o.strip()
        if "=" in o:
            name, _, v = o.partition("=")
            if not v.strip().isdigit() or int(v) <= 0:
                raise ModelError(f"--shape {o!r}: the size of axis {name!r} must be a positive integer")
            hits = [i for i, n in enumerate(names) if n == name.strip() and shape[i] is None]
            if not hits:
                dyn = [n for n, d in zip(names, shape) if d is None]
                raise ModelError(f"--shape {o!r}: input {inp.name!r} has no dynamic axis {name.strip()!r} (dynamic "
                                 f"axes: {', '.join(dyn) or 'none'}); pass the whole shape, e.g. --shape 1x3x224x224")
            for i in hits:
                shape[i] = int(v)
            continue
        label, colon, dims_s = o.rpartition(":")
        if colon and label != inp.name:
            raise ModelError(f"--shape {o!r}: the model's input is {inp.name!r}, not {label!r}")
        try:
            given = [int(d) for d in dims_s.lower().split("x")]
        except ValueError:
            given = []
        if not given or any(d <= 0 for d in given):
            raise ModelError(f"--shape {o!r}: expected a shape like 1x3x224x224 (or AXIS=SIZE for a dynamic axis)")
        if len(given) != len(dims):
            raise ModelError(f"--shape {o!r}: input {inp.name!r} has {len(dims)} axes, the shape gives {len(given)}")
        for i, (g, d) in enumerate(zip(given, dims)):
            if d.dim_value > 0 and d.dim_value != g:
                raise ModelError(f"--shape {o!r}: axis {i} of input {inp.name!r} is fixed at {d.dim_value}, not {g}")
        shape = list(given)
    if not shape or any(d is None for d in shape):
        named = ["x".join(str(d) if d is not None else n for d, n in zip(shape, names))]
        dyn = [n for n, d in zip(names, shape) if d is None]
        raise ModelError(f"{onnx_path}: input {inp.name!r} has a dynamic shape {named[0]}; pass --shape "
                         f"{dyn[0]}=SIZE for each dynamic axis, or the whole shape (--shape 1x3x224x224)")
    return tuple(int(d) for d in shape)  # type: ignore[arg-type]


@dataclass(frozen=True)
class ModelTiming:
    """Per-run statistics of a whole model, as onnxruntime_perf_test reports them (ms)."""

    p50_ms: float
    p90_ms: float
    p99_ms: float
    min_ms: float
    max_ms: float
    mean_ms: float
    std_ms: float
    cv: float
    n: int
    noisy: bool  # CV above the protocol's threshold

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def model_timing(samples_ms: Sequence[float], cv_threshold: float) -> ModelTiming:
    x = np.asarray(samples_ms, dtype=float)
    if x.size == 0:
        raise ValueError("no samples")
    s = summarize(x)
    p50, p90, p99 = (float(v) for v in np.percentile(x, [50, 90, 99]))
    return ModelTiming(p50, p90, p99, float(x.min()), float(x.max()), s.mean_ms, s.std_ms, s.cv, s.n,
                       bool(s.cv > cv_threshold))


def run_protocol(base: Protocol, repeats: int | None = None, seconds: float | None = None) -> Protocol:
    """``base`` with onnxruntime_perf_test's controls: ``repeats`` runs (``-r``) or ``seconds`` of runs (``-t``);
    either way one call per sample (percentiles of single runs) and no re-measuring (the user chose the runs)."""
    if repeats is not None and seconds is not None:
        raise ModelError("give --repeats or --seconds, not both")
    if repeats is not None:
        if repeats < 1:
            raise ModelError(f"--repeats {repeats}: must be >= 1")
        return replace(base, min_samples=repeats, min_seconds=0.0, max_seconds=86400.0, calls_per_sample=1,
                       retries=0)
    if seconds is not None:
        if not seconds > 0:
            raise ModelError(f"--seconds {seconds}: must be > 0")
        return replace(base, min_samples=1, min_seconds=seconds, max_seconds=seconds, calls_per_sample=1, retries=0)
    return base


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


def measure_model(onnx_path: Path, device: Device, protocol: Protocol | None = None,
                  input_shape: tuple[int, ...] | None = None) -> MeasureResult:
    """Time one ONNX model end to end on ``device`` (protocol: ``protocol`` or the device's; input: ``input_shape``
    or the model's static shape). Failures are values."""
    onnx_path = Path(onnx_path)
    try:
        shape = input_shape or onnx_input_shape(onnx_path)
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
    meta = {"hwnas_space": space.spec, "hwnas_arch": arch_label(choices)}

    def build() -> float:
        torch.manual_seed(0)
        net = build_network(space, list(choices))
        return export_module(net, (1, *space.input_shape), path, metadata=meta)

    return path, cached_export(path, meta, build)


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
