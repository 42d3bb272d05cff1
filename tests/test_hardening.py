"""Hardening: one user-error base, bad input fails cleanly, single writers, cache integrity, closed doors.

Each class of problem found by the bad-input probe (bench/probe_bad_input.py) has a test here, so a closed class
stays closed. Fault injection: a killed lock holder, concurrent writers, a corrupt ONNX cache, a failing write
(and a full tmpfs when one can be mounted).
"""

from __future__ import annotations

import errno
import functools
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from profiler.cli import app as hwprof
from profiler.errors import LockedError, UserError, WriteError
from profiler.fileio import FileLock, atomic_write_text, loads_json, loads_yaml, locked_dir
from profiler.latency.tables import TableError, default_table_path, load_table
from search.cli import app as hwnas

ROOT = Path(__file__).resolve().parent.parent
SPEC = "darts-3ops:C=8,cells=3"


@functools.lru_cache(maxsize=None)
def probe_module():
    """bench/probe_bad_input.py, loaded as a module: the tests build their inputs with its fixtures."""
    spec = importlib.util.spec_from_file_location("probe_bad_input", ROOT / "bench" / "probe_bad_input.py")
    probe = importlib.util.module_from_spec(spec)
    sys.modules["probe_bad_input"] = probe
    try:
        spec.loader.exec_module(probe)
    finally:
        del sys.modules["probe_bad_input"]
    return probe


def write_table(path: Path, spec: str = SPEC, runtime: str = "onnxruntime") -> Path:
    """The probe's valid measured-looking table (device 'probe', every key 0.1 ms)."""
    return probe_module().write_table(path, spec, runtime=runtime)


def one_line_exit_2(result) -> str:
    assert result.exit_code == 2, result.output
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit), result.exception
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    return lines[0]


# ------------------------------------------------------------------------------------------- one error base

def test_every_user_facing_error_class_derives_from_user_error_and_keeps_its_old_base():
    from profiler.latency.formats import FormatError
    from profiler.latency.verify import VerifyError
    from profiler.measuring.devices import DeviceError
    from profiler.measuring.rpc import RpcError
    from profiler.spaces.arch import ArchError
    from profiler.spaces.space import SpaceError
    from search.config import ConfigError
    from search.control import ControlError
    from search.costs import CostError
    from search.data import DataError
    from search.derive import DeriveError
    from search.losses import LossError
    from search.pipeline import PipelineError
    from search.retrain import TrainError
    from search.train import SearchError

    for cls in (ArchError, DeviceError, FormatError, SpaceError, VerifyError, TableError, ConfigError, ControlError,
                CostError, DataError, DeriveError, LossError, TrainError):
        assert issubclass(cls, UserError) and issubclass(cls, ValueError), cls
    for cls in (RpcError, PipelineError, SearchError):
        assert issubclass(cls, UserError) and issubclass(cls, RuntimeError), cls
    e = UserError("t.csv: field 'batch' is 'abc'", fix="write an integer")
    assert str(e) == "t.csv: field 'batch' is 'abc'; fix: write an integer"


def test_cli_turns_a_user_error_into_one_line_and_a_bug_into_a_traceback():
    from profiler.cliapp import UserErrorApp

    app = UserErrorApp()

    @app.command()
    def user() -> None:
        raise UserError("f.yaml: field 'x' = [bad] is wrong", fix="use 1")

    @app.command()
    def bug() -> None:
        raise RuntimeError("a real bug")

    r = CliRunner().invoke(app, ["user"])
    assert one_line_exit_2(r) == "error: f.yaml: field 'x' = [bad] is wrong; fix: use 1"  # markup is escaped
    r = CliRunner().invoke(app, ["bug"])
    assert isinstance(r.exception, RuntimeError)  # not swallowed into a "user" error


# ------------------------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("spec", ["fbnet-cifar:width=inf", "fbnet-cifar:width=-1", "fbnet-cifar:width=0",
                                  "fbnet-cifar:width=nan", "fbnet-cifar:stem_stride=0", "fbnet-cifar:input_size=0",
                                  "darts:C=0", "darts:nodes=0", "darts:cells=0"])
def test_space_parameters_out_of_range_are_refused(spec, tmp_path):
    out = tmp_path / "t.csv"
    line = one_line_exit_2(CliRunner().invoke(hwprof, ["measure", "--space", spec, "--out", str(out)]))
    assert spec.split(":")[1].split("=")[0] in line
    assert not out.exists()


