"""Control modules: what produces the architecture logits ``alpha`` [layers, ops].

Each control is an ``nn.Module`` whose parameters are trained by the architecture optimiser:

* :class:`StaticControl` -- alpha is one registered parameter (DARTS, FBNet).
* :class:`LambdaControl` -- DARTS-CC: lambda log-uniform in [min, max], normalised to [0, 1]; alpha is piecewise
  linear between M anchor tensors at learnable pivots; penalty lambda * E[cost] / ref.
* :class:`SimplexOpsControl` -- the simplex hypernetwork of the paper's public code, done right: S ~ Dirichlet(1)
  over the K ops, alpha(S) = sum_r w_r(S) A_r with w = softmax_r(-||S - p_r||^2 / sigma) (nearest pivots weigh
  most); penalty kappa * sum_layers sum_k p_k S_k.
* :class:`SeedControl` -- the paper's method (preset ``seed``): S on the simplex over the K ops, drawn every step
  from a concrete (Gumbel-Softmax) distribution with configured logits theta and temperature (or Dirichlet(1));
  alpha(S) from an RBF hypernetwork with learnable pivots (w = softmax_r(-||S - p_r||^2 / sigma)) or the
  barycentric piecewise-linear form alpha(S) = sum_k S_k A_k; penalty lambda * Reg + kappa * E[latency_ms], Reg the
  S-weighted op usage sum_layers sum_k p_k S_k (or E[params]/ref). Latency is in table units (ms), not normalised,
  so the table's scale is in the loss.
* :class:`TradeoffControl` -- ours: a magnitude kappa (log-uniform) and a direction S on the simplex over the cost
  terms; penalty kappa * sum_j S_j E[cost_j] / ref_j; alpha(kappa~, S) from a piecewise-linear ("pwl": one anchor
  chain per cost term, mixed by S) or an MLP hypernetwork.

A *control value* is a dict of tensors (``{"lambda": t}``, ``{"kappa": t, "S": v}``, ``{}``); :meth:`Control.value`
turns a plain dict (``{"kappa": 5.0, "S": [0.5, 0.5]}``) into one, checking it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import nn

from profiler.errors import UserError

from .costs import CostModel

Value = dict[str, torch.Tensor]


class ControlError(UserError, ValueError):
    """A bad control value; one line naming the field and the accepted range."""


def _pwl(anchors: torch.Tensor, gaps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Piecewise-linear interpolation of ``anchors`` [M, ...] at ``t`` in [0, 1]; pivots 0 < ... < 1 from ``gaps``."""
    pos = torch.cat([gaps.new_zeros(1), torch.cumsum(torch.softmax(gaps, dim=0), dim=0)])
    pos = torch.cat([pos[:-1], pos.new_ones(1)])  # exact 1 at the end
    t = t.clamp(0.0, 1.0)
    j = int(torch.searchsorted(pos.detach(), t.detach().reshape(1), right=True).clamp(1, len(pos) - 1)) - 1
    w = (t - pos[j]) / (pos[j + 1] - pos[j]).clamp_min(1e-6)
    return (1 - w) * anchors[j] + w * anchors[j + 1]



@dataclass(frozen=True)
class ControlSpace:
    """What a run's control is: the contract between the control module (which trains over it) and derivation and
    the metrics grid (which sweep it). Nothing else learns the control's structure by probing a dict.

    ``magnitude``: the penalty magnitude trained over ``bounds`` ("kappa" or "lambda"; None when fixed or absent);
    ``s_dim``: dimensions of the direction S (0: no S), which lies on the simplex of ``s_over`` ("cost_terms" for
    tradeoff, "ops" for simplex-ops and seed); ``details``: fixed settings, shown in messages only.
    """

    kind: str
    cost_terms: tuple[str, ...] = ()
    magnitude: str | None = None
    bounds: tuple[float, float] | None = None
    s_dim: int = 0
    s_over: str | None = None
    details: tuple[tuple[str, Any], ...] = ()

    def __post_init__(self) -> None:
        if (self.magnitude is None) != (self.bounds is None):
            raise ValueError(f"control space {self.kind}: magnitude and bounds go together")
        if (self.s_dim > 0) != (self.s_over is not None):
            raise ValueError(f"control space {self.kind}: s_dim and s_over go together")

    @property
    def names(self) -> list[str]:
        """The control's value names a user gives (``--control kappa=..,S=..``)."""
        return ([self.magnitude] if self.magnitude else []) + (["S"] if self.s_dim else [])

    def as_dict(self) -> dict[str, Any]:
        """The plain form shown to users (and the ``control_range`` of earlier versions)."""
        out: dict[str, Any] = {}
        if self.magnitude:
            out[self.magnitude] = list(self.bounds or ())
        if self.s_dim:
            out["S_dim"] = self.s_dim
        out.update(dict(self.details))
        out["cost_terms"] = list(self.cost_terms)
        return out


