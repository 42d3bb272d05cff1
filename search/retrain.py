"""Retrain a derived architecture from scratch with the search's data loaders and its one training loop.

:func:`retrain` builds the network from an :class:`~profiler.spaces.arch.Arch`, trains it with
:func:`search.train.fit_epoch` (SGD, cosine schedule), keeps the weights of the epoch with the best validation
accuracy, reports test accuracy and saves the weights as safetensors (``weights.safetensors``) plus a
``train.json`` summary and ``curve.jsonl`` (one line per epoch) in the output directory.
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch.utils.data import DataLoader

from profiler.errors import UserError
from profiler.fileio import atomic_write_text
from profiler.spaces.arch import Arch, save_weights


@dataclass(frozen=True)
class TrainConfig:
    data: str = "digits"
    epochs: int = 10
    batch_size: int = 64
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 1e-4
    grad_clip: float | None = 5.0
    seed: int = 0
    data_dir: str | None = None
    data_limit: int | None = None  # fashion-mnist: a seeded N of the training set (and N test images)
    max_train_batches: int | None = None  # cap on batches per epoch (quick runs and tests); None = all

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class TrainResult:
    test_acc: float
    test_loss: float
    val_acc: float
    best_epoch: int
    wall_s: float
    weights: Path | None
    history: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["weights"] = str(self.weights) if self.weights else None
        return d


class TrainError(UserError, ValueError):
    """A retraining problem (data does not fit the architecture, ...); one line for the user."""


def load_splits(arch: Arch, cfg: TrainConfig):
    from search.data import load_data

    space = arch.space
    splits = load_data(cfg.data, space.input_shape[1], space.input_shape[0], seed=cfg.seed,
                       data_dir=cfg.data_dir, limit=cfg.data_limit)
    if splits.num_classes != space.num_classes:
        raise TrainError(f"data {cfg.data!r} has {splits.num_classes} classes but the architecture's space "
                         f"{arch.space_spec} has num_classes={space.num_classes}; search a space with "
                         f"num_classes={splits.num_classes}")
    return splits


def retrain(arch: Arch, cfg: TrainConfig, out_dir: Path | None = None, splits: Any = None,
            on_epoch: Callable[[dict[str, Any]], None] | None = None) -> TrainResult:
    """Train ``arch`` from scratch; evaluate on the test split with the best-validation weights."""
    from search.train import evaluate, fit_epoch

    if cfg.epochs < 1:
        raise TrainError(f"epochs={cfg.epochs} must be >= 1")
    splits = splits if splits is not None else load_splits(arch, cfg)
    torch.manual_seed(cfg.seed)
    net = arch.build()
    g = torch.Generator().manual_seed(cfg.seed)
    train_loader = DataLoader(splits.train, batch_size=cfg.batch_size, shuffle=True, generator=g, drop_last=False)
    val_loader = DataLoader(splits.val, batch_size=256)
    test_loader = DataLoader(splits.test, batch_size=256)
    opt = torch.optim.SGD(net.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                          nesterov=True)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs)
    t0 = time.perf_counter()
    history: list[dict[str, Any]] = []
    best_acc, best_epoch, best_state = -1.0, 0, None
    for epoch in range(1, cfg.epochs + 1):
        tr = fit_epoch(net, train_loader, opt, grad_clip=cfg.grad_clip, max_steps=cfg.max_train_batches)
        sched.step()
        va = evaluate(net, val_loader)
        rec = {"epoch": epoch, "train_loss": _f(tr.get("loss")), "train_acc": _f(tr.get("acc")),
               "val_loss": va["loss"], "val_acc": va["acc"], "wall_s": time.perf_counter() - t0}
        history.append(rec)
        if on_epoch:
            on_epoch(rec)
        if va["acc"] > best_acc:
            best_acc, best_epoch, best_state = va["acc"], epoch, copy.deepcopy(net.state_dict())
    if best_state is not None:
        net.load_state_dict(best_state)
    te = evaluate(net, test_loader)
    weights = None
    if out_dir is not None:
        out_dir = Path(out_dir)
        weights = save_weights(net, out_dir / "weights.safetensors")
    res = TrainResult(float(te["acc"]), float(te["loss"]), float(best_acc), best_epoch, time.perf_counter() - t0,
                      weights, history)
    if out_dir is not None:
        atomic_write_text(out_dir / "curve.jsonl", "".join(json.dumps(r) + "\n" for r in history))
        atomic_write_text(out_dir / "train.json", json.dumps({"config": cfg.to_dict(), "arch": arch.digest(),
                                                              **res.to_json()}, indent=2) + "\n")
    return res


def _f(v: Any) -> float | None:
    return None if v is None else float(v)
