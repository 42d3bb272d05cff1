"""Why the lean (single-path) sampler does not learn: training accuracy of path-sampling variants, equal steps.

    python bench/lean_probe.py [--steps 64] [--seed 0]

FBNet space ``fbnet-cifar:input_size=16,width=0.25``, digits (first 512 training samples), batch 32, SGD 0.05
momentum 0.9, 1 torch thread. Each variant draws one op per layer per step (or a fixed rule) and trains the weights
only (architecture logits at zero, as at the start of a search). Prints train accuracy over the last 16 steps and
ms/step. ``shared``: Single-Path NAS' superkernel (an experiment here, not a supernet of ``search``): the candidates
of a site share the widest candidate's weights, k3 the centre of the 5x5 kernel, narrower widths the first channels.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from torch import nn

from profiler.network import SpaceNet
from profiler.ops import InvertedResidual, build_op
from profiler.spaces import Site, get_space
from search.data import load_data
from search.fused import _Block, _dense
from search.samplers import Sampler
from search.supernet import build_supernet

SPEC = "fbnet-cifar:input_size=16,width=0.25"


class SharedMixedOp(nn.Module):
    """Single-Path NAS' superkernel for the lean sampler: the candidates of a site share one set of weights.

    The widest candidate's expansion, depthwise and projection weights are the only ones; a narrower candidate uses
    their first ``mid`` channels (a grouped one behind its block mask, shuffled by its permutation) and a k3 kernel
    the centre of the 5x5 one. BatchNorm stays per op. So every sampled path trains the weights every other path
    uses, and the layer after a site sees features of one kind whichever op ran -- with independent weights per
    op, a uniformly sampled path hands each layer one of 9 unrelated feature sets and the single-path supernet does
    not learn. This is a different supernet (not equal to :class:`FusedMixedOp`); with a soft sampler every op runs.
    """

    def __init__(self, site: Site, choices: tuple[str, ...]):
        super().__init__()
        ops = [build_op(op, site.c_in, site.c_out, site.stride, **dict(site.params)) for op in choices]
        self.n_ops, self.c_out, self.stride = len(ops), site.c_out, site.stride
        self.lean = False
        blocks = [_Block(k, m) for k, m in enumerate(ops) if isinstance(m, InvertedResidual)]
        self.blocks = {b.index: b for b in blocks}
        self.residual = bool(ops[blocks[0].index].residual)
        widest = max(blocks, key=lambda b: (b.mid * (b.g_in == 1), b.kernel))
        self.kmax = max(b.kernel for b in blocks)
        self.exp_w = nn.Parameter(widest.expand[0].weight.detach().clone())
        self.dw_w = nn.Parameter(F.pad(widest.dw[0].weight.detach(), ((self.kmax - widest.kernel) // 2,) * 4))
        self.proj_w = nn.Parameter(widest.proj[0].weight.detach().clone())
        others = [k for k, m in enumerate(ops) if not isinstance(m, InvertedResidual)]
        self.identity = [k for k in others if isinstance(ops[k], nn.Identity)]
        skips = [k for k in others if k not in self.identity]
        self.skip_index = skips[0] if skips else None
        self.skip = ops[skips[0]] if skips else None
        self.bns = nn.ModuleList(nn.ModuleList([b.expand[1], b.dw[1], b.proj[1]]) for b in blocks)
        self.bn_of = {b.index: i for i, b in enumerate(blocks)}
        for b in blocks:
            exp_mask = _dense(b.expand[0].weight.detach(), b.g_in)[1][b.perm]
            self.register_buffer(f"exp_mask{b.index}", exp_mask, persistent=False)
            self.register_buffer(f"perm{b.index}", b.perm, persistent=False)
            self.register_buffer(f"proj_mask{b.index}", _dense(b.proj[0].weight.detach(), b.g_out)[1],
                                 persistent=False)
            b.expand = b.dw = b.proj = None

    def single(self, x: torch.Tensor, k: int) -> torch.Tensor:
        if k in self.identity:
            return x
        if k == self.skip_index:
            return self.skip(x)
        b = self.blocks[k]
        bn_e, bn_d, bn_p = self.bns[self.bn_of[k]]
        ew = self.exp_w[:b.mid].index_select(0, getattr(self, f"perm{k}")) * getattr(self, f"exp_mask{k}")
        e = F.relu(bn_e(F.conv2d(x, ew)))
        c = (self.kmax - b.kernel) // 2
        d = F.relu(bn_d(F.conv2d(e, self.dw_w[:b.mid, :, c:self.kmax - c, c:self.kmax - c], stride=self.stride,
                                 padding=b.kernel // 2, groups=b.mid)))
        y = bn_p(F.conv2d(d, self.proj_w[:, :b.mid] * getattr(self, f"proj_mask{k}")))
        return x + y if self.residual else y

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        if w.dim() == 1 and self.lean:
            k = int(w.detach().argmax())
            return self.single(x, k) * w[k]
        return sum(w[..., k].view(-1, 1, 1, 1) * self.single(x, k) for k in range(self.n_ops))


def variants(L: int, K: int, sp, g: torch.Generator) -> dict:
    sites = [lay.sites[0] for lay in sp.layers]
    conv_skip = [i for i, s in enumerate(sites) if s.stride != 1 or s.c_in != s.c_out]
    count = [0]

    def onehot(k):
        return F.one_hot(k, K).float()

    def alternate(_):
        count[0] += 1
        return onehot(torch.full((L,), 3 + 4 * (count[0] % 2), dtype=torch.long))

    def no_conv_skip(_):
        k = torch.randint(0, K, (L,), generator=g)
        k[conv_skip] = torch.randint(0, K - 1, (len(conv_skip),), generator=g)
        return onehot(k)

    return {
        "lean (uniform path per layer)": None,
        "lean, never skip": lambda _: onehot(torch.randint(0, K - 1, (L,), generator=g)),
        "lean, never the 1x1-conv skip": no_conv_skip,
        "lean, k3_e6 or k5_e6 per layer": lambda _: onehot(3 + 4 * torch.randint(0, 2, (L,), generator=g)),
        "fixed k5_e6 network": lambda _: onehot(torch.full((L,), 7, dtype=torch.long)),
        "alternate all-k3_e6 / all-k5_e6": alternate,
    }


def train(net: nn.Module, mode: str, rule, x_all, y_all, steps: int, seed: int, L: int, K: int) -> tuple:
    for m in net.modules():
        if hasattr(m, "lean"):
            m.lean = mode == "lean"
    alpha = torch.zeros(L, K, requires_grad=True)
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    g = torch.Generator().manual_seed(seed)
    sampler, accs, t0 = Sampler(mode), [], time.perf_counter()
    for _ in range(steps):
        idx = torch.randint(0, len(y_all), (32,), generator=g)
        w = sampler(alpha, 5.0, g) if rule is None else rule(None)
        out = net(x_all[idx], w)
        loss = F.cross_entropy(out, y_all[idx])
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 5.0)
        opt.step()
        accs.append(float((out.argmax(1) == y_all[idx]).float().mean()))
    return sum(accs[-16:]) / 16, (time.perf_counter() - t0) / steps * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    torch.set_num_threads(1)
    sp = get_space(SPEC)
    tr = load_data("digits", 16, 3, a.seed).train
    x_all, y_all = tr.tensors[0][:512], tr.tensors[1][:512]
    L, K = len(sp.layers), len(sp.ops)
    print(f"{SPEC}, digits[:512], batch 32, {a.steps} steps, seed {a.seed}; train accuracy over the last 16 steps")
    for layout in ("fused", "shared"):
        for name, rule in variants(L, K, sp, torch.Generator().manual_seed(a.seed + 5)).items():
            torch.manual_seed(a.seed)
            net = (build_supernet(sp, "fused") if layout == "fused" else
                   SpaceNet(sp, lambda row, site: SharedMixedOp(site, sp.layers[row].choices)))
            acc, ms = train(net, "lean", rule, x_all, y_all, a.steps, a.seed, L, K)
            print(f"  {layout:<7} {name:<34} acc {acc:6.3f}  {ms:6.0f} ms/step", flush=True)
    torch.manual_seed(a.seed)
    acc, ms = train(build_supernet(sp, "fused"), "gumbel", None, x_all, y_all, a.steps, a.seed, L, K)
    print(f"  fused   soft Gumbel (tau 5, every op runs)  acc {acc:6.3f}  {ms:6.0f} ms/step")


if __name__ == "__main__":
    main()
