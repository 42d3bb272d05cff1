"""A sweep: keys -> export -> runner -> rows appended to a table (resumable, failures are rows).

With ``protocol.rounds > 1`` (the default) a sweep is interleaved: keys go in chunks; each round visits the
reference op and then every key of the chunk once (the order rotates per round), taking a share of the samples.
An entry's latency is the median of its round medians and its status comes from how far the round medians spread,
so a burst of background load costs one round of many entries, not all samples of one. The reference op's round
medians, over the whole sweep, are the drift check behind the table's validity verdict.
"""

from __future__ import annotations

import datetime as dt
import fnmatch
import json
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from profiler.fileio import atomic_write_text
from profiler.latency.tables import SCHEMA_VERSION, Row, TableWriter, meta_path, read_meta
from profiler.measuring.devices import Device
from profiler.measuring.export import OPSET, ExportResult, export_key
from profiler.measuring.protocol import INVALID, VALID, Protocol, Validity
from profiler.measuring.runners import MeasureRequest, MeasureResult, Runner
from profiler.measuring.stats import drift_ratio, round_spread, summarize
from profiler.spaces.keys import KEY_VERSION, key_op, op_key
from profiler.spaces.space import Space

# the drift reference, measured first in every round: a mid-sized op (~0.1-1 ms on a desktop core)
REFERENCE_KEY = op_key("sep_conv_3x3", (1, 16, 16, 16), 16, 1, {}, "float32")


@dataclass
class SweepProgress:
    total: int
    done: int = 0
    noisy: int = 0
    errors: int = 0
    remeasured: int = 0
    current: str = ""
    rows: list[Row] = field(default_factory=list)
    reference_ms: list[float] = field(default_factory=list)  # the reference op's median, one per round
    reference_error: str = ""
    load_start: float | None = None  # 1-minute load average when the sweep began / ended (None where unreadable)
    load_end: float | None = None


@dataclass(frozen=True)
class SweepSummary:
    path: Path
    measured: int
    skipped: int
    ok: int
    noisy: int
    errors: int
    remeasured: int
    wall_s: float
    rows: tuple[Row, ...]
    validity: Validity | None = None  # None when nothing was measured (the header keeps its verdict)
    dropped_calibration: Path | None = None  # --fresh: the calibration of the replaced table, deleted
    lost_boards: dict[str, str] = field(default_factory=dict)  # farm: board -> why it was lost mid-sweep


def row_from_result(result: MeasureResult, attempts: int, max_abs_err: float, cv_threshold: float) -> Row:
    if not result.ok:
        return Row(result.key, attempts=attempts, status="error", variant=result.variant,
                   error=result.error or "no samples", max_abs_err=max_abs_err)
    s = summarize(result.samples_ms)
    status = "ok" if s.cv <= cv_threshold else "noisy"
    return Row(result.key, s.median_ms, s.p10_ms, s.p90_ms, s.mean_ms, s.std_ms, s.cv, s.mad_outliers, s.n,
               result.calls_per_sample, attempts, status, result.variant, "", max_abs_err, tuple(result.samples_ms),
               board=str(result.info.get("board", "")))


def table_meta(device: Device, space: Space, runner: Runner, protocol: Protocol, batch: int) -> dict[str, Any]:
    return {
        "schema_version": SCHEMA_VERSION,
        "key_version": KEY_VERSION,
        "device": device.name,
        "runtime": device.runtime,
        "space": space.spec,
        "space_json": space.to_json(),
        "batch": batch,
        "opset": OPSET,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "fingerprint": runner.fingerprint(),
        "protocol": protocol.to_dict(),
    }


def select_keys(keys: list[str], only: str | None) -> list[str]:
    if not only:
        return keys
    return [k for k in keys if fnmatch.fnmatchcase(k, only) or fnmatch.fnmatchcase(key_op(k), only)]


