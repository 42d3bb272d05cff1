"""The device farm: one sweep over several boards in parallel (profiler/measuring/farm.py).

The farm's queue logic runs on real onnxruntime runners (one wrapped to lose its "board" after a few keys); the
TVM path runs on loopback: a real tracker and two real rpc_servers under one key, one of them killed mid-sweep.
"""

from __future__ import annotations

import csv
import json
import threading
import time
from pathlib import Path

import pytest

from profiler.latency.tables import BOARD_COLUMN, load_table
from profiler.measuring.devices import DeviceError, get_device, parse_devices
from profiler.measuring.farm import Board, Farm, FarmError, farm_size, make_farm
from profiler.measuring.measure import measure_space, select_keys
from profiler.measuring.runners import MeasureResult, make_runner
from profiler.spaces.space import get_space

SPACE = "darts-3ops:C=8,cells=5"
ONLY = "*|1x*x16x16|c*|s1|*"  # the stride-1 keys at 16x16: cell ops and preprocessing (8 keys)
ONLY_NO_REF = "*|1x[36]*|c*|s1|*"  # 10 stride-1 keys, none of them the interleaved sweep's reference op
FAST = {"warmup_s": 0.02, "min_samples": 5, "min_seconds": 0.03, "max_seconds": 1.0, "retries": 0,
        "cv_threshold": 10.0}


def boards_of(path: Path) -> dict[str, str]:
    with open(path, newline="") as f:
        return {row["key"]: row[BOARD_COLUMN] for row in csv.DictReader(f)}


def ort_device(tmp_path: Path, **protocol):
    data = {"devices": {"cpu-fast": {"runtime": "onnxruntime", "threads": 1, "protocol": {**FAST, **protocol}}}}
    return parse_devices(data, str(tmp_path / "devices.yaml"))["cpu-fast"]


class LosesBoard:
    """A real onnxruntime runner whose board is "lost" after ``good`` keys (every later key fails as TVM's does)."""

    def __init__(self, runner, good: int):
        self.runner, self.good, self.seen = runner, good, []
        self.name = runner.name
        self.gone = threading.Event()

    def fingerprint(self):
        return self.runner.fingerprint()

    def measure(self, request, protocol):
        self.seen.append(request.key)
        if len(self.seen) > self.good:
            self.gone.set()
            return MeasureResult.failed(request.key, "rpc session lost: connection closed by peer; rerun the same "
                                                     "command to measure what is missing")
        return self.runner.measure(request, protocol)

    def measure_many(self, requests, protocol):
        for r in requests:
            yield self.measure(r, protocol)

    def close(self):
        self.runner.close()


class WaitsFor(LosesBoard):
    """A real runner that, after ``free`` calls, waits until ``event`` is set: the other board then surely gets
    keys to lose (the order of the threads decides nothing)."""

    def __init__(self, runner, event: threading.Event, free: int):
        super().__init__(runner, good=10**9)
        self.event, self.free = event, free

    def measure(self, request, protocol):
        if len(self.seen) >= self.free:
            assert self.event.wait(120), "the other board never failed"
        return super().measure(request, protocol)


@pytest.mark.parametrize("protocol,good", [({}, 2), ({"rounds": 2, "chunk": 2}, 6)],
                         ids=["sequential", "interleaved"])
def test_farm_measures_each_key_once_and_a_lost_board_loses_only_its_rows_in_flight(tmp_path, protocol, good, rows_per_key):
    """Sequential: board a measures 2 keys, then fails; interleaved: it finishes one chunk (2 rounds of the
    reference and 2 keys = 6 calls), then fails on the next chunk. What it failed on is measured by b."""
    from profiler.measuring.measure import REFERENCE_KEY

    dev = ort_device(tmp_path, **protocol)
    space = get_space(SPACE)
    keys = select_keys(space.candidate_keys(), ONLY_NO_REF)
    flaky = LosesBoard(make_runner(dev), good=good)
    out = tmp_path / "t.csv"
    with Farm([Board("a", flaky), Board("b", WaitsFor(make_runner(dev), flaky.gone, good))]) as farm:
        summary = measure_space(dev, space, farm, out, only=ONLY_NO_REF)
    assert summary.errors == 0 and summary.measured == len(keys)
    assert rows_per_key(out) == {k: 1 for k in keys}
    boards = boards_of(out)
    measured_by_a = {k for k in flaky.seen[:good] if k != REFERENCE_KEY}
    lost_keys = set(flaky.seen[good:]) - {REFERENCE_KEY}
    assert lost_keys and all(boards[k] == "b" for k in lost_keys)  # not written as a's, measured by b
    assert {k for k, b in boards.items() if b == "a"} == measured_by_a and len(measured_by_a) == 2
    assert list(summary.lost_boards) == ["a"] and summary.lost_boards["a"].startswith("rpc session lost")
    assert set(summary.validity.details["boards"]) == {"a", "b"}