def test_space_parameters_in_range_still_build():
    from profiler.spaces.space import get_space

    for spec in ("fbnet-cifar:width=0.25", "fbnet-cifar:input_size=1", "darts-3ops:C=8", "proxyless"):
        assert get_space(spec).layers


DEVICE_CASES = {
    "threads: -3": ("  c:\n    runtime: onnxruntime\n    threads: -3\n", "threads: -3 must be >= 0"),
    "duplicate name": ("  c:\n    runtime: onnxruntime\n  c:\n    runtime: torch\n", "key 'c' appears twice"),
    "infinite time": ("  c:\n    runtime: onnxruntime\n    protocol: {max_seconds: .inf}\n", "finite"),
    "huge time": ("  c:\n    runtime: onnxruntime\n    protocol: {max_seconds: 1.0e+9}\n", "over the 3600 s limit"),
    "path in name": ("  ../../x:\n    runtime: onnxruntime\n", "not path-safe"),
    "infinite timeout": ("  c:\n    runtime: tvm\n    target: llvm\n    rpc: {tracker: 'h:1', key: k, "
                         "session_timeout_s: .inf}\n", "session_timeout_s: inf must be a finite"),
}


@pytest.mark.parametrize("case", list(DEVICE_CASES))
def test_bad_devices_yaml_is_one_line(case, tmp_path):
    body, match = DEVICE_CASES[case]
    p = tmp_path / "devices.yaml"
    p.write_text("devices:\n" + body)
    line = one_line_exit_2(CliRunner().invoke(hwprof, ["devices", "--devices", str(p)]))
    assert match in line and str(p) in line


def test_non_utf8_bytes_name_the_file_and_line(tmp_path):
    p = tmp_path / "devices.yaml"
    p.write_bytes(b"devices:\n  cpu:\n    runtime: onnxruntime\n    description: caf\xe9\n")
    line = one_line_exit_2(CliRunner().invoke(hwprof, ["devices", "--devices", str(p)]))
    assert f"{p}: line 4" in line and "UTF-8" in line
    t = write_table(tmp_path / "t.csv")
    with open(t, "ab") as f:
        f.write(b"\xff" * 10 + b"\n")
    with pytest.raises(TableError, match="is not UTF-8"):
        load_table(t)


def _edit_meta(t: Path, fn) -> None:
    probe_module().edit_meta(t, fn)


def _edit_first_row(t: Path, col: int, value: str) -> None:
    lines = t.read_text().splitlines()
    cells = lines[1].split(",")
    cells[col] = value
    t.write_text("\n".join([lines[0], ",".join(cells), *lines[2:]]) + "\n")


TABLE_CASES = {
    "no device": (lambda t: _edit_meta(t, lambda m: m.pop("device")), "field 'device' is None"),
    "no space": (lambda t: _edit_meta(t, lambda m: m.pop("space")), "field 'space' is None"),
    "batch abc": (lambda t: _edit_meta(t, lambda m: m.update(batch="abc")), "field 'batch' is 'abc'"),
    "protocol inf": (lambda t: t.with_suffix(".meta.json").write_text(
        t.with_suffix(".meta.json").read_text().replace('"protocol": {}', '"protocol": {"max_seconds": Infinity}')),
        "Infinity is not a valid JSON number"),
    "inf latency": (lambda t: _edit_first_row(t, 6, "inf"), "median_ms inf"),
    "negative p90": (lambda t: _edit_first_row(t, 8, "-1"), "p90_ms -1.0"),
    "duplicate key": (lambda t: t.write_text(t.read_text() + t.read_text().splitlines()[1] + "\n"),
                      "appears again (first at line 2)"),
    "calibration list": (lambda t: t.with_suffix(".calib.json").write_text("[1, 2]"), "calibration version None"),
    "calibration scale str": (lambda t: t.with_suffix(".calib.json").write_text(
        '{"version": 1, "scale": "x", "offset_ms": 0}'), "field 'scale' must be a finite number"),
    "calibration duplicate": (lambda t: t.with_suffix(".calib.json").write_text(
        '{"version": 1, "scale": 1, "scale": 2, "offset_ms": 0}'), "key 'scale' appears twice"),
}


@pytest.mark.parametrize("case", list(TABLE_CASES))
def test_bad_table_is_refused_on_load(case, tmp_path):
    edit, match = TABLE_CASES[case]
    t = write_table(tmp_path / "t.csv")
    edit(t)
    line = one_line_exit_2(CliRunner().invoke(hwprof, ["show", str(t)]))
    assert match in line and str(tmp_path) in line


