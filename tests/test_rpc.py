"""The TVM RPC path on loopback: a real tracker and rpc_server on 127.0.0.1, started (and stopped) by the tests."""

from __future__ import annotations

import time

import pytest

pytest.importorskip("tvm")

from profiler.latency.tables import load_table  # noqa: E402
from profiler.measuring.devices import get_device  # noqa: E402
from profiler.measuring.measure import measure_space, select_keys  # noqa: E402
from profiler.measuring.rpc import RpcError, TrackerClient, free_port, group_members, start_server, start_tracker  # noqa: E402
from profiler.measuring.runners import make_runner  # noqa: E402
from profiler.spaces.space import get_space  # noqa: E402

SPACE = "darts-3ops:C=8,cells=5"
from helpers import write_devices  # noqa: E402


@pytest.fixture(scope="module")
def loop(tmp_path_factory):
    """A tracker and one rpc_server (key rpi4-loop) on free loopback ports; stopped by process group."""
    logs = tmp_path_factory.mktemp("rpc-logs")
    tracker = start_tracker("127.0.0.1", log_dir=logs)
    server = start_server("rpi4-loop", tracker.addr, threads=1, log_dir=logs)
    state = {"tracker": tracker, "server": server, "logs": logs}
    yield state
    state["server"].stop()
    tracker.stop()


def group_alive(pgid: int) -> list[int]:
    return group_members(pgid)


def test_tracker_lists_server_and_rejects_unknown_key(loop):
    client = TrackerClient(loop["tracker"].addr)
    assert [s["key"] for s in client.servers("rpi4-loop")] == ["server:rpi4-loop"]
    t0 = time.monotonic()
    with pytest.raises(RpcError, match="no rpc_server registered with key 'nobody'.*served keys: rpi4-loop"):
        client.request("nobody", timeout_s=2.0)
    assert time.monotonic() - t0 < 30  # bounded by the timeout (plus slack), never the infinite tracker wait


def test_dead_tracker_is_a_clear_error():
    port = free_port()
    with pytest.raises(RpcError, match=f"tracker 127.0.0.1:{port}: cannot connect.*rpc_tracker"):
        TrackerClient(f"127.0.0.1:{port}", timeout_s=2).summary()


def test_measure_through_tracker_matches_local_keys(loop, tmp_path):
    devs = write_devices(tmp_path / "devices.yaml", loop["tracker"].addr)
    space = get_space(SPACE)
    only = "*|1x8x32x32|*"
    remote = get_device("rpi4-loop", devs)
    with make_runner(remote) as runner:
        summary = measure_space(remote, space, runner, tmp_path / "remote.csv", only=only)
    assert summary.errors == 0, [r.error for r in summary.rows]
    table = load_table(tmp_path / "remote.csv")
    variants = {table.rows[k]["op"]: table.rows[k]["variant"] for k in table.rows}
    assert variants == {"avg_pool_3x3": "untuned", "skip_connect": "copy", "sep_conv_3x3": "untuned"}
    assert table.latency_ms("v1|sep_conv_3x3|1x8x32x32|c8|s1|float32") > 0
    fp = table.meta["fingerprint"]
    assert fp["runtime"] == "tvm" and fp["isolated"] and fp["rpc"]["key"] == "rpi4-loop"
    assert fp["remote"]["arch"] == "x86_64" and fp["remote"]["threads"] == 1 and fp["tvm_version"]

    local = get_device("cpu-1t", devs)
    with make_runner(local) as lrunner:
        measure_space(local, space, lrunner, tmp_path / "local.csv", only=only)
    assert set(load_table(tmp_path / "local.csv").rows) == set(table.rows)


def test_server_killed_mid_sweep_then_resume(loop, tmp_path, rows_per_key):
    devs = write_devices(tmp_path / "devices.yaml", loop["tracker"].addr, request_timeout_s=3.0)
    dev = get_device("rpi4-loop", devs)
    space = get_space(SPACE)
    only = "*|1x*x16x16|c*|s1|*"  # the stride-1 keys at 16x16: cell ops and preprocessing
    keys = select_keys(space.candidate_keys(), only)
    assert len(keys) >= 6
    out = tmp_path / "t.csv"
    server = loop["server"]
    group = server.proc.pid

    def kill_after_two(p) -> None:
        if p.done == 2 and server.alive():
            server.kill()

    with make_runner(dev) as runner:
        t0 = time.monotonic()
        first = measure_space(dev, space, runner, out, only=only, on_progress=kill_after_two)
    assert time.monotonic() - t0 < 180
    assert not group_alive(group), "rpc_server's process group (session, popen_worker) outlived the kill"
    assert first.measured == len(keys)
    ok_first = [r.key for r in first.rows if r.status != "error"]
    errors = [r for r in first.rows if r.status == "error"]
    assert len(ok_first) >= 2 and errors
    assert all("rpc session lost" in r.error for r in errors), [r.error for r in errors]
    assert any("no rpc_server registered with key 'rpi4-loop'" in r.error for r in errors)
    assert set(ok_first) <= set(load_table(out).rows)  # finished rows survived

    loop["server"] = start_server("rpi4-loop", loop["tracker"].addr, threads=1, log_dir=loop["logs"])
    with make_runner(dev) as runner:
        second = measure_space(dev, space, runner, out, only=only)
    assert second.errors == 0, [r.error for r in second.rows]
    assert sorted(r.key for r in second.rows) == sorted(r.key for r in errors)  # only what was missing
    assert rows_per_key(out) == {k: 1 for k in keys}  # every key exactly once

    server = loop["server"]
    group = server.proc.pid
    server.stop()  # SIGTERM to the group, then SIGKILL: nothing of the group may survive
    assert not server.alive() and not group_alive(group)


