"""Device farm speed-up: one sweep through a loopback tracker on 1 board against the same sweep on 2 boards.

    python bench/bench_farm.py [--space darts-3ops:C=8,cells=5] [--only '*|1x*x16x16|c*|s1|*'] [--repeats 3]
                               [--boards 2] [--server-threads 1]

Starts a TVM RPC tracker and ``--boards`` rpc_servers under one key on 127.0.0.1 (device rpi4-loop, its tracker
rewritten to the started one), then measures the keys with ``--fresh`` on 1 board and on all of them, alternating,
``--repeats`` times; prints the median wall times and their ratio. Each board's runner compiles its own keys (in
its own child process), so compiling is spread as well as timing: that is what a farm of real boards gives too.

The "boards" here are processes on this machine: the figure says what the parallel sweep buys on its CPUs (on a
2-vCPU shared box, little more than 2x at best, and less under load), not what a farm of real boards gives.
Not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import tempfile
import time
from pathlib import Path

from profiler.measuring.devices import get_device
from profiler.measuring.farm import make_farm
from profiler.measuring.measure import measure_space
from profiler.measuring.rpc import start_server, start_tracker
from profiler.measuring.runners import make_runner
from profiler.measuring.runners.base import host_fingerprint, library_versions
from profiler.spaces.space import get_space


def sweep_s(device, space, only: str | None, boards: int, out: Path) -> tuple[float, int, int]:
    """Wall seconds of one fresh sweep on ``boards`` boards; (seconds, rows, boards that measured rows)."""
    t0 = time.perf_counter()
    with make_farm(device, boards, make_runner) as runner:
        summary = measure_space(device, space, runner, out, fresh=True, only=only)
    used = {r.board for r in summary.rows if r.status != "error"}
    return time.perf_counter() - t0, summary.measured - summary.errors, len(used)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--space", default="darts-3ops:C=8,cells=5")
    ap.add_argument("--only", default="*|1x*x16x16|c*|s1|*", help="glob over keys or op names ('' = every key)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--boards", type=int, default=2)
    ap.add_argument("--server-threads", type=int, default=1, help="TVM_NUM_THREADS of each rpc_server")
    ap.add_argument("--devices", default=None)
    args = ap.parse_args()
    space = get_space(args.space)
    tmp = Path(tempfile.mkdtemp(prefix="bench-farm-"))
    os.environ.setdefault("HWNAS_CACHE", str(tmp / "cache"))
    walls: dict[int, list[float]] = {1: [], args.boards: []}
    with start_tracker(log_dir=tmp) as tracker:
        servers = [start_server("farm-bench", tracker.addr, threads=args.server_threads, log_dir=tmp)
                   for _ in range(args.boards)]
        try:
            dev = get_device("rpi4-loop", args.devices)
            assert dev.rpc is not None
            dev = dataclasses.replace(dev, threads=args.server_threads, rpc=dataclasses.replace(
                dev.rpc, tracker=tracker.addr, key="farm-bench", boards=args.boards))
            sweep_s(dev, space, args.only or None, 1, tmp / "warm.csv")  # exports cached, imports warm
            for i in range(args.repeats):
                for n in (1, args.boards):
                    wall, rows, used = sweep_s(dev, space, args.only or None, n, tmp / f"t{n}.csv")
                    walls[n].append(wall)
                    print(f"repeat {i + 1}: {n} board(s): {rows} rows on {used} board(s) in {wall:.1f} s", flush=True)
        finally:
            for s in servers:
                s.stop()
    fp = host_fingerprint()
    one, many = statistics.median(walls[1]), statistics.median(walls[args.boards])
    print(f"machine: {fp['cpu_model']}, {fp['cores']} cores, load average {os.getloadavg()[0]:.2f} at the end "
          f"(shared box: indicative only)")
    print("versions: " + ", ".join(f"{k} {v}" for k, v in library_versions().items()))
    print(f"space {space.spec}, keys {args.only or 'all'}, protocol of rpi4-loop, {args.server_threads} TVM thread(s) "
          f"per server, {args.repeats} repeats")
    print(f"median sweep: 1 board {one:.1f} s, {args.boards} boards {many:.1f} s: speed-up {one / many:.2f}x "
          f"(loopback rpc_servers sharing this machine's CPUs: not a board figure)")


if __name__ == "__main__":
    main()
