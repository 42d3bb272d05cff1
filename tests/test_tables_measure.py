import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from profiler.latency.tables import COLUMNS, TableError, TableWriter, load_table
from profiler.measuring.measure import sweep
from profiler.measuring.protocol import Protocol
from profiler.measuring.runners import MeasureResult
from profiler.measuring.runners.base import LocalRunner
from profiler.spaces.space import get_space

SPACE = "darts-3ops:C=8,cells=3,nodes=2"
FAST = {"warmup_s": 0.01, "min_samples": 3, "min_seconds": 0.01, "retries": 0, "target_sample_ms": 1.0}


def write_devices(tmp_path: Path, **protocol) -> Path:
    p = tmp_path / "devices.yaml"
    p.write_text(json.dumps({"devices": {"cpu-fast": {"runtime": "onnxruntime", "threads": 1,
                                                      "protocol": {**FAST, **protocol}}}}))
    return p


class ScriptedRunner(LocalRunner):
    """A fake runner for sweep logic only (the real runtimes have their own tests)."""

    name = "scripted"

    def __init__(self, script):
        self.script = script  # key -> list of results to hand out in turn
        self.calls: dict[str, int] = {}

    def fingerprint(self):
        return {"runtime": "scripted"}

    def measure(self, request, protocol):
        i = self.calls.get(request.key, 0)
        self.calls[request.key] = i + 1
        return self.script(request.key, i)


def test_sweep_keeps_going_after_a_failure_and_remeasures_noisy(tmp_path):
    space = get_space(SPACE)
    keys = space.candidate_keys()[:4]
    bad, noisy, flaky = keys[0], keys[1], keys[2]

    def script(key, i):
        if key == bad:
            return MeasureResult.failed(key, RuntimeError("kernel exploded"))
        if key == noisy:
            return MeasureResult(key, (1.0, 3.0, 1.0, 3.0))  # CV ~ 0.58 every time
        if key == flaky and i == 0:
            return MeasureResult(key, (1.0, 5.0, 1.0))
        return MeasureResult(key, (1.0, 1.01, 0.99))

    runner = ScriptedRunner(script)
    proto = Protocol(retries=2, cv_threshold=0.05)
    meta = {"schema_version": 1, "key_version": 1, "device": "x", "space": SPACE}
    with TableWriter(tmp_path / "t.csv", meta) as w:
        prog = sweep(keys, runner, proto, w)
    rows = {r.key: r for r in prog.rows}
    assert rows[bad].status == "error" and "kernel exploded" in rows[bad].error
    assert rows[noisy].status == "noisy" and rows[noisy].attempts == 3
    assert rows[flaky].status == "ok" and rows[flaky].attempts == 2
    assert rows[keys[3]].status == "ok" and rows[keys[3]].attempts == 1
    assert prog.remeasured == 2
    df = pd.read_csv(tmp_path / "t.csv")
    assert list(df.columns) == COLUMNS and len(df) == 4


def test_measure_real_onnxruntime_and_load(tmp_path, ort_sweep):
    space = get_space(SPACE)
    out = tmp_path / "t.csv"
    s = ort_sweep(FAST, space, out, only="*avg_pool*", name="cpu-fast")
    assert s.measured > 0 and s.errors == 0
    t = load_table(out, device="cpu-fast", space=space.spec)
    assert all(r["op"] == "avg_pool_3x3" for r in t.rows.values())
    assert all(r["median_ms"] > 0 and r["n"] >= 3 for r in t.rows.values())
    assert t.meta["fingerprint"]["provider"] == "CPUExecutionProvider"
    assert t.meta["protocol"]["min_samples"] == 3
    # a second run measures nothing; a wider glob measures only the new keys
    again = ort_sweep(FAST, space, out, only="*avg_pool*", name="cpu-fast")
    assert again.measured == 0 and again.skipped == s.measured
    with pytest.raises(TableError, match="not 'other'"):
        load_table(out, device="other")


def test_killed_sweep_resumes_and_ends_with_every_key_once(tmp_path):
    devices = write_devices(tmp_path, min_seconds=0.15)
    out = tmp_path / "t.csv"
    cmd = [sys.executable, "-m", "profiler.cli", "measure", "--device", "cpu-fast", "--space", SPACE,
           "--devices", str(devices), "--out", str(out)]
    env = {**os.environ, "HWNAS_CACHE": str(tmp_path / "cache")}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline:
        if out.exists() and out.read_text().count("\n") >= 4:  # header + 3 finished rows
            break
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    partial = load_table(out)
    total = len(get_space(SPACE).candidate_keys())
    assert 3 <= len(partial.rows) < total
    done_before = set(partial.rows)
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert f"{len(done_before)} already there" in " ".join(r.stderr.split())
    df = pd.read_csv(out)
    assert sorted(df["key"]) == sorted(get_space(SPACE).candidate_keys())
    assert df["key"].is_unique and set(df["status"]) <= {"ok", "noisy"}


def test_torn_last_line_is_ignored_and_repaired(tmp_path, ort_sweep):
    space = get_space(SPACE)
    out = tmp_path / "t.csv"
    ort_sweep(FAST, space, out, only="*skip_connect*")
    n = len(load_table(out).rows)
    with open(out, "a") as f:
        f.write("v1|avg_pool_3x3|1x8x32x32|c8|s1|float32,avg_pool_3x3,1x8")  # killed mid-write
    assert len(load_table(out).rows) == n
    ort_sweep(FAST, space, out, only="*skip_connect*")
    assert out.read_text().endswith("\n") and len(pd.read_csv(out)) == n


@pytest.mark.parametrize("damage,match", [
    ("header", "not a hwprof table"),
    ("fields", "has 3 fields"),
    ("schema", "schema version 99"),
    ("meta", "corrupt header"),
    ("nometa", "header .* is missing"),
])
def test_corrupt_tables_give_one_line_errors(tmp_path, damage, match):
    out = tmp_path / "t.csv"
    meta = {"schema_version": 1, "key_version": 1, "device": "d", "space": "s"}
    with TableWriter(out, meta):
        pass
    metaf = out.with_suffix(".meta.json")
    if damage == "header":
        out.write_text("a,b,c\n")
    elif damage == "fields":
        out.write_text(",".join(COLUMNS) + "\n1,2,3\n")
    elif damage == "schema":
        metaf.write_text(json.dumps({**meta, "schema_version": 99}))
    elif damage == "meta":
        metaf.write_text("{not json")
    else:
        metaf.unlink()
    with pytest.raises(TableError, match=match) as e:
        load_table(out)
    assert out.stem in str(e.value) and "\n" not in str(e.value)
