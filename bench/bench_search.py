"""Search step time, samples/s and peak memory per preset; hypernetwork overhead vs the fbnet preset.

    python bench/bench_search.py [--steps 20] [--batch 32] [--threads 1] [--tables-dir DIR]

Spaces: fbnet-cifar at reduced width and input (fbnet-cifar:input_size=16,width=0.25 -- the full-width 32x32
FBNet supernet is too heavy for a 2-core CPU) and darts-3ops:C=8,cells=5. Latency tables are measured first (fast
protocol, device cpu) unless --tables-dir already holds them. Every preset runs in its own process so its peak RSS
is its own. The overhead ratio compares the hwnas preset (tradeoff hypernetwork) with the fbnet preset (static
logits) on the same supernet with the same sampler and the same single-level optimisation, so the ratio isolates the
control module. Goal: <= 1.15x. Prints every figure; timings depend on the machine and its load.

The fused supernet (search/fused.py, the default) against the per-op reference (``--set supernet=reference``):
on ``fbnet-cifar:input_size=16,width=0.5`` the hwnas preset's supernet step, reference and fused, against the step
of the largest single network of the space (all ``k5_e6``), same batch and threads, steps alternating in one
process; goal: fused <= 1.5x the single network. Then samples/s of every preset on the FBNet space with either
supernet; goal: fused >= 2.5x reference. ``--supernet-only`` runs just these. ``--torch-device cuda`` times on a
GPU with CUDA events.
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

# the checkout this script sits in, not whichever one the environment has installed (an editable install of another
# worktree would otherwise be what gets measured); spawned workers re-run this line
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

SPACES = ("fbnet-cifar:input_size=16,width=0.25", "darts-3ops:C=8,cells=5")
FUSED_SPACE = "fbnet-cifar:input_size=16,width=0.5"
PRESETS = ("darts", "fbnet", "darts-cc", "seed-simplex", "hwnas")


def measure_tables(root: Path, specs: tuple[str, ...] = SPACES) -> dict[str, Path]:
    from profiler.measuring.devices import get_device
    from profiler.measuring.measure import measure_space
    from profiler.measuring.protocol import Protocol
    from profiler.measuring.runners import make_runner
    from profiler.spaces.space import get_space

    dev = get_device("cpu")
    dev = dataclasses.replace(dev, protocol=Protocol(warmup_s=0.02, min_samples=5, min_seconds=0.05, retries=0))
    out = {}
    for spec in specs:
        path = root / f"bench-{SPACES.index(spec) if spec in SPACES else spec.replace(':', '_')}.csv"
        runner = make_runner(dev)
        try:
            measure_space(dev, get_space(spec), runner, path)
        finally:
            runner.close()
        out[spec] = path
    return out


def make_step(name: str, spec: str, table: Path, batch: int, sets: tuple, device: str = "cpu"):
    """A closure doing one full search step (forward, backward, both optimisers) of preset ``name``."""
    import torch

    from search.config import apply_overrides, preset
    from search.losses import search_loss
    from search.train import build

    cfg = apply_overrides(preset(name, space=spec, tables=(str(table),), batch_size=batch), list(sets))
    s = build(cfg)
    model, control = s.model.to(device), s.control
    w_opt = torch.optim.SGD(model.weight_parameters(), lr=0.01, momentum=0.9)
    a_opt = torch.optim.Adam(model.arch_parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(0)  # data and op sampling
    gc = torch.Generator().manual_seed(1)  # control values: hwnas and fbnet then draw the same noise for paths
    C, H, W = s.space.input_shape
    x = torch.randn(batch, C, H, W, generator=g).to(device)
    y = torch.randint(0, s.space.num_classes, (batch,), generator=g).to(device)

    def loss_of(r):
        return search_loss(cfg.loss, torch.nn.functional.cross_entropy(r.out, y), r.penalty,
                           r.expected.get("latency"), cfg.loss_alpha, cfg.loss_beta, 1.0)

    def step() -> None:
        for o in (w_opt, a_opt):
            o.zero_grad(set_to_none=True)
        loss_of(model.run(x, _to(control.sample(gc), device), 1.0, g)).backward()
        w_opt.step()
        a_opt.step()
        if cfg.optimisation == "bilevel":  # the architecture step on another batch: a second forward/backward
            a_opt.zero_grad(set_to_none=True)
            loss_of(model.run(x, _to(control.sample(gc), device), 1.0, g)).backward()
            a_opt.step()

    return cfg, step


def _to(c: dict, device: str) -> dict:
    return {k: v.to(device) for k, v in c.items()}


def single_step(spec: str, batch: int, device: str = "cpu"):
    """One training step (forward, backward, SGD) of the space's largest single network (most parameters)."""
    import torch

    from profiler.spaces.network import build_network
    from profiler.spaces.ops import count_params
    from profiler.spaces.space import get_space

    space = get_space(spec)
    site = space.layers[len(space.layers) // 2].sites[0]
    op = max(space.ops, key=lambda o: count_params(_build(o, site)))
    torch.manual_seed(0)
    net = build_network(space, [op] * len(space.layers)).to(device)
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, *space.input_shape, generator=g).to(device)
    y = torch.randint(0, space.num_classes, (batch,), generator=g).to(device)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(net(x), y).backward()
        opt.step()

    return op, step


