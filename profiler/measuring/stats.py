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


def _values(values: list[float] | np.ndarray, empty: str) -> np.ndarray:
    """``values`` as a float array; ``ValueError(empty)`` when there are none."""
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        raise ValueError(empty)
    return x


def summarize(samples_ms: list[float] | np.ndarray) -> Summary:
    x = _values(samples_ms, "no samples to summarize")
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


def round_spread(round_medians_ms: list[float] | np.ndarray) -> float:
    """How far the per-round medians of one entry disagree, relative to their median: (max - min) / median, after
    dropping the highest and the lowest round when there are 5 or more (one burst of load does not count)."""
    x = np.sort(_values(round_medians_ms, "no rounds to compare"))
    if x.size >= 5:
        x = x[1:-1]
    med = float(np.median(x))
    return float((x[-1] - x[0]) / med) if med > 0 else 0.0


def drift_ratio(reference_ms: list[float] | np.ndarray) -> float:
    """The reference op's drift over a sweep: p90 / p10 of its round medians minus 1 (max / min below 10 rounds)."""
    x = _values(reference_ms, "no reference rounds")
    lo, hi = (np.percentile(x, [10, 90]) if x.size >= 10 else (x.min(), x.max()))
    return float(hi / lo - 1.0) if lo > 0 else float("inf")