class Control(nn.Module):
    kind = "base"

    def __init__(self, layers: int, ops: Sequence[str], cost_terms: Sequence[str], refs: Sequence[float]):
        super().__init__()
        self.layers, self.ops = layers, tuple(ops)
        self.cost_terms = tuple(cost_terms)
        # reference scales of the cost terms (expected cost at uniform probabilities); saved with the control
        self.register_buffer("refs", torch.tensor([float(r) for r in refs], dtype=torch.float32))

    # ---------------------------------------------------------------- to override
    def sample(self, g: torch.Generator) -> Value:
        return {}

    def value(self, control: dict[str, Any]) -> Value:
        if control:
            raise ControlError(f"control {self.kind} takes no values, got {sorted(control)}")
        return {}

    def forward(self, c: Value) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def coefficients(self, c: Value) -> torch.Tensor:
        """Penalty weight per cost term (already divided by the reference scale)."""
        return torch.zeros(len(self.cost_terms), device=self.refs.device)

    def space(self) -> ControlSpace:
        return ControlSpace(self.kind, tuple(self.cost_terms))

    def control_range(self) -> dict[str, Any]:
        return self.space().as_dict()

    def plain(self, c: Value) -> dict[str, Any]:
        return {k: (float(v) if v.numel() == 1 else [float(x) for x in v.reshape(-1)]) for k, v in c.items()}

    # ---------------------------------------------------------------- shared
    def penalty(self, c: Value, probs: torch.Tensor, expected: dict[str, torch.Tensor]) -> torch.Tensor:
        """The penalty for op probabilities ``probs`` [layers, ops] with expected costs ``expected`` (by term)."""
        if not self.cost_terms:
            return probs.new_zeros(())
        coef = self.coefficients(c).to(probs.device)
        e = torch.stack([expected[t] for t in self.cost_terms])
        return (coef * e / self.refs.to(probs.device)).sum()


class StaticControl(Control):
    kind = "static"

    def __init__(self, layers: int, ops: Sequence[str], cost_terms: Sequence[str] = (), refs: Sequence[float] = (),
                 weights: Sequence[float] = (), init_std: float = 1e-3, generator: torch.Generator | None = None):
        super().__init__(layers, ops, cost_terms, refs or [1.0] * len(cost_terms))
        self.alpha = nn.Parameter(init_std * torch.randn(layers, len(ops), generator=generator))
        w = list(weights) or [0.0] * len(self.cost_terms)
        self.register_buffer("weights", torch.tensor(w, dtype=torch.float32))

    def forward(self, c: Value) -> torch.Tensor:
        return self.alpha

    def coefficients(self, c: Value) -> torch.Tensor:
        return self.weights


class _LogRange:
    """A log-uniform scalar control in [lo, hi] and its normalisation to [0, 1]."""

    def __init__(self, name: str, lo: float, hi: float):
        self.name, self.lo, self.hi = name, lo, hi

    def sample(self, g: torch.Generator) -> torch.Tensor:
        u = torch.rand((), generator=g)
        return torch.exp(math.log(self.lo) + u * (math.log(self.hi) - math.log(self.lo)))

    def normalised(self, v: torch.Tensor) -> torch.Tensor:
        return ((torch.log(v) - math.log(self.lo)) / (math.log(self.hi) - math.log(self.lo))).clamp(0.0, 1.0)

    def check(self, control: dict[str, Any], kind: str) -> torch.Tensor:
        if self.name not in control:
            raise ControlError(f"control {kind} needs {self.name!r} (range [{self.lo:g}, {self.hi:g}])")
        v = control[self.name]
        try:
            v = float(v)
        except (TypeError, ValueError):
            raise ControlError(f"control {self.name}={v!r} is not a number") from None
        if not v > 0 or not math.isfinite(v):
            raise ControlError(f"control {self.name}={v!r} must be > 0 (trained range [{self.lo:g}, {self.hi:g}])")
        return torch.tensor(v, dtype=torch.float32)


