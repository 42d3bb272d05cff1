"""hwnas: latency-aware differentiable NAS. Parses arguments, calls the library.

Every command reports on one console (:func:`_console`, stderr; stdout carries the tables) and ends on bad input
through one error path: a ``UserError`` that escapes a command is printed as one line with exit code 2 by the app
(:class:`profiler.cliapp.UserErrorApp`), and :func:`_fail` is that same line with another code (1: a check failed,
130: interrupted).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NoReturn, Optional

import typer
from rich.console import Console

from profiler.cliapp import UserErrorApp, print_error
from profiler.errors import UserError
from profiler.version import version_option

from .rundir import RunDir

app = UserErrorApp(help="hwnas: hardware-aware differentiable NAS driven by hwprof latency tables.",
                  no_args_is_help=True, add_completion=False)


@app.callback()
def _main(version: bool = version_option("hwnas")) -> None:
    """Search, derive, retrain, export and ship architectures."""


def _console() -> Console:
    """The console every command reports on: stderr, so stdout holds only the tables a command prints."""
    return Console(stderr=True)


def _fail(msg: str, code: int = 2) -> NoReturn:
    """End the command with the one-line ``error: msg`` (as the app prints a ``UserError``) and exit ``code``."""
    print_error(msg)
    raise typer.Exit(code)


@app.command("search")
def search_cmd(
    space: str = typer.Option(..., "--space", "-s", help="Space spec, e.g. fbnet-cifar:input_size=16,width=0.25."),
    table: list[str] = typer.Option([], "--table", "-t", help="Latency table(s) from hwprof measure (repeat for "
                                                              "more devices: cost terms latency, latency:1, ...)."),
    preset_name: str = typer.Option("hwnas", "--preset", "-p",
                                    help="darts | fbnet | darts-cc | seed-simplex | seed | hwnas."),
    data: str = typer.Option(None, "--data", help="fashion-mnist, digits, cifar10, mnist, npz:PATH or a folder "
                                                  "(default: fashion-mnist when installed, else digits)."),
    data_limit: int = typer.Option(None, "--data-limit", help="fashion-mnist: a seeded N training images (and N "
                                                              "test images)."),
    epochs: int = typer.Option(10, "--epochs", "-e", help="Search epochs."),
    out: str = typer.Option(..., "--out", "-o", help="Run directory."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its last checkpoint."),
    seed: int = typer.Option(0, "--seed"),
    torch_device: str = typer.Option("cpu", "--torch-device", help="cpu or cuda."),
    batch_size: int = typer.Option(None, "--batch-size", help="Batch size (preset default 64)."),
    data_dir: str = typer.Option(None, "--data-dir", help="Where Fashion-MNIST / torchvision data are."),
    threads: int = typer.Option(0, "--threads", help="torch intra-op threads (0 = torch's default)."),
    overrides: list[str] = typer.Option([], "--set", help="Config override FIELD=VALUE, e.g. loss_beta=0.8, "
                                                         "control.range_max=5, train_limit=256 (repeatable)."),
    nproc: int = typer.Option(1, "--nproc", help="Worker processes on this machine (torch.distributed: gloo on CPU, "
                                                 "NCCL on CUDA); --batch-size stays the global batch."),
    bn: str = typer.Option("sync", "--bn", help="Multi-process BatchNorm: sync (global-batch statistics, as one "
                                                "process) or local (per-rank statistics, fewer collectives)."),
) -> None:
    """Search an architecture distribution with a latency table; writes a run directory (resumable)."""
    from . import distributed

    con = _console()
    if nproc < 1:
        _fail(f"--nproc {nproc}: at least 1")
    stored, data, data_limit, data_note = _search_data(out, resume, data, data_limit, data_dir)
    if nproc > 1:
        args = _search_args(space, table, preset_name, data, epochs, out, resume, seed, torch_device, batch_size,
                            data_dir, threads or distributed.default_threads(nproc), overrides, bn, data_limit)
        _launch(args, nproc, out)
    if threads:
        import torch

        torch.set_num_threads(threads)
    preset_kw = dict(space=space, tables=tuple(table), data=data, epochs=epochs, seed=seed, batch_size=batch_size,
                     data_dir=data_dir, data_limit=data_limit)
    cfg, history, ddp = _search_run(con, preset_name, preset_kw, torch_device, bn, overrides, stored, out,
                                    resume, data_note)
    if ddp is not None and not ddp.is_main:
        return
    done = history[-1]["epoch"] + 1 if history else 0
    con.print(f"run {out}: {done}/{cfg.epochs} epochs; control {cfg.control.kind} -> {RunDir(out).control}",
              highlight=False)


def _search_data(out: str, resume: bool, data: str | None, data_limit: int | None, data_dir: str | None):
    """(stored config, data, data_limit, note): --resume keeps the run's own data unless given again."""
    from .data import default_data

    data_note = None
    stored = RunDir(out).stored_config() if resume else None
    if stored is not None:  # --resume: the run's own data unless given again
        data = stored["data"] if data is None else data
        data_limit = stored.get("data_limit") if data_limit is None else data_limit
    elif data is None:
        data, data_note = default_data(data_dir)
    return stored, data, data_limit, data_note


