"""hwprof: measure latency tables of search-space ops on devices. Parses arguments, calls the library."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import NoReturn, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from profiler.cliapp import UserErrorApp
from profiler.errors import UserError
from profiler.progress import progress
from profiler.spaces.keys import key_label

app = UserErrorApp(help="hwprof: build latency lookup tables (LUTs) of NAS search-space ops on real devices.",
                  no_args_is_help=True, add_completion=False)
console = Console(stderr=True)
out = Console()

from profiler.version import version_option


@app.callback()
def _main(version: bool = version_option("hwprof")) -> None:
    """Measure, show, verify and convert latency tables."""


DevicesOpt = typer.Option(None, "--devices", envvar="HWNAS_DEVICES",
                          help="devices.yaml to read (default: ./devices.yaml, else the project's).")


def fail(msg: str, code: int = 2) -> NoReturn:
    console.print(f"[bold red]error:[/] {msg}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _device(name: str, devices: Optional[Path]):
    from profiler.measuring.devices import DeviceError, get_device

    try:
        return get_device(name, devices)
    except DeviceError as e:
        fail(str(e))


def _space(spec: str):
    from profiler.spaces.space import get_space

    try:
        return get_space(spec)
    except UserError as e:
        fail(str(e))


def _runner(device, boards: int | None = None, farm: bool = False):
    """The device's runner after a preflight; with ``farm``, one per board (``boards`` or the device's rpc.boards)."""
    from profiler.measuring.farm import farm_size, make_farm
    from profiler.measuring.rpc import RpcError, preflight
    from profiler.measuring.runners import make_runner

    try:
        runner = make_runner(device)  # configuration errors (a bad target) first
    except (UserError, NotImplementedError, ImportError) as e:
        fail(str(e))
    for d in (device.pool or (device,)) if farm else (device,):
        if d.rpc is not None:  # a dead tracker or an unserved key: one line now, not an error row per key
            try:
                preflight(d.rpc.tracker, d.rpc.key, d.rpc.request_timeout_s, d.threads)
            except RpcError as e:
                runner.close()
                fail(f"device {d.name!r}: {e}")
    if not farm:
        return runner
    try:
        n = farm_size(device, boards)  # a farm: one runner (session) per board under the key
    except UserError as e:
        runner.close()
        fail(str(e))
    return make_farm(device, n, make_runner, first=runner)


@app.command()
def devices(devices: Optional[Path] = DevicesOpt,
            as_json: bool = typer.Option(False, "--json", help="Print the parsed entries as JSON.")) -> None:
    """List the devices of devices.yaml (validated)."""
    import dataclasses

    from profiler.measuring.devices import DeviceError, devices_path, load_devices

    try:
        devs = load_devices(devices)
    except DeviceError as e:
        fail(str(e))
    if as_json:
        out.print_json(json.dumps({n: dataclasses.asdict(d) for n, d in devs.items()}, default=str))
        return
    t = Table(title=f"devices in {devices_path(devices)}")
    for col in ("name", "runtime", "where", "description"):
        t.add_column(col)
    for d in devs.values():
        where = (d.rpc.tracker + " key " + d.rpc.key) if d.rpc else (f"{d.ssh.user}@{d.ssh.host}:{d.ssh.port}"
                                                                       if d.ssh else "local")
        if d.pool:
            where = "pool of " + ", ".join(m.name for m in d.pool)
        elif d.rpc and d.rpc.boards != 1:
            where += f" ({d.rpc.boards or 'all'} boards)"
        t.add_row(d.name, d.runtime + (f" ({d.provider})" if d.runtime == "onnxruntime" else ""), where,
                  d.description)
    out.print(t)


@app.command()
def spaces() -> None:
    """List the search spaces and their parameters."""
    from profiler.spaces.space import SPACES, get_space

    t = Table(title="search spaces")
    for col in ("name", "layers x ops", "unique keys", "parameters", "description"):
        t.add_column(col)
    for name, d in SPACES.items():
        s = get_space(name)
        t.add_row(name, f"{len(s.layers)} x {len(s.ops)}", str(len(s.candidate_keys())),
                  ", ".join(f"{k}={v}" for k, v in d.defaults.items()), d.doc)
    out.print(t)


@app.command()
def measure(
    device: str = typer.Option("cpu", "--device", "-d", help="Device name from devices.yaml."),
    space: str = typer.Option("fbnet-cifar", "--space", "-s", help="Space spec, e.g. fbnet-cifar or darts-3ops:C=8."),
    out_path: Optional[Path] = typer.Option(None, "--out", "-o", help="Table path (default tables/DEVICE/SPACE.csv)."),
    fresh: bool = typer.Option(False, "--fresh", help="Start over instead of measuring only missing/errored keys."),
    mixed: bool = typer.Option(False, "--mixed", help="Resume a table measured under another protocol or machine "
                                                      "fingerprint; each row then records its setup hash."),
    only: Optional[str] = typer.Option(None, "--only", help="Measure only keys (or op names) matching this glob."),
    tune_trials: Optional[int] = typer.Option(None, "--tune-trials", min=0,
                                              help="TVM devices: MetaSchedule trials per task (0 = untuned; default "
                                                   "the device's tune_trials). Tuned rows are labelled 'tuned'."),
    boards: Optional[int] = typer.Option(None, "--boards", min=0, help="Measure on this many boards in parallel "
                                         "(default rpc.boards, or all of a pool; 0 = all the tracker lists)."),
    devices: Optional[Path] = DevicesOpt,
) -> None:
    """Measure every op of SPACE on DEVICE into a latency table (resumable: reruns measure only what is missing)."""
    from profiler.latency.tables import TableError, default_table_path
    from profiler.measuring.measure import measure_space

    dev = _with_tune_trials(_device(device, devices), tune_trials)
    sp = _space(space)
    path = out_path or default_table_path(dev.name, sp.spec)
    if dev.runtime == "tvm" and not fresh:
        from profiler.measuring.runners.tvm_runner import variant_mix

        mix = variant_mix(path, dev.tune_trials)
        if mix:
            fail(mix)
    runner = _runner(dev, boards, farm=True)
    columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("eta"), TimeRemainingColumn(), TextColumn("{task.fields[noisy]} noisy {task.fields[err]} "
                                                                    "err  [dim]{task.fields[op]}")]
    try:
        with progress(*columns, console=console, transient=False) as bar:
            task = bar.add_task(f"{dev.name} {sp.spec}", total=None, noisy=0, err=0, op="")

            def on_progress(p) -> None:
                label = key_label(p.current)  # a key, or "round i/n of k keys" in interleaved sweeps
                bar.update(task, total=p.total, completed=p.done, noisy=p.noisy, err=p.errors,
                           op=" ".join(label) if label else p.current)

            summary = measure_space(dev, sp, runner, path, fresh=fresh, only=only, mixed=mixed,
                                    on_progress=on_progress)
    except TableError as e:
        fail(str(e))
    except KeyboardInterrupt:
        console.print(f"interrupted: finished rows are kept in {path}; run the same command again to resume")
        raise typer.Exit(130)
    finally:
        runner.close()
    _print_measure_summary(path, summary)


def _with_tune_trials(dev, tune_trials: Optional[int]):
    """The device with ``--tune-trials`` applied (tvm devices only)."""
    if tune_trials is None:
        return dev
    if dev.runtime != "tvm":
        fail(f"--tune-trials: device {dev.name!r} has runtime {dev.runtime}; tuning applies to tvm devices only")
    import dataclasses

    return dataclasses.replace(dev, tune_trials=tune_trials)


def _print_measure_summary(path: Path, summary) -> None:
    """What `hwprof measure` did: counts, a replaced calibration, boards, validity, errors (exit 1 with any)."""
    console.print(f"{path}: measured {summary.measured} ({summary.ok} ok, {summary.noisy} noisy, "
                  f"{summary.errors} error, {summary.remeasured} re-measured), {summary.skipped} already there, "
                  f"{summary.wall_s:.1f} s")
    if summary.dropped_calibration is not None:
        console.print(f"removed {summary.dropped_calibration}: it was fitted on the table --fresh replaced "
                      f"(refit it with hwprof verify)", highlight=False, soft_wrap=True)
    print_boards(summary)
    if summary.validity is not None:
        style = "green" if summary.validity.valid else "bold red"
        console.print(f"validity: [{style}]{summary.validity.line()}[/]", highlight=False, soft_wrap=True)
    if summary.errors:
        print_errors([(r.key, r.error) for r in summary.rows if r.status == "error"])
        raise typer.Exit(1)


def print_boards(summary) -> None:
    """A farm sweep: rows per board, and each board lost mid-sweep with why."""
    by_board = board_counts(r.board for r in summary.rows if r.status != "error")
    if by_board and (", " in by_board or summary.lost_boards):
        console.print(f"boards: {by_board}", highlight=False, soft_wrap=True)
    for board, why in summary.lost_boards.items():
        console.print(f"  [yellow]board lost[/] {board}: {' '.join(why.split())[:300]} (its keys went to the other "
                      f"boards)", highlight=False, soft_wrap=True)


def board_counts(boards) -> str:
    """``"a 5 rows, b 3 rows"`` for the boards that measured rows ("" when no row names one)."""
    counts: dict[str, int] = {}
    for b in boards:
        if b:
            counts[b] = counts.get(b, 0) + 1
    return ", ".join(f"{b} {n} row{'s' * (n != 1)}" for b, n in sorted(counts.items()))


def print_errors(errors: list[tuple[str, str]], show: int = 3) -> None:
    """Each distinct error once, with how many keys it hit (a lost board is one line, not one per key)."""
    by_msg: dict[str, list[str]] = {}
    for key, msg in errors:
        by_msg.setdefault(" ".join(str(msg).split()), []).append(key)
    for msg, keys in by_msg.items():
        which = keys[0] if len(keys) == 1 else f"{len(keys)} keys (e.g. {', '.join(keys[:show])})"
        console.print(f"  [red]error[/] {which}: {msg}", highlight=False, soft_wrap=True)


@app.command()
def show(table: Path = typer.Argument(..., help="Table CSV written by hwprof measure or hwprof import."),
         as_json: bool = typer.Option(False, "--json", help="Print header, counts and slowest entries as JSON."),
         top: int = typer.Option(10, help="How many of the slowest entries to list.")) -> None:
    """Show a table: where it came from (machine and versions, or the imported file), protocol, counts, slowest."""
    import math

    from profiler.latency.tables import TableError, load_table
    from profiler.measuring.protocol import validity_line

    try:
        t = load_table(table)
    except TableError as e:
        fail(str(e))
    usable = [r for r in t.rows.values() if r["status"] != "error"]
    slowest = sorted(usable, key=lambda r: -r["median_ms"])[:top]
    cvs = sorted(r["cv"] for r in usable if not math.isnan(r["cv"]))
    imported = t.meta.get("imported")
    info = {
        "table": str(table), "device": t.device, "space": t.space, "created": t.meta.get("created"),
        "counts": t.counts(), "median_cv": cvs[len(cvs) // 2] if cvs else None,
        "calibrated": bool(t.calibration), "calibration": (t.calibration or {}).get("fit"),
        "fingerprint": t.meta.get("fingerprint"), "protocol": t.meta.get("protocol"), "imported": imported,
        "validity": "not measured here (imported)" if imported else validity_line(t.meta),
        "validity_verdict": (t.meta.get("validity") or {}).get("verdict"),
        "boards": board_counts(r.get("board", "") for r in usable) or None,
        "slowest": [{"key": r["key"], "median_ms": r["median_ms"], "cv": r["cv"], "status": r["status"]}
                    for r in slowest],
    }
    if as_json:
        out.print_json(json.dumps(info, default=str))
        return
    _print_show(table, t, info, slowest)


def _print_show(table: Path, t, info: dict, slowest: list) -> None:
    """`hwprof show` as text: header, machine, versions, runtime, protocol, provenance, counts, slowest entries."""
    import math

    imported = info["imported"]
    p = lambda line: out.print(line, highlight=False, soft_wrap=True)  # noqa: E731
    p(f"[bold]{table}[/]  device [cyan]{t.device}[/]  space [cyan]{t.space}[/]  created {info['created']}")
    fp = info["fingerprint"] or {}
    machine = [f"{fp['cpu_model']}" if fp.get("cpu_model") else "",
               f"{fp['cores']} cores" if fp.get("cores") else "", f"governor {fp['governor']}" if fp.get("governor")
               else "", fp.get("os") or "", f"python {fp['python']}" if fp.get("python") else ""]
    if any(machine):
        p("machine: " + ", ".join(m for m in machine if m))
    if fp.get("versions"):
        p("versions: " + ", ".join(f"{k} {v}" for k, v in fp["versions"].items()))
    runtime = [f"{k}={fp[k]}" for k in ("runtime", "provider", "threads", "graph_optimization", "target") if k in fp]
    if runtime:
        p("runtime: " + ", ".join(runtime))
    if info["protocol"]:
        p("protocol: " + ", ".join(f"{k}={v}" for k, v in info["protocol"].items()))
    if imported:
        for line in import_provenance(imported):
            p(line)
    c = info["counts"]
    med = f"{info['median_cv'] * 100:.2f} %" if info["median_cv"] is not None else "-"
    p(f"entries: {sum(c.values())}  ok {c['ok']}  noisy {c['noisy']}  error {c['error']}  median CV {med}")
    p("validity: " + info["validity"] + (f"\nboards: {info['boards']}" if info["boards"] else ""))
    p("calibrated: " + ("yes " + json.dumps(info["calibration"]) if info["calibrated"] else "no"))
    tt = Table(title=f"slowest {len(slowest)} entries")
    for col in ("key", "median ms", "CV %", "status"):
        tt.add_column(col)
    for r in slowest:
        cv = "-" if math.isnan(r["cv"]) else f"{r['cv'] * 100:.1f}"
        tt.add_row(r["key"], f"{r['median_ms']:.4f}", cv, r["status"])
    out.print(tt)


def import_provenance(imp: dict) -> list[str]:
    """The lines `hwprof show` prints about an imported table's source."""
    lines = [f"imported: {imp.get('format')} file {imp.get('source')} (sha256 {str(imp.get('sha256'))[:16]}...)"]
    if imp.get("unit"):
        lines.append(f"  unit {imp['unit']} ({imp.get('unit_source') or 'not stated'})")
    counts = []
    if "entries" in imp:
        counts.append(f"{imp.get('matched')} of {imp['entries']} file entries matched")
    if imp.get("block_entries"):
        counts.append(f"blocks {imp['block_matched']}/{imp['block_entries']}")
    counts += [f"{len(imp.get('missing') or [])} key(s) missing", f"{imp.get('n_unused', 0)} unused",
               f"{imp.get('n_ambiguous', len(imp.get('ambiguous') or []))} ambiguous",
               f"{imp.get('n_conflicts', 0)} conflicting"]
    lines.append("  " + ", ".join(counts))
    conflicts = imp.get("conflicts") or []
    if conflicts:
        worst = max(conflicts, key=lambda c: c["spread"])
        lines.append(f"  conflicts {imp.get('conflict_mode', 'mean')}-ed; widest spread {worst['spread']:.2f}x at "
                     f"{worst['key']}")
    if imp.get("zero_cost"):
        lines.append(f"  {len(imp['zero_cost'])} identity key(s) at 0 ms (skipped blocks; the peer counts them free)")
    lines += [f"  note: {n}" for n in imp.get("notes") or []]
    return lines


