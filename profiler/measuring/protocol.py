"""The measurement protocol: one frozen config, written into every table header."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from profiler.errors import InputError

VALID, INVALID = "VALID", "INVALID"
MAX_PROTOCOL_S = 3600.0  # no warm-up or sampling time over an hour: an infinite one would hang the sweep
_POSITIVE = ("max_seconds", "target_sample_ms", "cv_threshold", "key_timeout_s")
KEY_TIMEOUT_MARGIN = 3.0  # the default per-key limit: (warm-up + max sampling time per attempt) x attempts x this
_TIMES_S = ("warmup_s", "min_seconds", "max_seconds")  # key_timeout_s may exceed an hour (it bounds all attempts)
_AT_LEAST_ONE = ("min_samples", "rounds", "chunk")


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
    # interleaved rounds: with rounds > 1 a sweep visits every key of a chunk once per round (a reference op first),
    # each visit taking 1/rounds of the samples above; an entry is the median of its round medians, so a burst of
    # background load hits one round of many keys instead of every sample of one key. 1 = one key after another
    # (remote devices, whose every visit costs a round trip); devices.yaml sets 5 for the local devices.
    rounds: int = 1
    chunk: int = 24  # keys interleaved together; rows are written when their chunk finishes (resumable per chunk)
    drift_threshold: float = 0.10  # reference op: max/min of its round medians above 1 + this -> INVALID
    max_noisy_fraction: float = 0.10  # more entries than this fraction noisy -> INVALID
    # per-key time limit of one local measurement (all its calls); past it the key is an error row "timed out after
    # N s" and the sweep goes on. 0 here = derived: (warmup_s + max_seconds) * (retries + 1) * KEY_TIMEOUT_MARGIN
    key_timeout_s: float = 0.0

    def __post_init__(self) -> None:
        if not self.key_timeout_s:
            derived = (self.warmup_s + self.max_seconds) * (self.retries + 1) * KEY_TIMEOUT_MARGIN
            object.__setattr__(self, "key_timeout_s", float(derived))

    @property
    def interleaved(self) -> bool:
        return self.rounds > 1

    def per_round(self) -> "Protocol":
        """The protocol of one visit of one key in one round: the sampling budget split over the rounds."""
        r = max(1, self.rounds)
        return replace(self, warmup_s=max(0.02, self.warmup_s / r), min_samples=max(3, -(-self.min_samples // r)),
                       min_seconds=self.min_seconds / r, max_seconds=max(0.05, self.max_seconds / r), retries=0)

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
            if k in _POSITIVE and v <= 0 or k in _AT_LEAST_ONE and v < 1:
                raise ProtocolError(f"{where}.{k}: {v!r} must be {'>= 1' if k in _AT_LEAST_ONE else '> 0'}")
            if k in _TIMES_S and v > MAX_PROTOCOL_S:
                raise ProtocolError(f"{where}.{k}: {v!r} s is over the {MAX_PROTOCOL_S:g} s limit of one timing")
        cast = {k: (int(v) if known[k] in ("int", int) else float(v)) for k, v in data.items()}
        return cls(**cast)  # an absent key_timeout_s is derived from the given times

    def calls_for(self, one_call_ms: float) -> int:
        """How many consecutive calls one sample times, given a rough single-call time."""
        if self.calls_per_sample > 0:
            return self.calls_per_sample
        if one_call_ms <= 0:
            return 100
        return max(1, min(1000, int(round(self.target_sample_ms / one_call_ms))))


@dataclass(frozen=True)
class Validity:
    """Whether a measurement can be trusted (MLPerf loadgen's VALID / INVALID), with the reasons when not.

    Stored in a table header as ``validity``; ``hwprof show``, ``hwprof verify`` and ``hwnas run`` print it.
    """

    verdict: str
    reasons: tuple[str, ...] = ()
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def valid(self) -> bool:
        return self.verdict == VALID

    def line(self) -> str:
        if self.valid:
            d = self.details
            drift = d.get("reference_drift")
            parts = [f"reference drift {drift * 100:.1f} %" if drift is not None else "no reference op",
                     f"{d.get('noisy', 0)}/{d.get('entries', 0)} noisy"]
            return f"{VALID} ({', '.join(parts)})"
        return f"{INVALID}: " + "; ".join(self.reasons)

    def to_dict(self) -> dict[str, Any]:
        return {"verdict": self.verdict, "reasons": list(self.reasons), "details": dict(self.details)}

    @classmethod
    def from_dict(cls, data: Any) -> "Validity | None":
        if not isinstance(data, dict) or data.get("verdict") not in (VALID, INVALID):
            return None
        return cls(data["verdict"], tuple(str(r) for r in data.get("reasons", ())), dict(data.get("details", {})))

    def merged(self, earlier: "Validity | None") -> "Validity":
        """This sweep's verdict over a table that already held rows from an ``earlier`` sweep."""
        if earlier is None or earlier.valid:
            return self
        tag = "earlier sweep: "
        older = (r if r.startswith(tag) else tag + r for r in earlier.reasons)
        reasons = tuple(dict.fromkeys((*self.reasons, *older)))
        return Validity(INVALID, reasons, self.details)


def validity_line(meta: dict[str, Any]) -> str:
    """One line for a table header's verdict (tables from before the verdict existed say so)."""
    v = Validity.from_dict(meta.get("validity"))
    if v is None:
        return "unknown (the table predates validity verdicts; re-measure with hwprof measure --fresh)"
    return v.line()