def _build(op: str, site):
    from profiler.spaces.ops import build_op

    return build_op(op, site.c_in, site.c_out, site.stride, **dict(site.params))


def _timer(device: str):
    """``time_one(fn) -> seconds``: perf_counter on a CPU, CUDA events (after a synchronise) on a GPU."""
    import torch

    if not device.startswith("cuda"):
        def cpu(fn) -> float:
            t0 = time.perf_counter()
            fn()
            return time.perf_counter() - t0
        return cpu

    def gpu(fn) -> float:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end) / 1000.0
    return gpu


def versus_single(args: tuple) -> dict:
    """Supernet steps (hwnas preset, reference and fused) against the largest single network's, alternating."""
    spec, table, steps, batch, threads, device = args
    import torch

    torch.set_num_threads(threads)
    op, single = single_step(spec, batch, device)
    fns = {"single": single}
    for sn in ("reference", "fused"):
        fns[sn] = make_step("hwnas", spec, table, batch, (f"supernet={sn}",), device)[1]
    time_one = _timer(device)
    times: dict[str, list[float]] = {k: [] for k in fns}
    for i in range(steps + 3):
        for k, fn in (fns.items() if i % 2 == 0 else reversed(fns.items())):
            dt = time_one(fn)
            if i >= 3:
                times[k].append(dt * 1000)
    return {"op": op, **{k: sorted(v) for k, v in times.items()}}


def _spread(v: list[float]) -> str:
    q = len(v) // 4
    return f"{v[len(v) // 2]:8.1f} ms [p25 {v[q]:.1f}, p75 {v[-1 - q]:.1f}]"


def supernet_bench(a, tables: dict[str, Path]) -> dict:
    spec = FUSED_SPACE
    print(f"\nfused vs reference supernet, {spec}, batch {a.batch}, {a.threads} thread(s), device {a.torch_device}")
    r = run_isolated((spec, tables[spec], a.steps, a.batch, a.threads, a.torch_device), versus_single)
    med = {k: r[k][len(r[k]) // 2] for k in ("single", "reference", "fused")}
    print(f"  largest single network (all {r['op']}): {_spread(r['single'])}")
    for k in ("reference", "fused"):
        print(f"  supernet {k:<9} (hwnas preset):      {_spread(r[k])}  = {med[k] / med['single']:.2f}x single")
    print(f"  fused speed-up over reference: {med['reference'] / med['fused']:.2f}x; goal fused <= 1.5x single")
    rows = []
    print(f"\n  {'preset':<13} {'sampler':<12} {'reference samples/s':>20} {'fused samples/s':>16} {'speed-up':>9}")
    for name in PRESETS:
        sps = {}
        for sn in ("reference", "fused"):
            one_r = run_isolated((name, spec, tables[spec], a.steps, a.batch, a.threads, (f"supernet={sn}",),
                                  a.torch_device))
            sps[sn] = one_r["samples_per_s"]
        rows.append({"preset": name, "sampler": one_r["sampler"], **sps})
        print(f"  {name:<13} {one_r['sampler']:<12} {sps['reference']:20.1f} {sps['fused']:16.1f} "
              f"{sps['fused'] / sps['reference']:8.2f}x", flush=True)
    print("  goal: fused >= 2.5x reference samples/s for every preset")
    return {"versus_single": r, "presets": rows}


def one(args: tuple) -> dict:
    """Time `steps` search steps of one preset (after 3 warm-up steps); runs in a fresh process."""
    name, spec, table, steps, batch, threads, sets, *dev = args
    device = dev[0] if dev else "cpu"
    import torch

    torch.set_num_threads(threads)
    cfg, step = make_step(name, spec, table, batch, sets, device)
    for _ in range(3):
        step()
    time_one = _timer(device)
    times = [time_one(step) for _ in range(steps)]
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
    ap.add_argument("--supernet-only", action="store_true", help="only the fused vs reference supernet figures")
    ap.add_argument("--torch-device", default="cpu", help="cpu or cuda (the fused vs reference figures)")
    a = ap.parse_args()
    a.tables_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    tables = measure_tables(a.tables_dir, (FUSED_SPACE,) if a.supernet_only else (*SPACES, FUSED_SPACE))
    print(f"tables measured/checked in {time.perf_counter() - t0:.1f} s (device cpu, fast protocol)")
    import torch

    print(f"torch {torch.__version__}, {mp.cpu_count()} CPUs")
    fused = supernet_bench(a, tables)
    if a.supernet_only:
        if a.json:
            a.json.write_text(json.dumps({"fused": fused}, indent=2))
        return
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
        a.json.write_text(json.dumps({"presets": rows, "overhead": ratios, "fused": fused}, indent=2))


if __name__ == "__main__":
    main()
