"""hwnas run on a farm device: its table stage spreads the keys over the boards of a pool (hwprof measure's farm
path), with two real onnxruntime boards; members are timed on one board."""

from __future__ import annotations

import csv
import json

from profiler.latency.tables import load_table
from profiler.measuring.devices import get_device
from profiler.measuring.farm import Farm
from profiler.spaces.space import get_space
from search.pipeline import RunConfig, ensure_table, sweep_runner, time_model

SPACE = "darts-3ops:C=8,cells=3,nodes=2"
FAST = {"warmup_s": 0.01, "min_samples": 3, "min_seconds": 0.01, "retries": 0}


def _devices(tmp_path):
    ort = f"    runtime: onnxruntime\n    threads: 1\n    protocol: {json.dumps(FAST)}\n"
    path = tmp_path / "devices.yaml"
    path.write_text(f"schema: 1\ndevices:\n  ort-a:\n{ort}  ort-b:\n{ort}  ort-pool:\n    pool: [ort-a, ort-b]\n")
    return path


def test_the_run_table_of_a_pool_is_measured_on_every_board(tmp_path, rows_per_key):
    devs = _devices(tmp_path)
    pool = get_device("ort-pool", devs)
    cfg = RunConfig(device="ort-pool", space=SPACE, devices_path=str(devs))
    notes: list[str] = []
    table = ensure_table(cfg, pool, get_space(SPACE), tmp_path, lambda e: None, notes, tmp_path / "t.csv")
    keys = set(get_space(SPACE).candidate_keys())
    assert rows_per_key(table) == {k: 1 for k in keys}
    with open(table, newline="") as f:
        boards = {row["board"] for row in csv.DictReader(f)}
    assert boards == {"ort-a", "ort-b"}  # both boards measured rows, each key once
    assert load_table(table).meta["device"] == "ort-pool"
    assert any("on 2 boards in parallel (ort-a, ort-b)" in n for n in notes), notes
    again: list[str] = []
    ensure_table(cfg, pool, get_space(SPACE), tmp_path, lambda e: None, again, table)
    assert any(f"present ({len(keys)} entries), not re-measured" in n for n in again), again


def test_a_member_on_a_pool_device_is_timed_in_one_session(tmp_path):
    from profiler.measuring.model_measure import export_network
    from profiler.measuring.protocol import Protocol

    space = get_space(SPACE)
    onnx, _ = export_network(space, [layer.choices[0] for layer in space.layers], tmp_path)
    t = time_model(onnx, get_device("ort-pool", _devices(tmp_path)), Protocol.from_dict(FAST))
    assert t.device == "ort-pool" and t.error is None and t.median_ms > 0 and t.samples >= 3


def test_a_plain_device_sweeps_on_its_one_runner(tmp_path):
    runner = sweep_runner(get_device("ort-a", _devices(tmp_path)))
    try:
        assert not isinstance(runner, Farm)
    finally:
        runner.close()
