"""Build the latency table of a space on a device (twice, minutes apart) and print how well the builds agree.

    python bench/bench_table.py [--device cpu-1t] [--space fbnet-cifar:input_size=16,width=0.5] [--builds 2]
                                [--gap-s 60] [--load 1] [--out DIR]

Each build is fresh. With ``--load N`` every build after the first runs while N other processes each keep a core
busy. Prints per build: entries, wall seconds, median / p95 of the entries' CV, noisy entries, the validity
verdict; then, against build 1, the share of entries that agree within ±3 % (goal: >= 95 %), plus the machine,
its load and library versions. Not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from profiler.latency.tables import load_table
from profiler.measuring.devices import get_device
from profiler.measuring.measure import measure_space
from profiler.measuring.protocol import validity_line
from profiler.measuring.runners import make_runner
from profiler.spaces.space import get_space

from busy import busy

AGREE_PCT, AGREE_GOAL = 3.0, 95.0


def build(device, space, out: Path) -> dict:
    with make_runner(device) as runner:
        load0 = os.getloadavg()[0]
        t0 = time.perf_counter()
        s = measure_space(device, space, runner, out, fresh=True)
    wall = time.perf_counter() - t0
    table = load_table(out)
    cvs = np.array([r["cv"] for r in table.rows.values() if r["status"] != "error"])
    return {"table": str(out), "entries": len(table.rows), "wall_s": round(wall, 1), "noisy": s.noisy,
            "errors": s.errors, "remeasured": s.remeasured, "median_cv_pct": round(float(np.median(cvs)) * 100, 2),
            "p95_cv_pct": round(float(np.percentile(cvs, 95)) * 100, 2), "load_start": round(load0, 2),
            "load_end": round(os.getloadavg()[0], 2), "validity": validity_line(table.meta)}


def agreement(a: Path, b: Path) -> dict:
    ta, tb = load_table(a), load_table(b)
    usable = lambda t, k: k in t.rows and t.rows[k]["status"] != "error"  # noqa: E731
    common = [k for k in ta.rows if usable(ta, k) and usable(tb, k)]
    diff = np.array([abs(tb.rows[k]["median_ms"] / ta.rows[k]["median_ms"] - 1) * 100 for k in common])
    within = float(np.mean(diff <= AGREE_PCT) * 100) if diff.size else 0.0
    return {"entries": len(common), f"within_{AGREE_PCT:g}_pct": round(within, 1),
            "median_diff_pct": round(float(np.median(diff)), 2),
            "p95_diff_pct": round(float(np.percentile(diff, 95)), 2),
            "goal": f">= {AGREE_GOAL:g} % within ±{AGREE_PCT:g} %", "reached": within >= AGREE_GOAL}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu-1t")
    ap.add_argument("--space", default="fbnet-cifar:input_size=16,width=0.5")
    ap.add_argument("--builds", type=int, default=2)
    ap.add_argument("--gap-s", type=float, default=60.0, help="seconds to wait between builds")
    ap.add_argument("--load", type=int, default=0, help="busy processes during every build after the first")
    ap.add_argument("--out", type=Path, default=None, help="folder for the tables (default: a temporary one)")
    ap.add_argument("--devices", default=None)
    args = ap.parse_args()
    device = get_device(args.device, args.devices)
    space = get_space(args.space)
    root = args.out or Path(tempfile.mkdtemp(prefix="bench-table-"))
    root.mkdir(parents=True, exist_ok=True)
    builds = []
    for i in range(args.builds):
        if i:
            time.sleep(args.gap_s)
        n_busy = args.load if i else 0
        with busy(n_busy):
            fig = build(device, space, root / f"build-{i + 1}.csv")
        fig["busy_processes"] = n_busy
        builds.append(fig)
        print(f"build {i + 1} ({n_busy} busy): " + ", ".join(f"{k} {v}" for k, v in fig.items()), flush=True)
    fp = load_table(root / "build-1.csv").meta["fingerprint"]
    result = {"device": device.name, "space": space.spec, "protocol": device.protocol.to_dict(), "builds": builds,
              "machine": f"{fp.get('cpu_model')}, {fp.get('cores')} cores", "versions": fp.get("versions")}
    for i in range(1, args.builds):
        ag = agreement(root / "build-1.csv", root / f"build-{i + 1}.csv")
        result[f"agreement_1_vs_{i + 1}"] = ag
        print(f"build 1 vs {i + 1}: {ag['entries']} entries, {ag[f'within_{AGREE_PCT:g}_pct']} % within "
              f"±{AGREE_PCT:g} % (goal {AGREE_GOAL:g} %: {'yes' if ag['reached'] else 'NO'}), median diff "
              f"{ag['median_diff_pct']} %, p95 {ag['p95_diff_pct']} %", flush=True)
    print(f"machine: {result['machine']}; versions {result['versions']}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
