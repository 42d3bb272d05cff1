"""Predicted latency of one architecture from latency tables, without measuring (``hwprof predict``).

The architecture comes from an architecture JSON (``hwnas derive``), an ONNX model written by ``hwnas export``
(``metadata_props["hwnas_arch_json"]``) or by hwprof's own network export (``hwnas_space`` + ``hwnas_arch``).
Each table gives the raw sum of its entries and, when it has a calibration, the calibrated prediction with the
calibration's model and its held-out error -- both through the table's :class:`profiler.latency.model.LatencyModel`, no summation of its own.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from profiler.latency.tables import LatencyTable
from profiler.spaces.arch import Arch, ArchError, arch_from_metadata, load_arch, make_arch
from profiler.spaces.space import get_space

NEEDS = ("an architecture JSON (hwnas derive) or an ONNX model written by hwnas export, which stores it in "
         "metadata_props['hwnas_arch_json']")


@dataclass(frozen=True)
class Prediction:
    table: str
    device: str
    raw_ms: float | None = None
    calibrated_ms: float | None = None
    calibration_model: str | None = None
    held_out: dict[str, Any] = field(default_factory=dict)  # the calibration's held-out metrics (after / before)
    imported: str | None = None  # format of an imported table
    error: str | None = None  # why this table cannot predict it (another space, missing keys)

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def load_target(path: Path) -> Arch:
    """The architecture of an architecture JSON or an hwnas ONNX model; one ``ArchError`` line otherwise."""
    path = Path(path)
    if not path.is_file():
        raise ArchError(f"{path}: no such file; predict needs {NEEDS}")
    if path.suffix.lower() != ".onnx":
        return load_arch(path)
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # any unreadable protobuf: one line, not a traceback
        raise ArchError(f"{path}: not a readable ONNX model ({type(e).__name__}); predict needs {NEEDS}") from None
    props = {p.key: p.value for p in model.metadata_props}
    if "hwnas_arch_json" in props:
        return arch_from_metadata(props, str(path))
    if "hwnas_space" in props and "hwnas_arch" in props:  # a network hwprof verify exported
        try:
            return make_arch(get_space(props["hwnas_space"]), props["hwnas_arch"].split("+"))
        except ValueError as e:
            raise ArchError(f"{path}: metadata hwnas_space/hwnas_arch do not name an architecture ({e})") from None
    raise ArchError(f"{path}: no hwnas metadata (metadata_props 'hwnas_arch_json'); predict needs {NEEDS}")


def predict_with(arch: Arch, table: LatencyTable) -> Prediction:
    """Raw and (when the table has one) calibrated prediction of ``arch``; failures are values."""
    imported = (table.meta.get("imported") or {}).get("format")
    base = dict(table=str(table.path), device=table.device, imported=imported)
    if table.space != arch.space_spec:
        return Prediction(**base, error=f"table is for space {table.space!r}, the architecture is in "
                                        f"{arch.space_spec!r}; pass a table of that space")
    keys = arch.space.arch_keys(arch.choices, table.batch)
    missing = sorted(set(table.missing(keys)))
    if missing:
        return Prediction(**base, error=f"table lacks {len(missing)} key(s) of this architecture, e.g. {missing[0]}; "
                                        f"measure them with hwprof measure --device {table.device} --space "
                                        f"{table.space} --out {table.path}")
    raw = table.model(arch.space, None).exact(arch.choices)
    if not table.calibration:
        return Prediction(**base, raw_ms=raw)
    fit = table.calibration.get("fit") or {}
    held = {"after": fit.get("held_out_after") or {}, "before": fit.get("held_out_before") or {},
            "n_test": fit.get("n_test"), "stat": table.calibration.get("stat", "median")}
    return Prediction(**base, raw_ms=raw, calibrated_ms=table.model(arch.space).exact(arch.choices),
                      calibration_model=str(table.calibration.get("model", "?")), held_out=held)


def describe(arch: Arch) -> dict[str, Any]:
    return {"space": arch.space_spec, "ops": arch.short(), "digest": arch.digest(), "params": arch.params,
            "flops": arch.flops, "stored_prediction_ms": arch.predicted_ms,
            "stored_table": None if arch.table is None else json.loads(json.dumps(arch.table.__dict__))}
