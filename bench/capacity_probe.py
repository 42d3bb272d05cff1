"""Can a retrain recipe tell architectures apart? Accuracy against latency for random architectures across a space.

    python bench/capacity_probe.py --table T.csv [--space S] [--train 1200] [--epochs 4] [--seeds 1]

Goal 1 of ``bench_nas.py`` (a family's hypervolume over random architectures at the same latencies) can only pass
where accuracy depends on the architecture more than on retrain noise. This probe takes one architecture at each of
a few latency targets (1.05x ... 2.5x the space's fastest on the table ``--table``, below 0.95x its slowest; the
rejection sampler of ``bench_nas.py``), retrains each with the bench's recipe at ``--train`` Fashion-MNIST images
and ``--epochs`` epochs, and prints one JSON line per architecture and seed: predicted ms, params, val and test
accuracy, wall seconds. Then the Spearman correlation of test accuracy with latency per seed. If it is near zero or
negative, the recipe rewards cheap networks as much as large ones, and a family cannot beat random by capacity
placement; longer retrains or more data come first.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from scipy.stats import spearmanr

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import bench_nas as B  # noqa: E402
from profiler.errors import UserError  # noqa: E402
from profiler.latency.model import MissingEntries  # noqa: E402
from profiler.latency.tables import load_table  # noqa: E402
from profiler.spaces.space import get_space  # noqa: E402
from search.retrain import TrainConfig, retrain  # noqa: E402

FACTORS = (1.05, 1.15, 1.3, 1.5, 1.7, 2.0, 2.5)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--table", type=Path, required=True, help="latency table (cpu-1t) of --space")
    ap.add_argument("--space", default=B.SCALES["full"].space, help="space spec (default: the bench's)")
    ap.add_argument("--train", type=int, default=1200, help="retrain images (default 1200, the bench's)")
    ap.add_argument("--epochs", type=int, default=4, help="retrain epochs (default 4, the bench's)")
    ap.add_argument("--seeds", type=int, default=1, help="data / init seeds (default 1)")
    ap.add_argument("--data-dir", default=None, help="Fashion-MNIST IDX folder (default: as hwnas finds it)")
    a = ap.parse_args()
    torch.set_num_threads(1)
    try:
        space, table = get_space(a.space), load_table(a.table)
        lo, hi = B.space_range(a.table, space)
    except (UserError, MissingEntries) as e:
        sys.exit(f"capacity_probe: {e}; give --table the cpu-1t table of --space")
    targets = [lo * f for f in FACTORS if lo * f < 0.95 * hi]
    _, archs = B.random_archs(space, table, 0, 0, targets)
    print(f"space {a.space}: {lo:.4f}-{hi:.4f} ms ({hi / lo:.2f}x); {len(archs)} architectures; "
          f"retrain {a.epochs} epochs on {a.train} images; torch {torch.__version__}, 1 thread", flush=True)
    sc = B.Scale(a.space, 0, 0, a.epochs, 0, a.train, 300, 1000, 32, 1, False)
    for seed in range(a.seeds):
        splits, note = B.load_subsets("fashion-mnist", space, seed, sc, a.data_dir)
        if note:
            print(note, flush=True)
        tcfg = TrainConfig(data=splits.name, epochs=a.epochs, batch_size=32, seed=seed)
        ms, acc = [], []
        for arch in archs:
            t = time.perf_counter()
            tr = retrain(arch, tcfg, None, splits=splits)
            ms.append(arch.predicted_ms)
            acc.append(tr.test_acc)
            print(json.dumps({"seed": seed, "ms": round(arch.predicted_ms, 4), "params": arch.params,
                              "val": round(tr.val_acc, 4), "test": round(tr.test_acc, 4),
                              "s": round(time.perf_counter() - t, 1)}), flush=True)
        print(f"seed {seed}: Spearman(test accuracy, latency) = {float(spearmanr(ms, acc).statistic):+.2f}", flush=True)


if __name__ == "__main__":
    main()
