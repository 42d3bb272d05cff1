"""Samplers turn architecture logits into the op weights the supernet runs with, and temperature schedules.

* ``softmax`` -- DARTS' continuous relaxation, softmax(alpha / tau).
* ``gumbel`` -- Gumbel-Softmax, soft: softmax((alpha + g) / tau).
* ``gumbel-hard`` -- one-hot of the Gumbel sample in the forward pass, the soft sample's gradient (straight-through);
  every op still runs (the one-hot multiplies them).
* ``lean`` -- GDAS-style: the same straight-through one-hot, but the supernet runs only the sampled op per layer and
  its gate (value 1, gradient of the soft sample) carries the gradient to alpha. This is what makes FBNet-space
  search affordable on a CPU. Layers given as ``soft_rows`` (the supernet's sites without a shortcut, see
  :class:`search.supernet.SearchModel`) get the soft sample of the same noise instead: a path drawn per layer
  there hands the next layer one of several unrelated feature sets every step, and the weights do not learn.

``rows_tau_min`` (``SearchConfig.no_shortcut_tau_min``, any sampler): the same layers (``soft_rows``) take their
weights at a temperature of at least this, with the same noise. At a low temperature a soft Gumbel sample is
nearly one-hot, and the sites without a shortcut then starve the weights as the lean sampler's did.

Noise comes from an explicit ``torch.Generator`` so a resumed run draws the same samples.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .config import TemperatureConfig


@dataclass(frozen=True)
class Sampler:
    mode: str = "gumbel"  # softmax | gumbel | gumbel-hard | lean
    per_sample: bool = False
    rows_tau_min: float | None = None  # soft_rows sample at max(tau, this); None: at tau

    @property
    def lean(self) -> bool:
        return self.mode == "lean"

    def __call__(self, logits: torch.Tensor, tau: float, g: torch.Generator | None = None,
                 n: int = 1, soft_rows: torch.Tensor | None = None) -> torch.Tensor:
        """Op weights: [layers, ops], or [n, layers, ops] with ``per_sample``; ``soft_rows`` [layers] (bool): with
        the lean sampler those layers' weights are the soft sample, and with ``rows_tau_min`` they are taken at a
        temperature of at least that."""
        shape = (n, *logits.shape) if self.per_sample else logits.shape
        if self.mode == "softmax":
            y = self._soft(logits, tau, soft_rows)
            return y.expand(shape) if self.per_sample else y
        u = torch.rand(shape, generator=g).clamp(1e-10, 1.0 - 1e-7).to(logits.device)
        gumbel = -torch.log(-torch.log(u))
        soft = self._soft(logits + gumbel, tau, soft_rows)
        if self.mode == "gumbel":
            return soft
        hard = torch.nn.functional.one_hot(soft.argmax(dim=-1), soft.shape[-1]).to(soft.dtype)
        return _rows(soft_rows if self.lean else None, soft, hard - soft.detach() + soft)

    def deterministic(self, logits: torch.Tensor, tau: float, soft_rows: torch.Tensor | None = None) -> torch.Tensor:
        """Noise-free weights for evaluation: softmax, or the argmax one-hot for the lean sampler (softmax on its
        ``soft_rows``); ``rows_tau_min`` applies as in training."""
        soft = self._soft(logits, tau, soft_rows)
        if self.lean:
            hard = torch.nn.functional.one_hot(logits.argmax(dim=-1), logits.shape[-1]).to(logits.dtype)
            return _rows(soft_rows, soft, hard)
        return soft

    def _soft(self, z: torch.Tensor, tau: float, soft_rows: torch.Tensor | None) -> torch.Tensor:
        """softmax(z / tau), at max(tau, rows_tau_min) on ``soft_rows``."""
        soft = torch.softmax(z / tau, dim=-1)
        if self.rows_tau_min is None or tau >= self.rows_tau_min:
            return soft
        return _rows(soft_rows, torch.softmax(z / self.rows_tau_min, dim=-1), soft)


def _rows(soft_rows: torch.Tensor | None, soft: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """``soft`` on the layers of ``soft_rows`` (a bool [layers] mask), ``other`` on the rest."""
    if soft_rows is None or not bool(soft_rows.any()):
        return other
    return torch.where(soft_rows.to(soft.device).unsqueeze(-1), soft, other)


def temperature(cfg: TemperatureConfig, epoch: int, epochs: int) -> float:
    """Temperature at ``epoch`` (0-based) of ``epochs``; always >= cfg.floor > 0.

    With ``cfg.t_end``: t0 at epoch 0, t_end at epoch ``epochs - 1`` (geometric or straight in between)."""
    frac = min(1.0, epoch / (epochs - 1)) if epochs > 1 else 1.0
    if cfg.t_end is not None and cfg.schedule == "exponential":
        t = cfg.t0 * (cfg.t_end / cfg.t0) ** frac
    elif cfg.t_end is not None and cfg.schedule == "linear":
        t = cfg.t0 + (cfg.t_end - cfg.t0) * frac
    elif cfg.schedule == "exponential":
        t = cfg.t0 * cfg.decay ** epoch
    elif cfg.schedule == "linear":
        slope = cfg.slope if cfg.slope is not None else (cfg.t0 - cfg.floor) / max(1, epochs - 1)
        t = cfg.t0 - slope * epoch
    else:
        t = cfg.t0
    return max(cfg.floor, float(t))


def entropy_weight(weight: float, epoch: int, epochs: int, warmup: int = 0) -> float:
    """The entropy term's weight at ``epoch``: 0 at the first architecture epoch (``warmup``), ``weight`` at the
    last, straight in between; 0 before ``warmup``."""
    if weight == 0.0 or epoch < warmup:
        return 0.0
    span = epochs - 1 - warmup
    return weight * (min(1.0, (epoch - warmup) / span) if span > 0 else 1.0)


def mean_entropy(probs: torch.Tensor) -> torch.Tensor:
    """Mean over layers of the entropy (nats) of each layer's op distribution (rows of ``probs``)."""
    return -(probs * torch.log(probs.clamp_min(1e-12))).sum(dim=-1).mean()
