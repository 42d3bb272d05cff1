"""Statistics of raw latency samples: pure functions, units in the names (milliseconds)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class Summary:
    median_ms: float
    p10_ms: float
    p90_ms: float
    mean_ms: float
    std_ms: float
    cv: float  # std / mean
    mad_outliers: int  # samples farther than 3.5 robust z from the median
    n: int

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


def mad_outlier_count(samples_ms: np.ndarray, z: float = 3.5) -> int:
    """Samples whose robust z-score (0.6745·|x − median| / MAD) exceeds ``z``. MAD = 0 counts none."""
    x = np.asarray(samples_ms, dtype=float)
    med = np.median(x)
    mad = np.median(np.abs(x - med))
    if mad == 0:
        return 0
    return int(np.sum(0.6745 * np.abs(x - med) / mad > z))


def summarize(samples_ms: list[float] | np.ndarray) -> Summary:
    x = np.asarray(samples_ms, dtype=float)
    if x.size == 0:
        raise ValueError("no samples to summarize")
    mean = float(x.mean())
    std = float(x.std(ddof=1)) if x.size > 1 else 0.0
    return Summary(
        median_ms=float(np.median(x)),
        p10_ms=float(np.percentile(x, 10)),
        p90_ms=float(np.percentile(x, 90)),
        mean_ms=mean,
        std_ms=std,
        cv=std / mean if mean > 0 else 0.0,
        mad_outliers=mad_outlier_count(x),
        n=int(x.size),
    )
