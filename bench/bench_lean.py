"""Lean (single-path) against soft Gumbel search on Fashion-MNIST: accuracy after the same epochs, and ms/step.

    python bench/bench_lean.py [--epochs 4] [--limit 2000] [--seeds 0] [--batch 32]

Runs the real search loop (``search.train.search``) on ``fbnet-cifar:input_size=16,width=0.25`` with a static
control and no cost term (the architecture learns from cross-entropy alone), the ``hwnas`` preset's optimisers and
temperature (5.0 -> 0.5), one torch thread. Prints, per sampler and seed, the train accuracy of the last epoch
(under the sampled paths), the validation accuracy (the deterministic network: softmax weights for soft Gumbel,
the argmax path for lean) and the median ms per training step (time between step reports).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from search.config import apply_overrides, preset
from search.data import load_data
from search.train import search

SPEC = "fbnet-cifar:input_size=16,width=0.25"
SETS = ["optimisation=single", "temperature.schedule=exponential", "temperature.t0=5.0", "temperature.t_end=0.5",
        "temperature.floor=0.1", "weights_opt.lr=0.05", "weights_opt.weight_decay=0.0001", "weights_opt.lr_min=0.001",
        "weights_opt.grad_clip=5.0", "arch_opt.lr=0.03", "arch_opt.weight_decay=0.0"]


def one_run(sampler: str, seed: int, epochs: int, batch: int, splits, extra: list[str]) -> dict:
    cfg = preset("darts", space=SPEC, epochs=epochs, batch_size=batch, seed=seed, data="fashion-mnist")
    cfg = apply_overrides(cfg, [*SETS, f"sampler={sampler}", *extra])
    stamps: list[float] = []

    def on_progress(ev: dict) -> None:
        if ev["event"] == "step":
            stamps.append(time.perf_counter())

    with tempfile.TemporaryDirectory() as tmp:
        hist = search(cfg, Path(tmp) / "run", splits=splits, on_progress=on_progress)
    gaps = [b - a for a, b in zip(stamps, stamps[1:]) if b - a < 60]  # an epoch's evaluation sits between epochs
    last = hist[-1]
    return {"train_acc": last["train_acc"], "val_acc": last["val_acc"], "ms": 1000 * statistics.median(gaps),
            "arch": last["eval_arch"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--limit", type=int, default=2000)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--samplers", nargs="+", default=["gumbel", "lean"])
    ap.add_argument("--set", dest="extra", action="append", default=[], help="extra config override")
    a = ap.parse_args()
    torch.set_num_threads(1)
    print(f"{SPEC}, fashion-mnist limit {a.limit}, batch {a.batch}, {a.epochs} epochs, 1 torch thread, "
          f"load {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    for seed in a.seeds:
        splits = load_data("fashion-mnist", 16, 3, seed, limit=a.limit)
        for sampler in a.samplers:
            r = one_run(sampler, seed, a.epochs, a.batch, splits, a.extra)
            print(f"  {sampler:<7} seed {seed}: train acc {r['train_acc']:.3f}  val acc {r['val_acc']:.3f}  "
                  f"{r['ms']:.0f} ms/step (median)  load {os.getloadavg()[0]:.2f}", flush=True)


if __name__ == "__main__":
    main()
