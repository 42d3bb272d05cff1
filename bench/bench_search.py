"""Search step time, samples/s and peak memory per preset; hypernetwork overhead vs the fbnet preset.

    python bench/bench_search.py [--steps 20] [--batch 32] [--threads 1] [--tables-dir DIR]

Spaces: fbnet-cifar at reduced width and input (fbnet-cifar:input_size=16,width=0.25 -- the full-width 32x32
FBNet supernet is too heavy for a 2-core CPU) and darts-3ops:C=8,cells=5. Latency tables are measured first (fast
protocol, device cpu) unless --tables-dir already holds them. Every preset runs in its own process so its peak RSS
is its own. The overhead ratio compares the hwnas preset (tradeoff hypernetwork) with the fbnet preset (static
logits) on the same supernet with the same sampler and the same single-level optimisation, so the ratio isolates the
control module. Goal: <= 1.15x. Prints every figure; timings depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing as mp
import resource
import sys
import time
from pathlib import Path

SPACES = ("fbnet-cifar:input_size=16,width=0.25", "darts-3ops:C=8,cells=5")
PRESETS = ("darts", "fbnet", "darts-cc", "seed-simplex", "hwnas")


def measure_tables(root: Path) -> dict[str, Path]:
    from profiler.devices import get_device
    from profiler.measure import measure_space
    from profiler.protocol import Protocol
    from profiler.runners import make_runner
    from profiler.spaces import get_space

    dev = get_device("cpu")
    dev = dataclasses.replace(dev, protocol=Protocol(warmup_s=0.02, min_samples=5, min_seconds=0.05, retries=0))
    out = {}
    for i, spec in enumerate(SPACES):
        path = root / f"bench-{i}.csv"
        runner = make_runner(dev)
        try:
            measure_space(dev, get_space(spec), runner, path)
        finally:
            runner.close()
        out[spec] = path
    return out


def make_step(name: str, spec: str, table: Path, batch: int, sets: tuple):
    """A closure doing one full search step (forward, backward, both optimisers) of preset ``name``."""
    import torch

    from search.config import apply_overrides, preset
    from search.losses import search_loss
    from search.train import build

    cfg = apply_overrides(preset(name, space=spec, tables=(str(table),), batch_size=batch), list(sets))
    s = build(cfg)
    model, control = s.model, s.control
    w_opt = torch.optim.SGD(model.weight_parameters(), lr=0.01, momentum=0.9)
    a_opt = torch.optim.Adam(model.arch_parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(0)  # data and op sampling
    gc = torch.Generator().manual_seed(1)  # control values: hwnas and fbnet then draw the same noise for paths
    C, H, W = s.space.input_shape
    x = torch.randn(batch, C, H, W, generator=g)
    y = torch.randint(0, s.space.num_classes, (batch,), generator=g)

    def loss_of(r):
        return search_loss(cfg.loss, torch.nn.functional.cross_entropy(r.out, y), r.penalty,
                           r.expected.get("latency"), cfg.loss_alpha, cfg.loss_beta, 1.0)

    def step() -> None:
        for o in (w_opt, a_opt):
            o.zero_grad(set_to_none=True)
        loss_of(model.run(x, control.sample(gc), 1.0, g)).backward()
        w_opt.step()
        a_opt.step()
        if cfg.optimisation == "bilevel":  # the architecture step on another batch: a second forward/backward
            a_opt.zero_grad(set_to_none=True)
            loss_of(model.run(x, control.sample(gc), 1.0, g)).backward()
            a_opt.step()

    return cfg, step


def one(args: tuple) -> dict:
    """Time `steps` search steps of one preset (after 3 warm-up steps); runs in a fresh process."""
    name, spec, table, steps, batch, threads, sets = args
    import torch

    torch.set_num_threads(threads)
    cfg, step = make_step(name, spec, table, batch, sets)
    for _ in range(3):
        step()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    times.sort()
    med = times[len(times) // 2]
    return {"preset": name, "space": spec, "sampler": cfg.sampler, "optimisation": cfg.optimisation,
            "sets": list(sets), "step_ms": med * 1000, "samples_per_s": batch / med,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def pair(args: tuple) -> dict:
    """hwnas vs fbnet on the same supernet: steps alternate in one process, so machine load hits both alike."""
    spec, table, steps, batch, threads, sets_h, sets_f = args
    import torch

    torch.set_num_threads(threads)
    _, sh = make_step("hwnas", spec, table, batch, sets_h)
    _, sf = make_step("fbnet", spec, table, batch, sets_f)
    th, tf = [], []
    for i in range(steps + 3):
        for fn, acc in ((sh, th), (sf, tf)) if i % 2 == 0 else ((sf, tf), (sh, th)):
            t0 = time.perf_counter()
            fn()
            if i >= 3:
                acc.append(time.perf_counter() - t0)
    th.sort()
    tf.sort()
    return {"hwnas_ms": th[len(th) // 2] * 1000, "fbnet_ms": tf[len(tf) // 2] * 1000,
            "hwnas_sum_ms": sum(th) * 1000, "fbnet_sum_ms": sum(tf) * 1000}


def run_isolated(args: tuple, fn=one) -> dict:
    ctx = mp.get_context("spawn")
    with ctx.Pool(1) as pool:
        return pool.apply(fn, (args,))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--tables-dir", type=Path, default=Path("/tmp/hwnas-bench-search"))
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    ap.add_argument("--overhead-only", action="store_true", help="only the hwnas / fbnet overhead ratios")
    a = ap.parse_args()
    a.tables_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    tables = measure_tables(a.tables_dir)
    print(f"tables measured/checked in {time.perf_counter() - t0:.1f} s (device cpu, fast protocol)")
    rows = []
    print(f"{'space':<38} {'preset':<13} {'sampler':<8} {'opt':<7} {'step ms':>8} {'samples/s':>10} {'peak MB':>8}")
    for spec in SPACES if not a.overhead_only else ():
        for name in PRESETS:
            r = run_isolated((name, spec, tables[spec], a.steps, a.batch, a.threads, ()))
            rows.append(r)
            print(f"{spec:<38} {name:<13} {r['sampler']:<8} {r['optimisation']:<7} {r['step_ms']:8.1f} "
                  f"{r['samples_per_s']:10.1f} {r['peak_rss_mb']:8.0f}", flush=True)
    print("\nhypernetwork overhead: hwnas (tradeoff control) / fbnet (static logits), same supernet, sampler and "
          "single-level step; goal <= 1.15x")
    ratios = []
    for spec in SPACES:
        for sampler in ("lean", "gumbel"):
            common = (f"sampler={sampler}", "optimisation=single", "loss=additive")
            for hyper in ("pwl", "mlp"):
                r = run_isolated((spec, tables[spec], a.steps, a.batch, a.threads,
                                  common + (f"control.hypernet={hyper}",), common), pair)
                ratio = r["hwnas_sum_ms"] / r["fbnet_sum_ms"]  # total time: the lean sampler's paths vary per step
                ratios.append({"space": spec, "sampler": sampler, "hypernet": hyper, **r, "ratio": ratio})
                print(f"  {spec:<38} sampler {sampler:<7} {hyper}: hwnas {r['hwnas_ms']:7.1f} ms / fbnet "
                      f"{r['fbnet_ms']:7.1f} ms (medians); total-time ratio {ratio:.3f}x", flush=True)
    print(f"\nbatch {a.batch}, {a.threads} torch thread(s), median of {a.steps} steps; python {sys.version.split()[0]}")
    if a.json:
        a.json.write_text(json.dumps({"presets": rows, "overhead": ratios}, indent=2))


if __name__ == "__main__":
    main()
