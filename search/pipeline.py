"""``hwnas run``: the main job in one call.

measure the table (if missing) -> search with the ``hwnas`` preset -> derive a family -> for each member: retrain,
export to ONNX, measure end to end on the device -> one table + a Pareto plot. Everything lands in one output
directory (its layout is :class:`search.rundir.PipelineDir`'s)::

    OUT/search/                 the search run (config.json, metrics.jsonl, checkpoint.pt, control.pt)
    OUT/family/                 member-NN.json (architectures) + summary.csv, as `hwnas derive --family` writes
    OUT/members/member-NN/      weights.safetensors, curve.jsonl, train.json, model.onnx, result.json
    OUT/family.csv, family.json the results table
    OUT/pareto.png, curves.png  plots

Every finished member's ``result.json`` is written as soon as it is done, and a rerun with the same ``--out`` skips
finished stages and members, so Ctrl-C loses at most the member in flight.

Several devices (``--device A --device B``): each device's table is measured and calibrated, the one search holds
every table in its penalty (``latency``, ``latency:1``, ...), the family's front is over every device's latency,
and each member, retrained once, is timed on every device (``measured_ms_by_device`` and ``error_pct_by_device``
beside ``predicted_ms_by_device`` in its row; ``measured_ms`` stays the first device's).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from profiler.errors import UserError
from profiler.fileio import read_jsonl
from profiler.latency.tables import atomic_write_text, default_table_path, load_table, read_json_or_none
from profiler.measuring.devices import Device, get_device
from profiler.measuring.protocol import Protocol, Validity, validity_line
from profiler.spaces.arch import Arch, export_arch, load_arch
from profiler.spaces.keys import key_label
from profiler.spaces.space import Space, get_space

from .report import FAMILY_COLUMNS, error_pct, format_table, plot_curves, plot_pareto
from .retrain import TrainConfig, retrain
from .rundir import PipelineDir, RunDir

# fast protocol for --quick tables and measurements: fewer, shorter samples (documented in the output)
QUICK_PROTOCOL = Protocol(warmup_s=0.02, min_samples=5, min_seconds=0.03, max_seconds=1.0, retries=0)


@dataclass(frozen=True)
class RunConfig:
    device: str = "cpu-1t"  # measured: stable whole-network timing on a shared 2-core host (hwprof doctor)
    space: str = "fbnet-cifar:input_size=16,width=0.5"
    data: str = "digits"  # the CLI passes fashion-mnist when it is installed (search.data.default_data)
    data_limit: int | None = None  # fashion-mnist: a seeded N of the training set (and N test images)
    data_dir: str | None = None
    search_epochs: int = 10
    family: int = 6
    retrain_epochs: int = 5  # with the 2250 training images of the default, ~10 min in all on 2 cores
    batch_size: int = 64
    seed: int = 0
    table: str | None = None  # None: tables/DEVICE/SPACE.csv (--quick: OUT/table.csv)
    quick: bool = False
    train_limit: int | None = None  # search: first N training samples
    max_train_batches: int | None = None  # retrain: batches per epoch
    measure_protocol: Protocol | None = None  # None: the table's protocol
    devices_path: str | None = None
    torch_threads: int = 1  # search/retrain threads: these small nets train fastest on one (and leave a core free)
    calibrate: bool = True  # fit the table's calibration on random whole networks (hwprof verify) when it has none
    verify_n: int = 5  # held-out random networks that check the calibration
    calib_n: int = 16  # random networks the calibration is fitted on
    more_devices: tuple[str, ...] = ()  # hwnas run --device A --device B: B... condition the one search too
    more_tables: tuple[str, ...] = ()  # their tables, in order (missing: the default path, as for the first)

    @property
    def devices(self) -> tuple[str, ...]:
        """Every device of the run (members are timed on each; the first's figures are the rows' plain columns)."""
        return (self.device, *self.more_devices)

    def table_path(self, n: int, out: Path) -> Path:
        """Device ``n``'s table: ``--table`` (its n-th), else tables/DEVICE/SPACE.csv (--quick: OUT/table.csv for
        the first device, OUT/table-DEVICE.csv for the others)."""
        given = (self.table, *self.more_tables)
        if n < len(given) and given[n]:
            return Path(given[n])
        if self.quick:
            return out / ("table.csv" if n == 0 else f"table-{self.devices[n]}.csv")
        return default_table_path(self.devices[n], get_space(self.space).spec)

    @classmethod
    def quick_defaults(cls, **kw: Any) -> "RunConfig":
        base = dict(space="fbnet-cifar:input_size=16,width=0.25", search_epochs=6, family=4, retrain_epochs=4,
                    quick=True, verify_n=3, calib_n=12)
        base.update({k: v for k, v in kw.items() if v is not None})
        return cls(**base)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        for k in ("more_devices", "more_tables"):  # a one-device run.json reads as before
            if not d[k]:
                del d[k]
        return json.loads(json.dumps(d, default=str))


@dataclass
class Event:
    """A progress report: ``stage`` (table | search | derive | member), ``done`` of ``total`` and a note."""

    stage: str
    done: int
    total: int | None
    note: str = ""
    info: dict[str, Any] = field(default_factory=dict)


OnEvent = Callable[[Event], None]


class PipelineError(UserError, RuntimeError):
    """A stage failed in a way the user must fix; one line."""


@dataclass
class RunResult:
    out: Path
    rows: list[dict[str, Any]]
    table_path: Path
    notes: list[str]
    pareto_png: Path | None
    curves_png: Path | None
    interrupted: bool = False
    wall_s: float = 0.0
    stage_s: dict[str, float] = field(default_factory=dict)


def ensure_table(cfg: RunConfig, device: Device, space: Space, out: Path, on_event: OnEvent,
                 notes: list[str], path: Path | None = None) -> Path:
    """``path`` (default: the first device's, :meth:`RunConfig.table_path`) when it holds every key, else measured
    (on every board of a farm device in parallel, as ``hwprof measure`` does)."""
    from profiler.measuring.measure import measure_space

    path = path or cfg.table_path(0, out)
    if path.is_file():
        table = load_table(path, device=device.name, space=space.spec)
        missing = table.missing(space.candidate_keys(table.batch))
        if not missing:
            notes.append(f"table {path}: present ({len(table.rows)} entries), not re-measured")
            notes.append(f"table validity: {validity_line(table.meta)}")
            on_event(Event("table", 1, 1, "present"))
            return path
    dev = device
    if cfg.quick:
        dev = dataclasses.replace(device, protocol=QUICK_PROTOCOL)
        notes.append(f"--quick: table measured with a fast protocol ({_fmt_protocol(QUICK_PROTOCOL)})")
    runner = sweep_runner(dev)
    try:
        def prog(p: Any) -> None:
            label = key_label(p.current)  # a key, or "round i/n of k keys" in an interleaved sweep
            on_event(Event("table", p.done, p.total, label[0] if label else p.current))

        s = measure_space(dev, space, runner, path, on_progress=prog)
    finally:
        runner.close()
    notes.append(f"table {path}: measured {s.measured} entries ({s.errors} errors) in {s.wall_s:.0f} s"
                 + _boards_note(runner, s.lost_boards))
    notes.append(f"table validity: {validity_line(load_table(path).meta)}")
    if s.errors:
        raise PipelineError(f"{path}: {s.errors} table entries failed to measure (e.g. "
                            f"{next(r for r in s.rows if r.status == 'error').error}); see hwprof show {path}")
    return path


def sweep_runner(device: Device) -> Any:
    """The runner of a table sweep on ``device``: a :class:`profiler.measuring.farm.Farm` (one runner and session per
    board) when the device is a pool or its ``rpc.boards`` asks for several, else its one runner -- ``hwprof
    measure``'s path. Whole-model timing (verify, members) stays on one board: see README, *The family*."""
    from profiler.measuring.farm import farm_size, make_farm
    from profiler.measuring.runners import make_runner

    runner = make_runner(device)
    try:
        return make_farm(device, farm_size(device), make_runner, first=runner)
    except BaseException:
        runner.close()
        raise


def _boards_note(runner: Any, lost: dict[str, str]) -> str:
    """``, on N boards in parallel (a, b)`` for a farm sweep, with the boards lost mid-sweep; empty for one board."""
    from profiler.measuring.farm import Farm

    if not isinstance(runner, Farm):
        return ""
    gone = "".join(f"; board {b} lost: {why}" for b, why in lost.items())
    return f", on {len(runner.boards)} boards in parallel ({', '.join(b.label for b in runner.boards)}){gone}"


POOR_CALIBRATION_PCT = 10.0  # held-out mean abs error above which hwnas run warns that predictions are rough


def ensure_calibration(cfg: RunConfig, device: Device, space: Space, table_path: Path, out: Path, on_event: OnEvent,
                       notes: list[str]) -> None:
    """Whole networks vs the table's sum: fit ``<table>.calib.json`` on random networks (``hwprof verify``), so
    predictions include what per-op entries miss (session overhead, fusion across blocks).

    The fit is stored only when it is sane: every architecture of the space keeps a positive prediction, and the
    held-out networks are predicted better than by the raw sum. Otherwise the raw table stays in use and the output
    says why."""
    from profiler.latency.calibrate import write_calibration
    from profiler.latency.verify import run_verify
    from profiler.measuring.runners import make_runner

    table = load_table(table_path)
    if table.calibration:
        notes.extend(calibration_notes(device.name, table_path, table.calibration, stored_now=False))
        return
    dev = dataclasses.replace(device, protocol=QUICK_PROTOCOL) if cfg.quick else device
    runner = make_runner(dev)
    try:
        rep = run_verify(dev, space, table, runner, out / "verify", n=cfg.verify_n, calib_n=cfg.calib_n,
                         seed=cfg.seed, write_calib=False,
                         on_progress=lambda p: on_event(Event("verify", p.done, p.total, p.current)))
    finally:
        runner.close()
    s = rep.summary
    verdict = Validity.from_dict(s.validity)
    if verdict is not None:
        notes.append(f"verify validity: {verdict.line()}")
    raw, cal = s.raw or {}, s.calibrated or {}
    msg = (f"calibration: {s.n_calib} random networks fitted, {s.n_test} held out; table sum off by "
           f"{raw.get('mape_pct', float('nan')):.1f} % (mean abs)")
    reason = ""
    if not rep.calibration:
        reason = "no calibration fitted"
    else:
        msg += f", calibrated ({cal.get('model')}) {cal.get('mape_pct', float('nan')):.1f} %"
        lowest = table.model(space, rep.calibration).lowest()
        if not lowest > 0:
            reason = (f"REJECTED: it predicts {lowest:.4f} ms for the cheapest architecture (too few or too noisy "
                      f"networks)")
        elif not cal.get("mape_pct", float("inf")) < raw.get("mape_pct", float("inf")):
            reason = "REJECTED: no better than the raw sum on held-out networks"
    if reason:
        notes.append(f"{msg}; {reason}; raw table sums used")
        if raw.get("mape_pct", 0.0) > POOR_CALIBRATION_PCT:
            notes.append(_poor_warning(device.name, "the raw table", raw["mape_pct"]))
        return
    write_calibration(table_path, rep.calibration)
    notes.extend(calibration_notes(device.name, table_path, rep.calibration, stored_now=True))


def calibration_notes(device: str, table_path: Path, calib: dict[str, Any], stored_now: bool) -> list[str]:
    """The calibration's figures (from ``<table>.calib.json``, so a rerun prints the same) and, when it is poor,
    the WARNING."""
    fit = calib.get("fit") or {}
    before = (fit.get("held_out_before") or {}).get("mape_pct", float("nan"))
    after = (fit.get("held_out_after") or {}).get("mape_pct", float("nan"))
    where = (f"stored in {table_path.with_suffix('.calib.json').name}" if stored_now else
             f"fitted earlier ({fit.get('fitted', 'unknown time')}) and kept; hwprof verify refits it")
    lines = [f"calibration: {fit.get('n_fit', '?')} random networks fitted, {fit.get('n_test', '?')} held out; "
             f"table sum off by {before:.1f} % (mean abs), calibrated ({calib.get('model')}) {after:.1f} %; {where}"]
    if after > POOR_CALIBRATION_PCT:
        lines.append(_poor_warning(device, "even the calibrated table", after))
    return lines


def _poor_warning(device: str, what: str, mape: float) -> str:
    return (f"WARNING: on device {device} {what} misses held-out whole networks by {mape:.1f} % (mean abs): "
            f"predicted latencies and budgets are rough here. Usual causes: other jobs on the machine, or several "
            f"intra-op threads on a small CPU (tiny per-op graphs pay thread-pool costs a whole network does not) - "
            f"a 1-thread device (cpu-1t) on a quiet machine predicts within a few %")


def _fmt_protocol(p: Protocol) -> str:
    return ", ".join(f"{k}={v}" for k, v in p.to_dict().items())


def _stage_search(cfg: RunConfig, space: Space, tables: list[Path], run_dir: RunDir, on_event: OnEvent,
                  notes: list[str]) -> None:
    """The ``hwnas`` preset's search; with several devices its penalty holds every table (``latency:N``)."""
    from .config import idle_tables, preset
    from .train import search

    if run_dir.finished:
        notes.append(f"search {run_dir.path}: finished earlier, reused")
        on_event(Event("search", 1, 1, "reused"))
        return
    resume = run_dir.started
    scfg = preset("hwnas", space=space.spec, tables=tuple(str(t) for t in tables), data=cfg.data,
                  epochs=cfg.search_epochs, data_dir=cfg.data_dir, data_limit=cfg.data_limit, seed=cfg.seed,
                  batch_size=cfg.batch_size, train_limit=cfg.train_limit)
    if len(tables) > 1:
        scfg.control.cost_terms = (*scfg.control.cost_terms, *(f"latency:{n}" for n in idle_tables(scfg)))
        notes.append(f"search: conditioned on {len(tables)} devices ({', '.join(cfg.devices)}): cost terms "
                     f"{', '.join(scfg.control.cost_terms)}")

    def prog(e: dict[str, Any]) -> None:
        if e.get("event") == "step":
            steps = int(e["steps"])
            note = f"epoch {e['epoch'] + 1}/{e['epochs']}" + (f" loss {e['loss']:.3f}" if "loss" in e else "")
            lat = e.get("E_latency")
            if isinstance(lat, (int, float)):
                note += f" E[lat] {lat:.3f} ms"
            on_event(Event("search", e["epoch"] * steps + int(e["step"]), e["epochs"] * steps, note))

    hist = search(scfg, run_dir.path, resume=resume, on_progress=prog)
    if hist and "arch_max_prob" in hist[-1]:
        k = len(space.ops)
        notes.append(f"search: arch_max_prob {hist[-1]['arch_max_prob']:.3f} at the last epoch (uniform {1 / k:.3f}, "
                     f"decided 1), entropy {hist[-1]['arch_entropy']:.3f} nats (uniform {math.log(k):.3f})")
    if resume:
        notes.append(f"search {run_dir.path}: resumed an interrupted run")


def _stage_derive(cfg: RunConfig, run_dir: RunDir, fam_dir: Path, on_event: OnEvent,
                  notes: list[str]) -> list[Path]:
    from .derive import Deriver, derive_family, family_items, family_message, write_derived
    from .run import load_run

    existing = sorted(fam_dir.glob("member-*.json"))
    stats_path = fam_dir / "stats.json"
    if existing and (fam_dir / "summary.csv").is_file():
        old = read_json_or_none(stats_path) or {}
        notes.extend(old.get("notes", []))
        notes.append(f"family {fam_dir}: derived earlier ({len(existing)} members), reused")
        return existing
    run = load_run(run_dir.path)
    cands, stats = derive_family(Deriver(run), cfg.family)
    items = family_items(run, cands, stats, str(run_dir.path))
    write_derived(items, fam_dir)
    lines = family_message(stats, cfg.family, len(items))
    atomic_write_text(stats_path, json.dumps({**stats, "notes": lines}, indent=2) + "\n")
    notes.extend(lines)
    on_event(Event("derive", 1, 1, f"{len(items)} members"))
    return [it.path for it in items if it.path is not None]


def _family_notes(fam_dir: Path) -> dict[str, str]:
    """member name -> the note summary.csv gives it (e.g. not Pareto-optimal)."""
    path = fam_dir / "summary.csv"
    if not path.is_file():
        return {}
    with path.open(newline="") as f:
        return {r["name"]: r.get("note") or "" for r in csv.DictReader(f)}


@dataclass(frozen=True)
class Timing:
    """One whole model timed on one device: the median (None when it failed), the error, the sample count."""

    device: str
    median_ms: float | None
    error: str | None
    samples: int


def time_model(onnx_path: Path, device: Device, protocol: Protocol) -> Timing:
    """Time an exported model end to end on ``device`` (``hwprof measure-model``'s path)."""
    from profiler.measuring.model_measure import measure_model
    from profiler.measuring.stats import summarize

    res = measure_model(onnx_path, device, protocol)
    return Timing(device.name, summarize(res.samples_ms).median_ms if res.ok else None,
                  None if res.ok else str(res.error), len(res.samples_ms))


def run_member(arch: Arch, name: str, member_dir: Path, device: Device, protocol: Protocol, tcfg: TrainConfig,
               splits: Any = None, on_epoch: Callable[[dict[str, Any]], None] | None = None,
               extra: dict[str, Any] | None = None,
               more: tuple[tuple[Device, Protocol], ...] = ()) -> dict[str, Any]:
    """Retrain, export and time one architecture on ``device`` (and on every device of ``more``, each with its
    protocol); returns (and writes) its result row. The first device's figures are ``measured_ms`` and
    ``error_pct``; with ``more``, ``measured_ms_by_device`` and ``error_pct_by_device`` hold every device's."""
    done = member_dir / "result.json"
    if done.is_file():
        row = json.loads(done.read_text())
        if row.get("digest") == arch.digest():
            return row
    tr = retrain(arch, tcfg, member_dir, splits=splits, on_epoch=on_epoch)
    onnx_path, max_err = export_arch(arch, member_dir / "model.onnx", tr.weights)
    timed = [time_model(onnx_path, d, p) for d, p in ((device, protocol), *more)]
    first = timed[0]
    row = {"member": name, "digest": arch.digest(), "ops": " ".join(arch.choices), "params": arch.params,
           "flops": arch.flops, "predicted_ms": arch.predicted_ms, "measured_ms": first.median_ms,
           "error_pct": error_pct(arch.predicted_ms, first.median_ms), "test_acc": tr.test_acc,
           "control": arch.control, "status": _measure_status(timed),
           "onnx_max_abs_err": max_err, "train_s": tr.wall_s, "samples": first.samples, **(extra or {})}
    if more:
        row.update(_by_device(arch, timed))
    atomic_write_text(done, json.dumps(row, indent=2) + "\n")
    return row


def _measure_status(timed: list[Timing]) -> str:
    """ok, or the first failure (``measure failed: ERROR`` on the first device, ``... on DEVICE: ERROR`` after)."""
    for n, t in enumerate(timed):
        if t.error is not None:
            return f"measure failed: {t.error}" if n == 0 else f"measure failed on {t.device}: {t.error}"
    return "ok"


def _by_device(arch: Arch, timed: list[Timing]) -> dict[str, Any]:
    """Measured and prediction error per device (the prediction is the architecture's for that device's table)."""
    preds = list(arch.predicted_ms_by_device.values())
    pred = {t.device: arch.predicted_ms_by_device.get(t.device, preds[n] if n < len(preds) else None)
            for n, t in enumerate(timed)}
    return {"measured_ms_by_device": {t.device: t.median_ms for t in timed},
            "error_pct_by_device": {t.device: error_pct(pred[t.device], t.median_ms) for t in timed},
            "samples_by_device": {t.device: t.samples for t in timed}}


BY_DEVICE_COLUMNS = ("predicted_ms_by_device", "measured_ms_by_device", "error_pct_by_device")  # several devices


def write_family(out: Path, rows: list[dict[str, Any]]) -> None:
    """family.csv (FAMILY_COLUMNS, then the per-device columns when a row has them) and family.json."""
    cols = FAMILY_COLUMNS + [c for c in BY_DEVICE_COLUMNS if any(c in r for r in rows)]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(cols)
    for r in rows:
        w.writerow(["" if r.get(c) is None else (json.dumps(r[c]) if isinstance(r[c], dict) else r[c])
                    for c in cols])
    atomic_write_text(out / "family.csv", buf.getvalue())
    atomic_write_text(out / "family.json", json.dumps(rows, indent=2) + "\n")


def make_plots(out: Path, rows: list[dict[str, Any]], title: str) -> tuple[Path | None, Path | None]:
    pareto = plot_pareto(rows, out / "pareto.png", title)
    run = PipelineDir(out)
    members = {p.parent.name: read_jsonl(p) for p in run.member_files("curve.jsonl")}
    curves = plot_curves(read_jsonl(run.search.metrics), members, out / "curves.png", title)
    return pareto, curves


# Seconds per unit of work, from `make run` on a 2-core AMD EPYC VM (2026-12-02: fbnet-cifar:input_size=16,width=0.5,
# Fashion-MNIST --data-limit 3000, 1 torch thread, protocol rounds 5): table 167 s / 111 keys; calibration 51 s / 26
# networks; search 270 s / (10 epochs x 2700 samples); members 198 s / (6 members x 8 epochs x 2700 samples, plus
# export and timing).
RATES = {"table_key_s": 1.5, "network_s": 2.0, "search_sample_s": 0.0100, "retrain_sample_s": 0.0014,
         "member_s": 3.0}
TRAIN_SAMPLES = {"digits": 1258, "mnist": 51000, "fashion-mnist": 54000, "cifar10": 42500}  # training split sizes


def train_samples(data: str, data_limit: int | None) -> int | None:
    """Training images a run sees: the split's size, or ``data_limit`` less its 10 % validation share."""
    n = TRAIN_SAMPLES.get(data)
    if n is not None and data_limit:
        n = min(n, data_limit - max(1, data_limit // 10))
    return n


def estimate_run(cfg: RunConfig, out: Path) -> tuple[float | None, dict[str, float]]:
    """About how long ``hwnas run`` will take, from its plan and what ``out`` already holds: (seconds, per stage).

    Per-unit rates are those of the README's reference run, scaled by the space's input pixels and width; stages
    already finished (table, calibration, search, members) cost nothing. None when the data's size is unknown."""
    sp = get_space(cfg.space)
    d = dict(sp.params) if hasattr(sp, "params") else {}
    size = float(d.get("input_size", 16)) / 16.0
    scale = size * size * (float(d.get("width", 0.5)) / 0.5) ** 2
    if cfg.quick:
        scale *= 0.5  # the fast protocol and a smaller space
    parts: dict[str, float] = {}
    for n in range(len(cfg.devices)):
        table = cfg.table_path(n, out)
        if not table.is_file():
            parts["table"] = parts.get("table", 0.0) + RATES["table_key_s"] * len(set(sp.candidate_keys()))
        if cfg.calibrate and not table.with_suffix(".calib.json").is_file():
            parts["calibrate"] = parts.get("calibrate", 0.0) + RATES["network_s"] * (cfg.verify_n + cfg.calib_n)
    n = train_samples(cfg.data, cfg.data_limit)
    if n is None:
        return None, parts
    run = PipelineDir(out)
    if not run.search.finished:
        parts["search"] = RATES["search_sample_s"] * scale * cfg.search_epochs * min(n, cfg.train_limit or n)
    done = len(run.member_files("result.json"))
    left = max(0, cfg.family - done)
    batches = n / cfg.batch_size if cfg.max_train_batches is None else min(n / cfg.batch_size, cfg.max_train_batches)
    parts["members"] = left * (RATES["retrain_sample_s"] * scale * cfg.retrain_epochs * batches * cfg.batch_size
                               + RATES["member_s"])
    return sum(parts.values()), parts


def estimate_line(cfg: RunConfig, out: Path) -> str:
    """One line for the start of ``hwnas run``: about how long, and where the time goes."""
    total, parts = estimate_run(cfg, out)
    what = ", ".join(f"{k} ~{v / 60:.1f} min" for k, v in parts.items() if v >= 1)
    if total is None:
        return f"estimate: {what or 'nothing to measure'}; search and retraining on --data {cfg.data}: unknown size"
    if total < 60:
        return f"estimate: about {total:.0f} s on a 2-core machine ({what or 'everything finished earlier'})"
    return f"estimate: about {total / 60:.0f} min on a 2-core machine ({what}); a busy machine takes longer"


def run_pipeline(cfg: RunConfig, out: Path, on_event: OnEvent | None = None) -> RunResult:
    """The whole job; see the module docstring. Ctrl-C returns the finished members (``interrupted=True``)."""
    import torch

    threads = torch.get_num_threads()
    if cfg.torch_threads > 0:
        torch.set_num_threads(cfg.torch_threads)
    try:
        with PipelineDir(out).lock():
            return _run_pipeline(cfg, PipelineDir(out), on_event or (lambda e: None))
    finally:
        torch.set_num_threads(threads)


def _run_pipeline(cfg: RunConfig, run: PipelineDir, on_event: OnEvent) -> RunResult:
    """The stages in order (tables, search, derive, members), then the family table, plots and summary."""
    out = run.path
    out.mkdir(parents=True, exist_ok=True)
    notes: list[str] = []
    t0 = time.perf_counter()
    stage_s: dict[str, float] = {}
    devices, space = _open_devices(cfg)
    _check_run_settings(cfg, run)

    table_paths = _stage_tables(cfg, devices, space, out, on_event, notes, stage_s)
    table_path = table_paths[0]
    tables = [load_table(p) for p in table_paths]
    table = tables[0]
    protocols = [cfg.measure_protocol or Protocol.from_dict(t.meta.get("protocol", {}), f"{p} protocol")
                 for t, p in zip(tables, table_paths)]
    if cfg.quick and cfg.measure_protocol is None:
        notes.append("--quick: whole models measured with the table's fast protocol")

    t = time.perf_counter()
    _stage_search(cfg, space, table_paths, run.search, on_event, notes)
    stage_s["search"] = time.perf_counter() - t
    t = time.perf_counter()
    paths = _stage_derive(cfg, run.search, run.family, on_event, notes)
    stage_s["derive"] = time.perf_counter() - t

    rows, interrupted = _stage_members(cfg, run, paths, table, space, devices, protocols, on_event, notes, stage_s)
    write_family(out, rows)
    title = f"{space.spec} on {'+'.join(cfg.devices)} ({cfg.data})"
    pareto, curves = make_plots(out, rows, title)
    res = RunResult(out, rows, table_path, notes, pareto, curves, interrupted, time.perf_counter() - t0, stage_s)
    atomic_write_text(run.summary, "\n".join(notes) + "\n\n" + format_table(rows) + "\n")
    return res


def _check_run_settings(cfg: RunConfig, run: PipelineDir) -> None:
    """Refuse an ``out`` that holds a run with other settings; record this run's settings in run.json."""
    out, prev = run.path, run.settings
    if prev.is_file():
        old = read_json_or_none(prev)
        if old != cfg.to_dict():
            diff = sorted(k for k in cfg.to_dict() if not isinstance(old, dict) or old.get(k) != cfg.to_dict()[k])
            raise PipelineError(f"{out} holds a run with other settings ({', '.join(diff[:4])}); rerun it with the "
                                f"same options to continue, or choose another --out")
    atomic_write_text(prev, json.dumps(cfg.to_dict(), indent=2) + "\n")


def _stage_members(cfg: RunConfig, run: PipelineDir, paths: list[Path], table, space: Space, devices: list[Device],
                   protocols: list[Protocol], on_event: OnEvent, notes: list[str],
                   stage_s: dict[str, float]) -> tuple[list[dict[str, Any]], bool]:
    """Retrain and export each family member, and time it on every device of the run (each with its protocol);
    (rows, interrupted by Ctrl-C)."""
    from .retrain import load_splits

    tcfg = TrainConfig(data=cfg.data, data_dir=cfg.data_dir, data_limit=cfg.data_limit, epochs=cfg.retrain_epochs,
                       batch_size=cfg.batch_size, seed=cfg.seed, max_train_batches=cfg.max_train_batches)
    archs = [load_arch(p) for p in paths]
    fam_notes = _family_notes(run.family)
    splits = load_splits(archs[0], tcfg) if archs else None
    rows: list[dict[str, Any]] = []
    interrupted = False
    t = time.perf_counter()
    try:
        for i, (p, arch) in enumerate(zip(paths, archs)):
            name = p.stem
            on_event(Event("member", i, len(paths), f"{name}: retrain, export, measure"))

            def on_epoch(rec: dict[str, Any], i: int = i, name: str = name) -> None:
                on_event(Event("member", i, len(paths), f"{name}: epoch {rec['epoch']}/{tcfg.epochs} "
                                                         f"val {rec['val_acc'] * 100:.1f} %"))

            raw = table.model(space, None).exact(arch.choices)
            extra = {"predicted_raw_ms": raw, "calibrated": bool(table.calibration), "note": fam_notes.get(name, ""),
                     **({"predicted_ms_by_device": arch.predicted_ms_by_device} if len(devices) > 1 else {})}
            rows.append(run_member(arch, name, run.member(name), devices[0], protocols[0], tcfg, splits, on_epoch,
                                   extra, more=tuple(zip(devices[1:], protocols[1:]))))
            write_family(run.path, rows)
            on_event(Event("member", i + 1, len(paths), f"{name} done"))
    except KeyboardInterrupt:
        interrupted = True
        notes.append(f"interrupted: {len(rows)} of {len(paths)} members finished and kept; rerun the same "
                     f"command to continue")
    stage_s["members"] = time.perf_counter() - t
    if len(devices) > 1:
        notes.append(device_errors_line(rows, [d.name for d in devices]))
    return rows, interrupted


def device_errors_line(rows: list[dict[str, Any]], devices: list[str]) -> str:
    """Measured vs predicted on each device of the run, in one line (mean and largest abs error over members)."""
    parts = []
    for dev in devices:
        errs = [abs(e) for r in rows if isinstance(e := (r.get("error_pct_by_device") or {}).get(dev), (int, float))]
        parts.append(f"{dev} {sum(errs) / len(errs):.1f} % (max {max(errs):.1f} %)" if errs else f"{dev} -")
    return (f"measured: every member timed on {len(devices)} devices; prediction off by (mean abs over "
            f"{len(rows)} members) " + ", ".join(parts))


def _open_devices(cfg: RunConfig) -> tuple[list[Device], Space]:
    """Every device of the run (an unreachable board stops here in one line, before any stage starts) and the
    space."""
    if len(set(cfg.devices)) < len(cfg.devices):
        raise PipelineError(f"--device {' --device '.join(cfg.devices)}: a device is given twice; give each once")
    if len(cfg.more_tables) > len(cfg.more_devices):
        raise PipelineError(f"{1 + len(cfg.more_tables)} --table for {len(cfg.devices)} --device: give at most one "
                            f"table per device, in the same order")
    try:
        devices = [get_device(name, cfg.devices_path) for name in cfg.devices]
        space = get_space(cfg.space)
    except ValueError as e:
        raise PipelineError(str(e)) from None
    for device in devices:
        for board in device.pool or (device,):  # a pool: every member (its boards measure the table)
            if board.rpc is not None:
                from profiler.measuring.rpc import RpcError, preflight

                try:
                    preflight(board.rpc.tracker, board.rpc.key, board.rpc.request_timeout_s, board.threads)
                except RpcError as e:
                    raise PipelineError(f"device {board.name!r}: {e}") from None
    return devices, space


def _stage_tables(cfg: RunConfig, devices: list[Device], space: Space, out: Path, on_event: OnEvent,
                  notes: list[str], stage_s: dict[str, float]) -> list[Path]:
    """Each device's table, measured if missing, and (``cfg.calibrate``) its calibration; the first device's
    verification goes to OUT/verify, another's to OUT/DEVICE/verify."""
    paths = []
    for n, device in enumerate(devices):
        t = time.perf_counter()
        paths.append(ensure_table(cfg, device, space, out, on_event, notes, cfg.table_path(n, out)))
        stage_s["table"] = stage_s.get("table", 0.0) + time.perf_counter() - t
        if cfg.calibrate:
            t = time.perf_counter()
            ensure_calibration(cfg, device, space, paths[-1], out if n == 0 else out / device.name, on_event, notes)
            stage_s["calibrate"] = stage_s.get("calibrate", 0.0) + time.perf_counter() - t
    return paths


def report_run(out: Path) -> tuple[list[dict[str, Any]], Path | None, Path | None]:
    """Rebuild the family table and plots of an ``hwnas run`` directory (or just the curves of a search run)."""
    out = Path(out)
    run, search_run = PipelineDir(out), RunDir(out)
    rows = [json.loads(p.read_text()) for p in run.member_files("result.json")]
    if not run.members.is_dir() and not search_run.metrics.is_file():
        raise PipelineError(f"{out}: neither an hwnas run directory (members/) nor a search run (metrics.jsonl)")
    if rows:
        write_family(out, rows)
        pareto, curves = make_plots(out, rows, out.name)
        return rows, pareto, curves
    curves = plot_curves(read_jsonl(search_run.metrics), {}, out / "curves.png", out.name)
    return rows, None, curves