@app.command("measure-model")
def measure_model_cmd(
    model: Path = typer.Argument(..., help="ONNX model (e.g. from hwnas export)."),
    device: str = typer.Option("cpu", "--device", "-d", help="Device name from devices.yaml."),
    table: Optional[Path] = typer.Option(None, "--table", help="Use this table's protocol and compare with its "
                                                              "prediction (default: the device's protocol)."),
    threads: Optional[int] = typer.Option(None, "--threads", "-x", min=0,
                                          help="Intra-op threads (0 = all cores; default: the device's)."),
    shape: list[str] = typer.Option([], "--shape", help="Input shape for dynamic axes: 1x3x224x224, "
                                                        "input:1x3x224x224, or AXIS=SIZE per dynamic axis "
                                                        "(repeatable)."),
    repeats: Optional[int] = typer.Option(None, "--repeats", "-r", help="Time exactly this many runs (one run per "
                                                                        "sample; no re-measuring)."),
    seconds: Optional[float] = typer.Option(None, "--seconds", "-t", help="Time runs for this many seconds (one run "
                                                                          "per sample; no re-measuring)."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
    devices: Optional[Path] = DevicesOpt,
) -> None:
    """End-to-end latency of one ONNX model on DEVICE: p50/p90/p99/min, CV and a noisy flag (protocol as tables)."""
    import dataclasses

    from profiler.latency.tables import TableError, load_table
    from profiler.measuring.model_measure import measure_model, model_timing, onnx_input_shape, run_protocol
    from profiler.measuring.protocol import Protocol
    from profiler.measuring.stats import summarize

    dev = _device(device, devices)
    if not model.is_file():
        fail(f"{model}: no such ONNX model; write one with hwnas export")
    protocol, predicted, tab = dev.protocol, None, None
    if table is not None:
        try:
            tab = load_table(table, device=dev.name)
            protocol = Protocol.from_dict(tab.meta.get("protocol", {}), f"{table} protocol")
        except UserError as e:
            fail(str(e))
    if threads is not None:
        if dev.runtime not in ("onnxruntime", "torch", "tvm", "onnxruntime-ssh"):
            fail(f"--threads: device {dev.name!r} (runtime {dev.runtime}) has no thread setting")
        dev = dataclasses.replace(dev, threads=threads)
    try:
        protocol = run_protocol(protocol, repeats, seconds)
        input_shape = onnx_input_shape(model, shape)
    except UserError as e:
        fail(str(e))
    predicted = _predicted_ms(model, dev, tab)
    res = measure_model(model, dev, protocol, input_shape)
    if not res.ok:
        fail(f"{model} on {dev.name}: {res.error}", 1)
    s = summarize(res.samples_ms)
    tm = model_timing(res.samples_ms, protocol.cv_threshold)
    info = {"model": str(model), "device": dev.name, "threads": dev.threads, "input_shape": list(input_shape),
            **s.to_dict(), **tm.to_dict(), "cv_threshold": protocol.cv_threshold,
            "calls_per_sample": res.calls_per_sample, "attempts": res.info.get("attempts", 1),
            "predicted_ms": predicted,
            "error_pct": None if predicted is None else (predicted - s.median_ms) / s.median_ms * 100}
    if as_json:
        out.print_json(json.dumps(info))
        return
    _print_model_timing(model, dev, input_shape, res, tm, protocol, predicted, info)


def _predicted_ms(model: Path, dev, tab) -> Optional[float]:
    """The table's prediction for a model written by hwnas export (``tab``'s, or the one it names for ``dev``);
    None for any other model."""
    predicted = None
    try:
        from profiler.spaces.arch import onnx_arch

        arch = onnx_arch(model)
        if tab is not None:
            try:
                predicted = tab.model(arch.space).exact(arch.choices) if tab.space == arch.space_spec else None
            except KeyError:
                predicted = None
        elif arch.table is not None and arch.table.device == dev.name:
            predicted = arch.predicted_ms
    except UserError:
        pass  # a model not written by hwnas export: time it all the same
    return predicted


def _print_model_timing(model: Path, dev, input_shape, res, tm, protocol, predicted: Optional[float],
                        info: dict) -> None:
    """`hwprof measure-model` as text: percentiles, CV, a noisy warning and the table's prediction."""
    shape_s = "x".join(map(str, input_shape))
    line = (f"{model} on {dev.name} (threads {dev.threads or 'all'}, input {shape_s}): p50 {tm.p50_ms:.4f} ms, "
            f"p90 {tm.p90_ms:.4f}, p99 {tm.p99_ms:.4f}, min {tm.min_ms:.4f}, max {tm.max_ms:.4f}, mean "
            f"{tm.mean_ms:.4f}, CV {tm.cv * 100:.1f} %, n {tm.n}")
    if res.calls_per_sample > 1:
        line += f" samples of {res.calls_per_sample} calls each (--repeats/--seconds: one run per sample)"
    out.print(line, highlight=False, soft_wrap=True)
    if tm.noisy:
        out.print(f"noisy: CV {tm.cv * 100:.1f} % is above the protocol's {protocol.cv_threshold * 100:.0f} % "
                  f"threshold; close other programs or use fewer --threads", highlight=False, soft_wrap=True)
    if predicted is not None:
        out.print(f"table predicts {predicted:.4f} ms ({info['error_pct']:+.1f} % vs the median)", highlight=False)


@app.command()
def predict(
    target: Path = typer.Argument(..., help="Architecture JSON (hwnas derive) or ONNX model written by hwnas export."),
    table: list[Path] = typer.Option(..., "--table", "-t", help="Latency table (repeat for several devices)."),
    as_json: bool = typer.Option(False, "--json", help="Print the predictions as JSON."),
) -> None:
    """Predicted latency of an architecture without measuring it: raw table sum and calibrated, per table."""
    from profiler.latency.predict import describe, load_target, predict_with
    from profiler.spaces.arch import ArchError

    try:
        arch = load_target(target)
    except ArchError as e:
        fail(str(e))
    tabs = [_load_table(t) for t in table]
    preds = [predict_with(arch, t) for t in tabs]
    if as_json:
        out.print_json(json.dumps({"target": str(target), **describe(arch), "predictions": [p.to_json()
                                                                                            for p in preds]}))
    else:
        out.print(f"{target}: {arch.space_spec}, {arch.short()} ({arch.params} params, {arch.flops / 1e6:.1f} M MACs)",
                  highlight=False, soft_wrap=True)
        for p in preds:
            where = f"{p.table} ({p.device}{', imported ' + p.imported if p.imported else ''})"
            if p.error:
                out.print(f"  {where}: cannot predict: {p.error}", highlight=False, soft_wrap=True)
                continue
            line = f"  {where}: raw {p.raw_ms:.4f} ms"
            if p.calibrated_ms is None:
                line += "; calibrated: none (fit one with hwprof verify --table ...)"
            else:
                after, before = p.held_out.get("after") or {}, p.held_out.get("before") or {}
                err = (f"held-out MAPE {after['mape_pct']:.1f} % on {p.held_out.get('n_test')} networks (raw "
                       f"{before.get('mape_pct', float('nan')):.1f} %)" if "mape_pct" in after else
                       "no held-out error recorded")
                line += f"; calibrated {p.calibrated_ms:.4f} ms (model {p.calibration_model}, {err})"
            out.print(line, highlight=False, soft_wrap=True)
    if all(p.error for p in preds):
        raise typer.Exit(2)


def _load_table(path: Path, **kw):
    from profiler.latency.tables import TableError, load_table

    try:
        return load_table(path, **kw)
    except TableError as e:
        fail(str(e))


def _fmt_metrics(m: dict) -> str:
    return (f"MAPE {m['mape_pct']:.2f} %, RMSPE {m['rmspe_pct']:.2f} %, max {m['max_err_pct']:.1f} %, "
            f"±5 % {m['within_5_pct']:.1f} %, ±10 % {m['within_10_pct']:.1f} %, "
            f"Kendall τ {m['kendall_tau']:.3f}, Spearman ρ {m['spearman_rho']:.3f}")


@app.command()
def verify(
    device: str = typer.Option("cpu", "--device", "-d", help="Device name from devices.yaml (the table's device)."),
    space: str = typer.Option("fbnet-cifar", "--space", "-s", help="Space spec of the table."),
    table: Optional[Path] = typer.Option(None, "--table", "-t", help="Table CSV (default tables/DEVICE/SPACE.csv)."),
    n: int = typer.Option(100, "--n", help="Held-out test networks (incl. the all-smallest and all-largest)."),
    calib_n: int = typer.Option(50, "--calib-n", help="Other networks to fit the calibration on (0: no fit)."),
    seed: int = typer.Option(0, "--seed", help="Sampling seed."),
    out_dir: Optional[Path] = typer.Option(None, "--out", "-o", help="Output folder (default verify/DEVICE/SPACE)."),
    write_calib: bool = typer.Option(True, "--write-calib/--no-write-calib",
                                     help="Store the fitted calibration beside the table (TABLE.calib.json)."),
    stat: str = typer.Option("median", "--stat", help="Statistic compared and calibrated: median, or p10 (robust "
                                                      "on a busy machine; reruns reuse the measurements)."),
    devices: Optional[Path] = DevicesOpt,
) -> None:
    """Measure whole networks end to end, compare with the table's prediction, fit a calibration (resumable)."""
    from profiler.latency.tables import TableError, default_table_path
    from profiler.latency.verify import VerifyError, run_verify

    dev = _device(device, devices)
    sp = _space(space)
    path = table or default_table_path(dev.name, sp.spec)
    tab = _load_table(path)
    out_dir = out_dir or default_table_path(dev.name, sp.spec, root="verify").with_suffix("")
    runner = _runner(dev)
    columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("eta"), TimeRemainingColumn(), TextColumn("{task.fields[err]} err [dim]{task.fields[cur]}")]
    try:
        with progress(*columns, console=console) as bar:
            task = bar.add_task(f"verify {dev.name} {sp.spec}", total=None, err=0, cur="")

            def on_progress(p) -> None:
                bar.update(task, total=p.total, completed=p.done, err=p.errors, cur=p.current)

            rep = run_verify(dev, sp, tab, runner, out_dir, n=n, calib_n=calib_n, seed=seed,
                             write_calib=write_calib, stat=stat, on_progress=on_progress)
    except (VerifyError, TableError) as e:
        fail(str(e))
    except KeyboardInterrupt:
        console.print(f"interrupted: finished networks are kept in {out_dir}/networks.csv; "
                      f"run the same command again to resume")
        raise typer.Exit(130)
    finally:
        runner.close()
    _print_verify(rep, out_dir)


