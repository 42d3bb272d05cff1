"""Would a fused DARTS edge pay? One mixed edge's forward+backward, per-op against hand-fused prototypes.

    python bench/darts_edge_probe.py [--steps 30] [--reps 3] [--space darts:C=8,cells=5]

For every distinct edge shape of the space (channels, input size, stride), batch 32, 1 torch thread: the per-op
edge (``search.supernet.MixedOp``, the 8 DARTS ops) against the same edge with

* ``sep``: sep_conv_3x3 and sep_conv_5x5 fused (one shared ReLU; each stack's two depthwise convolutions one
  depthwise convolution over the duplicated input, the k3 kernel inside a masked zero ring of a 5x5 one; the two
  pointwise convolutions one grouped convolution; BatchNorm over the concatenated channels; channels-last), the other
  six ops per-op;
* ``sep+dil``: also dil_conv_3x3 inside dil_conv_5x5 (dilation 2), their first depthwise stage beside the sep pair's
  and every first pointwise convolution one grouped convolution.

Prints the median ms per edge (best of ``--reps`` interleaved rounds), the sep pair's own ms per-op and fused,
and the edge-count-weighted sum over the space's edges, which bounds what fusing could save in a search step. The prototypes have the fused layout's
arithmetic and kernels, not copied weights (timing only; exactness is what tests/test_search_fused.py checks for
the FBNet layer).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from functools import partial
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout, as bench_search.py does

from profiler.spaces.ops import build_op  # noqa: E402
from profiler.spaces.space import Site, get_space  # noqa: E402
from search.supernet import MixedOp  # noqa: E402

CL = torch.channels_last
FUSED = {"sep": ("sep_conv_3x3", "sep_conv_5x5"),
         "sep+dil": ("sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5")}


def _ring(c: int) -> torch.Tensor:
    """[2c, 1, 5, 5]: a k3 kernel's mask inside 5x5 (first c rows), then a full 5x5 one."""
    m3 = torch.zeros(c, 1, 5, 5)
    m3[:, :, 1:4, 1:4] = 1
    return torch.cat([m3, torch.ones(c, 1, 5, 5)])


class FusedConvs(nn.Module):
    """The sep pair (and with ``dil`` the dil pair) of one edge, fused; ``forward(x, w)`` with their op weights."""

    def __init__(self, c: int, stride: int, dil: bool):
        super().__init__()
        self.c, self.stride, self.dil = c, stride, dil
        self.register_buffer("mask", _ring(c))
        n1 = 4 if dil else 2
        self.dw_sep = nn.Parameter(torch.randn(2 * c, 1, 5, 5))
        self.dw_dil = nn.Parameter(torch.randn(2 * c, 1, 5, 5)) if dil else None
        self.pw1 = nn.Parameter(torch.randn(n1 * c, c, 1, 1))
        self.bn1 = nn.BatchNorm2d(n1 * c)
        self.dw2 = nn.Parameter(torch.randn(2 * c, 1, 5, 5))
        self.pw2 = nn.Parameter(torch.randn(2 * c, c, 1, 1))
        self.bn2 = nn.BatchNorm2d(2 * c)

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        c, groups = self.c, 2 * self.c
        r = F.relu(x)
        r = torch.cat([r, r], 1).contiguous(memory_format=CL)
        d = F.conv2d(r, self.dw_sep * self.mask, stride=self.stride, padding=2, groups=groups)
        if self.dil:
            e = F.conv2d(r, self.dw_dil * self.mask, stride=self.stride, padding=4, dilation=2, groups=groups)
            d = torch.cat([d, e], 1)
        p = self.bn1(F.conv2d(d, self.pw1, groups=4 if self.dil else 2))
        h = F.relu(p[:, :2 * c]).contiguous(memory_format=CL)
        q = self.bn2(F.conv2d(F.conv2d(h, self.dw2 * self.mask, padding=2, groups=groups), self.pw2, groups=2))
        out = w[0] * q[:, :c] + w[1] * q[:, c:]
        if self.dil:
            out = out + w[2] * p[:, 2 * c:3 * c] + w[3] * p[:, 3 * c:]
        return out


class SepPair(nn.Module):
    """sep_conv_3x3 and sep_conv_5x5 alone, per-op: what the ``sep`` prototype replaces."""

    def __init__(self, edge: MixedOp, choices: tuple[str, ...]):
        super().__init__()
        self.at = [choices.index(op) for op in FUSED["sep"]]
        self.ops = nn.ModuleList(edge.ops[k] for k in self.at)

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return sum(w[k] * op(x) for k, op in zip(self.at, self.ops))


class ProtoEdge(nn.Module):
    """A DARTS edge with the ops of ``FUSED[variant]`` fused and the others per-op."""

    def __init__(self, site: Site, choices: tuple[str, ...], variant: str):
        super().__init__()
        fused = FUSED[variant]
        self.rest = [k for k, op in enumerate(choices) if op not in fused]
        self.at = torch.tensor([choices.index(op) for op in fused])
        self.ops = nn.ModuleList(build_op(choices[k], site.c_in, site.c_out, site.stride) for k in self.rest)
        self.convs = FusedConvs(site.c_in, site.stride, dil=len(fused) == 4)

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        out = self.convs(x, w[self.at])
        for k, op in zip(self.rest, self.ops):
            out = out + w[k] * op(x)
        return out


def _pair_fused(edge: ProtoEdge, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return edge.convs(x, w[edge.at])


def median_ms(m: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], x: torch.Tensor, w: torch.Tensor, steps: int) -> float:
    ts = []
    for _ in range(steps):
        t = time.perf_counter()
        m(x, w).sum().backward()
        ts.append(time.perf_counter() - t)
    return sorted(ts)[len(ts) // 2] * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--space", default="darts:C=8,cells=5")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--batch", type=int, default=32)
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    sp = get_space(args.space)
    choices = sp.layers[0].choices
    shapes = Counter((s.c_in, s.input_hw, s.stride) for layer in sp.layers for s in layer.sites)
    total = Counter()
    for (c, hw, stride), count in shapes.items():
        site = Site(name="edge", c_in=c, c_out=c, stride=stride, input_hw=hw, op=None, params=())
        edges = {"per-op": MixedOp(site, choices), **{v: ProtoEdge(site, choices, v) for v in FUSED}}
        edges["pair per-op"] = SepPair(edges["per-op"], choices)
        edges["pair fused"] = partial(_pair_fused, edges["sep"])
        x = torch.randn(args.batch, c, *hw, requires_grad=True)
        w = torch.softmax(torch.randn(len(choices)), 0).requires_grad_()
        runs = [{k: median_ms(m, x, w, args.steps) for k, m in edges.items()} for _ in range(args.reps)]
        best = {k: min(r[k] for r in runs) for k in edges}
        pair = best.pop("pair per-op"), best.pop("pair fused")
        total.update({k: v * count for k, v in best.items()})
        print(f"C={c} {hw[0]}x{hw[1]} stride {stride} ({count} edges): "
              + ", ".join(f"{k} {v:.2f} ms ({best['per-op'] / v:.2f}x)" for k, v in best.items())
              + f"; the sep pair alone: per-op {pair[0]:.2f} ms, fused {pair[1]:.2f} ms ({pair[0] / pair[1]:.2f}x)",
              flush=True)
    print("all edges: " + ", ".join(f"{k} {v:.0f} ms ({total['per-op'] / v:.2f}x)" for k, v in total.items()))


if __name__ == "__main__":
    main()
