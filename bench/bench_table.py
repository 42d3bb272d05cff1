"""Build the complete latency table of a space on a device and print the figures the README quotes.

    python bench/bench_table.py [--device cpu] [--space fbnet-cifar] [--out PATH]

Prints: unique entries, wall seconds, entries per minute, median and p95 of per-entry CV, entries re-measured,
entries flagged noisy, plus the machine and library versions. Not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from profiler.devices import get_device
from profiler.measure import measure_space
from profiler.runners import make_runner
from profiler.spaces import get_space
from profiler.tables import load_table


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--space", default="fbnet-cifar")
    ap.add_argument("--out", type=Path, default=None, help="table path (default: a fresh temporary file)")
    ap.add_argument("--devices", default=None)
    args = ap.parse_args()
    device = get_device(args.device, args.devices)
    space = get_space(args.space)
    out = args.out or Path(tempfile.mkdtemp()) / "bench.csv"
    runner = make_runner(device)
    t0 = time.perf_counter()
    s = measure_space(device, space, runner, out, fresh=True)
    wall = time.perf_counter() - t0
    table = load_table(out)
    cvs = np.array([r["cv"] for r in table.rows.values() if r["status"] != "error"])
    fp = table.meta["fingerprint"]
    figures = {
        "device": device.name, "space": space.spec, "unique_entries": len(table.rows), "wall_s": round(wall, 1),
        "entries_per_min": round(len(table.rows) / wall * 60, 1),
        "median_cv_pct": round(float(np.median(cvs)) * 100, 2), "p95_cv_pct": round(float(np.percentile(cvs, 95)) * 100, 2),
        "remeasured": s.remeasured, "noisy": s.noisy, "errors": s.errors,
        "machine": f"{fp.get('cpu_model')}, {fp.get('cores')} cores", "versions": fp.get("versions"),
        "table": str(out),
    }
    for k, v in figures.items():
        print(f"{k:>16}: {v}")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