def sweep(keys: Iterable[str], runner: Runner, protocol: Protocol, writer: TableWriter,
          on_progress: Callable[[SweepProgress], None] | None = None,
          exporter: Callable[[str], ExportResult] = export_key) -> SweepProgress:
    """Measure ``keys``, appending each finished row: interleaved rounds when ``protocol.rounds > 1``, else one
    key after another (the CV rule re-measures noisy entries)."""
    keys = list(keys)
    prog = SweepProgress(total=len(keys), load_start=_load())
    notify = on_progress or (lambda p: None)

    def finish(row: Row) -> None:
        writer.append(row)
        prog.done += 1
        prog.rows.append(row)
        prog.noisy += row.status == "noisy"
        prog.errors += row.status == "error"
        notify(prog)

    if protocol.interleaved:
        _sweep_interleaved(keys, runner, protocol, prog, finish, notify, exporter)
    else:
        _sweep_sequential(keys, runner, protocol, prog, finish, notify, exporter)
    prog.load_end = _load()
    return prog


def _load() -> float | None:
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


def _export_or_row(key: str, exporter: Callable[[str], ExportResult], protocol: Protocol,
                   finish: Callable[[Row], None]) -> ExportResult | None:
    try:
        return exporter(key)
    except Exception as e:  # noqa: BLE001 - an export failure is an error row
        finish(row_from_result(MeasureResult.failed(key, f"export failed: {type(e).__name__}: {e}"), 0,
                               float("nan"), protocol.cv_threshold))
        return None


def _sweep_sequential(keys: list[str], runner: Runner, protocol: Protocol, prog: SweepProgress,
                      finish: Callable[[Row], None], notify: Callable[[SweepProgress], None],
                      exporter: Callable[[str], ExportResult]) -> None:
    exported: dict[str, ExportResult] = {}

    def requests() -> Iterator[MeasureRequest]:
        for key in keys:
            prog.current = key
            notify(prog)
            exp = _export_or_row(key, exporter, protocol, finish)
            if exp is None:
                continue
            exported[key] = exp
            yield MeasureRequest(key, exp.path, exp.input_shape)

    for result in runner.measure_many(requests(), protocol):
        exp = exported[result.key]
        attempts = 1
        best = result
        while best.ok and summarize(best.samples_ms).cv > protocol.cv_threshold and attempts <= protocol.retries:
            attempts += 1
            prog.remeasured += attempts == 2
            again = runner.measure(MeasureRequest(result.key, exp.path, exp.input_shape), protocol)
            if again.ok and summarize(again.samples_ms).cv < summarize(best.samples_ms).cv:
                best = again
        finish(row_from_result(best, attempts, exp.max_abs_err, protocol.cv_threshold))


def row_from_rounds(key: str, rounds: list[MeasureResult], attempts: int, max_abs_err: float,
                    protocol: Protocol) -> Row:
    """One entry from its per-round results: median of round medians; noisy when the rounds spread more than
    ``cv_threshold`` (see :func:`profiler.measuring.stats.round_spread`); error when fewer than half the rounds succeeded."""
    ok = [r for r in rounds if r.ok]
    if len(ok) * 2 < max(1, len(rounds)):
        bad = next((r.error for r in rounds if not r.ok), None) or "no samples"
        return Row(key, attempts=attempts, status="error", error=bad, max_abs_err=max_abs_err,
                   variant=rounds[-1].variant if rounds else "")
    medians = [float(np.median(r.samples_ms)) for r in ok]
    pooled = [x for r in ok for x in r.samples_ms]
    s = summarize(pooled)
    status = "ok" if round_spread(medians) <= protocol.cv_threshold else "noisy"
    return Row(key, float(np.median(medians)), s.p10_ms, s.p90_ms, s.mean_ms, s.std_ms, s.cv, s.mad_outliers, s.n,
               ok[-1].calls_per_sample, attempts, status, ok[-1].variant, "", max_abs_err, tuple(pooled),
               board=str(ok[-1].info.get("board", "")))


