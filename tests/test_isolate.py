"""Isolation: a runner whose process crashes in native code yields an error row, and the sweep goes on."""

from __future__ import annotations

import csv
import ctypes
import os
import time

import pytest

# light imports only: the spawned child imports this module to find CrashRunner
from profiler.measuring.protocol import Protocol
from profiler.measuring.runners.base import MeasureRequest, MeasureResult
from profiler.measuring.runners.isolate import IsolatedRunner

PROTOCOL = Protocol(retries=0)


class CrashRunner:
    """Test-only runner: segfaults on pool ops, aborts on skip_connect, hangs on 'preprocess', else returns pid."""

    name = "crashy"

    def __init__(self, tag: str):
        self.tag = tag

    def fingerprint(self):
        return {"runtime": "crashy", "tag": self.tag, "pid": os.getpid()}

    def measure(self, request: MeasureRequest, protocol: Protocol) -> MeasureResult:
        op = request.key.split("|")[1]
        if op == "avg_pool_3x3":
            ctypes.string_at(0)  # SIGSEGV in native code
        if op == "skip_connect":
            os.abort()
        if op == "preprocess":
            time.sleep(60)
        return MeasureResult(request.key, (1.0, 1.5, 2.0), 1, variant=self.tag, info={"pid": os.getpid()})

    def close(self):
        pass


class BrokenRunner:
    def __init__(self):
        raise RuntimeError("no such board")


def keys(only_ops: tuple[str, ...]) -> list[str]:
    from profiler.spaces.space import get_space

    return [k for k in get_space("darts-3ops:C=8,cells=5").candidate_keys() if k.split("|")[1] in only_ops]


def test_segfault_and_abort_become_error_rows(tmp_path):
    from profiler.latency.tables import TableWriter
    from profiler.measuring.measure import sweep

    ks = keys(("avg_pool_3x3", "sep_conv_3x3", "skip_connect"))[:4]  # pool, skip, sep, pool
    runner = IsolatedRunner(f"{__name__}:CrashRunner", "v", timeout_s=60)
    meta = {"device": "crashy", "space": "darts-3ops:C=8,cells=5", "fingerprint": runner.fingerprint()}
    assert meta["fingerprint"]["isolated"] and meta["fingerprint"]["pid"] != os.getpid()
    with runner, TableWriter(tmp_path / "t.csv", meta) as writer:
        prog = sweep(ks, runner, PROTOCOL, writer)
    assert prog.done == len(ks)
    rows = {r.key: r for r in prog.rows}
    for k in ks:
        op = k.split("|")[1]
        if op == "avg_pool_3x3":
            assert rows[k].status == "error" and "SIGSEGV" in rows[k].error, rows[k].error
        elif op == "skip_connect":
            assert rows[k].status == "error" and "SIGABRT" in rows[k].error, rows[k].error
        else:
            assert rows[k].status != "error" and rows[k].variant == "v" and rows[k].median_ms == 1.5
    assert runner.crashes == 3
    with open(tmp_path / "t.csv", newline="") as f:
        assert sorted(r["key"] for r in csv.DictReader(f)) == sorted(ks)  # one row per key, errors included


def test_hung_child_is_killed_after_timeout():
    k = keys(("preprocess",))[0]
    with IsolatedRunner(f"{__name__}:CrashRunner", "v", timeout_s=3) as runner:
        t0 = time.monotonic()
        res = runner.measure(MeasureRequest(k, tmp_onnx(), (1, 24, 32, 32)), PROTOCOL)
        assert time.monotonic() - t0 < 40
        assert not res.ok and "stopped answering for 3 s" in res.error
        ok = keys(("sep_conv_3x3",))[0]
        assert runner.measure(MeasureRequest(ok, tmp_onnx(), (1, 8, 32, 32)), PROTOCOL).ok  # fresh child


def test_runner_that_cannot_start_gives_error_results():
    with IsolatedRunner(f"{__name__}:BrokenRunner") as runner:
        assert "no such board" in runner.fingerprint()["fingerprint_error"]
        res = runner.measure(MeasureRequest(keys(("sep_conv_3x3",))[0], tmp_onnx(), (1,)), PROTOCOL)
        assert not res.ok and "could not start" in res.error and "no such board" in res.error


def test_bad_factory_spec():
    with pytest.raises(ValueError, match="package.module:callable"):
        from profiler.measuring.runners.isolate import _load_factory

        _load_factory("no_colon")


def tmp_onnx():
    from pathlib import Path

    return Path("/nonexistent.onnx")  # CrashRunner never opens it


def test_child_dies_with_its_parent():
    """hwprof killed by SIGKILL must not leave a measuring child behind (it would hold the board's session)."""
    import signal
    import subprocess
    import sys

    import psutil

    code = ("import sys, time\n"
            "sys.path.insert(0, %r)\n"
            "from profiler.measuring.runners.isolate import IsolatedRunner\n"
            "r = IsolatedRunner('test_isolate:CrashRunner', 'v')\n"
            "from pathlib import Path; import threading\n"
            "from profiler.measuring.protocol import Protocol\n"
            "from profiler.measuring.runners.base import MeasureRequest\n"
            "r.fingerprint()\n"
            "req = MeasureRequest('v1|preprocess|1x24x32x32|c8|s1|float32', Path('/x'), (1,))\n"
            "threading.Thread(target=r.measure, args=(req, Protocol()), daemon=True).start()  # busy: sleeps 60 s\n"
            "time.sleep(1); print(r._proc.pid, flush=True); time.sleep(600)\n") % os.path.dirname(__file__)
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        child = int(parent.stdout.readline())
        assert psutil.pid_exists(child)
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and psutil.pid_exists(child) and \
                psutil.Process(child).status() != psutil.STATUS_ZOMBIE:
            time.sleep(0.1)
        assert not psutil.pid_exists(child) or psutil.Process(child).status() == psutil.STATUS_ZOMBIE
    finally:
        parent.kill()