def _search_run(con, preset_name: str, preset_kw: dict, torch_device: str, bn: str, overrides: list[str],
                stored: dict | None, out: str, resume: bool, data_note: str | None):
    """(config, history, ddp) of one search process; every failure ends the command with its one line."""
    from . import distributed

    ddp = None
    finished = False  # every rank got through the search: they leave the group together
    try:
        if bn not in ("sync", "local"):
            raise distributed.DistError(f"--bn {bn!r}: use sync or local")
        ddp, torch_device = distributed.init_from_env(torch_device, bn == "sync")
        cfg = _search_config(preset_name, preset_kw, torch_device, overrides, stored, out)
        if data_note and os.environ.get("RANK", "0") == "0" and not os.environ.get(distributed.LAUNCHED_ENV):
            con.print(f"data: {data_note}", highlight=False)  # once the options are known to be good
        if (ddp is None or ddp.is_main) and (note := _tables_outside_loss(cfg)):
            con.print(note, highlight=False)
        history = _search_with_progress(cfg, out, resume, con, ddp is None or ddp.is_main)
        finished = True
    except UserError as e:
        _fail(str(e))
    except KeyboardInterrupt:
        if RunDir(out).checkpoint.is_file():
            _fail(f"interrupted; the last finished epoch is checkpointed in {out}: add --resume to continue", 130)
        _fail(f"interrupted before the first epoch finished: no checkpoint in {out} to resume; remove {out} and run "
              f"the same command again", 130)
    except Exception as e:
        if distributed.env_world() <= 1 or not distributed.peer_lost(e):
            raise
        if os.environ.get(distributed.LAUNCHED_ENV):
            raise typer.Exit(distributed.PEER_LOST)  # the launcher prints the one line
        _fail(f"rank {os.environ.get('RANK')}: another worker failed or did not join in time "
              f"({(str(e).splitlines() or [type(e).__name__])[0][:200]}); the last finished epoch (if any) is "
              f"checkpointed in {out}: add --resume to continue", distributed.PEER_LOST)
    finally:
        distributed.shutdown(finished)
    return cfg, history, ddp


def _tables_outside_loss(cfg) -> str | None:
    """A note when a second or later --table is in no cost term: the search ignores it (derive does not)."""
    from .config import idle_tables

    idle = idle_tables(cfg)
    if not idle:
        return None
    names = ", ".join(f"{cfg.tables[n]} (latency:{n})" for n in idle)
    add = ",".join(f'"{t}"' for t in (*cfg.control.cost_terms, *(f"latency:{n}" for n in idle)))
    return (f"note: --table {names} is in no cost term, so the search does not see it (derive, budgets and the "
            f"family still use it); to condition the search on it: --set 'control.cost_terms=[{add}]'")