def _print_verify(rep, out_dir: Path) -> None:
    """`hwprof verify`'s report: counts, validity, raw and calibrated metrics, goals, files written, failures."""
    from profiler.measuring.protocol import Validity

    s = rep.summary
    out.print(f"{s.n_test} held-out networks ({s.n_calib} for calibration), {len(s.failed)} failed",
              highlight=False, soft_wrap=True)
    v = Validity.from_dict(s.validity)
    if v is not None:
        out.print(f"validity: [{'green' if v.valid else 'bold red'}]{v.line()}[/]", highlight=False, soft_wrap=True)
    out.print(f"raw table sum : {_fmt_metrics(s.raw)} ({s.stat}s)", highlight=False,
              soft_wrap=True)
    if s.calibrated:
        c = s.calibrated
        out.print(f"calibrated    : {_fmt_metrics(c)} (model {c['model']}, {s.stat}s)", highlight=False, soft_wrap=True)
        reached = ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in c["goals_reached"].items())
        out.print(f"goals (±5 % ≥ 95 %, ±10 % ≥ 99.5 %, τ ≥ 0.95) reached: {reached}", highlight=False, soft_wrap=True)
    if s.existing_calibration:
        out.print("stored calibration: " + _fmt_metrics(s.existing_calibration), highlight=False, soft_wrap=True)
    if rep.calib_path:
        out.print(f"calibration stored in {rep.calib_path}", highlight=False, soft_wrap=True)
    out.print(f"wrote {out_dir}/networks.csv, summary.json, scatter.png", highlight=False, soft_wrap=True)
    for f in s.failed[:5]:
        console.print(f"  [red]failed[/] {f['split']} {f['arch']}: {f['error']}", highlight=False, soft_wrap=True)


