"""Training: the one weights step loop (:func:`fit_epoch`, :func:`evaluate`) and the search loop (:func:`search`).

``fit_epoch`` is shared by the search (both single-level and bilevel) and by retraining derived networks: the search
passes a ``forward`` that samples a control value and op weights and returns the search loss, and, for bilevel
optimisation, a ``before_step`` hook that takes the architecture step on the other split.

The search loop writes its run directory through :class:`search.rundir.RunDir`: ``config.json`` (the resolved
config), ``metrics.jsonl`` (one line per epoch), ``checkpoint.pt`` (atomic, every epoch: weights, control, optimisers
and every RNG state, so a resumed run ends exactly where an uninterrupted one would) and ``control.pt`` (the final
control state_dict).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from profiler.spaces.space import Space, get_space

from . import distributed
from .config import SearchConfig
from .control import Control, Value, build_control
from .costs import CostModel, open_table
from .data import Splits, load_data
from .losses import search_loss
from .rundir import RunDir, SearchError
from .samplers import Sampler, entropy_weight, mean_entropy, temperature
from .supernet import SearchModel

Forward = Callable[[nn.Module, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor, dict[str, Any]]]


class NonFiniteLoss(RuntimeError):
    def __init__(self, step: int, value: float, last: dict[str, float]):
        super().__init__(f"loss {value} at step {step}")
        self.step, self.value, self.last = step, value, last


def _device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def _plain(v: Any) -> Any:
    if isinstance(v, torch.Tensor):
        return float(v.detach()) if v.numel() == 1 else [float(x) for x in v.detach().reshape(-1)]
    return v


def fit_epoch(model: nn.Module, loader, optimizer, *, forward: Forward | None = None, grad_clip: float | None = None,
              before_step: Callable[[int], None] | None = None,
              on_step: Callable[[int, dict[str, float]], None] | None = None,
              max_steps: int | None = None,
              backward: Callable[[torch.Tensor, list], None] | None = None) -> dict[str, float]:
    """One pass over ``loader``: zero grads, forward, backward, clip, step every optimiser.

    ``optimizer`` is one optimiser or a sequence (single-level search steps weights and architecture together);
    ``grad_clip`` clips the gradient norm of the first optimiser's parameters. ``forward(model, x, y)`` returns
    ``(loss, outputs, info)``; by default it is cross-entropy of ``model(x)``. A non-finite loss raises
    :class:`NonFiniteLoss` before anything is stepped. ``backward(loss, opts)`` replaces ``loss.backward()``
    (multi-process: this rank's share, then gradients summed over ranks). Returns mean loss, accuracy, steps,
    samples and the mean of every numeric ``info`` entry.
    """
    opts = list(optimizer) if isinstance(optimizer, (list, tuple)) else [optimizer]
    clip_params = [p for grp in opts[0].param_groups for p in grp["params"]] if grad_clip else []
    model.train()
    dev = _device(model)
    n = correct = 0
    loss_sum = 0.0
    sums: dict[str, float] = {}
    last: dict[str, float] = {}
    step = -1
    for step, (x, y) in enumerate(loader):
        if max_steps is not None and step >= max_steps:
            step -= 1
            break
        x, y = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)
        if before_step is not None:
            before_step(step)
        for o in opts:
            o.zero_grad(set_to_none=True)
        if forward is None:
            out = model(x)
            loss, info = F.cross_entropy(out, y), {}
        else:
            loss, out, info = forward(model, x, y)
        lv = float(loss.detach())
        if not math.isfinite(lv):
            raise NonFiniteLoss(step, lv, last)
        loss.backward() if backward is None else backward(loss, opts)
        if grad_clip:
            nn.utils.clip_grad_norm_(clip_params, grad_clip)
        for o in opts:
            o.step()
        b = int(y.shape[0])
        n += b
        loss_sum += lv * b
        correct += int((out.detach().argmax(dim=1) == y).sum())
        last = {"loss": lv}
        for k, v in info.items():
            v = _plain(v)
            if isinstance(v, (int, float)):
                sums[k] = sums.get(k, 0.0) + float(v) * b
                last[k] = float(v)
        if on_step is not None:
            on_step(step, last)
    n = max(n, 1)
    return {"loss": loss_sum / n, "acc": correct / n, "steps": step + 1, "samples": n,
            **{k: v / n for k, v in sums.items()}}


@torch.no_grad()
def evaluate(model: nn.Module, loader, forward: Forward | None = None) -> dict[str, float]:
    """Mean loss and accuracy over ``loader`` in eval mode (``forward`` as in :func:`fit_epoch`)."""
    model.eval()
    dev = _device(model)
    n = correct = 0
    loss_sum = 0.0
    for x, y in loader:
        x, y = x.to(dev), y.to(dev)
        if forward is None:
            out = model(x)
            loss = F.cross_entropy(out, y)
        else:
            loss, out, _ = forward(model, x, y)
        n += int(y.shape[0])
        loss_sum += float(loss) * int(y.shape[0])
        correct += int((out.argmax(dim=1) == y).sum())
    n = max(n, 1)
    return {"loss": loss_sum / n, "acc": correct / n}


def cosine_lr(lr: float, lr_min: float | None, epoch: int, epochs: int) -> float:
    if lr_min is None:
        return lr
    return lr_min + 0.5 * (lr - lr_min) * (1 + math.cos(math.pi * epoch / max(1, epochs)))


def set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    for g in opt.param_groups:
        g["lr"] = lr


# ------------------------------------------------------------------------------------------------ the search


@dataclass
class Setup:
    """Everything a search (or a loaded run) is built from."""

    cfg: SearchConfig
    space: Space
    tables: list
    costs: CostModel
    control: Control
    model: SearchModel | None


def resolve_terms(cfg: SearchConfig, costs: CostModel) -> SearchConfig:
    """Drop zero-weight static terms that need a missing table (darts without --table); check the others."""
    c = cfg.control
    if c.kind == "static" and cfg.loss == "additive" and not any(c.weights):
        keep = tuple(t for t in c.cost_terms if t in costs.info)
        if keep != tuple(c.cost_terms):
            w = tuple(w for t, w in zip(c.cost_terms, c.weights or (0.0,) * len(c.cost_terms)) if t in costs.info)
            cfg.control.cost_terms, cfg.control.weights = keep, w
    for t in c.cost_terms:
        if t not in costs.info:
            raise SearchError(f"preset {cfg.preset} uses cost term {t!r}, which needs a latency table: pass --table "
                              f"(measure one with `hwprof measure --device cpu --space {cfg.space}`)")
    if cfg.loss != "additive" and "latency" not in costs.info:
        raise SearchError(f"loss {cfg.loss!r} needs a latency table: pass --table (measure one with "
                          f"`hwprof measure --device cpu --space {cfg.space}`)")
    return cfg


def build(cfg: SearchConfig, *, check_terms: bool = True, with_model: bool = True) -> Setup:
    """Space, tables, cost tensors, control and supernet of ``cfg`` (weights initialised from ``cfg.seed``)."""
    try:
        space = get_space(cfg.space)
    except ValueError as e:
        raise SearchError(str(e)) from None
    tables = [open_table(t, space) for t in cfg.tables]
    costs = CostModel(space, tables)
    if check_terms:
        cfg = resolve_terms(cfg, costs)
    torch.manual_seed(cfg.seed)
    g = torch.Generator().manual_seed(cfg.seed)
    control = build_control(cfg.control, len(space.layers), space.ops, costs, generator=g)
    metric = tuple(t for t in ("params", "latency") if t in costs.info)
    model = SearchModel(space, control, Sampler(cfg.sampler, cfg.per_sample, cfg.no_shortcut_tau_min), costs, metric,
                        cfg.cost_under, supernet=cfg.supernet, zero_residual=cfg.zero_residual) if with_model else None
    return Setup(cfg, space, tables, costs, control, model)


def default_control(control: Control, cfg: SearchConfig) -> Value:
    """The control used for validation metrics: ``control.eval_control`` or the middle of the trained range."""
    plain = dict(cfg.control.eval_control)
    cs = control.space()
    if not plain and cs.magnitude and cs.bounds:
        plain[cs.magnitude] = math.sqrt(cs.bounds[0] * cs.bounds[1])
    return control.value(plain)


def control_grid(control: Control, n: int = 5) -> list[Value]:
    """A fixed grid of control values: ``n`` log-spaced magnitudes (kappa / lambda) x the simplex's vertices and
    centre (S); one value for controls without either. The same grid every epoch, so arch_max_prob is comparable."""
    cs = control.space()
    mags: list[dict[str, float]] = [{}]
    if cs.magnitude and cs.bounds:
        mags = [{cs.magnitude: float(v)} for v in np.geomspace(cs.bounds[0], cs.bounds[1], n)]
    dim = cs.s_dim
    dirs: list[dict[str, list[float]]] = [{}]
    if dim >= 1:
        dirs = [{"S": row} for row in np.eye(dim).tolist()] + ([{"S": [1.0 / dim] * dim}] if dim > 1 else [])
    return [control.value({**m, **d}) for d in dirs for m in mags]


@torch.no_grad()
def arch_decidedness(control: Control, grid: Sequence[Value]) -> dict[str, float]:
    """``arch_max_prob``: mean over layers of the largest op probability; ``arch_entropy``: mean per-layer entropy
    (nats; log K is uniform); both averaged over ``grid``."""
    maxp = ent = 0.0
    for c in grid:
        p = torch.softmax(control(c), dim=-1)
        maxp += float(p.max(dim=-1).values.mean())
        ent += float(mean_entropy(p))
    return {"arch_max_prob": maxp / len(grid), "arch_entropy": ent / len(grid)}


def _subset(ds: TensorDataset, limit: int | None) -> TensorDataset:
    if limit is None or limit >= len(ds):
        return ds
    return TensorDataset(*(t[:limit] for t in ds.tensors))


def _loader(ds: TensorDataset, batch: int, g: torch.Generator | None, shuffle: bool) -> DataLoader:
    return DataLoader(ds, batch_size=batch, shuffle=shuffle, generator=g if shuffle else None, drop_last=False)


def _rng_state(gens: dict[str, torch.Generator]) -> dict[str, torch.Tensor]:
    state = {"torch": torch.get_rng_state(), **{k: g.get_state() for k, g in gens.items()}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict[str, torch.Tensor], gens: dict[str, torch.Generator]) -> None:
    torch.set_rng_state(state["torch"])
    for k, g in gens.items():
        g.set_state(state[k])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


ProgressFn = Callable[[dict[str, Any]], None]


def search(cfg: SearchConfig, out: str | Path, *, resume: bool = False, splits: Splits | None = None,
           on_progress: ProgressFn | None = None, stop_after: int | None = None) -> list[dict[str, Any]]:
    """Run (or resume) a search into run directory ``out``; returns the metrics of every epoch.

    ``stop_after`` ends the call after that many epochs of this call (as a kill would, but cleanly); ``splits``
    passes already loaded data (tests). One process at a time writes a run directory (a second gets a
    ``LockedError`` naming the first one's PID).
    """
    from contextlib import nullcontext

    run_dir = RunDir(out)
    ddp = distributed.current()  # several ranks share one run directory: only rank 0 writes it, so only it locks
    with run_dir.lock() if ddp is None or ddp.is_main else nullcontext():
        return _search(cfg, run_dir, resume, splits, on_progress, stop_after)


def _search(cfg: SearchConfig, run_dir: RunDir, resume: bool, splits: Splits | None, on_progress: ProgressFn | None,
            stop_after: int | None) -> list[dict[str, Any]]:
    """The search in named steps: check the run directory, build, load data and loaders, restore a checkpoint,
    write the run's start, then per epoch train, evaluate, record and checkpoint."""
    cfg = _check_run_dir(cfg, run_dir, resume)
    setup = build(cfg)
    cfg, space, model, control = setup.cfg, setup.space, setup.model, setup.control
    dev = torch.device(cfg.torch_device)
    splits = _load_splits(cfg, space, splits)
    model.to(dev)
    ddp = distributed.current()  # None: one process
    if ddp is not None:
        ddp.prepare(model)
    gens = {k: torch.Generator().manual_seed(cfg.seed * 1000 + i) for i, k in enumerate(("data", "arch", "adata"))}
    w_loader, a_loader, val_loader = _loaders(cfg, splits, gens, ddp)
    main = ddp is None or ddp.is_main  # only rank 0 writes the run directory

    wo, ao = cfg.weights_opt, cfg.arch_opt
    w_opt = torch.optim.SGD(model.weight_parameters(), lr=wo.lr, momentum=wo.momentum, weight_decay=wo.weight_decay)
    a_opt = torch.optim.Adam(model.arch_parameters(), lr=ao.lr, betas=tuple(ao.betas), weight_decay=ao.weight_decay)
    start, last_finite = 0, {}
    if resume and run_dir.checkpoint.is_file():
        start, last_finite = _restore(run_dir, dev, model, w_opt, a_opt, gens)
    history = run_dir.read_metrics(before_epoch=start)
    if ddp is not None:
        ddp.barrier()  # every rank has checked and read the run directory before rank 0 writes it
    if main:
        run_dir.write_start(cfg, setup.tables, resume, history)
    loop = _EpochLoop(setup, _Objective(cfg, setup, gens["arch"]), control_grid(control), dev, ddp, gens,
                      w_loader, a_loader, val_loader, w_opt, a_opt, last_finite, run_dir, on_progress)
    t_start = time.perf_counter()
    done_this_call = 0
    for epoch in range(start, cfg.epochs):
        if stop_after is not None and done_this_call >= stop_after:
            break
        rec = loop.run_epoch(epoch, start + done_this_call, t_start)
        if main:
            run_dir.append_metrics(rec)
        history.append(rec)
        if main:
            loop.checkpoint(epoch)
        done_this_call += 1
        if on_progress is not None:
            on_progress({"event": "epoch", **rec, "epochs": cfg.epochs})
    if main and history and history[-1]["epoch"] == cfg.epochs - 1:
        run_dir.save_control(control.state_dict())
    return history


@dataclass
class _EpochLoop:
    """What one search epoch uses: the built run, its objective, loaders, optimisers and generators."""

    setup: Setup
    objective: "_Objective"
    grid: list[Value]
    dev: torch.device
    ddp: Any
    gens: dict[str, torch.Generator]
    w_loader: DataLoader
    a_loader: DataLoader | None
    val_loader: DataLoader
    w_opt: torch.optim.Optimizer
    a_opt: torch.optim.Optimizer
    last_finite: dict[str, float]
    run_dir: RunDir
    on_progress: ProgressFn | None

    def run_epoch(self, epoch: int, kept_epoch: int, t_start: float) -> dict[str, Any]:
        """Train one epoch (weights, and the architecture once past warm-up), evaluate; the epoch's record.
        ``kept_epoch`` is the epoch the checkpoint on disk holds (named when the loss becomes non-finite)."""
        cfg, wo, ddp, objective = self.setup.cfg, self.setup.cfg.weights_opt, self.ddp, self.objective
        t0 = time.perf_counter()
        tau = temperature(cfg.temperature, epoch, cfg.epochs)
        ent_w = entropy_weight(cfg.entropy_weight, epoch, cfg.epochs, cfg.warmup_epochs)
        objective.tau, objective.ent_w = tau, ent_w
        lr = cosine_lr(wo.lr, wo.lr_min, epoch, cfg.epochs)
        set_lr(self.w_opt, lr)
        arch_on = epoch >= cfg.warmup_epochs
        steps = len(self.w_loader)
        before = None
        if cfg.optimisation == "bilevel" and arch_on:
            before = _arch_step(objective, self.a_loader, self.a_opt, self.dev, self.last_finite, ddp)
        opts = [self.w_opt, self.a_opt] if (cfg.optimisation == "single" and arch_on) else [self.w_opt]

        def on_step(step: int, info: dict[str, float]) -> None:
            self.last_finite.update(info)
            if self.on_progress is not None:
                self.on_progress({"event": "step", "epoch": epoch, "epochs": cfg.epochs, "step": step + 1,
                                  "steps": steps, "tau": tau, **info})

        try:
            tr = fit_epoch(self.setup.model, self.w_loader, opts, forward=objective.forward, grad_clip=wo.grad_clip,
                           before_step=before, on_step=on_step, backward=ddp and ddp.backward)
        except NonFiniteLoss as e:
            raise _non_finite_error(e, epoch, kept_epoch, self.run_dir.checkpoint) from None
        if ddp is not None:
            tr = ddp.reduce_train(tr)
        va = (evaluate if ddp is None else ddp.evaluate)(self.setup.model, self.val_loader, objective.eval_forward)
        return {"epoch": epoch, "tau": tau, "lr": lr, "arch_trained": arch_on, "entropy_weight": ent_w,
                **{f"train_{k}": v for k, v in tr.items()}, "val_loss": va["loss"], "val_acc": va["acc"],
                **_eval_arch(self.setup, objective.eval_c, self.grid), "wall_s": time.perf_counter() - t0,
                "elapsed_s": time.perf_counter() - t_start}

    def checkpoint(self, epoch: int) -> None:
        """Save weights, optimisers and every RNG state after ``epoch`` (atomic), so a resume continues exactly."""
        self.run_dir.save_checkpoint({"epoch": epoch + 1, "model": self.setup.model.state_dict(),
                                      "w_opt": self.w_opt.state_dict(), "a_opt": self.a_opt.state_dict(),
                                      "rng": _rng_state(self.gens), "last_finite": dict(self.last_finite)})


def _check_run_dir(cfg: SearchConfig, run_dir: RunDir, resume: bool) -> SearchConfig:
    """The config to run with (the stored one on ``resume``); refuses a fresh run into a used directory and a
    CUDA device this torch cannot use."""
    cfg.tables = tuple(str(Path(t).resolve()) for t in cfg.tables)
    cfg.validate()
    cfg = run_dir.start(cfg, resume)
    if cfg.torch_device.startswith("cuda") and not torch.cuda.is_available():
        raise SearchError("--torch-device cuda: no CUDA device is available to this torch build; use cpu")
    return cfg


def _load_splits(cfg: SearchConfig, space: Space, splits: Splits | None) -> Splits:
    """The configured data (or ``splits`` as given); refuses data with more classes than the space's head."""
    if splits is None:
        splits = load_data(cfg.data, space.input_shape[1], space.input_shape[0], cfg.seed, cfg.data_dir,
                           limit=cfg.data_limit)
    if splits.num_classes > space.num_classes:
        raise SearchError(f"data {splits.name} has {splits.num_classes} classes but space {space.spec} has "
                          f"num_classes={space.num_classes}; use --space {space.name}:num_classes="
                          f"{splits.num_classes}")
    return splits


def _loaders(cfg: SearchConfig, splits: Splits, gens: dict[str, torch.Generator],
             ddp: Any) -> tuple[DataLoader, DataLoader | None, DataLoader]:
    """Weights, architecture (bilevel only: the last ``arch_fraction`` of train) and validation loaders, sharded
    over the ranks of a multi-process run."""
    train = _subset(splits.train, cfg.train_limit)
    val = _subset(splits.val, cfg.eval_limit)
    if cfg.optimisation == "bilevel":
        n_arch = max(1, int(round(len(train) * cfg.arch_fraction)))
        w_ds = TensorDataset(*(t[: len(train) - n_arch] for t in train.tensors))
        a_ds = TensorDataset(*(t[len(train) - n_arch:] for t in train.tensors))
    else:
        w_ds, a_ds = train, None
    w_loader = _loader(w_ds, cfg.batch_size, gens["data"], True)
    a_loader = _loader(a_ds, cfg.batch_size, gens["adata"], True) if a_ds is not None else None
    val_loader = _loader(val, 256, None, False)
    if ddp is not None:
        w_loader, a_loader, val_loader = ddp.shard(w_loader), ddp.shard(a_loader), ddp.shard(val_loader, False)
    return w_loader, a_loader, val_loader


def _restore(run_dir: RunDir, dev: torch.device, model: SearchModel, w_opt: torch.optim.Optimizer,
             a_opt: torch.optim.Optimizer, gens: dict[str, torch.Generator]) -> tuple[int, dict[str, float]]:
    """Load a checkpoint into model, optimisers and generators; (the epoch to start at, the last finite values)."""
    ck = run_dir.load_checkpoint(dev)
    model.load_state_dict(ck["model"])
    w_opt.load_state_dict(ck["w_opt"])
    a_opt.load_state_dict(ck["a_opt"])
    _set_rng_state(ck["rng"], gens)
    return int(ck["epoch"]), dict(ck.get("last_finite", {}))


class _Objective:
    """The search loss of a batch (a sampled control value, op weights at temperature ``tau``, an entropy term
    weighted ``ent_w``) and the deterministic evaluation at the default control value."""

    def __init__(self, cfg: SearchConfig, setup: Setup, gen: torch.Generator):
        self.cfg, self.model, self.control, self.gen = cfg, setup.model, setup.control, gen
        self.eval_c = default_control(setup.control, cfg)
        self.ref_lat = cfg.ref_latency_ms
        if cfg.loss == "proxyless" and self.ref_lat is None:
            self.ref_lat = setup.costs.uniform("latency")
        self.tau, self.ent_w = 1.0, 0.0

    def forward(self, m: nn.Module, x: torch.Tensor, y: torch.Tensor):
        cfg = self.cfg
        c = self.control.sample(self.gen)
        r = self.model.run(x, c, self.tau, self.gen)
        ce = F.cross_entropy(r.out, y)
        loss = search_loss(cfg.loss, ce, r.penalty, r.expected.get("latency"), cfg.loss_alpha, cfg.loss_beta,
                           self.ref_lat)
        info = {"ce": ce, "penalty": r.penalty, **{f"E_{k}": v for k, v in r.expected.items()}}
        if self.ent_w > 0:
            h = mean_entropy(r.probs)
            loss = loss + self.ent_w * h
            info["arch_H"] = h
        return loss, r.out, info

    def eval_forward(self, m: nn.Module, x: torch.Tensor, y: torch.Tensor):
        r = self.model.run(x, self.eval_c, self.tau, None, deterministic=True)
        return F.cross_entropy(r.out, y), r.out, {}


def _arch_step(objective: _Objective, a_loader: DataLoader, a_opt: torch.optim.Optimizer, dev: torch.device,
               last_finite: dict[str, float], ddp: Any) -> Callable[[int], None]:
    """Bilevel: the ``before_step`` hook that steps the architecture on the next batch of the architecture split
    (cycling through it)."""
    it = {"it": iter(a_loader)}

    def before(step: int) -> None:
        try:
            x, y = next(it["it"])
        except StopIteration:
            it["it"] = iter(a_loader)
            x, y = next(it["it"])
        x, y = x.to(dev), y.to(dev)
        a_opt.zero_grad(set_to_none=True)
        loss, _, _ = objective.forward(objective.model, x, y)
        if not math.isfinite(float(loss.detach())):
            raise NonFiniteLoss(step, float(loss.detach()), last_finite)
        loss.backward() if ddp is None else ddp.backward(loss, [a_opt])
        a_opt.step()

    return before


def _non_finite_error(e: NonFiniteLoss, epoch: int, kept_epoch: int, ckpt_path: Path) -> SearchError:
    """The one-line error for a loss that became nan/inf, with the last finite values and the checkpoint kept."""
    shown = ", ".join(f"{k}={v:.4g}" for k, v in e.last.items()) or "none (first step)"
    kept = f"checkpoint of epoch {kept_epoch} kept in {ckpt_path}" if ckpt_path.exists() else "no checkpoint yet"
    return SearchError(f"loss became {e.value} at epoch {epoch} step {e.step + 1}; last finite values: "
                       f"{shown}; {kept} (lower the learning rates or check the data)")


def _eval_arch(setup: Setup, eval_c: Value, grid: Sequence[Value]) -> dict[str, Any]:
    """The epoch record's view of the architecture at the default control: its value, expected costs, argmax
    architecture and decidedness over the control grid."""
    model, control, space = setup.model, setup.control, setup.space
    with torch.no_grad():
        logits = control(eval_c)
        probs = torch.softmax(logits, dim=-1)
        exp = {k: float(setup.costs.expected(k, probs)) for k in model.metric_terms}
        arch = [layer.choices[int(i)] for layer, i in zip(space.layers, logits.argmax(dim=-1))]
    return {"eval_control": control.plain(eval_c), **{f"eval_E_{k}": v for k, v in exp.items()},
            "eval_arch": arch, **arch_decidedness(control, grid)}

