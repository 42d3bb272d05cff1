"""What starved the lean (single-path) sampler: training accuracy of path-sampling variants, equal steps.

    python bench/lean_probe.py [--steps 128] [--seed 0]

FBNet space ``fbnet-cifar:input_size=16,width=0.25``, digits (first 512 training samples), batch 32, SGD 0.05
momentum 0.9, weight decay 1e-4, gradient clip 5, 1 torch thread. The engine's supernet (``SearchModel``, fused
layout) trains its weights only (architecture logits at zero, as at the start of a search). Each variant either
uses the sampler or draws a fixed rule of one-hot paths, and may undo one of the two parts of the fix (residual
branches that start at zero; the soft sample at sites without a shortcut). Prints train accuracy per 16 steps, the
median gradient norm (before clipping) and ms/step.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from typing import Callable

import torch
import torch.nn.functional as F

from profiler.spaces.space import get_space
from search.config import ControlConfig
from search.control import build_control
from search.costs import CostModel
from search.data import load_data
from search.fused import FusedMixedOp
from search.samplers import Sampler
from search.supernet import MixedOp, SearchModel, zero_residual_branches

SPEC = "fbnet-cifar:input_size=16,width=0.25"


def model_for(sampler: str, seed: int, unit_branches: bool, single_everywhere: bool,
              supernet: str = "fused") -> SearchModel:
    sp = get_space(SPEC)
    costs = CostModel(sp, [])
    control = build_control(ControlConfig(kind="static", cost_terms=("params",), weights=(0.0,)), len(sp.layers),
                            sp.ops, costs, generator=torch.Generator().manual_seed(seed))
    torch.manual_seed(seed)
    model = SearchModel(sp, control, Sampler(sampler), costs, supernet=supernet)
    for m in model.net.modules():
        if isinstance(m, (FusedMixedOp, MixedOp)):
            if unit_branches:  # the default BatchNorm scale, as before the fix
                for t in ([m.proj_bn_w] if isinstance(m, FusedMixedOp) else
                          [b.weight for b in m.modules() if isinstance(b, torch.nn.BatchNorm2d)]):
                    t.data.fill_(1.0)
            if single_everywhere and sampler == "lean":
                m.lean = True
    if single_everywhere:
        model.soft_rows = None
    return model


def train(model: SearchModel, rule: Callable | None, data, steps: int, seed: int,
          momentum: float = 0.9, weight_decay: float = 1e-4) -> tuple[list[float], float, float]:
    x_all, y_all = data
    opt = torch.optim.SGD(model.weight_parameters(), lr=0.05, momentum=momentum, weight_decay=weight_decay)
    g = torch.Generator().manual_seed(seed)
    gr = torch.Generator().manual_seed(seed + 5)
    c = model.control.sample(g)
    accs, norms, t0 = [], [], time.perf_counter()
    L, K = len(model.space.layers), len(model.space.ops)
    for _ in range(steps):
        idx = torch.randint(0, len(y_all), (32,), generator=g)
        if rule is None:
            out = model.run(x_all[idx], c, 5.0, g).out
        else:
            out = model.net(x_all[idx], F.one_hot(rule(L, K, gr), K).float())
        loss = F.cross_entropy(out, y_all[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        norms.append(float(torch.nn.utils.clip_grad_norm_(model.weight_parameters(), 5.0)))
        opt.step()
        accs.append(float((out.detach().argmax(1) == y_all[idx]).float().mean()))
    return accs, statistics.median(norms), (time.perf_counter() - t0) / steps * 1000


def rules(sp) -> dict[str, tuple]:
    """name -> (sampler, rule or None, unit-scale residual branches, one path at every site[, options])."""
    no_short = torch.tensor([s.stride != 1 or s.c_in != s.c_out for s in (lay.sites[0] for lay in sp.layers)])

    def fixed_no_shortcut(L, K, g):  # uniform at shortcut sites, k5_e6 at the others
        k = torch.randint(0, K, (L,), generator=g)
        k[no_short] = 7
        return k

    return {
        "soft Gumbel (tau 5, every op runs)": ("gumbel", None, True, False),
        "soft Gumbel, zero-init branches": ("gumbel", None, True, False, {"zero": True}),
        "lean, before the fix": ("lean", None, True, True),
        "  same, per-op reference layout": ("lean", None, True, True, {"supernet": "reference"}),
        "  same, SGD without momentum or decay": ("lean", None, True, True, {"momentum": 0.0, "weight_decay": 0.0}),
        "lean, zero-init branches only": ("lean", None, False, True),
        "lean, soft at no-shortcut sites only": ("lean", None, True, False),
        "lean, now (both)": ("lean", None, False, False),
        "one path, k5_e6 at no-shortcut sites": ("lean", fixed_no_shortcut, True, True),
        "  same, zero-init branches": ("lean", fixed_no_shortcut, False, True),
        "fixed k5_e6 network": ("lean", lambda L, K, g: torch.full((L,), 7, dtype=torch.long), True, True),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", help="run only the variants whose name contains this")
    a = ap.parse_args()
    torch.set_num_threads(1)
    sp = get_space(SPEC)
    tr = load_data("digits", 16, 3, a.seed).train
    data = tr.tensors[0][:512], tr.tensors[1][:512]
    print(f"{SPEC}, digits[:512], batch 32, {a.steps} steps, seed {a.seed}, load {os.getloadavg()[0]:.2f}; "
          f"train accuracy per 16 steps")
    for name, (sampler, rule, unit, single, *more) in rules(sp).items():
        opt = more[0] if more else {}
        if a.only and a.only not in name:
            continue
        model = model_for(sampler, a.seed, unit, single, opt.pop("supernet", "fused"))
        if opt.pop("zero", False):
            zero_residual_branches(model.net)
        accs, gn, ms = train(model, rule, data, a.steps, a.seed, **opt)
        per16 = " ".join(f"{sum(accs[i:i + 16]) / len(accs[i:i + 16]):.2f}" for i in range(0, len(accs), 16))
        print(f"  {name:<38} {per16}  | grad norm {gn:6.1f} | {ms:4.0f} ms/step", flush=True)


if __name__ == "__main__":
    main()
