"""hwprof: measure latency tables of search-space ops on devices. Parses arguments, calls the library."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import NoReturn, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

app = typer.Typer(help="hwprof: build latency lookup tables (LUTs) of NAS search-space ops on real devices.",
                  no_args_is_help=True, add_completion=False)
console = Console(stderr=True)
out = Console()

DevicesOpt = typer.Option(None, "--devices", envvar="HWNAS_DEVICES",
                          help="devices.yaml to read (default: ./devices.yaml, else the project's).")


def fail(msg: str, code: int = 2) -> NoReturn:
    console.print(f"[bold red]error:[/] {msg}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _device(name: str, devices: Optional[Path]):
    from .devices import DeviceError, get_device

    try:
        return get_device(name, devices)
    except DeviceError as e:
        fail(str(e))


def _space(spec: str):
    from .spaces import get_space

    try:
        return get_space(spec)
    except ValueError as e:
        fail(str(e))


def _runner(device):
    from .runners import make_runner

    try:
        return make_runner(device)
    except (RuntimeError, NotImplementedError, ImportError) as e:
        fail(str(e))


@app.command()
def devices(devices: Optional[Path] = DevicesOpt,
            as_json: bool = typer.Option(False, "--json", help="Print the parsed entries as JSON.")) -> None:
    """List the devices of devices.yaml (validated)."""
    import dataclasses

    from .devices import DeviceError, devices_path, load_devices

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
        t.add_row(d.name, d.runtime + (f" ({d.provider})" if d.runtime == "onnxruntime" else ""), where,
                  d.description)
    out.print(t)


@app.command()
def spaces() -> None:
    """List the search spaces and their parameters."""
    from .spaces import SPACES, get_space

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
    only: Optional[str] = typer.Option(None, "--only", help="Measure only keys (or op names) matching this glob."),
    devices: Optional[Path] = DevicesOpt,
) -> None:
    """Measure every op of SPACE on DEVICE into a latency table (resumable: reruns measure only what is missing)."""
    from .measure import measure_space
    from .tables import TableError, default_table_path

    dev = _device(device, devices)
    sp = _space(space)
    path = out_path or default_table_path(dev.name, sp.spec)
    runner = _runner(dev)
    columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("eta"), TimeRemainingColumn(), TextColumn("{task.fields[noisy]} noisy {task.fields[err]} "
                                                                    "err  [dim]{task.fields[op]}")]
    try:
        with Progress(*columns, console=console, transient=False) as bar:
            task = bar.add_task(f"{dev.name} {sp.spec}", total=None, noisy=0, err=0, op="")

            def on_progress(p) -> None:
                bar.update(task, total=p.total, completed=p.done, noisy=p.noisy, err=p.errors,
                           op=p.current.split("|")[1] + " " + p.current.split("|")[2] if p.current else "")

            summary = measure_space(dev, sp, runner, path, fresh=fresh, only=only, on_progress=on_progress)
    except TableError as e:
        fail(str(e))
    except KeyboardInterrupt:
        console.print(f"interrupted: finished rows are kept in {path}; run the same command again to resume")
        raise typer.Exit(130)
    finally:
        runner.close()
    console.print(f"{path}: measured {summary.measured} ({summary.ok} ok, {summary.noisy} noisy, "
                  f"{summary.errors} error, {summary.remeasured} re-measured), {summary.skipped} already there, "
                  f"{summary.wall_s:.1f} s")
    if summary.errors:
        for r in summary.rows:
            if r.status == "error":
                console.print(f"  [red]error[/] {r.key}: {r.error}", highlight=False)
        raise typer.Exit(1)


@app.command()
def show(table: Path = typer.Argument(..., help="Table CSV written by hwprof measure."),
         as_json: bool = typer.Option(False, "--json", help="Print header, counts and slowest entries as JSON."),
         top: int = typer.Option(10, help="How many of the slowest entries to list.")) -> None:
    """Show a table: fingerprint, protocol, counts by status, slowest entries."""
    from .tables import TableError, load_table

    try:
        t = load_table(table)
    except TableError as e:
        fail(str(e))
    usable = [r for r in t.rows.values() if r["status"] != "error"]
    slowest = sorted(usable, key=lambda r: -r["median_ms"])[:top]
    cvs = sorted(r["cv"] for r in usable)
    info = {
        "table": str(table), "device": t.device, "space": t.space, "created": t.meta.get("created"),
        "counts": t.counts(), "median_cv": cvs[len(cvs) // 2] if cvs else None,
        "calibrated": bool(t.calibration), "calibration": (t.calibration or {}).get("fit"),
        "fingerprint": t.meta.get("fingerprint"), "protocol": t.meta.get("protocol"),
        "slowest": [{"key": r["key"], "median_ms": r["median_ms"], "cv": r["cv"], "status": r["status"]}
                    for r in slowest],
    }
    if as_json:
        out.print_json(json.dumps(info, default=str))
        return
    fp = info["fingerprint"] or {}
    out.print(f"[bold]{table}[/]  device [cyan]{t.device}[/]  space [cyan]{t.space}[/]  created {info['created']}")
    out.print(f"machine: {fp.get('cpu_model')} ({fp.get('cores')} cores, governor {fp.get('governor')}), "
              f"{fp.get('os')}, python {fp.get('python')}")
    out.print("versions: " + ", ".join(f"{k} {v}" for k, v in (fp.get("versions") or {}).items()))
    out.print("runtime: " + ", ".join(f"{k}={fp[k]}" for k in ("runtime", "provider", "threads",
                                                               "graph_optimization", "target") if k in fp))
    out.print("protocol: " + ", ".join(f"{k}={v}" for k, v in (info["protocol"] or {}).items()))
    c = info["counts"]
    med = f"{info['median_cv'] * 100:.2f} %" if info["median_cv"] is not None else "-"
    out.print(f"entries: {sum(c.values())}  ok {c['ok']}  noisy {c['noisy']}  error {c['error']}  median CV {med}")
    out.print("calibrated: " + ("yes " + json.dumps(info["calibration"]) if info["calibrated"] else "no"))
    tt = Table(title=f"slowest {len(slowest)} entries")
    for col in ("key", "median ms", "CV %", "status"):
        tt.add_column(col)
    for r in slowest:
        tt.add_row(r["key"], f"{r['median_ms']:.4f}", f"{r['cv'] * 100:.1f}", r["status"])
    out.print(tt)


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
