"""Whole networks: the table's prediction against the measured end-to-end time.

``run_verify`` samples architectures (the all-smallest and all-largest by table latency, then uniform choices),
builds and exports each whole network, times it with the runner and protocol that measured the table, and compares
with the table's raw sum. With a calibration set (``calib_n`` other architectures) it fits a calibration
(:mod:`profiler.latency.calibrate`) on that set only and reports the test set before and after.

Everything goes into one output folder: ``plan.json`` (what is measured; a rerun with other settings is refused),
``networks.csv`` (one row per network, appended and fsynced, so a kill loses at most the one in flight and a rerun
resumes), ``summary.json`` and ``scatter.png``.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from profiler.errors import UserError
from profiler.fileio import atomic_write_text
from profiler.latency.calibrate import GOALS, CalibrationFit, fit_calibration, goals_reached, metrics, write_calibration
from profiler.latency.model import STATS, StoredMapping
from profiler.latency.tables import LatencyTable, read_json_or_none
from profiler.measuring.devices import Device
from profiler.measuring.export import cache_dir
from profiler.measuring.model_measure import arch_label, measure_network, measure_with_retries
from profiler.measuring.protocol import INVALID, VALID, Protocol, Validity
from profiler.measuring.runners import MeasureRequest, Runner
from profiler.measuring.stats import drift_ratio, summarize
from profiler.spaces.space import Space

PLAN_VERSION = 1
CSV_COLUMNS = ["split", "idx", "arch", "pred_raw_ms", "measured_ms", "p10_ms", "p90_ms", "cv", "n", "attempts",
               "status", "error", "max_abs_err", "wall_s"]


class VerifyError(UserError, ValueError):
    """A verification problem; the message is the one line shown to the user."""


@dataclass
class VerifyProgress:
    total: int
    done: int = 0
    skipped: int = 0
    errors: int = 0
    current: str = ""


_CORE_FIELDS = ("device", "space", "table", "n_test", "n_calib", "failed", "empty_graph_ms", "stat", "raw", "goals",
                "validity")


@dataclass
class VerifySummary(StoredMapping):
    """What a verification found (``summary.json``): metrics of the raw sum and, when fitted, of the calibration.
    It reads as the JSON mapping it is stored as (``s["raw"]["mape_pct"]``); optional parts left unset are left out
    of the file."""

    device: str
    space: str
    table: str
    n_test: int
    n_calib: int
    failed: list[dict[str, Any]]
    empty_graph_ms: float | None
    stat: str
    raw: dict[str, Any]
    goals: dict[str, float]
    validity: dict[str, Any] | None = None
    existing_calibration: dict[str, Any] | None = None  # a stored calibration checked on these networks
    calibrated: dict[str, Any] | None = None  # the new fit's held-out metrics
    models_cv_mape_pct: dict[str, float] | None = None
    models_held_out: dict[str, dict[str, float]] | None = None
    calibration: dict[str, Any] | None = None  # the fitted parameters (without "fit")
    calibration_file: str | None = None
    calibration_note: str | None = None  # why there is no fit although calibration networks were asked for
    scatter: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if f.name in _CORE_FIELDS or v is not None or (f.name == "calibrated" and self.calibration_note):
                out[f.name] = v
        return out



@dataclass
class VerifyReport:
    out_dir: Path
    summary: VerifySummary
    rows: list[dict[str, Any]] = field(default_factory=list)
    calibration: dict[str, Any] | None = None
    calib_path: Path | None = None


# ----------------------------------------------------------------------------------------------- sampling


def layer_costs(table: LatencyTable, space: Space) -> list[dict[str, float]]:
    """Raw table cost (medians) of every (layer, op): the sum over the layer's sites."""
    return table.model(space, None).layer_costs()


