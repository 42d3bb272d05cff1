"""The latency model: what an architecture costs on one device, computed in exactly one place.

Built once from (space, table, calibration, statistic)::

    entry(key)      = raw(key) * scale_by_op.get(op, scale)   raw: the row's median, or its p10 (statistic "p10")
    entries[i, k]   = sum over layer i's sites of entry(site.key(layer.choices[k], batch))
    fixed_ms        = sum over the fixed sites of entry(site.key(batch=batch))
    offset_ms       = the calibration's offset (0 without one)

    exact(choices)  = offset_ms + fixed_ms + sum_i entries[i, column of choice_i]
    expected(probs) = offset_ms + fixed_ms + (probs * entries).sum()     (torch, differentiable in probs)

Keys carry the table's batch. A key without a usable row leaves its cell NaN: :meth:`LatencyModel.exact` names the
key, :meth:`LatencyModel.expected` and :meth:`LatencyModel.lowest` refuse. Everything that predicts a latency (the
table, calibration, architectures, verification, plots, the search's cost tensors, derivation) asks this model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

from profiler.errors import InputError

if TYPE_CHECKING:  # the model reads a table; the table module builds models (no import cycle at run time)
    import torch

    from profiler.latency.tables import LatencyTable
    from profiler.spaces.space import Space

STATS = ("median", "p10")
FIXED = (-1, -1)  # the gaps key of a fixed site without a usable row
TABLE_CALIBRATION: Any = "table"  # build from the table's own calibration (the default)


class MissingEntries(KeyError):
    """An architecture needs a key the table has no usable (ok or noisy) row for; the message names one."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


CALIB_VERSION = 1
_CAL_FIX = "refit it with hwprof verify or delete the file"


class StoredMapping(Mapping):
    """A typed record that reads as the JSON mapping it is stored as (``to_dict()``): ``r["field"]``, iteration."""

    def to_dict(self) -> dict[str, Any]:  # pragma: no cover - each record defines it
        raise NotImplementedError

    def __getitem__(self, name: str) -> Any:
        return self.to_dict()[name]

    def __iter__(self) -> Any:
        return iter(self.to_dict())

    def __len__(self) -> int:
        return len(self.to_dict())


class CalibrationError(InputError):
    """A calibration file (TABLE.calib.json) of the wrong shape or with bad values."""


def _number(c: Mapping[str, Any], f: str, where: str) -> float:
    v = c.get(f)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise CalibrationError(f"{where}: field {f!r} must be a finite number, got {v!r}; {_CAL_FIX}")
    return float(v)