def test_an_error_row_superseded_by_a_later_row_is_no_duplicate(tmp_path):
    t = write_table(tmp_path / "t.csv")
    lines = t.read_text().splitlines()
    cells = lines[1].split(",")
    err = cells[:6] + [""] * 10 + ["error", "", "boom", "", ""]
    t.write_text("\n".join([lines[0], ",".join(err), *lines[1:]]) + "\n")
    assert load_table(t).rows[cells[0]]["status"] == "ok"


@pytest.mark.parametrize("item, match", [("epochs=abc", "epochs='abc' must be an integer"),
                                          ("control=5", "control is a section"),
                                          ("weights_opt.lr=-1", "weights_opt.lr=-1.0 is invalid"),
                                          ("loss_beta=NaN", "must be a finite number"),
                                          ("arch_opt.betas=[2, 3]", "arch_opt.betas")])
def test_bad_set_overrides_are_refused_before_the_run_dir_exists(item, match, tmp_path):
    run = tmp_path / "run"
    r = CliRunner().invoke(hwnas, ["search", "--space", SPEC, "--set", item, "--out", str(run)])
    assert match in one_line_exit_2(r)
    assert not run.exists()


def test_config_round_trip_of_every_preset_still_holds():
    from search.config import PRESETS, config_from_dict, config_to_dict, preset

    for name in PRESETS:
        cfg = preset(name)
        assert config_from_dict(config_to_dict(cfg)) == cfg


def test_arch_json_with_keys_not_a_list_is_one_line(tmp_path):
    a = probe_module().arch_with_bad_keys(tmp_path / "a.json")
    line = one_line_exit_2(CliRunner().invoke(hwprof, ["predict", str(a), "--table", str(write_table(
        tmp_path / "t.csv"))]))
    assert "layers[0].keys = '5' must be a list" in line


@pytest.mark.parametrize("content", [b"not a model\n", bytes(range(256)) * 8])
def test_measure_model_on_a_non_onnx_file_is_one_line(content, tmp_path):
    m = tmp_path / "m.onnx"
    m.write_bytes(content)
    assert "not a readable ONNX model" in one_line_exit_2(CliRunner().invoke(hwprof, ["measure-model", str(m)]))


def _jsonl(tmp_path: Path, latency: float) -> Path:
    from profiler.spaces.keys import parse_key
    from profiler.spaces.space import get_space

    k = parse_key(get_space(SPEC).candidate_keys()[0])
    src = tmp_path / "lut.jsonl"
    src.write_text(json.dumps({"op_name": k.op, "op_data_shape": list(k.input_shape), "c_out": k.c_out,
                               "stride": k.stride, "params": dict(k.params), "op_latency": latency}) + "\n")
    return src


def test_import_refuses_infinite_latency_and_a_measured_out_without_force(tmp_path):
    bad = one_line_exit_2(CliRunner().invoke(hwprof, ["import", str(_jsonl(tmp_path, float("inf"))), "-f",
                                                      "hwprof-jsonl", "-s", SPEC, "-d", "x", "-o",
                                                      str(tmp_path / "i.csv")]))
    assert "op_latency" in bad and not (tmp_path / "i.csv").exists()
    measured = write_table(tmp_path / "m" / "t.csv")
    before = measured.read_bytes()
    args = ["import", str(_jsonl(tmp_path, 0.2)), "-f", "hwprof-jsonl", "-s", SPEC, "-d", "x", "-o", str(measured)]
    assert "pass --force" in one_line_exit_2(CliRunner().invoke(hwprof, args))
    assert measured.read_bytes() == before
    assert CliRunner().invoke(hwprof, [*args, "--force"]).exit_code == 0
    assert len(load_table(measured).rows) == 1
    assert CliRunner().invoke(hwprof, args).exit_code == 0  # an imported table may be re-imported


def test_device_names_must_be_path_safe():
    for bad in ("../../x", "a/b", "..", "", ".hidden", "a b"):
        with pytest.raises(UserError, match="not path-safe"):
            default_table_path(bad, SPEC)
    assert default_table_path("rpi4-tvm_1.2", SPEC).parent.name == "rpi4-tvm_1.2"


def test_json_and_yaml_readers_refuse_duplicates_and_non_finite_numbers():
    with pytest.raises(UserError, match="key 'a' appears twice"):
        loads_json('{"a": 1, "a": 2}', "x.json")
    with pytest.raises(UserError, match="NaN is not a valid JSON number"):
        loads_json('{"a": NaN}', "x.json")
    with pytest.raises(UserError, match="line 3: key 'b' appears twice"):
        loads_yaml("a:\n  b: 1\n  b: 2\n", "x.yaml")
    assert loads_yaml("a: {b: 1, c: [1, 2]}\n", "x.yaml") == {"a": {"b": 1, "c": [1, 2]}}