def interleaved_rounds(keys: list[str], requests: dict[str, MeasureRequest], reference: MeasureRequest | None,
                       runner: Runner, protocol: Protocol, prog: SweepProgress,
                       notify: Callable[[SweepProgress], None]) -> dict[str, list[MeasureResult]]:
    """``protocol.rounds`` rounds over ``keys``: each the reference (when given) and then every key once, the
    order rotated by one each round. Returns every key's results, one per round."""
    per_round = protocol.per_round()
    out: dict[str, list[MeasureResult]] = {k: [] for k in keys}
    for r in range(protocol.rounds):
        shift = r % len(keys)
        order = keys[shift:] + keys[:shift]
        batch = ([reference] if reference is not None else []) + [requests[k] for k in order]
        prog.current = f"round {r + 1}/{protocol.rounds} of {len(keys)} keys"
        notify(prog)
        for i, res in enumerate(runner.measure_many(batch, per_round)):
            if reference is not None and i == 0:
                if res.ok:
                    prog.reference_ms.append(float(np.median(res.samples_ms)))
                else:
                    prog.reference_error = res.error or "no samples"
                continue
            out[batch[i].key].append(res)
    return out


def _sweep_interleaved(keys: list[str], runner: Runner, protocol: Protocol, prog: SweepProgress,
                       finish: Callable[[Row], None], notify: Callable[[SweepProgress], None],
                       exporter: Callable[[str], ExportResult]) -> None:
    if not keys:
        return
    try:
        ref_exp = exporter(REFERENCE_KEY)
        reference: MeasureRequest | None = MeasureRequest(REFERENCE_KEY, ref_exp.path, ref_exp.input_shape)
    except Exception as e:  # noqa: BLE001 - without a reference the verdict says so
        reference, prog.reference_error = None, f"export failed: {type(e).__name__}: {e}"
    step = max(1, protocol.chunk)
    for start in range(0, len(keys), step):
        exported: dict[str, ExportResult] = {}
        for key in keys[start:start + step]:
            prog.current = key
            notify(prog)
            exp = _export_or_row(key, exporter, protocol, finish)
            if exp is not None:
                exported[key] = exp
        if not exported:
            continue
        chunk = list(exported)
        requests = {k: MeasureRequest(k, e.path, e.input_shape) for k, e in exported.items()}
        results = interleaved_rounds(chunk, requests, reference, runner, protocol, prog, notify)
        rows = {k: row_from_rounds(k, results[k], 1, exported[k].max_abs_err, protocol) for k in chunk}
        for attempt in range(2, protocol.retries + 2):
            noisy = [k for k in chunk if rows[k].status == "noisy"]
            if not noisy:
                break
            if attempt == 2:
                prog.remeasured += len(noisy)
            again = interleaved_rounds(noisy, requests, reference, runner, protocol, prog, notify)
            for k in noisy:
                row = row_from_rounds(k, again[k], attempt, exported[k].max_abs_err, protocol)
                better = row.status != "error" and _spread_of(again[k]) < _spread_of(results[k])
                if better:
                    results[k] = again[k]
                rows[k] = row if better else _with_attempts(rows[k], attempt)
        for k in chunk:
            finish(rows[k])


def _spread_of(results: list[MeasureResult]) -> float:
    medians = [float(np.median(r.samples_ms)) for r in results if r.ok]
    return round_spread(medians) if medians else float("inf")


def _with_attempts(row: Row, attempts: int) -> Row:
    return replace(row, attempts=attempts)