def _search_config(preset_name: str, preset_kw: dict, torch_device: str, overrides: list[str], stored: dict | None,
                   out: str):
    """The preset with the --set overrides; on --resume, overrides that would change the run are refused."""
    from .config import apply_overrides, preset

    cfg = apply_overrides(preset(preset_name, torch_device=torch_device, **preset_kw), overrides)
    if stored is not None and overrides:
        from .config import check_resume_overrides

        check_resume_overrides(stored, cfg, overrides, str(RunDir(out).config))
    return cfg


def _search_with_progress(cfg, out: str, resume: bool, con, show: bool) -> list:
    """``search`` with a progress bar and one line per epoch (``show``: this process reports)."""
    import math

    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn

    from profiler.progress import progress

    from .train import search

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
                          f"tau {ev['tau']:.3g}, arch max p {fmt(ev.get('arch_max_prob'))}, {ev['wall_s']:.1f} s",
                          highlight=False)

        return search(cfg, out, resume=resume, on_progress=on_progress if show else None)


def _search_args(space: str, tables: list[str], preset_name: str, data: str, epochs: int, out: str, resume: bool,
                 seed: int, torch_device: str, batch_size: int | None, data_dir: str | None, threads: int,
                 overrides: list[str], bn: str, data_limit: int | None = None) -> list[str]:
    """The ``hwnas search`` arguments a worker of ``--nproc`` is started with (everything but ``--nproc``)."""
    args = ["search", "--space", space, "--preset", preset_name, "--data", data, "--epochs", str(epochs),
            "--out", out, "--seed", str(seed), "--torch-device", torch_device, "--threads", str(threads), "--bn", bn]
    args += [a for t in tables for a in ("--table", t)] + [a for o in overrides for a in ("--set", o)]
    args += ["--resume"] if resume else []
    args += ["--batch-size", str(batch_size)] if batch_size is not None else []
    args += ["--data-dir", data_dir] if data_dir is not None else []
    args += ["--data-limit", str(data_limit)] if data_limit is not None else []
    return args


def _launch(args: list[str], nproc: int, out: str) -> NoReturn:
    """Run ``args`` as ``nproc`` workers and end this command with their outcome."""
    from . import distributed

    if distributed.env_world() > 1:
        _fail(f"--nproc {nproc} inside a torch.distributed job (WORLD_SIZE={distributed.env_world()}): use either "
              f"--nproc or torchrun, not both")
    outcome = distributed.launch(args, nproc, out)
    if outcome.message:
        _fail(outcome.message, outcome.code)
    raise typer.Exit(outcome.code)


# ------------------------------------------------------------------ family: derive, train, export, run, report


@app.command("derive")
def derive_cmd(
    run_dir: Path = typer.Argument(..., help="Search run directory (hwnas search --out) or an hwnas run output "
                                             "(runs/cpu: its search/ is used)."),
    control: Optional[str] = typer.Option(None, "--control", help="One control value, e.g. kappa=0.3,S=0.5:0.5."),
    latency_ms: Optional[str] = typer.Option(None, "--latency-ms", help="Latency budgets, e.g. 3,5,8; on a run with "
                                         "several tables one limit per device, e.g. cpu-1t=0.2,tvm-cpu=3 (every "
                                         "limit must hold; DEV=0.2:0.3 gives one budget per value)."),
    params: Optional[str] = typer.Option(None, "--params",
                                         help="Params budget, e.g. 100k (alone or with --latency-ms)."),
    family: Optional[int] = typer.Option(None, "--family", help="N distinct Pareto-optimal architectures."),
    fill: bool = typer.Option(True, "--fill/--no-fill", help="Budgets: change the fewest layers of the nearest "
                                                             "over-budget architecture that meet the budget "
                                                             "(marked kind=filled in the JSON)."),
    keep_blind: bool = typer.Option(False, "--keep-blind", help="Family: keep architectures whose logits depend on "
                                    "under a quarter of the input's pixels (left out by default: they train to about "
                                    "chance)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Output directory (default RUN/derived)."),
    accept_changed: bool = typer.Option(False, "--accept-changed-tables",
                                        help="Derive although a table changed since the search (uses the tables "
                                             "and calibrations as they are now)."),
) -> None:
    """Architectures from a trained run, no retraining: at a control, by budgets, or a family of N."""
    modes = sum(x is not None for x in (control, family)) + (latency_ms is not None or params is not None)
    if modes != 1:
        _fail("give exactly one of --control, --latency-ms/--params, --family")
    from .derive import write_derived
    from .run import load_run

    con = _console()
    run = load_run(run_dir, accept_changed_tables=accept_changed)
    for note in run.notes:
        con.print(f"[yellow]{note}", highlight=False)
    items = _derive_items(run, run_dir, con, control, family, latency_ms, params, fill, keep_blind)
    summary = write_derived(items, out or Path(run_dir) / "derived")
    _print_derived(items, summary, con)
    if latency_ms is not None or params is not None:
        if not all(it.meets for it in items):
            raise typer.Exit(1)


