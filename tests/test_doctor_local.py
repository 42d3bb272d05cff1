"""hwprof doctor for the local runtimes (onnxruntime, torch): real checks, a stability verdict, clear failures."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from profiler.cli import app
from profiler.measuring.devices import parse_devices
from profiler.measuring.doctor import failed, robust_cv, run_doctor, stability_verdict, usable_cores

cli = CliRunner()
ORT_NAMES = ["onnxruntime installed", "provider", "threads", "load", "tiny op", "whole-network timing"]


def device(name="d", **entry):
    return parse_devices({"devices": {name: entry}}, "t")[name]


def test_stability_verdict_stable_marginal_unstable():
    stable = stability_verdict([1.0, 1.01, 0.99], [0.02, 0.03, 0.02], "1 thread(s)", 0.05, threads=1)
    assert stable.ok and stable.detail.startswith("stable at 1 thread(s)")
    marginal = stability_verdict([1.0, 1.0, 1.0], [0.08, 0.07, 0.09], "1 thread(s)", 0.05)
    assert marginal.ok and marginal.detail.startswith("marginal")
    unstable = stability_verdict([1.0, 1.5, 2.0], [0.02, 0.02, 0.02], "all 2 cores (threads 0)", 0.05)
    assert not unstable.ok and unstable.detail.startswith("unstable") and "cpu-1t" in unstable.fix
    assert "cpu-1t" not in stability_verdict([1.0, 2.0], [0.5, 0.5], "1 thread(s)", 0.05, threads=1).fix
    assert robust_cv([1.0, 1.0, 1.0, 1.0, 50.0]) == 0.0  # one preempted sample does not count


def test_onnxruntime_doctor_runs_every_check_on_a_real_session():
    checks = run_doctor(device(runtime="onnxruntime", threads=1))
    assert [c.name for c in checks] == ORT_NAMES
    # the verdict on whole-network timing depends on how busy this machine is; every other check must pass
    assert [c.name for c in failed(checks)] in ([], ["whole-network timing"])
    by = {c.name: c for c in checks}
    assert "median" in by["tiny op"].detail and "at 1 thread(s)" in by["whole-network timing"].detail
    assert by["whole-network timing"].detail.split()[0] in ("stable", "marginal", "unstable")


def test_onnxruntime_doctor_more_threads_than_cores_stops_with_the_fix():
    n = usable_cores() + 1
    checks = run_doctor(device(runtime="onnxruntime", threads=n))
    assert [c.name for c in failed(checks)] == ["threads"] and checks[-1].name == "load"
    assert f"threads {n}" in checks[-2].detail and "cpu-1t" in checks[-2].fix


def test_cuda_provider_missing_is_one_failed_check():
    import onnxruntime as ort

    checks = run_doctor(device(runtime="onnxruntime", provider="cuda"))
    if "CUDAExecutionProvider" in ort.get_available_providers():
        assert checks[1].ok
        return
    assert [c.name for c in checks] == ["onnxruntime installed", "provider"] and not checks[1].ok
    assert "onnxruntime-gpu" in checks[1].fix


def test_torch_doctor_and_the_cli(tmp_path):
    devs = tmp_path / "devices.yaml"
    devs.write_text(json.dumps({"devices": {"t1": {"runtime": "torch", "torch_device": "cpu", "threads": 1}}}))
    r = cli.invoke(app, ["doctor", "--device", "t1", "--devices", str(devs)])
    assert "torch installed" in r.output and "tiny op" in r.output and "whole-network timing" in r.output
    assert r.exit_code in (0, 1) and ("5 ok, 0 failed" in r.output) == (r.exit_code == 0)
