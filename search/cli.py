"""hwnas: latency-aware differentiable NAS. Parses arguments, calls the library."""

from __future__ import annotations

import typer

app = typer.Typer(help="hwnas: hardware-aware differentiable NAS driven by hwprof latency tables.",
                  no_args_is_help=True, add_completion=False)


@app.callback()
def _main() -> None:
    """Search, derive, retrain, export and ship architectures."""


@app.command("search")
def search_cmd(
    space: str = typer.Option(..., "--space", "-s", help="Space spec, e.g. fbnet-cifar:input_size=16,width=0.25."),
    table: list[str] = typer.Option([], "--table", "-t", help="Latency table(s) from hwprof measure (repeat for "
                                                              "more devices: cost terms latency, latency:1, ...)."),
    preset_name: str = typer.Option("hwnas", "--preset", "-p", help="darts | fbnet | darts-cc | seed-simplex | hwnas."),
    data: str = typer.Option("digits", "--data", help="digits, cifar10, fashion-mnist, mnist, npz:PATH or a folder."),
    epochs: int = typer.Option(10, "--epochs", "-e", help="Search epochs."),
    out: str = typer.Option(..., "--out", "-o", help="Run directory."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its last checkpoint."),
    seed: int = typer.Option(0, "--seed"),
    torch_device: str = typer.Option("cpu", "--torch-device", help="cpu or cuda."),
    batch_size: int = typer.Option(None, "--batch-size", help="Batch size (preset default 64)."),
    data_dir: str = typer.Option(None, "--data-dir", help="Where torchvision datasets are (downloaded)."),
    threads: int = typer.Option(0, "--threads", help="torch intra-op threads (0 = torch's default)."),
    overrides: list[str] = typer.Option([], "--set", help="Config override FIELD=VALUE, e.g. loss_beta=0.8, "
                                                         "control.range_max=5, train_limit=256 (repeatable)."),
) -> None:
    """Search an architecture distribution with a latency table; writes a run directory (resumable)."""
    import math

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn

    from profiler.progress import progress

    from .config import ConfigError, apply_overrides, preset
    from .control import ControlError
    from .costs import CostError
    from .data import DataError
    from .train import SearchError, search

    con = Console(stderr=True)

    def fail(msg: str, code: int = 2) -> None:
        con.print(f"[bold red]error:[/] {msg}", highlight=False, soft_wrap=True)
        raise typer.Exit(code)

    if threads:
        import torch

        torch.set_num_threads(threads)
    try:
        cfg = preset(preset_name, space=space, tables=tuple(table), data=data, epochs=epochs, seed=seed,
                     torch_device=torch_device, batch_size=batch_size, data_dir=data_dir)
        cfg = apply_overrides(cfg, overrides)
        cols = [TextColumn("[bold]epoch {task.fields[epoch]}"), BarColumn(), MofNCompleteColumn(),
                TimeElapsedColumn(), TextColumn("loss {task.fields[loss]}  E\\[lat] {task.fields[lat]} ms  "
                                                "tau {task.fields[tau]}  [dim]{task.fields[note]}")]
        with progress(*cols, console=con) as bar:
            task = bar.add_task("search", total=None, epoch="-", loss="-", lat="-", tau="-", note="")

            def fmt(v: object) -> str:
                return f"{v:.4g}" if isinstance(v, float) and math.isfinite(v) else "-"

            def on_progress(ev: dict) -> None:
                if ev["event"] == "step":
                    bar.update(task, total=ev["steps"], completed=ev["step"], epoch=f"{ev['epoch'] + 1}/{ev['epochs']}",
                               loss=fmt(ev.get("loss")), lat=fmt(ev.get("E_latency")), tau=fmt(ev.get("tau")))
                else:
                    bar.update(task, note=f"val acc {ev['val_acc'] * 100:.1f} %  ({ev['wall_s']:.1f} s)")
                    con.print(f"epoch {ev['epoch'] + 1}/{ev['epochs']}: train loss {ev['train_loss']:.4f} acc "
                              f"{ev['train_acc'] * 100:.1f} %, val acc {ev['val_acc'] * 100:.1f} %, E\\[latency] "
                              f"{fmt(ev.get('eval_E_latency'))} ms, E\\[params] {fmt(ev.get('eval_E_params'))}, "
                              f"tau {ev['tau']:.3g}, {ev['wall_s']:.1f} s", highlight=False)

            history = search(cfg, out, resume=resume, on_progress=on_progress)
    except (ConfigError, ControlError, CostError, DataError, SearchError) as e:
        fail(str(e))
    except KeyboardInterrupt:
        fail(f"interrupted; the last finished epoch is checkpointed in {out}: add --resume to continue", 130)
    done = history[-1]["epoch"] + 1 if history else 0
    con.print(f"run {out}: {done}/{cfg.epochs} epochs; control {cfg.control.kind} -> {out}/control.pt",
              highlight=False)


# ------------------------------------------------------------------ family: derive, train, export, run, report
# (helpers prefixed _fam_ so they never clash with the search commands' own)

from pathlib import Path as _Path  # noqa: E402
from typing import Optional as _Opt  # noqa: E402


def _fam_fail(msg: str, code: int = 2) -> None:
    from rich.console import Console

    Console(stderr=True).print(f"[bold red]error:[/] {msg}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _fam_console():
    from rich.console import Console

    return Console(stderr=True)


@app.command("derive")
def derive_cmd(
    run_dir: _Path = typer.Argument(..., help="Search run directory (hwnas search --out)."),
    control: _Opt[str] = typer.Option(None, "--control", help="One control value, e.g. kappa=0.3,S=0.5:0.5."),
    latency_ms: _Opt[str] = typer.Option(None, "--latency-ms", help="Latency budgets, e.g. 3,5,8."),
    params: _Opt[str] = typer.Option(None, "--params", help="Params budget, e.g. 100k (alone or with --latency-ms)."),
    family: _Opt[int] = typer.Option(None, "--family", help="N distinct Pareto-optimal architectures."),
    fill: bool = typer.Option(True, "--fill/--no-fill", help="Budgets: let layers take the next (less-pressured) "
                                                             "architecture's op while the budget holds."),
    out: _Opt[_Path] = typer.Option(None, "--out", "-o", help="Output directory (default RUN/derived)."),
) -> None:
    """Architectures from a trained run, no retraining: at a control, by budgets, or a family of N."""
    from profiler.arch import ArchError
    from profiler.tables import TableError

    from .derive import (Budget, Derived, DeriveError, Deriver, check_control, derive_budgets, derive_family,
                         parse_control, parse_count, parse_floats, to_arch, write_derived)
    from .report import format_table

    modes = sum(x is not None for x in (control, family)) + (latency_ms is not None or params is not None)
    if modes != 1:
        _fam_fail("give exactly one of --control, --latency-ms/--params, --family")
    con = _fam_console()
    try:
        from .run import load_run

        run = load_run(run_dir)
        d = Deriver(run)
        items: list[Derived] = []
        if control is not None:
            c = check_control(run, parse_control(control))
            cand = d.evaluate(c)
            items.append(Derived("arch", to_arch(run, cand, "control", str(run_dir))))
        elif family is not None:
            cands, stats = derive_family(d, family)
            items = [Derived(f"member-{i:02d}", to_arch(run, c, "family", str(run_dir))) for i, c in enumerate(cands)]
            con.print(f"{stats['evaluated']} controls -> {stats['distinct']} distinct architectures -> "
                      f"{stats['pareto']} Pareto-optimal -> {len(items)} members")
            if len(items) < family:
                con.print(f"[yellow]only {len(items)} distinct Pareto-optimal architectures (asked for {family})")
        else:
            p = parse_count(params) if params is not None else None
            lats = parse_floats(latency_ms) if latency_ms is not None else [None]
            results = derive_budgets(d, [Budget(lat, p) for lat in lats], fill=fill)
            for i, r in enumerate(results):
                con.print(("[green]" if r.ok else "[yellow]") + r.message(), highlight=False)
                items.append(Derived(f"budget-{i:02d}", to_arch(run, r.closest, "budget", str(run_dir)),
                                     budget=r.budget, meets=r.ok, note="" if r.ok else "closest; budget not met"))
        summary = write_derived(items, out or _Path(run_dir) / "derived")
    except (DeriveError, ArchError, TableError, ValueError, FileNotFoundError, RuntimeError) as e:
        _fam_fail(str(e))
    rows = [{"member": it.name, "ops": " ".join(it.arch.choices), "params": it.arch.params,
             "predicted_ms": it.arch.predicted_ms} for it in items]
    typer.echo(format_table(rows))
    con.print(f"wrote {len(items)} architecture(s) and {summary}")
    if latency_ms is not None or params is not None:
        if not all(it.meets for it in items):
            raise typer.Exit(1)


@app.command("train")
def train_cmd(
    arch_path: _Path = typer.Argument(..., help="Architecture JSON (hwnas derive)."),
    data: str = typer.Option("digits", "--data", help="digits, cifar10, fashion-mnist, mnist, npz:PATH or a folder."),
    epochs: int = typer.Option(10, "--epochs", help="Training epochs."),
    out: _Path = typer.Option(..., "--out", "-o", help="Output directory (weights.safetensors, train.json)."),
    batch_size: int = typer.Option(64, "--batch-size"),
    lr: float = typer.Option(0.05, "--lr"),
    seed: int = typer.Option(0, "--seed"),
    data_dir: _Opt[str] = typer.Option(None, "--data-dir", help="Where torchvision datasets live."),
) -> None:
    """Train an architecture from scratch; report test accuracy; save the weights (safetensors)."""
    from profiler.arch import ArchError, load_arch

    from .retrain import TrainConfig, TrainError, retrain

    try:
        arch = load_arch(arch_path)
        cfg = TrainConfig(data=data, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, data_dir=data_dir)
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn

        from profiler.progress import progress

        with progress(TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      TextColumn("{task.fields[note]}"), console=_fam_console()) as bar:
            task = bar.add_task("train", total=epochs, note="")
            res = retrain(arch, cfg, out, on_epoch=lambda r: bar.update(
                task, completed=r["epoch"], note=f"loss {r['train_loss']:.3f} val {r['val_acc'] * 100:.1f} %"))
    except (ArchError, TrainError, ValueError) as e:
        _fam_fail(str(e))
    except KeyboardInterrupt:
        _fam_fail("interrupted; nothing was written", 130)
    typer.echo(f"test accuracy {res.test_acc * 100:.2f} % (best val {res.val_acc * 100:.2f} % at epoch "
               f"{res.best_epoch}), {res.wall_s:.1f} s; weights {res.weights}")


@app.command("export")
def export_cmd(
    arch_path: _Path = typer.Argument(..., help="Architecture JSON (hwnas derive)."),
    weights: _Opt[_Path] = typer.Option(None, "--weights", "-w", help="Trained weights (hwnas train)."),
    out: _Path = typer.Option(..., "--out", "-o", help="ONNX file to write."),
) -> None:
    """A self-contained ONNX model (architecture JSON in its metadata), checked against PyTorch on one input."""
    from profiler.arch import ArchError, export_arch, load_arch

    try:
        path, err = export_arch(load_arch(arch_path), out, weights)
    except ArchError as e:
        _fam_fail(str(e))
    typer.echo(f"{path}: max |onnxruntime - torch| = {err:.2e}" + ("" if weights else " (untrained weights)"))
    if not err < 1e-3:
        _fam_fail(f"{path}: onnxruntime output differs from PyTorch by {err:.2e}", 1)


@app.command("run")
def run_cmd(
    device: str = typer.Option("cpu-1t", "--device", "-d", help="Device name from devices.yaml (default cpu-1t: "
                               "see hwprof doctor for whether all cores time stably here)."),
    quick: bool = typer.Option(False, "--quick", help="~2 min: small space, fast protocol, short training."),
    out: _Opt[_Path] = typer.Option(None, "--out", "-o", help="Output directory (default runs/DEVICE[-quick])."),
    space: _Opt[str] = typer.Option(None, "--space", help="Space spec (default fbnet-cifar:input_size=16,width=0.5)."),
    table: _Opt[_Path] = typer.Option(None, "--table", help="Latency table (default tables/DEVICE/SPACE.csv)."),
    data: str = typer.Option("digits", "--data"),
    family: _Opt[int] = typer.Option(None, "--family", help="Members of the family."),
    search_epochs: _Opt[int] = typer.Option(None, "--search-epochs"),
    retrain_epochs: _Opt[int] = typer.Option(None, "--retrain-epochs"),
    seed: int = typer.Option(0, "--seed"),
    calibrate: bool = typer.Option(True, "--calibrate/--no-calibrate",
                                   help="Fit the table's calibration on random whole networks first (if it has none)."),
) -> None:
    """The main job: table -> search -> family -> retrain -> ONNX -> measure on DEVICE -> table + Pareto PNG."""
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn

    from profiler.progress import progress

    from profiler.arch import ArchError
    from profiler.tables import TableError

    from .pipeline import PipelineError, RunConfig, run_pipeline
    from .report import format_table

    kw = dict(device=device, space=space, table=str(table) if table else None, data=data, family=family,
              search_epochs=search_epochs, retrain_epochs=retrain_epochs, seed=seed, calibrate=calibrate)
    cfg = RunConfig.quick_defaults(**kw) if quick else RunConfig(**{k: v for k, v in kw.items() if v is not None})
    out = out or _Path("runs") / (device + ("-quick" if quick else ""))
    con = _fam_console()
    con.print(f"hwnas run: space {cfg.space}, device {cfg.device}, data {cfg.data}, search {cfg.search_epochs} "
              f"epochs, family {cfg.family}, retrain {cfg.retrain_epochs} epochs -> {out}", highlight=False)
    try:
        with progress(TextColumn("[bold]{task.description:<7}"), BarColumn(), MofNCompleteColumn(),
                      TimeElapsedColumn(), TextColumn("[dim]{task.fields[note]}"), console=con) as bar:
            tasks: dict[str, int] = {}

            def on_event(e) -> None:
                if e.stage not in tasks:
                    tasks[e.stage] = bar.add_task(e.stage, total=e.total, note="")
                bar.update(tasks[e.stage], completed=e.done, total=e.total, note=e.note[:60])

            res = run_pipeline(cfg, out, on_event)
    except (PipelineError, ArchError, TableError, ValueError, RuntimeError) as e:
        _fam_fail(str(e))
    except KeyboardInterrupt:
        _fam_fail(f"interrupted before any member finished; finished stages are kept in {out}: run the same "
                  f"command to continue", 130)
    for n in res.notes:
        con.print(n, highlight=False)
    typer.echo(format_table(res.rows))
    con.print(f"family table {out / 'family.csv'}, Pareto plot {res.pareto_png}, curves {res.curves_png}; "
              f"{res.wall_s:.0f} s (" + ", ".join(f"{k} {v:.0f} s" for k, v in res.stage_s.items()) + ")",
              highlight=False)
    if res.interrupted:
        raise typer.Exit(130)
    if any(r.get("status") != "ok" for r in res.rows):
        raise typer.Exit(1)


@app.command("report")
def report_cmd(run_dir: _Path = typer.Argument(..., help="An hwnas run directory (or a search run).")) -> None:
    """The family table and the plots (Pareto front; training curves from metrics.jsonl)."""
    from .pipeline import PipelineError, report_run
    from .report import format_table

    try:
        rows, pareto, curves = report_run(run_dir)
    except (PipelineError, ValueError) as e:
        _fam_fail(str(e))
    if rows:
        typer.echo(format_table(rows))
    _fam_console().print(f"plots: {pareto or '-'} {curves or '-'}")
