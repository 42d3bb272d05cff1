"""Bench: how well does a table predict whole networks, raw and calibrated?

Verifies N held-out networks of a space on a device (default: 100 networks of `make run`'s space on its default
device, cpu-1t) with a calibration fitted on CALIB_N other networks, and prints raw and calibrated metrics, the
validity verdict, and the default-device goal (calibrated held-out networks within ±10 % for >= 95 %, Kendall
tau >= 0.9) beside the stricter table goals (±5 % for >= 95 %, ±10 % for >= 99.5 %, tau >= 0.95). Measures the
table first when it is missing. ``--load N`` runs N busy processes throughout. Resumable: rerun the same command
after a kill. Quick run: --n 10 --calib-n 6.

    python bench/bench_verify.py [--n 100] [--calib-n 50] [--device cpu-1t] [--space S] [--table T] [--out D]
                                 [--load N]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu-1t")
    ap.add_argument("--space", default="fbnet-cifar:input_size=16,width=0.5")
    ap.add_argument("--devices", default=None)
    ap.add_argument("--load", type=int, default=0, help="busy processes during the whole bench")
    ap.add_argument("--table", type=Path, default=None, help="default tables/DEVICE/SPACE.csv (measured if missing)")
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--calib-n", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None, help="default verify/DEVICE/SPACE-bench-N")
    ap.add_argument("--stat", default="median", choices=("median", "p10"),
                    help="compare medians (default) or p10s; p10 is robust on a busy machine")
    ap.add_argument("--no-write-calib", action="store_true", help="do not store the calibration beside the table")
    a = ap.parse_args(argv)
    from busy import busy

    with busy(a.load):
        return run(a)


def run(a: argparse.Namespace) -> int:

    from profiler.latency.tables import default_table_path, load_table
    from profiler.latency.verify import VerifyError, run_verify
    from profiler.measuring.devices import get_device
    from profiler.measuring.measure import measure_space
    from profiler.measuring.protocol import Validity, validity_line
    from profiler.measuring.runners import make_runner
    from profiler.spaces.space import get_space

    dev = get_device(a.device, a.devices)
    space = get_space(a.space)
    table_path = a.table or default_table_path(dev.name, space.spec)
    out = a.out or default_table_path(dev.name, space.spec, root="verify").with_name(
        f"{default_table_path(dev.name, space.spec).stem}-bench-{a.n}-{a.calib_n}")
    load0 = os.getloadavg()
    t0 = time.perf_counter()
    runner = make_runner(dev)
    try:
        missing = not table_path.exists() or load_table(table_path).missing(space.candidate_keys())
        if missing:
            print(f"measuring table {table_path} ...", flush=True)
            s = measure_space(dev, space, runner, table_path)
            print(f"  {s.measured} entries in {s.wall_s:.0f} s ({s.noisy} noisy, {s.errors} errors)", flush=True)
        table = load_table(table_path)
        last = [0.0]

        def progress(p) -> None:
            now = time.perf_counter()
            if now - last[0] > 30 or p.done == p.total:
                last[0] = now
                print(f"  {p.done}/{p.total} networks ({p.skipped} resumed, {p.errors} failed) "
                      f"{now - t0:.0f} s", flush=True)

        rep = run_verify(dev, space, table, runner, out, n=a.n, calib_n=a.calib_n, seed=a.seed,
                         write_calib=not a.no_write_calib, stat=a.stat, on_progress=progress)
    except VerifyError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        runner.close()
    s = rep.summary
    load1 = os.getloadavg()
    fp = table.meta.get("fingerprint") or {}
    print(f"\n{space.spec} on {dev.name} ({a.stat}s): {s['n_test']} held-out networks, calibration fitted on "
          f"{s['n_calib']} others; {len(s['failed'])} failed; {time.perf_counter() - t0:.0f} s")
    print(f"machine: {fp.get('cpu_model')} ({fp.get('cores')} cores); load average {load0[0]:.1f} at start, "
          f"{load1[0]:.1f} at end, {a.load} busy process(es) of ours (shared machine: figures are only as quiet as "
          f"it was)")
    print(f"table validity : {validity_line(table.meta)}")
    v = Validity.from_dict(s.get("validity"))
    print(f"verify validity: {v.line() if v else 'unknown'}")
    cols = ("mape_pct", "rmspe_pct", "max_err_pct", "within_5_pct", "within_10_pct", "kendall_tau", "spearman_rho")
    print(f"{'model':22s} " + " ".join(f"{c:>13s}" for c in cols))
    rows = [("raw (table sum)", s["raw"])]
    if s.get("calibrated"):
        rows.append((f"calibrated: {s['calibrated']['model']}", s["calibrated"]))
    for name, m in rows:
        print(f"{name:22.22s} " + " ".join(f"{m[c]:13.3f}" for c in cols))
    if s.get("models_held_out"):
        print("\nall candidate models on the held-out set (the one chosen by k-fold CV on the fit set is marked *):")
        for name, m in s["models_held_out"].items():
            mark = "*" if s.get("calibrated") and name == s["calibrated"]["model"] else " "
            cv = s["models_cv_mape_pct"].get(name, float("nan"))
            print(f"{mark}{name:21.21s} " + " ".join(f"{m[c]:13.3f}" for c in cols) + f"   cv {cv:.2f}")
    goal = s.get("calibrated") or s["raw"]
    print("\ngoals (calibrated, held out): " + ", ".join(f"{k} {goal[k]:.3f} >= {v}: {'yes' if goal[k] >= v else 'NO'}"
                                                         for k, v in s["goals"].items()))
    w10, tau = goal["within_10_pct"], goal["kendall_tau"]
    print(f"default-device goal: ±10 % {w10:.1f} % >= 95: {'yes' if w10 >= 95 else 'NO'}, Kendall tau {tau:.3f} "
          f">= 0.9: {'yes' if tau >= 0.9 else 'NO'}")
    print(f"results: {out}/summary.json, networks.csv, scatter.png")
    print(json.dumps({"raw": s["raw"], "calibrated": s.get("calibrated"), "validity": s.get("validity"),
                      "load": a.load}, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
