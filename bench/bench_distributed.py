"""Multi-process search speed: epoch wall time and samples/s of `hwnas search` with 1 and N processes.

    python bench/bench_distributed.py [--nproc 2] [--epochs 4] [--train-limit 256] [--batch 32] [--preset darts]
                                      [--torch-device cpu|cuda]

Runs the same search (space darts-3ops:C=8,cells=5, digits, no latency table) as: 1 process x 1 thread, 1 process x
N threads, N processes x 1 thread with synced BatchNorm (`--bn sync`, equal to one process) and with per-rank
BatchNorm (`--bn local`); with `--torch-device cuda`, 1 process against N (NCCL, one GPU per rank, so N <= the
GPU count), without the threads case. The first epoch (process start-up, allocator warm-up) is left out; the median and the
min-max of the other epochs' `wall_s` (from metrics.jsonl) are printed with samples/s. Timings depend on the machine
and its load: on a shared box, run it twice.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SPACE = "darts-3ops:C=8,cells=5"


def run(out: Path, args: argparse.Namespace, nproc: int, threads: int, bn: str) -> dict:
    cmd = [sys.executable, "-m", "search", "search", "--space", SPACE, "--preset", args.preset, "--epochs",
           str(args.epochs), "--out", str(out), "--batch-size", str(args.batch), "--threads", str(threads),
           "--nproc", str(nproc), "--bn", bn, "--set", f"train_limit={args.train_limit}", "--set", "eval_limit=64",
           "--torch-device", args.torch_device]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True)
    total = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{r.stderr[-2000:]}")
    metrics = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    walls = [m["wall_s"] for m in metrics[1:]] or [metrics[0]["wall_s"]]
    samples = metrics[-1]["train_samples"]
    return {"nproc": nproc, "threads": threads, "bn": bn, "epoch_s": statistics.median(walls),
            "min_s": min(walls), "max_s": max(walls), "samples_per_s": samples / statistics.median(walls),
            "total_s": total, "final_loss": metrics[-1]["train_loss"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--train-limit", type=int, default=256)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--preset", default="darts")
    ap.add_argument("--torch-device", default="cpu", choices=("cpu", "cuda"))
    args = ap.parse_args()
    import torch

    if args.torch_device == "cuda" and torch.cuda.device_count() < args.nproc:
        raise SystemExit(f"--torch-device cuda --nproc {args.nproc}: this machine has {torch.cuda.device_count()} "
                         f"CUDA device(s) and NCCL needs one per rank; lower --nproc or use --torch-device cpu")

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load "
          f"{os.getloadavg()[0]:.2f}; python {platform.python_version()}, torch {torch.__version__}")
    print(f"search: {SPACE}, preset {args.preset}, batch {args.batch} (global), {args.train_limit} training "
          f"samples, {args.epochs} epochs (first left out), device {args.torch_device}")
    cases = [(1, 1, "sync"), (1, args.nproc, "sync"), (args.nproc, 1, "sync"), (args.nproc, 1, "local")]
    if args.torch_device == "cuda":  # threads are the CPU's
        cases = [c for c in cases if c[1] == 1]
    with tempfile.TemporaryDirectory(prefix="hwnas-bench-dist-") as tmp:
        rows = [run(Path(tmp) / f"run{i}", args, *c) for i, c in enumerate(cases)]
    base = rows[0]["epoch_s"]
    print(f"{'procs':>5} {'threads':>7} {'bn':>5} {'epoch s (median)':>16} {'min-max':>13} {'samples/s':>9} "
          f"{'speed-up':>8} {'wall s':>6} {'loss':>7}")
    for r in rows:
        print(f"{r['nproc']:>5} {r['threads']:>7} {r['bn']:>5} {r['epoch_s']:>16.2f} "
              f"{r['min_s']:>6.2f}-{r['max_s']:<6.2f} {r['samples_per_s']:>9.1f} {base / r['epoch_s']:>7.2f}x "
              f"{r['total_s']:>6.1f} {r['final_loss']:>7.4f}")


if __name__ == "__main__":
    main()