def _simplex(control: dict[str, Any], dim: int, kind: str, labels: Sequence[str]) -> torch.Tensor:
    s = control.get("S")
    if s is None:
        return torch.full((dim,), 1.0 / dim)
    try:
        t = torch.tensor([float(x) for x in s], dtype=torch.float32)
    except (TypeError, ValueError):
        raise ControlError(f"control S={s!r} must be a list of {dim} numbers ({', '.join(labels)})") from None
    if t.numel() != dim or bool((t < 0).any()) or not float(t.sum()) > 0:
        raise ControlError(f"control S={s!r}: need {dim} non-negative weights ({', '.join(labels)}), not all zero")
    return t / t.sum()


def _dirichlet1(dim: int, g: torch.Generator) -> torch.Tensor:
    e = -torch.log(torch.rand(dim, generator=g).clamp_min(1e-12))
    return e / e.sum()


class LambdaControl(Control):
    kind = "lambda"

    def __init__(self, layers: int, ops: Sequence[str], cost_terms: Sequence[str], refs: Sequence[float],
                 lo: float, hi: float, anchors: int = 4, init_std: float = 1e-3,
                 generator: torch.Generator | None = None):
        super().__init__(layers, ops, cost_terms, refs)
        self.range = _LogRange("lambda", lo, hi)
        self.anchors = nn.Parameter(init_std * torch.randn(anchors, layers, len(ops), generator=generator))
        self.gaps = nn.Parameter(torch.zeros(anchors - 1))

    def sample(self, g: torch.Generator) -> Value:
        return {"lambda": self.range.sample(g)}

    def value(self, control: dict[str, Any]) -> Value:
        return {"lambda": self.range.check(control, self.kind)}

    def forward(self, c: Value) -> torch.Tensor:
        return _pwl(self.anchors, self.gaps, self.range.normalised(c["lambda"]).to(self.anchors.device))

    def coefficients(self, c: Value) -> torch.Tensor:
        return c["lambda"].to(self.refs.device).expand(len(self.cost_terms))

    def space(self) -> ControlSpace:
        return ControlSpace(self.kind, tuple(self.cost_terms), "lambda", (self.range.lo, self.range.hi))


class _AnchorMixture(Control):
    """Logits that mix per-anchor logits ``anchors`` ``[anchors, layers, ops]`` with the weights ``mixing(S)``."""

    anchors: torch.Tensor

    def mixing(self, s: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, c: Value) -> torch.Tensor:
        w = self.mixing(c["S"].to(self.anchors.device))
        return torch.einsum("r,rlk->lk", w, self.anchors)