def test_all_boards_lost_gives_error_rows_and_a_rerun_completes_the_table(tmp_path, rows_per_key):
    dev = ort_device(tmp_path)
    space = get_space(SPACE)
    keys = select_keys(space.candidate_keys(), ONLY)
    out = tmp_path / "t.csv"
    with Farm([Board("a", LosesBoard(make_runner(dev), 1)), Board("b", LosesBoard(make_runner(dev), 1))]) as farm:
        first = measure_space(dev, space, farm, out, only=ONLY)
    assert first.measured == len(keys) and first.errors == len(keys) - 2
    assert {r.error for r in first.rows if r.status == "error"} == {next(iter(first.lost_boards.values()))}
    assert set(first.lost_boards) == {"a", "b"}
    assert len(load_table(out).rows) == len(keys)  # error rows are there (and re-measured by the rerun)

    with Farm([Board("a", make_runner(dev)), Board("b", make_runner(dev))]) as farm:
        second = measure_space(dev, space, farm, out, only=ONLY)
    assert second.errors == 0 and second.measured == len(keys) - 2 and second.skipped == 2
    assert rows_per_key(out) == {k: 1 for k in keys}
    # a plain (one-runner) resume keeps the board column and the boards already recorded
    with make_runner(dev) as runner:
        third = measure_space(dev, space, runner, out, only=ONLY, fresh=False)
    assert third.measured == 0 and set(boards_of(out).values()) <= {"a", "b"} and len(boards_of(out)) == len(keys)


def test_rpc_boards_is_validated_in_one_line(tmp_path):
    entry = {"runtime": "tvm", "target": {"kind": "llvm"}, "rpc": {"tracker": "127.0.0.1:9190", "key": "k",
                                                                  "boards": -1}}
    with pytest.raises(DeviceError, match=r"device 'b'.rpc.boards: -1 must be >= 0 .*0 = every rpc_server"):
        parse_devices({"devices": {"b": entry}}, "devices.yaml")
    entry["rpc"]["boards"] = "two"
    with pytest.raises(DeviceError, match=r"rpc.boards: 'two' is not an integer"):
        parse_devices({"devices": {"b": entry}}, "devices.yaml")
    with pytest.raises(FarmError, match=r"--boards 2: device 'cpu-fast' has no rpc: tracker"):
        farm_size(ort_device(tmp_path), 2)
    assert farm_size(ort_device(tmp_path), None) == 1


# -------------------------------------------------------------------------------------------------------------
# TVM on loopback: a real tracker and two real rpc_servers under one key


def write_devices(path: Path, tracker: str, boards: int) -> Path:
    """rpi4-loop: the farm under one key; loop-pool: a pool of two device entries (loop-a, loop-b)."""
    def entry(b: int) -> str:
        return (f"    runtime: tvm\n    target: {{kind: llvm}}\n    threads: 1\n    rpc: {{tracker: \"{tracker}\", "
                f"key: farm-loop, session_timeout_s: 300, request_timeout_s: 5, boards: {b}}}\n"
                f"    protocol: {json.dumps(FAST)}\n")

    path.write_text(f"schema: 1\ndevices:\n  rpi4-loop:\n{entry(boards)}  loop-a:\n{entry(1)}  loop-b:\n{entry(1)}"
                    f"  loop-pool:\n    pool: [loop-a, loop-b]\n")
    return path


@pytest.fixture()
def two_boards(tmp_path):
    pytest.importorskip("tvm")
    from profiler.measuring.rpc import start_server, start_tracker

    logs = tmp_path / "rpc-logs"
    tracker = start_tracker("127.0.0.1", log_dir=logs)
    servers = []
    try:
        servers = [start_server("farm-loop", tracker.addr, threads=1, log_dir=logs) for _ in range(2)]
        yield tracker, servers
    finally:
        for s in servers:
            s.stop()
        tracker.stop()


def measure_on_farm(devs: Path, out: Path, on_progress=None):
    """What ``hwprof measure --device rpi4-loop`` does: as many runners as boards, then the sweep."""
    dev = get_device("rpi4-loop", devs)
    with make_farm(dev, farm_size(dev), make_runner) as runner:
        return measure_space(dev, get_space(SPACE), runner, out, only=ONLY, on_progress=on_progress)