def _derive_items(run, run_dir: Path, con, control: str | None, family: int | None, latency_ms: str | None,
                  params: str | None, fill: bool, keep_blind: bool = False) -> list:
    """The ``Derived`` items of the one mode given (control, family or budgets), with its console lines."""
    from .derive import (
        Derived,
        Deriver,
        check_control,
        derive_budgets,
        derive_family,
        family_items,
        family_message,
        parse_budgets,
        parse_control,
        parse_count,
        to_arch,
    )

    d = Deriver(run)
    items: list[Derived] = []
    if control is not None:
        c = check_control(run, parse_control(control))
        cand = d.evaluate(c)
        items.append(Derived("arch", to_arch(run, cand, "control", str(run_dir))))
    elif family is not None:
        cands, stats = derive_family(d, family, keep_blind=keep_blind)
        items = family_items(run, cands, stats, str(run_dir))
        for i, line in enumerate(family_message(stats, family, len(items))):
            con.print(("[yellow]" if i else "") + line, highlight=False)
    else:
        p = parse_count(params) if params is not None else None
        results = derive_budgets(d, parse_budgets(latency_ms, d.devices, p), fill=fill)
        for i, r in enumerate(results):
            con.print(("[green]" if r.ok else "[yellow]") + r.message(), highlight=False)
            items.append(Derived(f"budget-{i:02d}", to_arch(run, r.closest, "budget", str(run_dir)),
                                 budget=r.budget, meets=r.ok, note="" if r.ok else "closest; budget not met"))
    return items


def _print_derived(items: list, summary, con) -> None:
    """The derived architectures as a table on stdout, and where they were written."""
    from .report import format_table

    rows = [{"member": it.name, "ops": " ".join(it.arch.choices), "params": it.arch.params,
             "predicted_ms": it.arch.predicted_ms, "predicted_ms_by_device": it.arch.predicted_ms_by_device,
             **({"note": it.note} if any(i.note for i in items) else {})}
            for it in items]
    typer.echo(format_table(rows))
    con.print(f"wrote {len(items)} architecture(s) and {summary}")


@app.command("train")
def train_cmd(
    arch_path: Path = typer.Argument(..., help="Architecture JSON (hwnas derive)."),
    data: Optional[str] = typer.Option(None, "--data", help="fashion-mnist, digits, cifar10, mnist, npz:PATH or a "
                                       "folder (default: fashion-mnist when installed, else digits)."),
    epochs: int = typer.Option(10, "--epochs", help="Training epochs."),
    out: Path = typer.Option(..., "--out", "-o", help="Output directory (weights.safetensors, train.json)."),
    batch_size: int = typer.Option(64, "--batch-size"),
    lr: float = typer.Option(0.05, "--lr"),
    seed: int = typer.Option(0, "--seed"),
    data_dir: Optional[str] = typer.Option(None, "--data-dir", help="Where torchvision datasets live."),
) -> None:
    """Train an architecture from scratch; report test accuracy; save the weights (safetensors)."""
    from profiler.spaces.arch import load_arch

    from .data import default_data
    from .retrain import TrainConfig

    con = _console()
    if data is None:
        data, note = default_data(data_dir)
        con.print(f"data: {note}", highlight=False)
    arch = load_arch(arch_path)
    cfg = TrainConfig(data=data, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, data_dir=data_dir)
    try:
        res = _train_with_progress(arch, cfg, out, con)
    except KeyboardInterrupt:
        _fail("interrupted; nothing was written", 130)
    typer.echo(f"test accuracy {res.test_acc * 100:.2f} % (best val {res.val_acc * 100:.2f} % at epoch "
               f"{res.best_epoch}), {res.wall_s:.1f} s; weights {res.weights}")


