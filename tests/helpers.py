"""Helpers several test files call (plain functions, not fixtures): a synthetic table and a loopback devices.yaml.

Test files import them as ``from helpers import ...`` (tests/ is on sys.path under pytest's rootdir conftest), so no
test file imports another.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from profiler.latency.tables import Row, TableWriter
from profiler.measuring.measure import table_meta
from profiler.measuring.protocol import Protocol
from profiler.spaces.space import get_space

FAST = "{warmup_s: 0.02, min_samples: 5, min_seconds: 0.03, max_seconds: 1.0, retries: 0, cv_threshold: 10.0}"


class _FakeRunner:
    def fingerprint(self):
        return {"runtime": "synthetic"}


def synthetic_table(spec: str, path: Path, seed: int = 0) -> Path:
    """A table with made-up latencies (format logic only; real measurements are tested elsewhere)."""
    from profiler.measuring.devices import Device

    space = get_space(spec)
    rng = np.random.default_rng(seed)
    meta = table_meta(Device("cpu", "onnxruntime"), space, _FakeRunner(), Protocol(), 1)
    with TableWriter(path, meta, fresh=True) as w:
        for key in space.candidate_keys():
            m = float(rng.uniform(0.01, 2.0))
            w.append(Row(key, m, m * 0.9, m * 1.1, m, m * 0.02, 0.02, 0, 20, 1, 1, "ok"))
    return path


def write_devices(path: Path, tracker: str, key: str = "rpi4-loop", request_timeout_s: float = 5.0) -> Path:
    """A devices.yaml with the loopback TVM devices pointing at ``tracker`` (and a fast protocol)."""
    path.write_text(f"""schema: 1
devices:
  rpi4-loop:
    runtime: tvm
    target: {{kind: llvm}}
    threads: 1
    rpc: {{tracker: "{tracker}", key: {key}, session_timeout_s: 300, request_timeout_s: {request_timeout_s}}}
    protocol: {FAST}
  tvm-cpu:
    runtime: tvm
    target: {{kind: llvm}}
    threads: 1
    protocol: {FAST}
  cpu-1t:
    runtime: onnxruntime
    threads: 1
    protocol: {FAST}
""")
    return path
