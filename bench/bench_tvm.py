"""TVM (untuned, optionally tuned) against onnxruntime on the same keys, one thread each; prints a table.

    python bench/bench_tvm.py [--space darts-3ops:C=8,cells=5] [--only '*|1x16x16x16|*'] [--tune-trials 0]
                              [--tvm-device tvm-cpu] [--ort-device cpu-1t] [--rpc]

``--rpc`` also starts a loopback tracker + rpc_server and measures through device rpi4-loop (its tracker address
is rewritten to the started one), to show that the RPC path costs nothing in the timings (they run remote-side).
Not a test: nothing is asserted. Timings on a shared machine are indicative only.
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

from profiler.latency.tables import load_table
from profiler.measuring.devices import get_device
from profiler.measuring.measure import measure_space
from profiler.measuring.rpc import start_server, start_tracker
from profiler.measuring.runners import make_runner
from profiler.measuring.runners.base import host_fingerprint
from profiler.spaces.space import get_space


def run(device, space, only, out: Path) -> tuple[dict, float]:
    with make_runner(device) as runner:
        t0 = time.perf_counter()
        measure_space(device, space, runner, out, fresh=True, only=only)
    return load_table(out).rows, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--space", default="darts-3ops:C=8,cells=5")
    ap.add_argument("--only", default=None, help="glob over keys or op names (default: every key of the space)")
    ap.add_argument("--tvm-device", default="tvm-cpu")
    ap.add_argument("--ort-device", default="cpu-1t")
    ap.add_argument("--tune-trials", type=int, default=0)
    ap.add_argument("--rpc", action="store_true", help="also measure through a loopback tracker (rpi4-loop)")
    ap.add_argument("--devices", default=None)
    args = ap.parse_args()
    space = get_space(args.space)
    tmp = Path(tempfile.mkdtemp(prefix="bench-tvm-"))
    ort_dev = get_device(args.ort_device, args.devices)
    tvm_dev = dataclasses.replace(get_device(args.tvm_device, args.devices), tune_trials=args.tune_trials)
    columns = {}
    walls = {}
    columns["ort"], walls["ort"] = run(ort_dev, space, args.only, tmp / "ort.csv")
    columns["tvm"], walls["tvm"] = run(tvm_dev, space, args.only, tmp / "tvm.csv")
    if args.rpc:
        with start_tracker() as tracker, start_server("rpi4-loop", tracker.addr, threads=tvm_dev.threads or None):
            loop = get_device("rpi4-loop", args.devices)
            assert loop.rpc is not None
            loop = dataclasses.replace(loop, rpc=dataclasses.replace(loop.rpc, tracker=tracker.addr),
                                       tune_trials=args.tune_trials)
            columns["rpc"], walls["rpc"] = run(loop, space, args.only, tmp / "rpc.csv")
    fp = host_fingerprint()
    print(f"machine: {fp['cpu_model']}, {fp['cores']} cores (shared: indicative figures); ort {ort_dev.name} "
          f"threads={ort_dev.threads}, tvm {tvm_dev.name} threads={tvm_dev.threads} tune_trials={args.tune_trials}")
    names = list(columns)
    head = f"{'key':48s} " + " ".join(f"{n + ' ms':>10s}" for n in names) + f" {'tvm/ort':>8s} variant"
    print(head)
    ratios = []
    for key, ort_row in columns["ort"].items():
        vals = [columns[n].get(key, {}).get("median_ms", float("nan")) for n in names]
        tvm_row = columns["tvm"].get(key, {})
        ratio = tvm_row.get("median_ms", float("nan")) / ort_row["median_ms"]
        if tvm_row.get("variant") in ("untuned", "tuned", "tune-failed"):
            ratios.append(ratio)
        print(f"{key[3:50]:48s} " + " ".join(f"{v:10.4f}" for v in vals) + f" {ratio:8.2f} {tvm_row.get('variant')}")
    ratios.sort()
    if ratios:
        print(f"tvm/ort over {len(ratios)} compiled keys: median {ratios[len(ratios) // 2]:.2f}x, "
              f"min {ratios[0]:.2f}x, max {ratios[-1]:.2f}x")
    print("sweep wall s: " + ", ".join(f"{n} {w:.1f}" for n, w in walls.items()) + f"  (tables in {tmp})")


if __name__ == "__main__":
    main()