@app.command("import")
def import_cmd(
    src: Path = typer.Argument(..., help="Peer LUT file (OFA / ProxylessNAS YAML, NNI LUT, FBNet grid, hwprof-jsonl)."),
    fmt: str = typer.Option(..., "--format", "-f", help="ofa | proxyless | nni | fbnet-grid | hwprof-jsonl"),
    space: str = typer.Option(..., "--space", "-s", help="Space the LUT belongs to (e.g. ofa-mbv3, proxyless)."),
    device: str = typer.Option(..., "--device", "-d", help="Device label the imported table is for."),
    out_path: Optional[Path] = typer.Option(None, "--out", "-o", help="Table path (default tables/DEVICE/SPACE.csv)."),
    unit: Optional[str] = typer.Option(None, "--unit", help="us | ms: the file's latency unit (default: what the "
                                                           "file or its format says; the import states it)."),
    conflicts: str = typer.Option("mean", "--conflicts", help="Several entries for one key: mean (average, report "
                                                              "the spread) or error (refuse)."),
    force: bool = typer.Option(False, "--force", help="Replace a measured table at --out (refused otherwise)."),
) -> None:
    """Import a peer LUT as a normal hwprof table (marked imported; matched, missing, unused and conflicting listed)."""
    from profiler.latency.formats import FormatError, import_table
    from profiler.latency.tables import TableError, default_table_path

    sp = _space(space)
    path = out_path or default_table_path(device, sp.spec)
    try:
        rep = import_table(src, fmt, sp, device, path, unit=unit, on_conflict=conflicts, force=force)
    except (FormatError, TableError) as e:
        fail(str(e))
    p = lambda line: out.print(line, highlight=False, soft_wrap=True)  # noqa: E731
    p(f"{path}: imported {rep.imported} key(s) of {sp.spec} from {src} ({fmt}; unit {rep.unit}: {rep.unit_source})")
    p(f"  {rep.summary()}")
    more = f" (all listed in {path.with_suffix('.meta.json')})"
    for title, items in (("missing", rep.missing), ("unused", rep.unused), ("ambiguous", rep.ambiguous)):
        for k in items[:5]:
            p(f"  {title} {k}")
        if len(items) > 5:
            p(f"  ... {len(items) - 5} more {title}{more}")
    for c in sorted(rep.conflicts, key=lambda c: -c.spread)[:5]:
        p(f"  conflict {c.key}: {len(c.values_ms)} entries, {min(c.values_ms):.4g}-{max(c.values_ms):.4g} ms "
          f"({c.spread:.2f}x), averaged")
    if len(rep.conflicts) > 5:
        p(f"  ... {len(rep.conflicts) - 5} more conflicts{more}")
    if rep.zero_cost:
        p(f"  {len(rep.zero_cost)} identity key(s) (skipped blocks) written as 0 ms: the peer's estimator counts them "
          f"free and its file has no entry for them")
    for n in rep.notes:
        p(f"  note: {n}")