@dataclass(frozen=True, eq=False)
class Calibration(StoredMapping):
    """A table's calibration (``<table>.calib.json``): ``entry = raw(stat) * scale_by_op.get(op, scale)`` and one
    ``offset_ms``, with the sha256 of the table file it was fitted on. It validates itself; it reads as the JSON
    mapping it was stored as (``cal["model"]``, ``cal == json.load(file)``)."""

    scale: float = 1.0
    offset_ms: float = 0.0
    scale_by_op: Mapping[str, float] = field(default_factory=dict)
    stat: str = "median"
    model: str | None = None
    table_sha256: str | None = None  # of the table CSV it was fitted on (None: an older file, unknown)
    fit: Mapping[str, Any] | None = None  # how it was fitted (device, space, networks, held-out metrics)
    version: int = CALIB_VERSION

    def __post_init__(self) -> None:
        Calibration.from_dict(self.to_dict(), "calibration")

    @classmethod
    def from_dict(cls, c: Any, where: str) -> "Calibration":
        """Validate a calibration mapping; a one-line ``CalibrationError`` (a ``ValueError``) names the field."""
        if isinstance(c, Calibration):
            return c
        if not isinstance(c, Mapping) or c.get("version") != CALIB_VERSION:
            raise CalibrationError(f"{where}: calibration version "
                                   f"{c.get('version') if isinstance(c, Mapping) else None!r}, expected "
                                   f"{CALIB_VERSION}; refit it with hwprof verify")
        scale, offset = _number(c, "scale", where), _number(c, "offset_ms", where)
        if c.get("stat", "median") not in STATS:
            raise CalibrationError(f"{where}: field 'stat' is {c.get('stat')!r}, expected one of {', '.join(STATS)}")
        sb = c.get("scale_by_op", {})
        if not isinstance(sb, Mapping) or any(isinstance(v, bool) or not isinstance(v, (int, float))
                                              or not math.isfinite(v) or v < 0 for v in sb.values()):
            raise CalibrationError(f"{where}: scale_by_op must map op names to finite non-negative numbers, got "
                                   f"{str(sb)[:80]}; {_CAL_FIX}")
        sha = c.get("table_sha256")
        if sha is not None and not (isinstance(sha, str) and len(sha) == 64):
            raise CalibrationError(f"{where}: field 'table_sha256' = {str(sha)[:70]!r} is not a sha256; {_CAL_FIX}")
        fit = c.get("fit")
        if fit is not None and not isinstance(fit, Mapping):
            raise CalibrationError(f"{where}: field 'fit' must be an object; {_CAL_FIX}")
        model = c.get("model")
        obj = object.__new__(cls)  # validated: skip __post_init__'s second check
        for k, v in dict(scale=scale, offset_ms=offset, scale_by_op=dict(sb), stat=c.get("stat", "median"),
                         model=None if model is None else str(model), table_sha256=sha,
                         fit=None if fit is None else dict(fit), version=CALIB_VERSION).items():
            object.__setattr__(obj, k, v)
        return obj

    def to_dict(self) -> dict[str, Any]:
        """The JSON stored in the file (fields that are None are left out)."""
        out: dict[str, Any] = {"version": self.version, "stat": self.stat, "scale": self.scale,
                               "scale_by_op": dict(self.scale_by_op), "offset_ms": self.offset_ms}
        for k in ("model", "table_sha256", "fit"):
            if getattr(self, k) is not None:
                out[k] = getattr(self, k)
        return out

    @property
    def sha256(self) -> str:
        """The sha256 of the calibration's canonical JSON: what a run and an architecture record."""
        import hashlib
        import json

        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()

    def with_table(self, sha256: str | None) -> "Calibration":
        return Calibration.from_dict({**self.to_dict(), "table_sha256": sha256}, "calibration")

    def scale_of(self, op: str) -> float:
        return float(self.scale_by_op.get(op, self.scale))

    def __bool__(self) -> bool:
        return True


def calibration_terms(calibration: Any) -> tuple[str, float, Mapping[str, float], float]:
    """(statistic, global scale, scale per op, offset ms) of a calibration; None: the raw table."""
    if calibration is None or (not isinstance(calibration, Calibration) and not calibration):
        return "median", 1.0, {}, 0.0
    if not isinstance(calibration, Calibration):
        return (str(calibration.get("stat", "median")), float(calibration.get("scale", 1.0)),
                dict(calibration.get("scale_by_op") or {}), float(calibration.get("offset_ms", 0.0)))
    return calibration.stat, calibration.scale, calibration.scale_by_op, calibration.offset_ms


def raw_ms(row: Mapping[str, Any] | None, stat: str = "median") -> float:
    """A row's raw statistic: its median, or its p10 (the median where the row has no p10); NaN when unusable."""
    if stat not in STATS:
        raise ValueError(f"stat {stat!r} is not one of {', '.join(STATS)}")
    if row is None or row["status"] == "error":
        return math.nan
    med = float(row["median_ms"])
    if stat == "p10":
        p10 = float(row["p10_ms"])
        return p10 if p10 > 0 else med
    return med


def entry_ms(row: Mapping[str, Any] | None, op: str, calibration: Any = None, stat: str | None = None) -> float:
    """One calibrated entry (NaN when the row is unusable): the single definition of an entry's cost."""
    cstat, scale, by_op, _ = calibration_terms(calibration)
    return raw_ms(row, stat or cstat) * float(by_op.get(op, scale))


