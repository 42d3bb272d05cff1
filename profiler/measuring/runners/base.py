"""The one Runner protocol. Requests go in immutable; results come back as values (timings or an error)."""

from __future__ import annotations

import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator
from typing import Protocol as TypingProtocol

from profiler.fileio import Closing
from profiler.measuring.protocol import Protocol


@dataclass(frozen=True)
class MeasureRequest:
    key: str  # table key, or a free label for whole models
    onnx_path: Path
    input_shape: tuple[int, ...]


@dataclass(frozen=True)
class MeasureResult:
    key: str
    samples_ms: tuple[float, ...] = ()
    calls_per_sample: int = 1
    error: str | None = None
    variant: str = ""  # e.g. tvm: "untuned" | "tuned" | "tune-failed"
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.error is None and len(self.samples_ms) > 0

    @classmethod
    def failed(cls, key: str, error: BaseException | str, variant: str = "") -> "MeasureResult":
        msg = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
        return cls(key, error=" ".join(str(msg).split())[:500], variant=variant)


class Runner(TypingProtocol):
    """What a runtime implements. ``measure_many`` yields one result per request, in order, as each finishes.
    ``with make_runner(device) as runner:`` closes it at the block's end (every runner is a ``Closing``)."""

    name: str

    def fingerprint(self) -> dict[str, Any]: ...

    def measure(self, request: MeasureRequest, protocol: Protocol) -> MeasureResult: ...

    def measure_many(self, requests: Iterable[MeasureRequest], protocol: Protocol) -> Iterator[MeasureResult]: ...

    def close(self) -> None: ...

    def __enter__(self) -> "Runner": ...

    def __exit__(self, *exc: object) -> None: ...


class SequentialRunner(Closing):
    """Base for runners that measure one request after another: ``measure_many`` loops over ``measure``."""

    def measure_many(self, requests: Iterable[MeasureRequest], protocol: Protocol) -> Iterator[MeasureResult]:
        for req in requests:
            yield self.measure(req, protocol)

    def measure(self, request: MeasureRequest, protocol: Protocol) -> MeasureResult:  # pragma: no cover
        raise NotImplementedError


class LocalRunner(SequentialRunner):
    """Base for runners that time in this process."""

    name = "local"


def host_fingerprint() -> dict[str, Any]:
    """CPU model, cores, governor (where readable), OS and Python of this machine."""
    import os

    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    governor = None
    try:
        governor = Path("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor").read_text().strip()
    except OSError:
        pass
    return {
        "hostname": platform.node(),
        "cpu_model": cpu,
        "cores": os.cpu_count(),
        "governor": governor,
        "os": platform.platform(),
        "machine": platform.machine(),
        "python": platform.python_version(),
    }


def library_versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {}
    for dist in ("torch", "onnx", "onnxruntime", "onnxruntime-gpu", "apache-tvm", "numpy", "hwnas"):
        try:
            out[dist] = md.version(dist)
        except md.PackageNotFoundError:
            continue
    return out