def test_the_probe_finds_no_traceback_and_no_silent_acceptance(tmp_path):
    """The probe itself (every input through the real CLIs, one subprocess each) is a bench script; here its
    fixtures build and its classification is checked (the classes themselves are tested above)."""
    probe = probe_module()
    probes = probe.build_probes(tmp_path)
    assert len(probes) >= 40 and all(Path(p.argv[0]).name in ("hwprof", "hwnas") for p in probes)
    assert probe.classify(probes[0], {}, 0, "") == "silent"
    assert probe.classify(probes[0], {}, 1, "Traceback (most recent call last):\n") == "traceback"
    assert probe.classify(probes[0], {}, 2, "error: x: bad\n") == "clean"


# ------------------------------------------------------------------------------------------- single writer

HOLD = """
import sys, time
from profiler.fileio import FileLock
FileLock(sys.argv[1], "table").acquire()
print("held", flush=True)
time.sleep(120)
"""


def _holder(target: Path) -> subprocess.Popen:
    p = subprocess.Popen([sys.executable, "-c", HOLD, str(target)], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    assert p.stdout.readline().strip() == "held"
    return p


def test_a_second_writer_gets_the_holders_pid_and_a_killed_holder_frees_the_lock(tmp_path):
    t = write_table(tmp_path / "t.csv")
    p = _holder(t)
    try:
        with pytest.raises(LockedError, match=f"being written by PID {p.pid}"):
            FileLock(t, "table").acquire()
        r = CliRunner().invoke(hwprof, ["measure", "--space", SPEC, "--out", str(t)])
        assert f"PID {p.pid}" in one_line_exit_2(r)
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait()
    with FileLock(t, "table"):  # the kernel dropped the dead holder's lock: no stale lock
        pass


def test_two_concurrent_table_writers_never_both_open_it(tmp_path):
    from profiler.latency.tables import TableWriter

    t = write_table(tmp_path / "t.csv")
    meta = json.loads(t.with_suffix(".meta.json").read_text())
    with TableWriter(t, meta):
        with pytest.raises(LockedError, match=f"PID {os.getpid()}"):
            TableWriter(t, meta)
    with TableWriter(t, meta) as w:  # released on close
        assert len(w.existing) == len(load_table(t).rows)


def test_run_directory_single_writer_and_no_empty_dir_left_on_failure(tmp_path):
    run = tmp_path / "run"
    with locked_dir(run):
        with pytest.raises(LockedError, match=f"{run}: this run directory is being written by PID {os.getpid()}"):
            with locked_dir(run):
                pass
    fresh = tmp_path / "fresh"
    with pytest.raises(UserError):
        with locked_dir(fresh):
            raise UserError("bad input")
    assert not fresh.exists()


# ------------------------------------------------------------------------------------------- files and cache

def test_atomic_writes_use_the_umask_and_leave_nothing_on_failure(tmp_path, monkeypatch):
    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "a.txt", "x")
    finally:
        os.umask(old)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o644

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "replace", full)
    with pytest.raises(WriteError, match="b.txt: cannot write .No space left on device.; nothing was written"):
        atomic_write_text(tmp_path / "b.txt", "y")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]


def test_full_tmpfs_gives_one_error_and_leaves_nothing(tmp_path):
    mnt = tmp_path / "small"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode:
        pytest.skip(f"cannot mount a small tmpfs here ({(r.stderr or r.stdout).strip()[:80]})")
    try:
        with pytest.raises(WriteError, match="No space left on device"):
            atomic_write_text(mnt / "big.txt", "x" * 1_000_000)
        assert list(mnt.iterdir()) == []
        from profiler.spaces.arch import save_weights

        with pytest.raises(WriteError):
            save_weights(torch_linear(), mnt / "w.safetensors")
        assert list(mnt.iterdir()) == []
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)


def torch_linear():
    import torch

    return torch.nn.Linear(512, 512)