@app.command("export")
def export_cmd(
    table: Path = typer.Argument(..., help="hwprof table CSV."),
    fmt: str = typer.Option(..., "--format", "-f", help="ofa | proxyless | nni | fbnet-grid | hwprof-jsonl"),
    out_path: Path = typer.Option(..., "--out", "-o", help="File to write."),
    unit: Optional[str] = typer.Option(None, "--unit", help="nni only: us (default, as NNI writes) or ms."),
) -> None:
    """Write a table in a peer LUT format (keys the format cannot name are listed)."""
    from profiler.latency.formats import FormatError, export_table

    tab = _load_table(table)
    try:
        rep = export_table(tab, fmt, out_path, unit=unit)
    except UserError as e:
        fail(str(e))
    out.print(f"{out_path}: wrote {rep.written} entries ({fmt}); {len(rep.unexpressible)} key(s) not expressible "
              f"in this format" + (f", {len(rep.free)} identity key(s) left out (the format counts them free)"
                                   if rep.free else ""), highlight=False, soft_wrap=True)
    for k in rep.unexpressible[:10]:
        out.print(f"  not written {k}", highlight=False, soft_wrap=True)
    if len(rep.unexpressible) > 10:
        out.print(f"  ... {len(rep.unexpressible) - 10} more")