def sweep_validity(prog: SweepProgress, protocol: Protocol) -> Validity:
    """VALID unless the reference op drifted more than ``drift_threshold`` over the sweep, could not be timed, or
    more than ``max_noisy_fraction`` of the measured entries are noisy."""
    usable = [r for r in prog.rows if r.status != "error"]
    noisy = sum(r.status == "noisy" for r in usable)
    details: dict[str, Any] = {"entries": len(usable), "noisy": noisy, "errors": prog.errors,
                               "rounds": protocol.rounds, "reference": REFERENCE_KEY if protocol.interleaved else None,
                               "reference_ms": [round(x, 6) for x in prog.reference_ms], "reference_drift": None,
                               "load_start": prog.load_start, "load_end": prog.load_end, "cores": os.cpu_count(),
                               "checked": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
    reasons: list[str] = []
    if protocol.interleaved:
        if prog.reference_error and not prog.reference_ms:
            reasons.append(f"the reference op could not be timed ({prog.reference_error[:120]}); no drift check")
        elif prog.reference_ms:
            drift = drift_ratio(prog.reference_ms)
            details["reference_drift"] = drift
            if drift > protocol.drift_threshold:
                reasons.append(f"the reference op drifted {drift * 100:.0f} % over the sweep (limit "
                               f"{protocol.drift_threshold * 100:.0f} %): the machine's speed changed while timing")
    if usable and noisy / len(usable) > protocol.max_noisy_fraction:
        reasons.append(f"{noisy} of {len(usable)} entries are noisy (limit {protocol.max_noisy_fraction * 100:.0f} "
                       f"%): too busy to time reliably")
    if reasons:
        load = f"load average {prog.load_end:.1f} on {os.cpu_count()} cores" if prog.load_end is not None else ""
        fix = "stop other jobs (a 1-thread device such as cpu-1t suffers least), then re-measure with --fresh"
        reasons.append(f"{load + '; ' if load else ''}{fix}")
    return Validity(INVALID if reasons else VALID, tuple(reasons), details)


def write_validity(table: Path, validity: Validity, fresh: bool) -> Validity:
    """Store the sweep's verdict in the table header (merged with an earlier INVALID one unless ``fresh``)."""
    meta = read_meta(table)
    if not fresh:
        validity = validity.merged(Validity.from_dict(meta.get("validity")))
    meta["validity"] = validity.to_dict()
    atomic_write_text(meta_path(table), json.dumps(meta, indent=2, sort_keys=True))
    return validity


def measure_space(device: Device, space: Space, runner: Runner, out: Path, *, fresh: bool = False,
                  only: str | None = None, batch: int = 1, mixed: bool = False,
                  on_progress: Callable[[SweepProgress], None] | None = None) -> SweepSummary:
    """Measure every key of ``space`` missing from the table at ``out`` (all of them with ``fresh``).

    Resuming a table under another protocol or fingerprint is a :class:`TableError` unless ``mixed``. A
    :class:`profiler.measuring.farm.Farm` as ``runner`` spreads the keys over its boards (rows then record their board)."""
    from profiler.measuring.farm import Farm, farm_sweep

    protocol = device.protocol
    t0 = time.perf_counter()
    keys = select_keys(space.candidate_keys(batch), only)
    farm = runner if isinstance(runner, Farm) else None
    with TableWriter(out, table_meta(device, space, runner, protocol, batch), fresh=fresh,
                     mixed=mixed, boards=farm is not None) as writer:
        todo = [k for k in keys if k not in writer.existing]
        dropped = writer.dropped_calibration
        if farm is not None:
            prog, verdict = farm_sweep(todo, farm, protocol, writer, on_progress)
        else:
            prog = sweep(todo, runner, protocol, writer, on_progress)
            verdict = sweep_validity(prog, protocol)
    validity = write_validity(out, verdict, fresh) if todo else None
    rows = tuple(prog.rows)
    return SweepSummary(out, len(todo), len(keys) - len(todo), sum(r.status == "ok" for r in rows), prog.noisy,
                        prog.errors, prog.remeasured, time.perf_counter() - t0, rows, validity, dropped,
                        dict(farm.lost) if farm is not None else {})
