"""A sweep: keys -> export -> runner -> rows appended to a table (resumable, failures are rows)."""

from __future__ import annotations

import datetime as dt
import fnmatch
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from .devices import Device
from .export import OPSET, ExportResult, export_key
from .keys import KEY_VERSION
from .protocol import Protocol
from .runners import MeasureRequest, MeasureResult, Runner
from .spaces import Space
from .stats import summarize
from .tables import SCHEMA_VERSION, Row, TableWriter


@dataclass
class SweepProgress:
    total: int
    done: int = 0
    noisy: int = 0
    errors: int = 0
    remeasured: int = 0
    current: str = ""
    rows: list[Row] = field(default_factory=list)


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


def row_from_result(result: MeasureResult, attempts: int, max_abs_err: float, cv_threshold: float) -> Row:
    if not result.ok:
        return Row(result.key, attempts=attempts, status="error", variant=result.variant,
                   error=result.error or "no samples", max_abs_err=max_abs_err)
    s = summarize(result.samples_ms)
    status = "ok" if s.cv <= cv_threshold else "noisy"
    return Row(result.key, s.median_ms, s.p10_ms, s.p90_ms, s.mean_ms, s.std_ms, s.cv, s.mad_outliers, s.n,
               result.calls_per_sample, attempts, status, result.variant, "", max_abs_err, tuple(result.samples_ms))


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
    return [k for k in keys if fnmatch.fnmatchcase(k, only) or fnmatch.fnmatchcase(k.split("|")[1], only)]


def sweep(keys: Iterable[str], runner: Runner, protocol: Protocol, writer: TableWriter,
          on_progress: Callable[[SweepProgress], None] | None = None,
          exporter: Callable[[str], ExportResult] = export_key) -> SweepProgress:
    """Measure ``keys`` (in order), appending each finished row; the CV rule re-measures noisy entries."""
    keys = list(keys)
    prog = SweepProgress(total=len(keys))
    notify = on_progress or (lambda p: None)
    exported: dict[str, ExportResult] = {}

    def finish(row: Row) -> None:
        writer.append(row)
        prog.done += 1
        prog.rows.append(row)
        prog.noisy += row.status == "noisy"
        prog.errors += row.status == "error"
        notify(prog)

    def requests() -> Iterator[MeasureRequest]:
        for key in keys:
            prog.current = key
            notify(prog)
            try:
                exp = exporter(key)
            except Exception as e:
                finish(row_from_result(MeasureResult.failed(key, f"export failed: {type(e).__name__}: {e}"), 0,
                                       float("nan"), protocol.cv_threshold))
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
    return prog


def measure_space(device: Device, space: Space, runner: Runner, out: Path, *, fresh: bool = False,
                  only: str | None = None, batch: int = 1,
                  on_progress: Callable[[SweepProgress], None] | None = None) -> SweepSummary:
    """Measure every key of ``space`` missing from the table at ``out`` (all of them with ``fresh``)."""
    protocol = device.protocol
    t0 = time.perf_counter()
    keys = select_keys(space.candidate_keys(batch), only)
    with TableWriter(out, table_meta(device, space, runner, protocol, batch), fresh=fresh) as writer:
        todo = [k for k in keys if k not in writer.existing]
        prog = sweep(todo, runner, protocol, writer, on_progress)
    rows = tuple(prog.rows)
    return SweepSummary(out, len(todo), len(keys) - len(todo), sum(r.status == "ok" for r in rows), prog.noisy,
                        prog.errors, prog.remeasured, time.perf_counter() - t0, rows)
