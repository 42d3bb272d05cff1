"""Shared fixtures."""

from __future__ import annotations

import csv
import dataclasses
import os
from pathlib import Path

import pytest

# spaces the search/family tests use; small enough to measure in seconds
SMALL_SPACES = ("fbnet-cifar:input_size=16,width=0.25", "darts-3ops:C=8,cells=5")


def measure_small_table(spec: str, out: Path) -> Path:
    """Measure ``spec`` on device ``cpu`` with a fast protocol (for tests, not for real figures)."""
    from profiler.devices import get_device
    from profiler.measure import measure_space
    from profiler.protocol import Protocol
    from profiler.runners import make_runner
    from profiler.spaces import get_space

    dev = get_device("cpu")
    dev = dataclasses.replace(dev, protocol=Protocol(warmup_s=0.02, min_samples=3, min_seconds=0.02, retries=0))
    runner = make_runner(dev)
    try:
        measure_space(dev, get_space(spec), runner, out)
    finally:
        runner.close()
    return out


@pytest.fixture(scope="session")
def small_tables(tmp_path_factory) -> dict[str, Path]:
    """space spec -> latency table path measured on 'cpu' (fast protocol) for each of SMALL_SPACES."""
    os.environ.setdefault("HWNAS_CACHE", str(tmp_path_factory.mktemp("hwnas-cache")))
    root = tmp_path_factory.mktemp("tables")
    return {spec: measure_small_table(spec, root / f"{i}.csv") for i, spec in enumerate(SMALL_SPACES)}


@pytest.fixture
def rows_per_key():
    """A function: table CSV path -> how many rows each key has (a resumed sweep must write each key once)."""
    def count(path: Path) -> dict[str, int]:
        counts: dict[str, int] = {}
        with open(path, newline="") as f:
            for row in csv.DictReader(f):
                counts[row["key"]] = counts.get(row["key"], 0) + 1
        return counts

    return count


@pytest.fixture(scope="module")
def one_thread():
    """torch on one intra-op thread for a module's tests (the CI box has 2 shared cores; one thread is faster for
    tiny nets), restored after."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