@dataclass(frozen=True, eq=False)
class LatencyModel:
    """Dense per-(layer, column) costs of one space on one table; see the module docstring for the contract."""

    space: "Space"
    entries: np.ndarray  # [layers, columns] ms, float64; column k of layer i is op layer.choices[k]
    fixed_ms: float
    offset_ms: float
    stat: str
    batch: int
    source: str  # the table's path
    calibrated: bool
    gaps: Mapping[tuple[int, int], str] = field(default_factory=dict)  # cell -> a key without a usable row
    _tensors: dict = field(default_factory=dict, repr=False)

    @property
    def const_ms(self) -> float:
        """The part every architecture pays: fixed sites plus the calibration offset."""
        return self.offset_ms + self.fixed_ms

    def columns(self, choices: Sequence[str]) -> list[int]:
        self.space.check_choices(list(choices))
        return [layer.choices.index(op) for layer, op in zip(self.space.layers, choices)]

    def missing_keys(self, choices: Sequence[str], cols: Sequence[int] | None = None) -> list[str]:
        """A key without a usable row for each cell of the architecture that has one (fixed sites first)."""
        cells = [FIXED, *enumerate(self.columns(choices) if cols is None else cols)]
        return [self.gaps[c] for c in cells if c in self.gaps]

    def exact(self, choices: Sequence[str]) -> float:
        """The prediction (ms) for one architecture; ``MissingEntries`` (a KeyError) names a key it lacks."""
        cols = self.columns(choices)
        missing = self.missing_keys(choices, cols) if self.gaps else []
        if missing:
            raise MissingEntries(f"table {self.source} lacks {len(set(missing))} key(s) of this architecture, "
                                 f"e.g. {missing[0]}")
        return self.const_ms + float(sum(self.entries[i, k] for i, k in enumerate(cols)))

    def _need_complete(self, what: str) -> None:
        if self.gaps:
            raise MissingEntries(f"table {self.source} lacks {len(set(self.gaps.values()))} key(s) of space "
                                 f"{self.space.spec} ({what} needs all), e.g. {next(iter(self.gaps.values()))}")

    def tensor(self, dtype: Any = None, device: Any = None) -> "torch.Tensor":
        """``entries`` as a torch tensor (cached per dtype and device)."""
        import torch

        dtype = dtype or torch.float32
        key = (dtype, str(device))
        if key not in self._tensors:
            self._tensors[key] = torch.as_tensor(self.entries, dtype=dtype, device=device)
        return self._tensors[key]

    def expected(self, probs: "torch.Tensor") -> "torch.Tensor":
        """const + sum(probs * entries): differentiable in ``probs`` ([layers, ops], or [N, layers, ops] -> [N])."""
        self._need_complete("an expectation")
        t = self.tensor(probs.dtype, probs.device)
        return (probs * t).sum(dim=(-2, -1)) + self.const_ms

    def lowest(self) -> float:
        """The least prediction over every architecture of the space (linear: the per-layer minima add up)."""
        self._need_complete("the lowest prediction")
        return self.const_ms + float(sum(row.min() for row in self.entries))

    def cheapest(self) -> tuple[str, ...]:
        """The architecture of :meth:`lowest` (first column on ties)."""
        self._need_complete("the cheapest architecture")
        return tuple(layer.choices[int(np.argmin(row))] for layer, row in zip(self.space.layers, self.entries))

    def layer_costs(self) -> list[dict[str, float]]:
        """Cost of every (layer, op): the sum over the layer's sites (NaN where a key has no usable row)."""
        return [{op: float(self.entries[i, k]) for k, op in enumerate(layer.choices)}
                for i, layer in enumerate(self.space.layers)]

    def grid(self) -> np.ndarray:
        """``[layers, space.ops]`` costs; NaN where a layer substitutes another op for the column or lacks a key."""
        ops = self.space.ops
        keep = np.array([[layer.choices[k] == op for k, op in enumerate(ops)] for layer in self.space.layers])
        return np.where(keep, self.entries, np.nan)


def build_model(space: "Space", table: "LatencyTable", calibration: Any = TABLE_CALIBRATION,
                stat: str | None = None) -> LatencyModel:
    """The model of ``space`` on ``table``. ``calibration``: the table's own (default), None (raw entries) or
    another calibration; ``stat``: the statistic of the raw entries (default: the calibration's, else median)."""
    cal = table.calibration if calibration is TABLE_CALIBRATION else calibration
    cstat, _, _, offset = calibration_terms(cal)
    stat = stat or cstat
    batch = table.batch
    gaps: dict[tuple[int, int], str] = {}

    def cost(site: Any, op: str | None, cell: tuple[int, int]) -> float:
        key = site.key(op, batch)
        v = entry_ms(table.rows.get(key), op or site.op, cal, stat)
        if math.isnan(v):
            gaps.setdefault(cell, key)
        return v

    fixed = float(sum(cost(s, None, FIXED) for s in space.fixed))
    entries = np.array([[sum(cost(s, op, (i, k)) for s in layer.sites) for k, op in enumerate(layer.choices)]
                        for i, layer in enumerate(space.layers)], dtype=np.float64)
    return LatencyModel(space, entries, fixed, offset, stat, batch, str(table.path), bool(cal), gaps)
