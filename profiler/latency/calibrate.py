"""Per-device calibration of a table's whole-network predictions, linear in the entries.

Contract (a :class:`profiler.latency.model.Calibration`, applied by :class:`profiler.latency.model.LatencyModel`)::

    prediction = offset_ms + sum over an architecture's keys of entry_ms(key)
    entry_ms(key) = raw_median(key) * scale_by_op.get(op, scale)

so the search's expected latency stays a dot product of op probabilities with (calibrated) entries.

Candidate models, all of that form, fitted to *relative* error (rows weighted by 1/measured) with a soft-L1
(robust) loss:

- ``raw``: scale 1, offset 0 (the plain sum);
- ``offset``: scale 1, one offset (a network pays the per-call overhead once, the table once per entry);
- ``overhead``: scale 1, offset = -(K-1) x the measured empty-graph time (K entries per architecture; needs it);
- ``scale+offset``: one global scale and an offset;
- ``per-op``: one non-negative scale per searchable op (fixed ops keep scale 1) and an offset, ridge-shrunk towards
  the global scale with the strength chosen by k-fold cross-validation.

With a measured empty-graph time h, every offset is bounded below by -(K-1) h (a network pays at least one call
overhead; an entry at most one), so no architecture is predicted at or below zero.

The model is chosen by k-fold cross-validation on the fit set only; the test set is never seen while fitting.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from scipy.optimize import least_squares, lsq_linear

from profiler.fileio import atomic_write_text
from profiler.latency.model import CALIB_VERSION, STATS, Calibration, CalibrationError  # noqa: F401 - re-exported
from profiler.latency.tables import LatencyTable, calib_path, table_sha256
from profiler.spaces.space import Space

RIDGE_GRID = (0.0, 0.01, 0.1, 1.0, 10.0)
MODELS = ("raw", "offset", "overhead", "scale+offset", "per-op")


def metrics(predicted_ms: Sequence[float], measured_ms: Sequence[float]) -> dict[str, float]:
    """Accuracy of predictions against measurements (percentages of the measured time, rank correlations)."""
    from scipy.stats import kendalltau, spearmanr

    p = np.asarray(predicted_ms, dtype=float)
    m = np.asarray(measured_ms, dtype=float)
    if p.shape != m.shape or p.size == 0:
        raise ValueError(f"metrics need equally long, non-empty lists (got {p.size} and {m.size})")
    e = (p - m) / m
    out = {
        "n": int(p.size),
        "mape_pct": float(np.mean(np.abs(e)) * 100),
        "rmspe_pct": float(np.sqrt(np.mean(e**2)) * 100),
        "max_err_pct": float(np.max(np.abs(e)) * 100),
        "bias_pct": float(np.mean(e) * 100),
        "within_5_pct": float(np.mean(np.abs(e) <= 0.05) * 100),
        "within_10_pct": float(np.mean(np.abs(e) <= 0.10) * 100),
        "kendall_tau": float("nan"),
        "spearman_rho": float("nan"),
    }
    if p.size >= 2 and np.ptp(p) > 0 and np.ptp(m) > 0:
        out["kendall_tau"] = float(kendalltau(p, m).statistic)
        out["spearman_rho"] = float(spearmanr(p, m).statistic)
    return out


GOALS = {"within_5_pct": 95.0, "within_10_pct": 99.5, "kendall_tau": 0.95}


def goals_reached(m: dict[str, float]) -> dict[str, bool]:
    return {k: bool(m.get(k, float("nan")) >= v) for k, v in GOALS.items()}


# ------------------------------------------------------------------------------------------------ features


@dataclass(frozen=True)
class Design:
    """Per-architecture raw sums split by op: ``by_op[i, j]`` = sum of raw entries of op ``ops[j]`` in arch i."""

    ops: tuple[str, ...]  # searchable ops (columns)
    by_op: np.ndarray  # [n, len(ops)]
    fixed_ms: np.ndarray  # [n] sum of the fixed sites' raw entries
    n_keys: int  # entries per architecture (constant within a space)

    @property
    def raw_ms(self) -> np.ndarray:
        return self.by_op.sum(axis=1) + self.fixed_ms


def design(table: LatencyTable, space: Space, archs: Sequence[Sequence[str]], stat: str = "median") -> Design:
    """Raw per-op sums of each architecture, read from the table's raw :class:`LatencyModel` (``KeyError`` names a
    key the table lacks)."""
    model = table.model(space, None, stat)
    ops = tuple(space.ops)
    col = {op: j for j, op in enumerate(ops)}
    by_op = np.zeros((len(archs), len(ops)))
    for i, choices in enumerate(archs):
        missing = model.missing_keys(list(choices))
        if missing:
            raise KeyError(missing[0])
        for layer, (li, k) in zip(space.layers, enumerate(model.columns(list(choices)))):
            by_op[i, col[layer.choices[k]]] += model.entries[li, k]
    n_keys = len(space.fixed) + sum(len(layer.sites) for layer in space.layers)
    return Design(ops, by_op, np.full(len(archs), model.fixed_ms), n_keys)


# ------------------------------------------------------------------------------------------------- models


def _params_predict(d: Design, params: dict[str, Any]) -> np.ndarray:
    scale = float(params.get("scale", 1.0))
    sb = params.get("scale_by_op", {})
    w = np.array([float(sb.get(op, scale)) for op in d.ops])
    # fixed ops keep scale 1 in every model that sets scale_by_op for them; else they follow the global scale
    fixed_scale = float(sb.get("__fixed__", scale))
    return d.by_op @ w + d.fixed_ms * fixed_scale + float(params.get("offset_ms", 0.0))


ROBUST_SCALE = 0.03  # relative errors beyond ~3 % count linearly, not squared (soft-L1 loss)


def _robust_lsq(A: np.ndarray, b: np.ndarray, lb: np.ndarray, ub: np.ndarray) -> np.ndarray:
    """Bounded linear least squares with a soft-L1 loss: a network timed during a load spike cannot drag the fit."""
    x0 = lsq_linear(A, b, bounds=(lb, ub), method="bvls").x
    x0 = np.clip(x0, np.where(np.isfinite(lb), lb + 1e-9, -np.inf), ub)
    res = least_squares(lambda x: A @ x - b, x0, jac=lambda x: A, bounds=(lb, ub), loss="soft_l1",
                        f_scale=ROBUST_SCALE, method="trf")
    return res.x


def _solve(a: np.ndarray, y: np.ndarray, lb: np.ndarray, ub: np.ndarray) -> np.ndarray:
    """Robust least squares on relative error: residuals ((a @ x) - y) / y, within bounds."""
    return _robust_lsq(a / y[:, None], np.ones_like(y), lb, ub)


def fit_model(model: str, d: Design, y: np.ndarray, *, empty_graph_ms: float | None = None,
              ridge: float = 0.0) -> dict[str, Any]:
    """Parameters ``{scale, scale_by_op, offset_ms}`` of ``model`` fitted to measured times ``y``."""
    y = np.asarray(y, dtype=float)
    raw = d.raw_ms
    # A network pays at least one call overhead, and each entry holds at most one: the offset may not remove
    # more than (K-1) empty-graph times. This keeps small (skip-heavy) networks from being predicted <= 0.
    lb_off = -(d.n_keys - 1) * float(empty_graph_ms) if empty_graph_ms is not None else -np.inf
    if model == "raw":
        return {"scale": 1.0, "scale_by_op": {}, "offset_ms": 0.0}
    if model == "offset":
        x = _robust_lsq((1.0 / y)[:, None], (y - raw) / y, np.array([lb_off]), np.array([np.inf]))
        return {"scale": 1.0, "scale_by_op": {}, "offset_ms": float(x[0])}
    if model == "overhead":
        if empty_graph_ms is None:
            raise ValueError("model 'overhead' needs the measured empty-graph time")
        return {"scale": 1.0, "scale_by_op": {}, "offset_ms": -(d.n_keys - 1) * float(empty_graph_ms)}
    if model == "scale+offset":
        a = np.column_stack([raw, np.ones_like(raw)])
        x = _solve(a, y, np.array([0.0, lb_off]), np.array([np.inf, np.inf]))
        return {"scale": float(x[0]), "scale_by_op": {}, "offset_ms": float(x[1])}
    if model == "per-op":
        g = fit_model("scale+offset", d, y, empty_graph_ms=empty_graph_ms)
        k = len(d.ops)
        a = np.column_stack([d.by_op, np.ones(len(y))])
        yy = y - d.fixed_ms  # fixed ops keep scale 1; the offset absorbs the rest
        reg = None
        if ridge > 0:
            # penalise (s_op - global scale) weighted by the op's typical share of a network
            share = np.mean(d.by_op / y[:, None], axis=0) + 1e-9
            R = np.zeros((k, k + 1))
            R[np.arange(k), np.arange(k)] = np.sqrt(ridge) * share
            reg = (R, np.sqrt(ridge) * share * g["scale"])
        A = a / y[:, None]
        b = yy / y
        if reg is not None:
            A = np.vstack([A, reg[0]])
            b = np.concatenate([b, reg[1]])
        x = _robust_lsq(A, b, np.r_[np.zeros(k), lb_off], np.full(k + 1, np.inf))
        sb = {op: float(x[j]) for j, op in enumerate(d.ops)}
        sb["__fixed__"] = 1.0
        return {"scale": 1.0, "scale_by_op": sb, "offset_ms": float(x[k]), "ridge": ridge}
    raise ValueError(f"unknown calibration model {model!r}; models: {', '.join(MODELS)}")


def predict(d: Design, params: dict[str, Any]) -> np.ndarray:
    return _params_predict(d, params)


def _subset(d: Design, idx: np.ndarray) -> Design:
    return Design(d.ops, d.by_op[idx], d.fixed_ms[idx], d.n_keys)


def cross_validate(model: str, d: Design, y: np.ndarray, k: int = 5, seed: int = 0, **kw: Any) -> float:
    """k-fold mean absolute percentage error (%) of ``model`` on the fit set alone (the selection criterion)."""
    n = len(y)
    k = max(2, min(k, n))
    order = np.random.default_rng(seed).permutation(n)
    errs = np.empty(n)
    for f in range(k):
        test = order[f::k]
        train = np.setdiff1d(order, test)
        params = fit_model(model, _subset(d, train), y[train], **kw)
        errs[test] = (predict(_subset(d, test), params) - y[test]) / y[test]
    return float(np.mean(np.abs(errs)) * 100)


@dataclass(frozen=True)
class CalibrationFit:
    calibration: dict[str, Any]  # what goes into <table>.calib.json
    cv_mape_pct: dict[str, float]  # k-fold MAPE of every candidate on the fit set (selection criterion)
    held_out: dict[str, dict[str, float]]  # test-set metrics of every candidate (reported, never used to select)


def _to_file_params(params: dict[str, Any], space: Space) -> dict[str, Any]:
    sb = dict(params.get("scale_by_op", {}))
    fixed_scale = sb.pop("__fixed__", None)
    if fixed_scale is not None:
        for s in space.fixed:
            sb[s.op] = fixed_scale  # type: ignore[index]
    return {"scale": float(params.get("scale", 1.0)), "scale_by_op": sb, "offset_ms": float(params["offset_ms"])}


def _candidates(models: Sequence[str], empty_graph_ms: float | None) -> dict[str, dict[str, Any]]:
    """Candidate name -> model and ridge strength (per-op once per ridge of the grid)."""
    out: dict[str, dict[str, Any]] = {}
    for m in models:
        if m == "overhead" and empty_graph_ms is None:
            continue
        if m == "per-op":
            for lam in RIDGE_GRID:
                out[f"per-op(ridge={lam:g})"] = {"model": m, "ridge": lam}
        else:
            out[m] = {"model": m}
    return out


def _check_fit_sets(fit_archs: Sequence[Sequence[str]], fit_ms: Sequence[float],
                    test_archs: Sequence[Sequence[str]], test_ms: Sequence[float]) -> None:
    """Refuse fit/test sets of unequal lengths, too few fit networks, or networks in both sets (leakage)."""
    if len(fit_archs) != len(fit_ms) or len(test_archs) != len(test_ms):
        raise ValueError("architectures and measurements differ in length")
    if len(fit_archs) < 3:
        raise ValueError(f"calibration needs at least 3 measured fit networks, got {len(fit_archs)}")
    overlap = {tuple(a) for a in fit_archs} & {tuple(a) for a in test_archs}
    if overlap:
        raise ValueError(f"{len(overlap)} architecture(s) are in both the fit and the test set (leakage)")


def _score_candidates(table: LatencyTable, space: Space, candidates: dict[str, dict[str, Any]], d_fit: Design,
                      y_fit: np.ndarray, d_test: Design, y_test: np.ndarray, empty_graph_ms: float | None,
                      stat: str) -> tuple[dict[str, float], dict[str, dict[str, Any]], dict[str, dict[str, float]]]:
    """Per candidate: cross-validated MAPE (``inf`` where it cannot be fitted or predicts a non-positive latency
    somewhere in the space), fitted parameters and held-out metrics on the test set."""
    kw = {"empty_graph_ms": empty_graph_ms}
    cv = {}
    for name, c in candidates.items():
        try:
            cv[name] = cross_validate(c["model"], d_fit, y_fit, ridge=c.get("ridge", 0.0), **kw)
        except ValueError:
            cv[name] = float("inf")
    held_out = {}
    fitted: dict[str, dict[str, Any]] = {}
    for name, c in candidates.items():
        try:
            params = fit_model(c["model"], d_fit, y_fit, ridge=c.get("ridge", 0.0), **kw)
        except ValueError:
            cv[name] = float("inf")
            continue
        held_out[name] = metrics(predict(d_test, params), y_test) if len(y_test) else {}
        fitted[name] = params
        # a model that predicts a non-positive latency for some architecture of the space is never chosen
        trial = {"version": CALIB_VERSION, "stat": stat, **_to_file_params(params, space)}
        if not table.model(space, trial).lowest() > 0:
            cv[name] = float("inf")
    return cv, fitted, held_out


def fit_calibration(table: LatencyTable, space: Space, fit_archs: Sequence[Sequence[str]], fit_ms: Sequence[float],
                    test_archs: Sequence[Sequence[str]], test_ms: Sequence[float], *,
                    empty_graph_ms: float | None = None, models: Sequence[str] = MODELS,
                    stat: str = "median") -> CalibrationFit:
    """Choose and fit a calibration on (fit_archs, fit_ms); report it on (test_archs, test_ms).

    ``stat``: which statistic of entries and networks is modelled: ``median`` (the table's), or ``p10`` (robust
    on a busy host, where medians carry the load of other processes). It is stored in the calibration and the
    table's :class:`profiler.latency.model.LatencyModel` then scales the entries' p10s. The calibration records the
    sha256 of the table file it was fitted on (``table_sha256``).
    """
    _check_fit_sets(fit_archs, fit_ms, test_archs, test_ms)
    y_fit = np.asarray(fit_ms, dtype=float)
    y_test = np.asarray(test_ms, dtype=float)
    d_fit = design(table, space, fit_archs, stat)
    d_test = design(table, space, test_archs, stat)
    cv, fitted, held_out = _score_candidates(table, space, _candidates(models, empty_graph_ms), d_fit, y_fit,
                                             d_test, y_test, empty_graph_ms, stat)
    best = min(cv, key=lambda n: cv[n])
    chosen = fitted.get(best, {"offset_ms": 0.0}) if np.isfinite(cv[best]) else {"offset_ms": 0.0}
    if not np.isfinite(cv[best]):
        best = "raw"
    before = held_out.get("raw") or (metrics(d_test.raw_ms, y_test) if len(y_test) else {})
    fp = _to_file_params(chosen, space)
    calib = {
        "version": CALIB_VERSION,
        "table_sha256": table_sha256(table.path) if Path(table.path).is_file() else None,
        "model": best,
        "stat": stat,
        **fp,
        "fit": {
            "device": table.device,
            "space": space.spec,
            "fitted": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "n_fit": len(fit_archs),
            "n_test": len(test_archs),
            "empty_graph_ms": empty_graph_ms,
            "cv_mape_pct": round(cv[best], 3),
            "held_out_before": _round(before),
            "held_out_after": _round(held_out.get(best, {})),
        },
    }
    return CalibrationFit(calib, cv, held_out)


def _round(m: dict[str, float]) -> dict[str, float]:
    return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in m.items()}


def write_calibration(table_path: Path, calibration: Any) -> Path:
    """Store a calibration beside its table (atomic, text)."""
    cal = Calibration.from_dict(calibration, str(calib_path(table_path)))
    path = calib_path(table_path)
    atomic_write_text(path, json.dumps(cal.to_dict(), indent=2, sort_keys=True) + "\n")
    return path


def check_calibration(c: Any, where: str) -> Calibration:
    """Validate a calibration dict; a one-line ``CalibrationError`` (a ``ValueError``) names the field."""
    return Calibration.from_dict(c, where)


def lowest_prediction_ms(table: LatencyTable, space: Space) -> float:
    """The least prediction over every architecture of ``space`` (see :meth:`LatencyModel.lowest`)."""
    return table.model(space).lowest()


def calibrated(table: LatencyTable, calibration: dict[str, Any] | None) -> LatencyTable:
    """The same table with another calibration (None: raw)."""
    return LatencyTable(table.path, table.meta, table.rows, calibration)