def test_cli_farm_uses_both_servers_and_measures_each_key_once(two_boards, tmp_path, rows_per_key, hwprof):
    tracker, servers = two_boards
    devs = write_devices(tmp_path / "devices.yaml", tracker.addr, boards=2)
    out = tmp_path / "t.csv"
    args = ["measure", "--device", "rpi4-loop", "--space", SPACE, "--only", ONLY, "--out", str(out),
            "--devices", str(devs)]
    r = hwprof(*args)
    assert r.exit_code == 0, r.output
    keys = select_keys(get_space(SPACE).candidate_keys(), ONLY)
    assert rows_per_key(out) == {k: 1 for k in keys}
    assert set(boards_of(out).values()) == {s.addr for s in servers}  # both servers measured rows
    assert "boards: " in r.output and all(s.addr in r.output for s in servers)
    table = load_table(out)
    assert all(row["status"] != "error" and row["board"] in {s.addr for s in servers} for row in table.rows.values())

    r = hwprof(*args[:-2], "--boards", "3", "--devices", devs)
    assert r.exit_code == 2 and r.output.count("error:") == 1, r.output
    text = " ".join(r.output.split())
    assert "--boards is 3, but tracker" in text and "lists 2 rpc_server(s) with key 'farm-loop'" in text, text


def test_cli_pool_records_the_member_that_measured_each_row(two_boards, tmp_path, rows_per_key, hwprof):
    tracker, _ = two_boards
    devs = write_devices(tmp_path / "devices.yaml", tracker.addr, boards=1)
    out = tmp_path / "p.csv"
    only = "*|1x*x16x16|c16|s1|*"
    r = hwprof("measure", "--device", "loop-pool", "--space", SPACE, "--only", only, "--out", out, "--devices", devs)
    assert r.exit_code == 0, r.output
    keys = select_keys(get_space(SPACE).candidate_keys(), only)
    assert rows_per_key(out) == {k: 1 for k in keys} and set(boards_of(out).values()) == {"loop-a", "loop-b"}
    assert load_table(out).meta["device"] == "loop-pool"
    shown = hwprof("show", out)
    counts = {b: list(boards_of(out).values()).count(b) for b in ("loop-a", "loop-b")}
    assert shown.exit_code == 0 and " ".join(shown.output.split()).count(
        f"boards: loop-a {counts['loop-a']} row") == 1, shown.output


def test_pool_entries_are_validated_in_one_line():
    ort = {"runtime": "onnxruntime", "threads": 1}
    for pool, msg in [(["a", "c"], "'c' differs from 'a' in threads"), (["a"], "is not a list of two or more"),
                      (["a", "zz"], "no device 'zz'"), (["a", "a"], "names a device twice")]:
        data = {"devices": {"a": ort, "b": ort, "c": {**ort, "threads": 2}, "p": {"pool": pool}}}
        with pytest.raises(DeviceError, match=f"devices.yaml: device 'p'.pool: .*{msg}"):
            parse_devices(data, "devices.yaml")
    data = {"devices": {"a": ort, "b": ort, "p": {"pool": ["a", "b"], "threads": 4}}}
    with pytest.raises(DeviceError, match="unknown field.*threads beside pool"):
        parse_devices(data, "devices.yaml")
    pool = parse_devices({"devices": {"a": ort, "b": ort, "p": {"pool": ["a", "b"]}}}, "devices.yaml")["p"]
    assert [m.name for m in pool.pool] == ["a", "b"] and farm_size(pool) == 2 and farm_size(pool, 1) == 1
    with pytest.raises(FarmError, match="--boards 3: pool 'p' has 2 members"):
        farm_size(pool, 3)


def test_server_killed_mid_sweep_then_same_command_completes_the_table(two_boards, tmp_path, rows_per_key):
    tracker, servers = two_boards
    devs = write_devices(tmp_path / "devices.yaml", tracker.addr, boards=0)  # 0: every server the tracker lists
    keys = select_keys(get_space(SPACE).candidate_keys(), ONLY)
    out = tmp_path / "t.csv"
    victim = servers[0]
    killed_at: list[int] = []

    def kill_after_two(p) -> None:
        if p.done == 2 and victim.alive():
            victim.kill()
            killed_at.append(p.done)

    t0 = time.monotonic()
    first = measure_on_farm(devs, out, kill_after_two)
    assert time.monotonic() - t0 < 300 and killed_at == [2]
    assert first.errors == 0 and first.measured == len(keys)  # the survivor measured what the victim lost
    assert list(first.lost_boards.values()) and all(w.startswith(("rpc session lost", "no rpc session"))
                                                   for w in first.lost_boards.values()), first.lost_boards
    written = [r for r in first.rows if r.status != "error"]
    after = [r.board for r in written[2:]]
    # after the kill the survivor wrote the rows (the victim at most one it had finished timing just before)
    assert after and after.count(victim.addr) <= 1 and set(after) <= {victim.addr, servers[1].addr}
    assert rows_per_key(out) == {r.key: 1 for r in first.rows}  # the lost row in flight was not written

    second = measure_on_farm(devs, out)  # the same command again: only the survivor is listed now
    assert second.errors == 0, [r.error for r in second.rows]
    assert second.measured == len(keys) - len(written)
    assert rows_per_key(out) == {k: 1 for k in keys}  # complete, every key exactly once
    table = load_table(out)
    assert not table.missing(keys) and set(boards_of(out).values()) <= {s.addr for s in servers}
