import numpy as np
import pytest

from profiler.measuring.protocol import Protocol
from profiler.measuring.stats import mad_outlier_count, summarize
from profiler.measuring.timing import time_calls


def test_summary_of_known_samples():
    s = summarize([1.0, 2.0, 3.0, 4.0, 100.0])
    assert s.median_ms == 3.0
    assert s.mean_ms == pytest.approx(22.0)
    assert s.std_ms == pytest.approx(np.std([1, 2, 3, 4, 100], ddof=1))
    assert s.cv == pytest.approx(s.std_ms / 22.0)
    assert s.p10_ms == pytest.approx(1.4) and s.p90_ms == pytest.approx(61.6)
    assert s.mad_outliers == 1 and s.n == 5


def test_constant_samples_have_zero_cv_and_no_outliers():
    s = summarize([2.5] * 10)
    assert s.cv == 0.0 and s.mad_outliers == 0 and s.std_ms == 0.0


def test_mad_outliers_and_empty():
    assert mad_outlier_count(np.array([10, 10.1, 9.9, 10.05, 9.95, 50.0])) == 1
    with pytest.raises(ValueError):
        summarize([])


def test_time_calls_respects_sample_and_time_minimums():
    calls = []
    clock_t = [0.0]

    def clock():
        return clock_t[0]

    def fn():
        calls.append(1)
        clock_t[0] += 0.001  # each call "takes" 1 ms on this fake clock

    samples, per = time_calls(fn, warmup_s=0.01, min_samples=7, min_seconds=0.05, max_seconds=1.0,
                              calls_per_sample=0, target_sample_ms=5.0, clock=clock)
    assert per == 5  # 5 ms target / 1 ms per call
    assert len(samples) >= 7 and sum(samples) * per / 1000 >= 0.05 - 1e-9
    assert all(s == pytest.approx(1.0) for s in samples)


def test_protocol_from_dict_validates():
    assert Protocol.from_dict({"min_samples": 5}).min_samples == 5
    with pytest.raises(ValueError, match="unknown field"):
        Protocol.from_dict({"warmup": 1})
    with pytest.raises(ValueError, match="not a number"):
        Protocol.from_dict({"warmup_s": "fast"})
