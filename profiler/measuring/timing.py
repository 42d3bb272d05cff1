"""The timing loop of the protocol, standalone (standard library only).

Local runners import it; the SSH runner copies this very file to the board, so both sides time the same way.
"""

import time


class KeyTimeout(RuntimeError):
    """A key ran past its time limit (``Protocol.key_timeout_s``); the sweep stores it as an error row."""


def time_calls(fn, warmup_s, min_samples, min_seconds, max_seconds, calls_per_sample, target_sample_ms,
               clock=time.perf_counter, limit_s=None):
    """Warm up ``fn`` for ``warmup_s``, then take samples of ``calls`` consecutive calls each until there are at
    least ``min_samples`` and ``min_seconds`` have passed (never beyond ``max_seconds``).

    Returns ``(samples_ms, calls)``: per-call milliseconds of each sample, and the calls per sample used.

    ``limit_s`` bounds the whole key: a call running in this process cannot be killed safely, so the limit is
    checked after every call of the warm-up and after every sample, and crossing it raises :class:`KeyTimeout`
    ("timed out after N s"). That is the smallest robust option: no thread or signal, and it works on the board
    too. A single call that never returns is only bounded by the isolated runner's child process.
    """
    start = clock()

    def check():
        if limit_s is not None and clock() - start > limit_s:
            raise KeyTimeout("timed out after %g s (protocol key_timeout_s)" % limit_s)

    n_warm = 0
    while True:
        fn()
        n_warm += 1
        check()
        if clock() - start >= warmup_s and n_warm >= 2:
            break
    one_call_ms = (clock() - start) * 1000.0 / n_warm
    if calls_per_sample > 0:
        calls = int(calls_per_sample)
    elif one_call_ms <= 0:
        calls = 100
    else:
        calls = max(1, min(1000, int(round(target_sample_ms / one_call_ms))))
    samples = []
    t_begin = clock()
    while True:
        t0 = clock()
        for _ in range(calls):
            fn()
        t1 = clock()
        samples.append((t1 - t0) * 1000.0 / calls)
        check()
        elapsed = t1 - t_begin
        if (len(samples) >= min_samples and elapsed >= min_seconds) or elapsed >= max_seconds:
            break
    return samples, calls