def test_a_corrupt_cache_entry_is_exported_again(tmp_path, monkeypatch):
    from profiler.measuring.export import export_key

    monkeypatch.setenv("HWNAS_CACHE", str(tmp_path))
    key = "v1|avg_pool_3x3|1x8x8x8|c8|s1|float32"
    first = export_key(key)
    good = first.path.read_bytes()
    err = first.path.with_suffix(".err")
    for corrupt in (lambda: err.write_text(""), lambda: first.path.write_bytes(b"garbage"),
                    lambda: first.path.write_bytes(good[: len(good) // 2]), lambda: err.unlink()):
        corrupt()
        again = export_key(key)
        assert again.path.read_bytes() == good and float(err.read_text()) == again.max_abs_err
    assert sorted(p.suffix for p in first.path.parent.iterdir() if not p.name.endswith(".lock")) == [".err", ".onnx"]


def test_relative_export_check_catches_errors_on_tiny_outputs():
    import numpy as np

    from profiler.measuring.export import relative_error

    ref = np.full(10, 1e-7)
    assert relative_error(ref * 1.01, ref) == pytest.approx(0.01)  # absolute error 1e-9 would pass any check
    assert relative_error(np.zeros(3), np.zeros(3)) == 0.0
    assert relative_error(np.zeros(3), np.zeros(4)) == float("inf")


# ------------------------------------------------------------------------------------------- closed doors

def test_rpc_tracker_and_server_default_to_localhost(monkeypatch):
    import profiler.measuring.rpc as rpc

    seen = {}

    def fake(host, port, **kw):
        seen["host"] = host
        raise KeyboardInterrupt

    monkeypatch.setattr(rpc, "start_tracker", fake)
    monkeypatch.setattr(rpc, "start_server", lambda key, tracker, host, *a, **kw: fake(host, 0))
    monkeypatch.setattr(rpc.signal, "signal", lambda *a, **kw: None)  # keep pytest's own handlers
    for argv in (["tracker"], ["server", "--tracker", "127.0.0.1:9190", "--key", "k"]):
        seen.clear()
        try:
            rpc._main(argv)
        except (KeyboardInterrupt, SystemExit):
            pass
        assert seen.get("host") == "127.0.0.1", argv
    readme = (ROOT / "README.md").read_text()
    assert "ssh -N -R 9190:127.0.0.1:9190" in readme and "--host 0.0.0.0" not in readme


def _board_timer():
    sys.path.insert(0, str(ROOT / "profiler" / "measuring"))  # board_timer imports timing from beside it (shipped together)
    try:
        spec = importlib.util.spec_from_file_location("board_timer", ROOT / "profiler" / "measuring" / "remote" / "board_timer.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod
    finally:
        sys.path.remove(str(ROOT / "profiler" / "measuring"))


def test_board_sweep_removes_only_folders_hwprof_made(tmp_path):
    bt = _board_timer()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    old = time.time() - 2 * 3600
    owners = {"hwprof-dead00000000": dead.stdout.strip(), "hwprof-00000000a000": "0",
              "hwprof-a0000000000b": None, "hwprof-venv": dead.stdout.strip(), "hwprof-1234": "0",
              "hwprof-11ee00000000": str(os.getpid()), "hwprof-cafe00000000": "written by someone else"}
    for name, owner in owners.items():
        d = tmp_path / name
        d.mkdir()
        (d / "x").write_text("left over")
        if owner is not None:
            (d / "owner.pid").write_text(owner if owner.startswith("written") else f"hwprof-board {owner}\n")
        for p in (*d.iterdir(), d):
            os.utime(p, (old, old))
    me = tmp_path / "hwprof-ffff00000000"
    me.mkdir()
    removed = bt.sweep_stale(str(me))
    assert sorted(removed) == ["hwprof-00000000a000", "hwprof-dead00000000"]
    assert (me / "owner.pid").read_text() == f"hwprof-board {os.getpid()}\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(set(owners) - set(removed) | {me.name})


def test_private_local_rpc_key_is_random_per_server():
    src = (ROOT / "profiler" / "measuring" / "runners" / "tvm_runner.py").read_text()
    assert "secrets.token_hex(16)" in src and "connect_session(self._server.host, self._server.port, LOCAL_KEY)" \
        not in src
    _ = typer  # the CLI apps above are typer apps


def test_a_corrupt_checkpoint_or_config_is_one_line(tmp_path):
    from search.run import load_run, load_state

    run = tmp_path / "run"
    run.mkdir()
    (run / "checkpoint.pt").write_bytes(b"torn")
    with pytest.raises(UserError, match="checkpoint.pt: not a readable checkpoint"):
        load_state(run / "checkpoint.pt")
    (run / "config.json").write_text('{"preset": "hwnas", "preset": "darts"}')
    with pytest.raises(UserError, match="key 'preset' appears twice"):
        load_run(run)
    r = CliRunner().invoke(hwnas, ["derive", str(run), "--family", "2"])
    assert "appears twice" in one_line_exit_2(r)