def _train_with_progress(arch, cfg, out: Path, con: Console):
    """``retrain`` with a progress bar of its epochs."""
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn

    from profiler.progress import progress

    from .retrain import retrain

    with progress(TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TextColumn("{task.fields[note]}"), console=con) as bar:
        task = bar.add_task("train", total=cfg.epochs, note="")
        return retrain(arch, cfg, out, on_epoch=lambda r: bar.update(
            task, completed=r["epoch"], note=f"loss {r['train_loss']:.3f} val {r['val_acc'] * 100:.1f} %"))


@app.command("export")
def export_cmd(
    arch_path: Path = typer.Argument(..., help="Architecture JSON (hwnas derive)."),
    weights: Optional[Path] = typer.Option(None, "--weights", "-w", help="Trained weights (hwnas train)."),
    out: Path = typer.Option(..., "--out", "-o", help="ONNX file to write."),
) -> None:
    """A self-contained ONNX model (architecture JSON in its metadata), checked against PyTorch on one input."""
    from profiler.spaces.arch import export_arch, load_arch

    path, err = export_arch(load_arch(arch_path), out, weights)
    typer.echo(f"{path}: max |onnxruntime - torch| / max |torch| = {err:.2e}"
               + ("" if weights else " (untrained weights)"))
    if not err < 1e-3:
        _fail(f"{path}: onnxruntime output differs from PyTorch by {err:.2e}", 1)


RUN_FMNIST_LIMIT = 2500  # hwnas run on fashion-mnist: 2250 train / 250 val images, 2500 test (README, family)
QUICK_FMNIST_LIMIT = 1200


