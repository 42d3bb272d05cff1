"""TVM runner, local device (a private rpc_server on 127.0.0.1): compile, time, variants, errors as values."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

pytest.importorskip("tvm")

from profiler.cli import app  # noqa: E402
from profiler.latency.tables import load_table  # noqa: E402
from profiler.measuring.devices import Device, get_device  # noqa: E402
from profiler.measuring.protocol import Protocol  # noqa: E402
from profiler.measuring.runners.tvm_runner import (  # noqa: E402
    TvmSetupError,
    compile_onnx,
    copy_onnx,
    evaluator_plan,
    export_lib,
    make_target,
    tuning_variant,
)

from helpers import write_devices  # noqa: E402

cli = CliRunner()
SPACE = "darts-3ops:C=8,cells=5"


def tvm_device(**kw) -> Device:
    return Device("t", "tvm", target=kw.pop("target", {"kind": "llvm"}), threads=1, **kw)


def test_local_cli_measure_writes_a_labelled_table(tmp_path):
    devs = write_devices(tmp_path / "devices.yaml", "127.0.0.1:1")
    out = tmp_path / "t.csv"
    # stride-2 cells: the pool, the conv and FactorizedReduce (whose dynamic Pad needs onnxruntime folding first)
    r = cli.invoke(app, ["measure", "--device", "tvm-cpu", "--devices", str(devs), "--space", SPACE,
                         "--only", "*|1x16x32x32|c16|s2|*", "--out", str(out)])
    assert r.exit_code == 0, r.output
    t = load_table(out)
    assert {row["op"] for row in t.rows.values()} == {"avg_pool_3x3", "skip_connect", "sep_conv_3x3"}
    assert {row["variant"] for row in t.rows.values()} == {"untuned"}
    assert all(row["status"] != "error" and row["median_ms"] > 0 and row["n"] >= 5 for row in t.rows.values())
    fp = t.meta["fingerprint"]
    assert fp["runtime"] == "tvm" and fp["remote"]["threads"] == 1 and fp["target_triple"] and "rpc" not in fp
    r = cli.invoke(app, ["measure", "--device", "tvm-cpu", "--devices", str(devs), "--space", SPACE,
                         "--only", "*|1x16x32x32|c16|s2|*", "--out", str(out)])
    assert r.exit_code == 0 and "measured 0" in r.output and "3 already there" in r.output
    r = cli.invoke(app, ["measure", "--device", "tvm-cpu", "--devices", str(devs), "--space", SPACE,
                         "--only", "*|1x16x32x32|c16|s2|*", "--out", str(out), "--tune-trials", "2"])
    assert r.exit_code == 2 and "holds untuned TVM entries" in r.output and "--fresh" in r.output


def test_cli_rejects_tuning_on_other_runtimes_and_cli_target_strings(tmp_path):
    devs = write_devices(tmp_path / "devices.yaml", "127.0.0.1:1")
    r = cli.invoke(app, ["measure", "--device", "cpu-1t", "--devices", str(devs), "--tune-trials", "4",
                         "--space", SPACE])
    assert r.exit_code == 2 and "tuning applies to tvm devices only" in r.output
    devs.write_text(devs.read_text().replace("target: {kind: llvm}", "target: llvm -mcpu=znver3", 1))
    r = cli.invoke(app, ["measure", "--device", "rpi4-loop", "--devices", str(devs), "--space", SPACE])
    assert r.exit_code == 2 and "CLI target string" in r.output and "kind: llvm" in r.output


def test_targets():
    t = make_target(tvm_device(), for_tuning=True)
    assert int(t.attrs["num-cores"]) == 1  # tuning targets need num-cores
    assert str(make_target(tvm_device(target="raspberry-pi/4b-aarch64")).attrs["mtriple"]) == "aarch64-linux-gnu"
    with pytest.raises(TvmSetupError, match="target: 42 is neither"):
        make_target(tvm_device(target=42))
    with pytest.raises(TvmSetupError, match="TVM rejects 'no-such/board'"):
        make_target(tvm_device(target="no-such/board"))


@pytest.mark.parametrize("one_call_ms,number,repeat", [(0.01, 500, 60), (1.0, 5, 60), (100.0, 1, 20), (3000.0, 1, 2)])
def test_evaluator_plan_follows_the_protocol(one_call_ms, number, repeat):
    p = Protocol(min_samples=20, min_seconds=0.3, max_seconds=5.0, target_sample_ms=5.0)
    assert evaluator_plan(p, one_call_ms) == (number, repeat)
    assert evaluator_plan(dataclasses.replace(p, calls_per_sample=7), 1.0)[0] == 7


def test_tuning_variant_never_claims_a_partial_tune():
    assert tuning_variant(3, 3) == "tuned"
    assert tuning_variant(3, 2) == "tune-failed" and tuning_variant(3, 0) == "tune-failed"
    assert tuning_variant(0, 0) == "untuned"


def test_kernel_less_graph_is_timed_as_a_copy(tmp_path):
    import tvm
    from tvm import relax

    from profiler.measuring.export import export_key

    exp = export_key("v1|skip_connect|1x8x32x32|c8|s1|float32")
    target = make_target(tvm_device())
    c = compile_onnx(exp.path, target)
    assert c.variant == "copy"
    vm = relax.VirtualMachine(tvm.runtime.load_module(str(export_lib(c.executable, tmp_path / "c.so"))), tvm.cpu())
    x = np.arange(8 * 32 * 32, dtype=np.float32).reshape(1, 8, 32, 32)
    np.testing.assert_array_equal(vm["main"](tvm.runtime.tensor(x)).numpy(), x)
    assert copy_onnx((2, 3), tmp_path / "c.onnx").exists()


def test_missing_cross_compiler_is_a_clear_error(tmp_path):
    from profiler.measuring.export import export_key

    exp = export_key("v1|avg_pool_3x3|1x8x32x32|c8|s1|float32")
    c = compile_onnx(exp.path, make_target(tvm_device()))
    with pytest.raises(TvmSetupError, match="cross compiler 'no-such-g\\+\\+' not found.*g\\+\\+-aarch64-linux-gnu"):
        export_lib(c.executable, tmp_path / "x.so", "no-such-g++")


def test_project_devices_have_the_tvm_entries():
    dev = get_device("rpi4-loop", Path(__file__).resolve().parent.parent / "devices.yaml")
    assert dev.rpc is not None and dev.rpc.tracker.startswith("127.0.0.1:") and dev.target == {"kind": "llvm"}
    assert get_device("tvm-cpu", Path(__file__).resolve().parent.parent / "devices.yaml").rpc is None


@pytest.mark.skipif(__import__("shutil").which("aarch64-linux-gnu-g++") is None,
                    reason="needs apt package g++-aarch64-linux-gnu (make test installs it as root)")
def test_cross_compile_for_the_rpi4_target(tmp_path):
    from profiler.measuring.export import export_key

    rpi4 = get_device("rpi4", Path(__file__).resolve().parent.parent / "devices.yaml")
    for key in ("v1|sep_conv_3x3|1x8x32x32|c8|s1|float32", "v1|skip_connect|1x8x32x32|c8|s1|float32"):
        c = compile_onnx(export_key(key).path, make_target(rpi4))
        lib = export_lib(c.executable, tmp_path / "a.so", rpi4.cross_compiler)
        head = lib.read_bytes()[:20]
        assert head[:4] == b"\x7fELF" and int.from_bytes(head[18:20], "little") == 183  # EM_AARCH64


def test_a_key_planned_past_its_time_limit_is_an_error_row_and_the_next_key_still_runs(tmp_path):
    """time_evaluator cannot be interrupted, so the TVM runner refuses a plan longer than key_timeout_s up front."""
    from profiler.measuring.export import export_key
    from profiler.measuring.runners.base import MeasureRequest
    from profiler.measuring.runners.tvm_runner import TvmRunner

    key = "v1|skip_connect|1x8x32x32|c8|s1|float32"
    req = MeasureRequest(key, export_key(key).path, (1, 8, 32, 32))
    fast = Protocol(warmup_s=0.01, min_samples=3, min_seconds=0.01, max_seconds=0.1)
    with TvmRunner(tvm_device()) as runner:
        slow = runner.measure(req, dataclasses.replace(fast, key_timeout_s=1e-4))
        ok = runner.measure(req, fast)
    assert not slow.ok and "timed out" in slow.error and "key_timeout_s" in slow.error
    assert ok.ok and len(ok.samples_ms) >= 2