def test_key_nobody_serves_gives_error_rows_within_timeout(loop, tmp_path):
    devs = write_devices(tmp_path / "devices.yaml", loop["tracker"].addr, key="ghost", request_timeout_s=2.0)
    dev = get_device("rpi4-loop", devs)
    with make_runner(dev) as runner:
        t0 = time.monotonic()
        summary = measure_space(dev, get_space(SPACE), runner, tmp_path / "g.csv", only="avg_pool_3x3")
    assert time.monotonic() - t0 < 120
    assert summary.errors == summary.measured > 0
    assert all("no rpc_server registered with key 'ghost'" in r.error for r in summary.rows)
    assert load_table(tmp_path / "g.csv").meta["fingerprint"]["remote"]["error"]


def test_private_server_dies_with_its_parent():
    """A local TVM device's server must not outlive a runner process killed by a crash or a timeout."""
    import subprocess
    import sys

    code = ("from profiler.measuring.rpc import start_server; import time\n"
            "p = start_server('orphan', None, threads=1, die_with_parent=True)\n"
            "print(p.proc.pid, flush=True); time.sleep(600)\n")
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        group = int(parent.stdout.readline())
        assert group_alive(group)
        parent.kill()  # SIGKILL: no cleanup code runs in the parent
        parent.wait()
        deadline = time.monotonic() + 30
        while group_alive(group) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not group_alive(group)
    finally:
        parent.kill()


def test_cli_measure_without_tracker_fails_fast_in_one_line(tmp_path):
    """No tracker: one line naming the device and the tracker command, exit 2, no table written."""
    from typer.testing import CliRunner

    from profiler.cli import app

    port = free_port()
    devs = write_devices(tmp_path / "devices.yaml", f"127.0.0.1:{port}", request_timeout_s=2.0)
    out = tmp_path / "t.csv"
    r = CliRunner().invoke(app, ["measure", "--device", "rpi4-loop", "--space", SPACE, "--out", str(out),
                                 "--devices", str(devs)])
    assert r.exit_code == 2, r.output
    assert r.output.count("error:") == 1, r.output
    text = " ".join(r.output.split())
    assert f"tracker 127.0.0.1:{port}: cannot connect" in text and "rpc_tracker" in text and "0.0.0.0" not in text
    assert "session lost" not in text and not out.exists()


def test_cli_measure_key_nobody_serves_gives_the_board_command(loop, tmp_path):
    """A tracker but no board: one line whose command is right on the board (SSH tunnel, TVM_NUM_THREADS)."""
    from typer.testing import CliRunner

    from profiler.cli import app

    devs = write_devices(tmp_path / "devices.yaml", loop["tracker"].addr, key="ghost", request_timeout_s=1.0)
    out = tmp_path / "g.csv"
    r = CliRunner().invoke(app, ["measure", "--device", "rpi4-loop", "--space", SPACE, "--out", str(out),
                                 "--devices", str(devs)])
    assert r.exit_code == 2 and r.output.count("error:") == 1, r.output
    text = " ".join(r.output.split())
    port = loop["tracker"].addr.rpartition(":")[2]
    assert f"TVM_NUM_THREADS=1 python -m tvm.exec.rpc_server --tracker 127.0.0.1:{port} --key ghost" in text, text
    assert f"ssh -N -R {port}:127.0.0.1:{port}" in text and "0.0.0.0" not in text and not out.exists()


def test_board_server_command():
    from profiler.measuring.rpc import board_server_command

    assert board_server_command("10.0.0.5:9190", "rpi4", 4) == \
        "TVM_NUM_THREADS=4 python -m tvm.exec.rpc_server --tracker 10.0.0.5:9190 --key rpi4"
    assert board_server_command("127.0.0.1:9190", "rpi4").startswith(
        "python -m tvm.exec.rpc_server --tracker 127.0.0.1:9190 --key rpi4 (the board reaches this machine's tracker "
        "through an SSH tunnel opened here: ssh -N -R 9190:127.0.0.1:9190 ")


def test_errors_are_grouped_once(capsys):
    from profiler import cli

    cli.print_errors([(f"k{i}", "no rpc session: tracker gone;\n  rerun") for i in range(111)] + [("z", "other")])
    err = capsys.readouterr().err
    assert err.count("tracker gone") == 1 and "111 keys (e.g. k0, k1, k2)" in err and "z: other" in err


def test_hwnas_run_on_an_unreachable_board_stops_before_any_stage(tmp_path):
    import search.pipeline as pl

    port = free_port()
    devs = write_devices(tmp_path / "devices.yaml", f"127.0.0.1:{port}", request_timeout_s=1.0)
    cfg = pl.RunConfig(device="rpi4-loop", devices_path=str(devs), space=SPACE, table=str(tmp_path / "t.csv"))
    with pytest.raises(pl.PipelineError, match=f"device 'rpi4-loop': tracker 127.0.0.1:{port}: cannot connect"):
        pl.run_pipeline(cfg, tmp_path / "run")
    assert not (tmp_path / "t.csv").exists() and not (tmp_path / "run" / "run.json").exists()