@app.command("run")
def run_cmd(
    device: list[str] = typer.Option(["cpu-1t"], "--device", "-d", help="Device name from devices.yaml (default "
                                     "cpu-1t: see hwprof doctor for whether all cores time stably here); repeat it to "
                                     "search once conditioned on every device (members are timed on each)."),
    quick: bool = typer.Option(False, "--quick", help="~2 min: small space, fast protocol, short training."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Output directory (default runs/DEVICE[-quick])."),
    space: Optional[str] = typer.Option(None, "--space",
                                        help="Space spec (default fbnet-cifar:input_size=16,width=0.5)."),
    table: list[Path] = typer.Option([], "--table", help="Latency table (default tables/DEVICE/SPACE.csv); with "
                                                         "several --device, one per device in the same order."),
    data: Optional[str] = typer.Option(None, "--data", help="Default: fashion-mnist when installed, else digits."),
    data_limit: Optional[int] = typer.Option(None, "--data-limit", help="fashion-mnist: a seeded N training images "
                                                                       f"(default {RUN_FMNIST_LIMIT}, quick "
                                                                       f"{QUICK_FMNIST_LIMIT}); 0 = all."),
    data_dir: Optional[str] = typer.Option(None, "--data-dir", help="Where Fashion-MNIST's IDX files are."),
    family: Optional[int] = typer.Option(None, "--family", help="Members of the family."),
    search_epochs: Optional[int] = typer.Option(None, "--search-epochs"),
    retrain_epochs: Optional[int] = typer.Option(None, "--retrain-epochs"),
    seed: int = typer.Option(0, "--seed"),
    calibrate: bool = typer.Option(True, "--calibrate/--no-calibrate",
                                   help="Fit the table's calibration on random whole networks first (if it has none)."),
) -> None:
    """The main job: table -> search -> family -> retrain -> ONNX -> measure on DEVICE -> table + Pareto PNG."""
    con = _console()
    cfg, out = _run_config(con, device, quick, out, space, table, data, data_limit, data_dir, family,
                           search_epochs, retrain_epochs, seed, calibrate)
    try:
        res = _run_with_progress(cfg, out, con)
    except KeyboardInterrupt:
        _fail(f"interrupted before any member finished; finished stages are kept in {out}: run the same "
                  f"command to continue", 130)
    _print_run_result(res, out, con)
    if res.interrupted:
        raise typer.Exit(130)
    if any(r.get("status") != "ok" for r in res.rows):
        raise typer.Exit(1)


def _run_config(con, device: list[str], quick: bool, out: Path | None, space: str | None, table: list[Path],
                data: str | None, data_limit: int | None, data_dir: str | None, family: int | None,
                search_epochs: int | None, retrain_epochs: int | None, seed: int, calibrate: bool):
    """The ``RunConfig`` and output directory of ``hwnas run``, announced on the console with its estimate."""
    from .data import default_data
    from .pipeline import RunConfig, estimate_line

    note = data
    if data is None:
        data, note = default_data(data_dir)
    if data == "fashion-mnist" and data_limit is None:
        data_limit = QUICK_FMNIST_LIMIT if quick else RUN_FMNIST_LIMIT
    kw = dict(device=device[0], more_devices=tuple(device[1:]), space=space, table=str(table[0]) if table else None,
              more_tables=tuple(str(t) for t in table[1:]), data=data, family=family, data_limit=data_limit or None,
              data_dir=data_dir, search_epochs=search_epochs, retrain_epochs=retrain_epochs, seed=seed,
              calibrate=calibrate)
    cfg = RunConfig.quick_defaults(**kw) if quick else RunConfig(**{k: v for k, v in kw.items() if v is not None})
    out = out or Path("runs") / ("+".join(device) + ("-quick" if quick else ""))
    shown = note + (f", {cfg.data_limit} training images" if cfg.data_limit else "")
    devs = "+".join(cfg.devices)
    con.print(f"hwnas run: space {cfg.space}, device {devs}, data {shown}, search {cfg.search_epochs} "
              f"epochs, family {cfg.family}, retrain {cfg.retrain_epochs} epochs -> {out}", highlight=False)
    try:
        con.print(estimate_line(cfg, out), highlight=False)
    except ValueError:  # a bad --space: the pipeline says so in its own words
        pass
    return cfg, out


def _run_with_progress(cfg, out: Path, con):
    """``run_pipeline`` with one progress bar per stage."""
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn

    from profiler.progress import progress

    from .pipeline import run_pipeline

    with progress(TextColumn("[bold]{task.description:<7}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), TextColumn("[dim]{task.fields[note]}"), console=con) as bar:
        tasks: dict[str, int] = {}

        def on_event(e) -> None:
            if e.stage not in tasks:
                tasks[e.stage] = bar.add_task(e.stage, total=e.total, note="")
            bar.update(tasks[e.stage], completed=e.done, total=e.total, note=e.note[:60])

        return run_pipeline(cfg, out, on_event)


def _print_run_result(res, out: Path, con) -> None:
    """The run's notes, its family table on stdout, and where the table and plots are."""
    from .report import format_table

    for n in res.notes:
        con.print(n, highlight=False)
    typer.echo(format_table(res.rows))
    con.print(f"family table {out / 'family.csv'}, Pareto plot {res.pareto_png}, curves {res.curves_png}; "
              f"{res.wall_s:.0f} s (" + ", ".join(f"{k} {v:.0f} s" for k, v in res.stage_s.items()) + ")",
              highlight=False)


@app.command("report")
def report_cmd(run_dir: Path = typer.Argument(..., help="An hwnas run directory (or a search run).")) -> None:
    """The family table and the plots (Pareto front; training curves from metrics.jsonl)."""
    from .pipeline import report_run
    from .report import format_table

    rows, pareto, curves = report_run(run_dir)
    if rows:
        typer.echo(format_table(rows))
    _console().print(f"plots: {pareto or '-'} {curves or '-'}")
