"""The measurement protocol: one frozen config, written into every table header."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from .errors import InputError


MAX_PROTOCOL_S = 3600.0  # no warm-up or sampling time over an hour: an infinite one would hang the sweep
_POSITIVE = ("max_seconds", "target_sample_ms", "cv_threshold")
_TIMES_S = ("warmup_s", "min_seconds", "max_seconds")


class ProtocolError(InputError):
    """A protocol field (from devices.yaml or a table header) out of range."""


@dataclass(frozen=True)
class Protocol:
    warmup_s: float = 0.2  # warm-up by time before any sample
    min_samples: int = 20  # at least this many samples ...
    min_seconds: float = 0.3  # ... and at least this much sampling time
    max_seconds: float = 5.0  # hard cap on sampling time for one attempt
    calls_per_sample: int = 0  # consecutive calls timed as one sample; 0 = auto (aim for target_sample_ms)
    target_sample_ms: float = 5.0  # auto mode: enough calls that one sample lasts about this long (tiny ops: many calls)
    cv_threshold: float = 0.05  # above this an entry is re-measured ...
    retries: int = 2  # ... up to this many times, then stored as 'noisy'

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "protocol") -> "Protocol":
        known = {f.name: f.type for f in fields(cls)}
        for k, v in data.items():
            if k not in known:
                raise ProtocolError(f"{where}: unknown field {k!r}; fields: {', '.join(known)}")
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise ProtocolError(f"{where}.{k}: {v!r} is not a number")
            if v < 0:
                raise ProtocolError(f"{where}.{k}: {v!r} must be >= 0")
            if not math.isfinite(v):
                raise ProtocolError(f"{where}.{k}: {v!r} must be a finite number (an infinite time never ends)")
            if k in _POSITIVE and v <= 0 or k == "min_samples" and v < 1:
                raise ProtocolError(f"{where}.{k}: {v!r} must be {'>= 1' if k == 'min_samples' else '> 0'}")
            if k in _TIMES_S and v > MAX_PROTOCOL_S:
                raise ProtocolError(f"{where}.{k}: {v!r} s is over the {MAX_PROTOCOL_S:g} s limit of one timing")
        cast = {k: (int(v) if known[k] in ("int", int) else float(v)) for k, v in data.items()}
        return replace(cls(), **cast)

    def calls_for(self, one_call_ms: float) -> int:
        """How many consecutive calls one sample times, given a rough single-call time."""
        if self.calls_per_sample > 0:
            return self.calls_per_sample
        if one_call_ms <= 0:
            return 100
        return max(1, min(1000, int(round(self.target_sample_ms / one_call_ms))))