@app.command()
def plot(table: Path = typer.Argument(..., help="hwprof table CSV."),
         out_path: Optional[Path] = typer.Option(None, "--out", "-o", help="PNG to write (default TABLE.png).")) -> None:
    """Layer x op heat-map of a table's latencies (PNG)."""
    from profiler.latency.plots import plot_table

    tab = _load_table(table)
    sp = _space(tab.space)
    path = out_path or table.with_suffix(".png")
    plot_table(tab, sp, path)
    out.print(f"wrote {path}", highlight=False, soft_wrap=True)


@app.command()
def doctor(device: str = typer.Option(..., "--device", "-d", help="Device name from devices.yaml."),
           devices: Optional[Path] = DevicesOpt) -> None:
    """Check that DEVICE can be measured: reachability, remote arch and versions, target/arch, one tiny op."""
    from profiler.measuring.doctor import run_doctor

    dev = _device(device, devices)
    checks = run_doctor(dev)
    for c in checks:
        mark = "[green]ok[/]    " if c.ok else "[bold red]FAILED[/]"
        out.print(f"{mark} {c.name}: {c.detail}" + ("" if c.ok or not c.fix else f"\n       fix: {c.fix}"),
                  highlight=False, soft_wrap=True)
    bad = sum(not c.ok for c in checks)
    out.print(f"{dev.name}: {len(checks) - bad} ok, {bad} failed")
    if bad:
        raise typer.Exit(1)


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
