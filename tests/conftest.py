"""Shared fixtures."""

from __future__ import annotations

import csv
import dataclasses
import os
from pathlib import Path

import pytest

# spaces the search/family tests use; small enough to measure in seconds
SMALL_SPACES = ("fbnet-cifar:input_size=16,width=0.25", "darts-3ops:C=8,cells=5")


def measure_small_table(spec: str, out: Path, device: str = "cpu") -> Path:
    """Measure ``spec`` on ``device`` (of devices.yaml) with a fast protocol (for tests, not for real figures)."""
    from profiler.measuring.devices import get_device
    from profiler.measuring.measure import measure_space
    from profiler.measuring.protocol import Protocol
    from profiler.measuring.runners import make_runner
    from profiler.spaces.space import get_space

    dev = get_device(device)
    dev = dataclasses.replace(dev, protocol=Protocol(warmup_s=0.02, min_samples=3, min_seconds=0.02, retries=0))
    with make_runner(dev) as runner:
        measure_space(dev, get_space(spec), runner, out)
    return out


@pytest.fixture(scope="session")
def small_tables(tmp_path_factory) -> dict[str, Path]:
    """space spec -> latency table path measured on 'cpu' (fast protocol) for each of SMALL_SPACES."""
    os.environ.setdefault("HWNAS_CACHE", str(tmp_path_factory.mktemp("hwnas-cache")))
    root = tmp_path_factory.mktemp("tables")
    return {spec: measure_small_table(spec, root / f"{i}.csv") for i, spec in enumerate(SMALL_SPACES)}


@pytest.fixture(scope="module")
def digits():
    """The digits splits (3 channels, seed 0) by input size: ``digits[16]``, ``digits[32]``."""
    from search.data import load_data

    return {16: load_data("digits", 16, 3, seed=0), 32: load_data("digits", 32, 3, seed=0)}


@pytest.fixture
def hwprof():
    """A function: the arguments of ``hwprof`` (each str()-ed) -> the typer CliRunner result of that command, run in
    this process."""
    from typer.testing import CliRunner

    from profiler.cli import app

    runner = CliRunner()
    return lambda *args: runner.invoke(app, [str(a) for a in args])


@pytest.fixture
def ort_sweep():
    """A function: (protocol dict, space, out, only=None, name="c") -> the summary of a real onnxruntime sweep of
    ``space`` into ``out`` on a one-thread device entry ``name`` with that protocol (the runner closed after)."""
    from profiler.measuring.devices import parse_devices
    from profiler.measuring.measure import measure_space
    from profiler.measuring.runners import make_runner

    def run(protocol: dict, space, out: Path, only: str | None = None, name: str = "c"):
        entry = {"runtime": "onnxruntime", "threads": 1, "protocol": protocol}
        dev = parse_devices({"devices": {name: entry}}, "t")[name]
        with make_runner(dev) as runner:
            return measure_space(dev, space, runner, out, only=only)

    return run


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


@pytest.fixture(scope="session")
def two_device_tables(small_tables, tmp_path_factory) -> dict[str, Path]:
    """device -> a table of SMALL_SPACES[0] measured on it (fast protocol): ``cpu-1t`` (one onnxruntime thread) and
    ``cpu`` (all cores; a private copy of ``small_tables``' table). Two real devices of devices.yaml."""
    import shutil

    root = tmp_path_factory.mktemp("two-devices")
    spec = SMALL_SPACES[0]
    cpu = root / "cpu.csv"
    shutil.copy(small_tables[spec], cpu)
    shutil.copy(small_tables[spec].with_suffix(".meta.json"), cpu.with_suffix(".meta.json"))
    return {"cpu-1t": measure_small_table(spec, root / "cpu-1t.csv", "cpu-1t"), "cpu": cpu}


@pytest.fixture(scope="session")
def tiny_search():
    """A function ``(tables, out, cost_terms=None) -> out``: a short real hwnas-preset search (2 epochs on 384
    digits, one torch thread) of SMALL_SPACES[0] with ``tables`` (and the preset's cost terms unless given)."""
    import torch

    def run(tables, out: Path, cost_terms=None) -> Path:
        from search.config import preset
        from search.train import search

        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            cfg = preset("hwnas", space=SMALL_SPACES[0], tables=tuple(str(t) for t in tables), epochs=2,
                         train_limit=384, eval_limit=128)
            if cost_terms is not None:
                cfg.control.cost_terms = tuple(cost_terms)
            search(cfg, out)
        finally:
            torch.set_num_threads(threads)
        return out

    return run
