"""hwprof doctor on the loopback TVM device: every check ok with a tracker + server; a clear failure + fix without."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

pytest.importorskip("tvm")

from profiler.cli import app  # noqa: E402
from profiler.measuring.devices import get_device  # noqa: E402
from profiler.measuring.doctor import CHECKS, Check, failed, run_doctor  # noqa: E402
from profiler.measuring.rpc import free_port, start_server, start_tracker  # noqa: E402

from helpers import write_devices  # noqa: E402

cli = CliRunner()


@pytest.fixture(scope="module")
def tracker_and_server(tmp_path_factory):
    logs = tmp_path_factory.mktemp("doctor-logs")
    with start_tracker("127.0.0.1", log_dir=logs) as tracker:
        with start_server("rpi4-loop", tracker.addr, threads=1, log_dir=logs):
            yield tracker.addr


def test_doctor_all_ok_on_the_loop_device(tracker_and_server, tmp_path):
    devs = write_devices(tmp_path / "devices.yaml", tracker_and_server)
    checks = run_doctor(get_device("rpi4-loop", devs))
    assert all(isinstance(c, Check) for c in checks)
    by_name = {c.name: c for c in checks}
    assert not failed(checks), checks
    assert list(by_name) == ["tvm installed", "target", "tracker", "server", "session", "target/arch", "threads",
                             "tiny op"]
    assert "arch x86_64" in by_name["session"].detail and "median" in by_name["tiny op"].detail
    r = cli.invoke(app, ["doctor", "--device", "rpi4-loop", "--devices", str(devs)])
    assert r.exit_code == 0, r.output
    assert "8 ok, 0 failed" in r.output


def test_doctor_names_the_missing_server_and_the_fix(tracker_and_server, tmp_path):
    devs = write_devices(tmp_path / "devices.yaml", tracker_and_server, key="ghost")
    r = cli.invoke(app, ["doctor", "--device", "rpi4-loop", "--devices", str(devs)])
    assert r.exit_code == 1
    assert "FAILED server: no rpc_server registered with key 'ghost' (keys: rpi4-loop)" in r.output
    assert f"tvm.exec.rpc_server --tracker {tracker_and_server} --key ghost" in r.output


def test_doctor_dead_tracker(tmp_path):
    devs = write_devices(tmp_path / "devices.yaml", f"127.0.0.1:{free_port()}")
    checks = run_doctor(get_device("rpi4-loop", devs))
    assert [c.name for c in failed(checks)] == ["tracker"]
    assert "cannot connect" in checks[-1].detail and "rpc_tracker" in checks[-1].fix


def test_target_arch_mismatch_is_reported(tracker_and_server, tmp_path):
    devs = write_devices(tmp_path / "devices.yaml", tracker_and_server)
    text = devs.read_text().replace("target: {kind: llvm}", "target: raspberry-pi/4b-aarch64", 1)
    devs.write_text(text)
    checks = run_doctor(get_device("rpi4-loop", devs))
    bad = failed(checks)
    assert [c.name for c in bad] == ["target/arch"] and "target aarch64, remote x86_64" in bad[0].detail


def test_every_runtime_with_checks_is_a_function():
    assert callable(CHECKS["tvm"])