def extreme_archs(table: LatencyTable, space: Space) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The all-smallest and all-largest architectures by table latency."""
    costs = layer_costs(table, space)
    small = tuple(min(c, key=lambda op: c[op]) for c in costs)
    large = tuple(max(c, key=lambda op: c[op]) for c in costs)
    return small, large


def plan_archs(table: LatencyTable, space: Space, n: int, calib_n: int, seed: int
               ) -> tuple[list[tuple[str, ...]], list[tuple[str, ...]]]:
    """Test set (smallest, largest, then uniform; ``n`` in all) and a disjoint calibration set.

    The calibration networks take turns among three draws, so the fit sees every kind of network a search derives,
    not only the uniform average: uniform; a per-network random preference over the ops (Dirichlet(0.5): conv- or
    skip-leaning); and a cheap mix (per network w ~ U(0, 1): each layer takes its cheapest op by the table with
    probability w, else a uniform op) -- the shape of a latency-pressured architecture, cheap layers around a few
    convolutions, which the other two draws almost never produce.
    """
    total = math.prod(len(layer.choices) for layer in space.layers)
    if n + calib_n > total:
        raise VerifyError(f"space {space.spec} has too few distinct architectures ({total}) for n={n} + "
                          f"calib-n={calib_n}; ask for fewer")
    rng = np.random.default_rng(seed)
    small, large = extreme_archs(table, space)
    test: list[tuple[str, ...]] = [a for a in dict.fromkeys([small, large])][: max(n, 0)]
    seen = set(test)
    calib: list[tuple[str, ...]] = []
    budget = 1000 * (n + calib_n) + 1000  # bounded: in tiny spaces random draws repeat often

    def draw(kind: int) -> tuple[str, ...]:
        if kind == 0:
            return tuple(layer.choices[int(rng.integers(len(layer.choices)))] for layer in space.layers)
        if kind == 2:
            w = rng.random()
            return tuple(cheap if rng.random() < w else layer.choices[int(rng.integers(len(layer.choices)))]
                         for layer, cheap in zip(space.layers, small))
        pref = rng.dirichlet(np.full(len(space.ops), 0.5))
        weight = dict(zip(space.ops, pref))
        out = []
        for layer in space.layers:
            p = np.array([weight.get(op, 0.0) for op in layer.choices]) + 1e-12
            out.append(layer.choices[int(rng.choice(len(layer.choices), p=p / p.sum()))])
        return tuple(out)

    for target, want in ((test, n), (calib, calib_n)):
        while len(target) < want and budget > 0:
            budget -= 1
            a = draw(len(target) % 3 if target is calib else 0)
            if a not in seen:
                seen.add(a)
                target.append(a)
        if len(target) < want:
            raise VerifyError(f"space {space.spec}: could not draw {want} distinct architectures; ask for fewer")
    return test, calib


# ------------------------------------------------------------------------------------------------ helpers


def table_protocol(table: LatencyTable, fallback: Protocol) -> Protocol:
    data = table.meta.get("protocol")
    if not data:
        return fallback
    try:
        return Protocol.from_dict(data, f"{table.path}: protocol")
    except ValueError as e:
        raise VerifyError(str(e)) from None


def raw_predict_ms(table: LatencyTable, space: Space, choices: Sequence[str], stat: str = "median") -> float:
    """The plain sum of the table's entries (their median, or p10) over an architecture's keys."""
    return table.model(space, None, stat).exact(list(choices))


def _read_rows(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    data = path.read_bytes()
    complete = data[: data.rfind(b"\n") + 1].decode()
    reader = csv.DictReader(io.StringIO(complete))
    if reader.fieldnames != CSV_COLUMNS:
        raise VerifyError(f"{path}: not a hwprof verify file (columns {reader.fieldnames}); use another --out")
    rows = []
    for r in reader:
        for c in ("pred_raw_ms", "measured_ms", "p10_ms", "p90_ms", "cv", "max_abs_err", "wall_s"):
            r[c] = float(r[c]) if r[c] != "" else math.nan
        for c in ("idx", "n", "attempts"):
            r[c] = int(r[c]) if r[c] != "" else 0
        rows.append(r)
    if len(complete) != len(data):  # torn last line: cut it before appending
        atomic_write_text(path, complete)
    return rows


def _fmt(v: Any) -> Any:
    if isinstance(v, float):
        return "" if math.isnan(v) else f"{v:.6g}"
    return v


def measure_empty_graph(runner: Runner, protocol: Protocol, input_shape: tuple[int, ...], root: Path) -> float | None:
    """Median time of a graph that does (almost) nothing at the network's input shape: the per-call overhead."""
    import torch

    from profiler.measuring.export import export_module

    class _Empty(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x[:, :1, :1, :1] * 1.0  # smallest real node; an empty ONNX graph is not a valid session

    path = root / "empty.onnx"
    try:
        export_module(_Empty(), input_shape, path)
    except Exception:
        return None
    res = measure_with_retries(runner, MeasureRequest("empty-graph", path, input_shape), protocol)
    return summarize(res.samples_ms).median_ms if res.ok else None


# ------------------------------------------------------------------------------------------------- verify


def run_verify(device: Device, space: Space, table: LatencyTable, runner: Runner, out_dir: Path, *, n: int = 100,
               calib_n: int = 50, seed: int = 0, write_calib: bool = True, stat: str = "median",
               on_progress: Callable[[VerifyProgress], None] | None = None, plot: bool = True) -> VerifyReport:
    """Measure the planned networks (resuming from ``out_dir``), compute metrics, fit and store a calibration.

    ``stat`` compares medians (default) or p10s of entries and networks; the CSV holds both, so a rerun with the
    other statistic reuses every measurement.
    """
    _check_verify_inputs(device, space, table, n, calib_n, stat)
    protocol = table_protocol(table, device.protocol)
    test, calib = plan_archs(table, space, n, calib_n, seed)
    _write_or_check_plan(out_dir, {
        "version": PLAN_VERSION, "device": device.name, "space": space.spec, "table": str(table.path),
        "table_created": table.meta.get("created"), "seed": seed, "n": n, "calib_n": calib_n,
        "protocol": protocol.to_dict(), "test": [arch_label(a) for a in test],
        "calib": [arch_label(a) for a in calib]})
    net_root = cache_dir() / "networks"  # shared export cache: reruns and other folders reuse the files
    reference = ReferenceProbe(runner, protocol)
    reference.probe()
    results = _measure_planned(space, table, runner, protocol, out_dir / "networks.csv", _interleave(test, calib),
                               net_root, reference, on_progress or (lambda p: None))
    empty_ms = measure_empty_graph(runner, protocol, (1, *space.input_shape), net_root) if calib else None
    reference.probe()
    return summarize_verify(device, space, table, out_dir, test, calib, results, empty_ms, write_calib, plot, stat,
                            reference.ms)


def _check_verify_inputs(device: Device, space: Space, table: LatencyTable, n: int, calib_n: int, stat: str) -> None:
    """Refuse settings a verification cannot use, each with the fix, before anything is measured."""
    if stat not in STATS:
        raise VerifyError(f"--stat {stat!r}: expected one of {', '.join(STATS)}")
    if table.device != device.name:
        raise VerifyError(f"{table.path}: table is for device {table.device!r}, not {device.name!r}; "
                          f"pass --device {table.device} or another table")
    if table.space != space.spec:
        raise VerifyError(f"{table.path}: table is for space {table.space!r}, not {space.spec!r}")
    if n < 2:
        raise VerifyError(f"--n {n}: verification needs at least 2 networks")
    if calib_n and calib_n < 3:
        raise VerifyError(f"--calib-n {calib_n}: a calibration needs at least 3 networks (or 0 for none)")
    missing = table.missing(space.candidate_keys())
    if missing:
        raise VerifyError(f"{table.path}: {len(missing)} key(s) of {space.spec} have no usable entry (e.g. "
                          f"{missing[0]}); measure them first with hwprof measure --device {device.name} "
                          f"--space {space.spec} --out {table.path}")


def _write_or_check_plan(out_dir: Path, plan: dict[str, Any]) -> None:
    """Store the plan in a new ``out_dir``; in an existing one, refuse a plan that differs (no mixed resumes)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    plan_file = out_dir / "plan.json"
    if plan_file.exists():
        if read_json_or_none(plan_file) != plan:
            raise VerifyError(f"{out_dir}: holds a verification with other settings (device, space, table, seed, "
                              f"n or calib-n differ); use another --out or delete {plan_file}")
    else:
        atomic_write_text(plan_file, json.dumps(plan, indent=2) + "\n")


def _interleave(test: list[tuple[str, ...]], calib: list[tuple[str, ...]]) -> list[tuple[str, int, tuple[str, ...]]]:
    """(split, index, arch) in alternating order, so slow drift of the machine hits both sets alike."""
    order: list[tuple[str, int, tuple[str, ...]]] = []
    for i in range(max(len(test), len(calib))):
        if i < len(test):
            order.append(("test", i, test[i]))
        if i < len(calib):
            order.append(("calib", i, calib[i]))
    return order


def _measure_planned(space: Space, table: LatencyTable, runner: Runner, protocol: Protocol, csv_path: Path,
                     order: list[tuple[str, int, tuple[str, ...]]], net_root: Path, reference: "ReferenceProbe",
                     notify: Callable[[VerifyProgress], None]) -> dict[tuple[str, str], dict[str, Any]]:
    """Measure each planned network not yet ``ok`` in ``csv_path``, appending (and fsyncing) one row per network."""
    done = {(r["split"], r["arch"]): r for r in _read_rows(csv_path) if r["status"] == "ok"}
    if not csv_path.exists():
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerow(CSV_COLUMNS)
        atomic_write_text(csv_path, buf.getvalue())
    prog = VerifyProgress(total=len(order))
    results: dict[tuple[str, str], dict[str, Any]] = {}
    with open(csv_path, "a", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        for split, idx, arch in order:
            label = arch_label(arch)
            prog.current = f"{split} {idx}"
            if (split, label) in done:
                results[(split, label)] = done[(split, label)]
                prog.done += 1
                prog.skipped += 1
                notify(prog)
                continue
            notify(prog)
            row = _measure_row(space, table, runner, protocol, net_root, split, idx, arch)
            w.writerow([_fmt(row[c]) for c in CSV_COLUMNS])
            f.flush()
            os.fsync(f.fileno())
            results[(split, label)] = row
            prog.done += 1
            prog.errors += row["status"] == "error"
            if (prog.done - prog.skipped) % REFERENCE_EVERY == 0:
                reference.probe()
            notify(prog)
        prog.current = "empty graph"
        notify(prog)
    return results


def _measure_row(space: Space, table: LatencyTable, runner: Runner, protocol: Protocol, net_root: Path,
                 split: str, idx: int, arch: tuple[str, ...]) -> dict[str, Any]:
    """Export and time one network; its CSV row (status ``error`` with the message when it could not be timed)."""
    t0 = time.perf_counter()
    res, info = measure_network(space, arch, runner, protocol, net_root)
    row: dict[str, Any] = {"split": split, "idx": idx, "arch": arch_label(arch),
                           "pred_raw_ms": raw_predict_ms(table, space, arch), "measured_ms": math.nan,
                           "p10_ms": math.nan, "p90_ms": math.nan, "cv": math.nan, "n": 0,
                           "attempts": int(res.info.get("attempts", 1)), "status": "error",
                           "error": res.error or "", "max_abs_err": info.get("max_abs_err", math.nan)}
    if res.ok:
        s = summarize(res.samples_ms)
        row.update(measured_ms=s.median_ms, p10_ms=s.p10_ms, p90_ms=s.p90_ms, cv=s.cv, n=s.n, status="ok")
    row["wall_s"] = time.perf_counter() - t0
    return row


REFERENCE_EVERY = 10  # networks measured between two timings of the drift reference op


class ReferenceProbe:
    """Times the table sweep's drift reference op now and then during a verification (medians, in ms)."""

    def __init__(self, runner: Runner, protocol: Protocol):
        from profiler.measuring.export import export_key
        from profiler.measuring.measure import REFERENCE_KEY

        self.runner, self.protocol = runner, replace(protocol, rounds=5).per_round()
        self.ms: list[float] = []
        try:
            exp = export_key(REFERENCE_KEY)
            self.request: MeasureRequest | None = MeasureRequest(REFERENCE_KEY, exp.path, exp.input_shape)
        except Exception:  # noqa: BLE001 - without a reference the verdict says so
            self.request = None

    def probe(self) -> None:
        if self.request is None:
            return
        res = self.runner.measure(self.request, self.protocol)
        if res.ok:
            self.ms.append(float(np.median(res.samples_ms)))


def verify_validity(table: LatencyTable, rows: list[dict[str, Any]], reference_ms: Sequence[float],
                    protocol: Protocol) -> Validity:
    """INVALID when the table is, when the reference op drifted during the verification, or when more than
    ``max_noisy_fraction`` of the networks spread more than twice ``cv_threshold`` (CV of their samples)."""
    reasons: list[str] = []
    tv = Validity.from_dict(table.meta.get("validity"))
    if tv is not None and not tv.valid:
        reasons.append(f"the table is INVALID ({'; '.join(tv.reasons[:1])})")
    drift = drift_ratio(list(reference_ms)) if len(reference_ms) >= 2 else None
    if drift is not None and drift > protocol.drift_threshold:
        reasons.append(f"the reference op drifted {drift * 100:.0f} % during the verification (limit "
                       f"{protocol.drift_threshold * 100:.0f} %)")
    ok = [r for r in rows if r["status"] == "ok"]
    noisy = sum(float(r["cv"]) > 2 * protocol.cv_threshold for r in ok)
    if ok and noisy / len(ok) > protocol.max_noisy_fraction:
        reasons.append(f"{noisy} of {len(ok)} networks have a CV above {2 * protocol.cv_threshold * 100:.0f} % "
                       f"(limit {protocol.max_noisy_fraction * 100:.0f} % of them): too busy to time reliably")
    if reasons:
        reasons.append("stop other jobs (a 1-thread device such as cpu-1t suffers least), then rerun")
    details = {"reference_ms": [round(x, 6) for x in reference_ms], "reference_drift": drift, "noisy": noisy,
               "entries": len(ok), "table_verdict": tv.verdict if tv else None}
    return Validity(INVALID if reasons else VALID, tuple(reasons), details)


def summarize_verify(device: Device, space: Space, table: LatencyTable, out_dir: Path,
                     test: list[tuple[str, ...]], calib: list[tuple[str, ...]],
                     results: dict[tuple[str, str], dict[str, Any]], empty_ms: float | None, write_calib: bool,
                     plot: bool, stat: str = "median", reference_ms: Sequence[float] = ()) -> VerifyReport:
    col = "measured_ms" if stat == "median" else "p10_ms"
    raw_model = table.model(space, None, stat)

    def ok_of(split: str, archs: list[tuple[str, ...]]) -> tuple[list[tuple[str, ...]], np.ndarray, np.ndarray]:
        rows = [(a, results[(split, arch_label(a))]) for a in archs]
        rows = [(a, r) for a, r in rows if r["status"] == "ok"]
        return ([a for a, _ in rows], np.array([raw_model.exact(list(a)) for a, _ in rows]),
                np.array([r[col] for _, r in rows]))

    t_archs, t_raw, t_meas = ok_of("test", test)
    c_archs, _, c_meas = ok_of("calib", calib)
    failed = [{"split": r["split"], "arch": r["arch"], "error": r["error"]} for r in results.values()
              if r["status"] != "ok"]
    if len(t_archs) < 2:
        raise VerifyError(f"only {len(t_archs)} test network(s) measured ok (errors: "
                          f"{failed[0]['error'] if failed else 'none'}); nothing to compare")
    raw = metrics(t_raw, t_meas)
    raw["goals_reached"] = goals_reached(raw)
    summary = VerifySummary(device.name, space.spec, str(table.path), len(t_archs), len(c_archs), failed, empty_ms,
                            stat, raw, GOALS)
    summary.validity = verify_validity(table, list(results.values()), reference_ms,
                                       table_protocol(table, Protocol())).to_dict()
    if table.calibration and not calib:
        # an existing calibration, checked on networks it was (by seed) not fitted on
        pred = [table.model(space).exact(list(a)) for a in t_archs]
        summary.existing_calibration = {**metrics(pred, t_meas), "model": table.calibration.model}
    fit, cal_pred, cpath = None, None, None
    if len(c_archs) >= 3:
        fit, cal_pred = _fit(table, space, summary, (c_archs, c_meas), (t_archs, t_meas), empty_ms, stat)
        if write_calib:
            cpath = write_calibration(table.path, fit.calibration)
            summary.calibration_file = str(cpath)
    elif calib:
        summary.calibration_note = f"only {len(c_archs)} calibration network(s) measured ok; no fit"
    if plot:
        from profiler.latency.plots import plot_verify

        plot_verify(t_raw, t_meas, cal_pred, out_dir / "scatter.png",
                    title=f"{space.spec} on {device.name}: {len(t_archs)} held-out networks ({stat}s)",
                    stat=stat)
        summary.scatter = str(out_dir / "scatter.png")
    atomic_write_text(out_dir / "summary.json", json.dumps(summary.to_dict(), indent=2, default=_json_default) + "\n")
    rows = list(results.values())
    return VerifyReport(out_dir, summary, rows, fit.calibration if fit else None, cpath)


def _fit(table: LatencyTable, space: Space, summary: VerifySummary, fit_set: tuple[list, np.ndarray],
         test_set: tuple[list, np.ndarray], empty_ms: float | None, stat: str) -> tuple[CalibrationFit, np.ndarray]:
    """Fit a calibration on the calibration networks; record it in ``summary``; its predictions of the test set."""
    try:
        fit = fit_calibration(table, space, *fit_set, *test_set, empty_graph_ms=empty_ms, stat=stat)
    except ValueError as e:
        raise VerifyError(f"calibration failed: {e}") from None
    fit.calibration["fit"]["table"] = str(table.path)
    after = fit.held_out[fit.calibration["model"]]
    summary.calibrated = {**after, "model": fit.calibration["model"], "goals_reached": goals_reached(after)}
    summary.models_cv_mape_pct = fit.cv_mape_pct
    summary.models_held_out = fit.held_out
    summary.calibration = {k: v for k, v in fit.calibration.items() if k != "fit"}
    model = table.model(space, fit.calibration)
    return fit, np.array([model.exact(list(a)) for a in test_set[0]])


def _json_default(v: Any) -> Any:
    if isinstance(v, (np.floating, np.integer)):
        return v.item()
    if isinstance(v, np.bool_):
        return bool(v)
    raise TypeError(type(v).__name__)