class SimplexOpsControl(_AnchorMixture):
    kind = "simplex-ops"

    def __init__(self, layers: int, ops: Sequence[str], kappa: float = 50.0, sigma: float = 0.25,
                 init_std: float = 1e-3, generator: torch.Generator | None = None):
        super().__init__(layers, ops, (), ())
        K = len(ops)
        self.kappa, self.sigma = float(kappa), float(sigma)
        self.register_buffer("pivots", torch.eye(K))  # p_r: the simplex vertices
        self.anchors = nn.Parameter(init_std * torch.randn(K, layers, K, generator=generator))

    def sample(self, g: torch.Generator) -> Value:
        return {"S": _dirichlet1(len(self.ops), g)}

    def value(self, control: dict[str, Any]) -> Value:
        extra = set(control) - {"S"}
        if extra:
            raise ControlError(f"control simplex-ops takes only S (one weight per op), got {sorted(extra)}")
        return {"S": _simplex(control, len(self.ops), self.kind, self.ops)}

    def mixing(self, s: torch.Tensor) -> torch.Tensor:
        d2 = ((s[None, :] - self.pivots) ** 2).sum(dim=1)
        return torch.softmax(-d2 / self.sigma, dim=0)  # the minus sign: the nearest pivots weigh most

    def penalty(self, c: Value, probs: torch.Tensor, expected: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.kappa * (probs * c["S"].to(probs.device)).sum()  # S acts as a per-op cost

    def space(self) -> ControlSpace:
        return ControlSpace(self.kind, (), s_dim=len(self.ops), s_over="ops",
                            details=(("ops", list(self.ops)), ("kappa", self.kappa)))


class SeedControl(_AnchorMixture):
    """S over the ops is the control; latency (ms, from the table) and an S-weighted regulariser form the penalty."""

    kind = "seed"

    def __init__(self, layers: int, ops: Sequence[str], cost_terms: Sequence[str], refs: Sequence[float],
                 kappa: float, lam: float, reg: str = "usage", hypernet: str = "rbf", sigma: float = 0.25,
                 s_dist: str = "concrete", s_theta: Sequence[float] = (), s_tau: float = 1.0,
                 init_std: float = 1e-3, generator: torch.Generator | None = None):
        super().__init__(layers, ops, cost_terms, refs)
        K = len(ops)
        if "latency" not in self.cost_terms:
            raise ControlError("control seed needs the latency cost term (pass --table)")
        self.kappa, self.lam, self.reg, self.sigma = float(kappa), float(lam), reg, float(sigma)
        self.hypernet, self.s_dist, self.s_tau = hypernet, s_dist, float(s_tau)
        theta = list(s_theta) or [0.0] * K
        if len(theta) != K:
            raise ControlError(f"control.s_theta={list(s_theta)!r}: need one logit per op ({K}: {', '.join(ops)})")
        self.register_buffer("theta", torch.tensor([float(t) for t in theta], dtype=torch.float32))
        self.anchors = nn.Parameter(init_std * torch.randn(K, layers, K, generator=generator))
        if hypernet == "rbf":  # pivots p_r = softmax(pivot_logits_r): on the simplex, start near the vertices
            self.pivot_logits = nn.Parameter(3.0 * torch.eye(K))

    def sample(self, g: torch.Generator) -> Value:
        K = len(self.ops)
        if self.s_dist == "dirichlet":
            return {"S": _dirichlet1(K, g)}
        u = torch.rand(K, generator=g).clamp(1e-10, 1.0 - 1e-7)
        return {"S": torch.softmax((self.theta.cpu() - torch.log(-torch.log(u))) / self.s_tau, dim=0)}

    def value(self, control: dict[str, Any]) -> Value:
        extra = set(control) - {"S"}
        if extra:
            raise ControlError(f"control seed takes only S (one weight per op: {', '.join(self.ops)}), "
                               f"got {sorted(extra)}")
        return {"S": _simplex(control, len(self.ops), self.kind, self.ops)}

    def pivots(self) -> torch.Tensor:
        return torch.softmax(self.pivot_logits, dim=1)

    def mixing(self, s: torch.Tensor) -> torch.Tensor:
        if self.hypernet == "pwl":
            return s  # barycentric: linear between the vertex anchors
        d2 = ((s[None, :] - self.pivots()) ** 2).sum(dim=1)
        return torch.softmax(-d2 / self.sigma, dim=0)  # the minus sign: the nearest pivots weigh most

    def regulariser(self, c: Value, probs: torch.Tensor, expected: dict[str, torch.Tensor]) -> torch.Tensor:
        if self.reg == "params":
            return expected["params"] / self.refs[self.cost_terms.index("params")].to(probs.device)
        return (probs * c["S"].to(probs.device)).sum()  # S-weighted op usage: S acts as a per-op price

    def penalty(self, c: Value, probs: torch.Tensor, expected: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.lam * self.regulariser(c, probs, expected) + self.kappa * expected["latency"]

    def space(self) -> ControlSpace:
        return ControlSpace(self.kind, tuple(self.cost_terms), s_dim=len(self.ops), s_over="ops",
                            details=(("ops", list(self.ops)), ("kappa_per_ms", self.kappa), ("lambda_reg", self.lam),
                                     ("reg", self.reg), ("hypernet", self.hypernet)))


class TradeoffControl(Control):
    kind = "tradeoff"

    def __init__(self, layers: int, ops: Sequence[str], cost_terms: Sequence[str], refs: Sequence[float],
                 lo: float, hi: float, hypernet: str = "pwl", anchors: int = 4, hidden: int = 64,
                 init_std: float = 1e-3, generator: torch.Generator | None = None):
        super().__init__(layers, ops, cost_terms, refs)
        if not cost_terms:
            raise ControlError("control tradeoff needs at least one cost term")
        self.range = _LogRange("kappa", lo, hi)
        self.hypernet = hypernet
        J, K = len(cost_terms), len(ops)
        if hypernet == "pwl":
            self.anchors = nn.Parameter(init_std * torch.randn(J, anchors, layers, K, generator=generator))
            self.gaps = nn.Parameter(torch.zeros(J, anchors - 1))
        else:
            self.base = nn.Parameter(init_std * torch.randn(layers, K, generator=generator))
            self.fc1 = nn.Linear(1 + J, hidden)
            self.fc2 = nn.Linear(hidden, layers * K)
            with torch.no_grad():
                self.fc1.weight.copy_(torch.randn(hidden, 1 + J, generator=generator) / math.sqrt(1 + J))
                self.fc1.bias.zero_()
                self.fc2.weight.copy_(init_std * torch.randn(layers * K, hidden, generator=generator))
                self.fc2.bias.zero_()

    def sample(self, g: torch.Generator) -> Value:
        return {"kappa": self.range.sample(g), "S": _dirichlet1(len(self.cost_terms), g)}

    def value(self, control: dict[str, Any]) -> Value:
        extra = set(control) - {"kappa", "S"}
        if extra:
            raise ControlError(f"control tradeoff takes kappa and S, got {sorted(extra)}")
        return {"kappa": self.range.check(control, self.kind),
                "S": _simplex(control, len(self.cost_terms), self.kind, self.cost_terms)}

    def forward(self, c: Value) -> torch.Tensor:
        dev = self.refs.device
        t = self.range.normalised(c["kappa"]).to(dev)
        s = c["S"].to(dev)
        if self.hypernet == "pwl":
            per_term = torch.stack([_pwl(self.anchors[j], self.gaps[j], t) for j in range(len(self.cost_terms))])
            return torch.einsum("j,jlk->lk", s, per_term)
        h = torch.tanh(self.fc1(torch.cat([t.reshape(1), s])))
        return self.base + self.fc2(h).reshape(self.layers, len(self.ops))

    def coefficients(self, c: Value) -> torch.Tensor:
        return c["kappa"].to(self.refs.device) * c["S"].to(self.refs.device)

    def space(self) -> ControlSpace:
        return ControlSpace(self.kind, tuple(self.cost_terms), "kappa", (self.range.lo, self.range.hi),
                            s_dim=len(self.cost_terms), s_over="cost_terms", details=(("hypernet", self.hypernet),))


def build_control(cfg, layers: int, ops: Sequence[str], costs: CostModel,
                  generator: torch.Generator | None = None) -> Control:
    """The control module a :class:`~search.config.ControlConfig` describes (cost terms checked against ``costs``)."""
    terms = tuple(cfg.cost_terms)
    refs = [costs.uniform(t) for t in terms] if cfg.kind != "simplex-ops" else []
    if cfg.kind == "static":
        return StaticControl(layers, ops, terms, refs, cfg.weights, generator=generator)
    if cfg.kind == "lambda":
        return LambdaControl(layers, ops, terms, refs, cfg.range_min, cfg.range_max, cfg.anchors, generator=generator)
    if cfg.kind == "simplex-ops":
        return SimplexOpsControl(layers, ops, cfg.kappa, cfg.sigma, generator=generator)
    if cfg.kind == "seed":
        return SeedControl(layers, ops, terms, refs, cfg.kappa, cfg.lam, cfg.reg, cfg.hypernet, cfg.sigma,
                           cfg.s_dist, cfg.s_theta, cfg.s_tau, generator=generator)
    if cfg.kind == "tradeoff":
        return TradeoffControl(layers, ops, terms, refs, cfg.range_min, cfg.range_max, cfg.hypernet, cfg.anchors,
                               cfg.hidden, generator=generator)
    raise ControlError(f"unknown control kind {cfg.kind!r}")
