"""The supernet: the space's topology (``profiler.spaces.network.SpaceNet``) with a mixed op at every searchable site.

:class:`SearchModel` bundles the supernet, the control module, the sampler and the cost tensors -- each passed in,
none built inside -- and computes, for one control value, the op weights, the expected costs and the penalty.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from profiler.spaces.network import SpaceNet
from profiler.spaces.ops import InvertedResidual, build_op
from profiler.spaces.space import Site, Space

from .control import Control, Value
from .costs import CostModel
from .fused import FusedMixedOp, fusable
from .samplers import Sampler

SUPERNETS = ("fused", "reference")


class MixedOp(nn.Module):
    """All candidate ops of one site. ``forward(x, w)``: ``w`` [ops] or per-sample [N, ops].

    With ``lean`` set, only the op with the largest weight runs and is scaled by that weight (value 1 under the
    straight-through sampler), so its gradient still reaches the logits.
    """

    def __init__(self, site: Site, choices: tuple[str, ...]):
        super().__init__()
        self.ops = nn.ModuleList(build_op(op, site.c_in, site.c_out, site.stride, **dict(site.params))
                                 for op in choices)
        self.lean = False

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        if w.dim() == 2:  # per-sample weights
            return sum(w[:, k].view(-1, 1, 1, 1) * op(x) for k, op in enumerate(self.ops))
        if self.lean:
            k = int(w.detach().argmax())
            return self.ops[k](x) * w[k]
        return sum(w[k] * op(x) for k, op in enumerate(self.ops))


def mixed_op(site: Site, choices: tuple[str, ...], supernet: str = "fused") -> nn.Module:
    """The mixed layer of one site: fused (:mod:`search.fused`) where the candidates allow it and ``supernet`` is
    ``fused``, else the per-op reference."""
    if supernet not in SUPERNETS:
        raise ValueError(f"supernet {supernet!r} is not one of {', '.join(SUPERNETS)}")
    if supernet == "fused" and fusable(choices):
        return FusedMixedOp(site, choices)
    return MixedOp(site, choices)


def build_supernet(space: Space, supernet: str = "fused", zero_residual: bool = False) -> SpaceNet:
    """The supernet of ``space``; with ``zero_residual``, see :func:`zero_residual_branches`."""
    net = SpaceNet(space, lambda row, site: mixed_op(site, space.layers[row].choices, supernet))
    if zero_residual:
        zero_residual_branches(net)
    return net


def zero_residual_branches(net: nn.Module) -> int:
    """Set the last BatchNorm scale of every candidate block that sits on a residual (``x + body(x)``) to zero, so
    each such block starts as the identity (Goyal et al.'s zero-gamma init); returns how many sites it changed.

    Every sampler gets it by default (``SearchConfig.zero_residual``). The lean sampler cannot do without: a path
    drawn per layer adds, at every residual site, the unit-variance output of one
    of several unrelated, randomly initialised blocks, and the network's output is then dominated by which path was
    drawn -- the weights get large, conflicting gradients and do not learn (README, *The lean sampler*). From zero,
    a branch grows only as far as training makes it useful to every path through it. The soft samplers meet the
    same trouble once the temperature is low (the Gumbel sample is then nearly one-hot): at the bench's scale their
    supernets fell back to chance as it fell (README, Search).
    """
    n = 0
    for m in net.modules():
        if isinstance(m, FusedMixedOp) and m.residual:
            with torch.no_grad():
                m.proj_bn_w.zero_()
            n += 1
        elif isinstance(m, MixedOp):
            bns = [[b for b in op.body.modules() if isinstance(b, nn.BatchNorm2d)][-1]
                   for op in m.ops if getattr(op, "residual", False) and hasattr(op, "body")]
            with torch.no_grad():
                for b in bns:
                    b.weight.zero_()
            n += bool(bns)
    return n


def has_shortcut(m: nn.Module) -> bool:
    """Whether a mixed layer's input reaches its output whichever candidate runs: no candidate is a block without
    its residual (FBNet / MBConv blocks at a stride or a width change). DARTS edges count as having one (a node sums
    several edges)."""
    if isinstance(m, FusedMixedOp):
        return m.residual
    return not any(getattr(op, "residual", True) is False for op in getattr(m, "ops", ()))


def soft_rows(net: SpaceNet) -> torch.Tensor:
    """[layers] bool: the layers of a chain supernet whose mixed layer has no shortcut (:func:`has_shortcut`)."""
    rows = torch.zeros(len(net.space.layers), dtype=torch.bool)
    if net.space.family == "chain":
        for i, m in enumerate(net.blocks):
            rows[i] = not has_shortcut(m)
    return rows


@dataclass
class StepOut:
    out: torch.Tensor
    logits: torch.Tensor
    probs: torch.Tensor
    penalty: torch.Tensor
    expected: dict[str, torch.Tensor]


class SearchModel(nn.Module):
    def __init__(self, space: Space, control: Control, sampler: Sampler, costs: CostModel,
                 metric_terms: tuple[str, ...] = (), cost_under: str = "softmax", supernet: str = "fused",
                 zero_residual: bool = True):
        super().__init__()
        self.cost_under = cost_under  # softmax: costs under softmax(alpha); sample: under the step's op weights
        self.space = space
        # residual branches start at zero (zero_residual); lean: layers without a shortcut take the soft sample and
        # run every candidate (a single path there starves the weights; README, *The lean sampler*); with
        # sampler.rows_tau_min they sample at a temperature of at least that
        self.net = build_supernet(space, supernet, zero_residual=zero_residual)
        self.control = control
        self.costs = costs
        self.sampler = sampler
        self.metric_terms = tuple(dict.fromkeys((*control.cost_terms, *metric_terms)))
        rows = sampler.lean or sampler.rows_tau_min is not None
        self.register_buffer("soft_rows", soft_rows(self.net) if rows else None, persistent=False)
        for m in self.net.modules():
            if isinstance(m, (MixedOp, FusedMixedOp)):
                m.lean = sampler.lean and has_shortcut(m)

    def weight_parameters(self) -> list[nn.Parameter]:
        return list(self.net.parameters())

    def arch_parameters(self) -> list[nn.Parameter]:
        return list(self.control.parameters())

    def run(self, x: torch.Tensor, c: Value, tau: float, g: torch.Generator | None,
            deterministic: bool = False) -> StepOut:
        logits = self.control(c)
        if deterministic:
            w = self.sampler.deterministic(logits, tau, self.soft_rows)
        else:
            w = self.sampler(logits, tau, g, n=x.shape[0], soft_rows=self.soft_rows)
        out = self.net(x, w.transpose(0, 1) if w.dim() == 3 else w)
        probs = torch.softmax(logits, dim=-1)
        p = probs if deterministic or self.cost_under == "softmax" else (w.mean(dim=0) if w.dim() == 3 else w)
        expected = {t: self.costs.expected(t, p) for t in self.metric_terms}
        return StepOut(out, logits, probs, self.control.penalty(c, p, expected), expected)
