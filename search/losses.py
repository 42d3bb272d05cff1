"""Loss forms combining cross-entropy with cost terms.

* ``additive`` -- CE + penalty (the control's penalty: lambda * E[params]/ref, kappa * sum_j S_j E_j/ref_j, ...).
* ``fbnet`` -- FBNet's multiplicative form CE * alpha * log(LAT)**beta (alpha 0.2, beta 0.6). Note the power applies
  to the log: log(LAT)**beta, not log(LAT**beta) (= beta*log LAT, a known reimplementation bug). LAT is the expected
  latency in microseconds, clamped at e so the log is >= 1 for any table.
* ``proxyless`` -- ProxylessNAS' ``mul#log``: CE * alpha * (log(LAT) / log(REF))**beta with a reference latency
  (both in microseconds).

The penalty is added in every form, so a static control with non-zero weights still applies it.
"""

from __future__ import annotations

import math

import torch

from profiler.errors import UserError


class LossError(UserError, ValueError):
    pass


def search_loss(form: str, ce: torch.Tensor, penalty: torch.Tensor, expected_latency_ms: torch.Tensor | None,
                alpha: float = 0.2, beta: float = 0.6, ref_latency_ms: float | None = None) -> torch.Tensor:
    if form == "additive":
        return ce + penalty
    if expected_latency_ms is None:
        raise LossError(f"loss {form!r} needs a latency term: pass --table")
    lat_us = (expected_latency_ms * 1000.0).clamp_min(math.e)
    if form == "fbnet":
        return ce * alpha * torch.log(lat_us) ** beta + penalty
    if form == "proxyless":
        if ref_latency_ms is None or not ref_latency_ms > 0:
            raise LossError(f"loss proxyless needs a reference latency > 0, got {ref_latency_ms!r}")
        ref = math.log(max(ref_latency_ms * 1000.0, math.e * 1.0001))
        return ce * alpha * (torch.log(lat_us) / ref) ** beta + penalty
    raise LossError(f"unknown loss form {form!r}; forms: additive, fbnet, proxyless")
