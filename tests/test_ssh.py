"""The SSH route end to end against a real sshd on 127.0.0.1 (device ``ssh-loop``), plus the pure parser."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from profiler.latency.tables import load_table
from profiler.measuring.devices import Device, parse_devices
from profiler.measuring.measure import measure_space, select_keys
from profiler.measuring.runners import MeasureRequest, make_runner
from profiler.measuring.runners.ssh_runner import SshError, SshRunner, parse_board_output, parse_line
from profiler.spaces.space import get_space

from sshd import SshServer, sshd_available

SPACE = "darts-3ops:C=8,cells=5"
SAMPLE = Path(__file__).parent / "data" / "ssh_board_output.jsonl"
FAST = {"warmup_s": 0.02, "min_samples": 3, "min_seconds": 0.02, "max_seconds": 1.0, "retries": 0}

needs_sshd = pytest.mark.skipif(not sshd_available(), reason="needs openssh-server (make test installs it as root)")


# ----------------------------------------------------------------------------------------------- parser (pure)


def test_parser_on_saved_board_output():
    out = parse_board_output(SAMPLE.read_text())
    assert out.done
    assert out.info["machine"] and "onnxruntime" in out.info["versions"]
    ok, bad = out.results
    assert ok.ok and ok.key == "v1|avg_pool_3x3|1x8x32x32|c8|s1|float32"
    assert len(ok.samples_ms) >= 3 and ok.calls_per_sample >= 1 and all(s > 0 for s in ok.samples_ms)
    assert not bad.ok and bad.key.startswith("v1|sep_conv_3x3") and "on the board" in bad.error
    assert "INVALID_PROTOBUF" in bad.error


def test_parser_keeps_lines_before_a_cut_and_flags_junk():
    lines = SAMPLE.read_text().splitlines()
    cut = parse_board_output("\n".join(lines[:2]) + '\nlibrary chatter\n{"key": "v1|x", "samples_')
    assert not cut.done and len(cut.results) == 1 and cut.results[0].ok
    assert cut.junk == ("library chatter", '{"key": "v1|x", "samples_')
    kind, res = parse_line('{"key": "k", "samples_ms": [1.0, -2.0], "calls_per_sample": 1}')
    assert kind == "result" and not res.ok and "malformed" in res.error
    assert parse_line('{"done": 3}') == ("done", 3)


# ------------------------------------------------------------------------------------------- real sshd on loopback


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    if not sshd_available():
        pytest.skip("needs openssh-server")
    os.environ.setdefault("HWNAS_CACHE", str(tmp_path_factory.mktemp("hwnas-cache")))
    server = SshServer(tmp_path_factory.mktemp("sshd")).start()
    yield server
    server.kill()


@pytest.fixture(scope="module")
def board_python(sshd) -> str:
    """The board's python: this venv's, behind a path with a space and a ';' (proves every argument is quoted)."""
    d = sshd.root / "board py; touch hwprof-injected; x"
    d.mkdir(exist_ok=True)
    wrapper = d / "python"
    wrapper.write_text(f"#!/bin/sh\nexec {shlex.quote(sys.executable)} \"$@\"\n")
    wrapper.chmod(0o755)
    return str(wrapper)


def loop_device(sshd, python: str, name: str = "ssh-loop", protocol: dict | None = None, **ssh) -> Device:
    entry = sshd.device_entry(python, protocol=protocol or FAST)
    entry["ssh"].update(ssh)
    return parse_devices({"devices": {name: entry}}, "test-devices.yaml")[name]


def leftovers(sshd) -> list[str]:
    return sorted(p.name for p in sshd.root.glob("hwprof-*"))


@needs_sshd
def test_hwprof_measure_through_ssh_loop(sshd, board_python, tmp_path):
    entry = sshd.device_entry(board_python, protocol=FAST)
    devices = tmp_path / "devices.yaml"
    devices.write_text(yaml.safe_dump({"schema": 1, "devices": {"ssh-loop": entry}}))
    out = tmp_path / "ssh.csv"
    only = "*|1x8x32x32|*"
    r = subprocess.run([sys.executable, "-m", "profiler.cli", "measure", "--device", "ssh-loop", "--space", SPACE,
                        "--only", only, "--out", str(out), "--devices", str(devices)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    table = load_table(out)
    expected = select_keys(get_space(SPACE).candidate_keys(1), only)
    assert len(expected) == 3 and set(table.rows) == set(expected)  # the same keys a local table has
    assert all(row["status"] in ("ok", "noisy") and row["median_ms"] > 0 for row in table.rows.values())
    fp = table.meta["fingerprint"]
    assert fp["runtime"] == "onnxruntime-ssh" and fp["ssh"].endswith(f":{sshd.port}")
    assert fp["versions"]["onnxruntime"] and fp["machine"]
    assert not (Path.home() / "hwprof-injected").exists()  # the remote shell never split the python path
    assert leftovers(sshd) == []  # the remote directory was removed


@needs_sshd
def test_one_bad_model_is_an_error_row_not_the_end(sshd, board_python, tmp_path):
    from profiler.measuring.export import export_key

    good = export_key("v1|avg_pool_3x3|1x8x32x32|c8|s1|float32")
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x00 not onnx")
    reqs = [MeasureRequest(good.key, good.path, good.input_shape), MeasureRequest("bad", garbage, (1, 8, 32, 32)),
            MeasureRequest("again", good.path, good.input_shape)]
    dev = loop_device(sshd, board_python)
    with SshRunner(dev, chunk_size=8) as runner:
        res = list(runner.measure_many(reqs, dev.protocol))
        assert all(runner.measure(reqs[0], dev.protocol).ok for _ in range(3))
        assert runner.board_starts == 1  # one board process serves every job of the connection
    assert [r.key for r in res] == [good.key, "bad", "again"]
    assert res[0].ok and res[2].ok and not res[1].ok and "on the board" in res[1].error
    assert leftovers(sshd) == []


@needs_sshd
def test_unknown_host_key_is_refused_with_the_fix(sshd, board_python, tmp_path):
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    dev = loop_device(sshd, board_python, known_hosts=str(empty))
    with pytest.raises(SshError) as e:
        make_runner(dev)
    msg = str(e.value)
    assert "is not in" in msg and f"ssh-keyscan -p {sshd.port} 127.0.0.1 >> {empty}" in msg and "SHA256:" in msg
    assert empty.read_text() == ""  # nothing added behind the user's back
    # the CLI says it in one line and exits non-zero, before measuring anything
    from typer.testing import CliRunner

    from profiler.cli import app

    entry = sshd.device_entry(board_python)
    entry["ssh"]["known_hosts"] = str(empty)
    devices = tmp_path / "devices.yaml"
    devices.write_text(yaml.safe_dump({"schema": 1, "devices": {"ssh-loop": entry}}))
    res = CliRunner().invoke(app, ["measure", "--device", "ssh-loop", "--space", SPACE, "--out",
                                   str(tmp_path / "t.csv"), "--devices", str(devices)])
    assert res.exit_code == 2 and "ssh-keyscan" in res.output and not (tmp_path / "t.csv").exists()
    # a changed key (another server's key under this host:port) is refused too
    other = tmp_path / "other"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    kt, kb = other.with_suffix(".pub").read_text().split()[:2]
    wrong = tmp_path / "wrong_known_hosts"
    wrong.write_text(f"[127.0.0.1]:{sshd.port} {kt} {kb}\n")
    with pytest.raises(SshError, match="does NOT match"):
        make_runner(loop_device(sshd, board_python, known_hosts=str(wrong)))
    assert leftovers(sshd) == []


@needs_sshd
def test_killed_sshd_mid_sweep_gives_error_rows_and_resume_measures_the_rest(sshd, board_python, tmp_path):
    # each model takes >= 0.5 s on the board, so the kill after the 2nd row lands while the chunk is running;
    # cv_threshold is out of reach so no re-measure reorders the rows
    slow = {"warmup_s": 0.1, "min_samples": 3, "min_seconds": 0.4, "max_seconds": 2.0, "cv_threshold": 100.0,
            "retries": 0}
    dev = loop_device(sshd, board_python, protocol=slow)
    space = get_space(SPACE)
    only = "*x32x32|*"
    keys = select_keys(space.candidate_keys(1), only)
    assert len(keys) >= 8
    out = tmp_path / "t.csv"

    def kill_after_two(prog) -> None:
        if prog.done == 2 and sshd.proc is not None:
            sshd.kill()

    try:
        with SshRunner(dev, chunk_size=4) as runner:
            first = measure_space(dev, space, runner, out, only=only, on_progress=kill_after_two)
    finally:
        if sshd.proc is None:
            sshd.start()  # same port, same keys
    assert first.measured == len(keys) and first.ok + first.noisy >= 2 and first.errors >= 1
    errors = [r for r in first.rows if r.status == "error"]
    assert all("ssh" in r.error for r in errors)
    assert any("connection lost" in r.error for r in errors)  # the job in flight when the connection dropped
    assert any("cannot connect" in r.error for r in errors)  # later chunks fail fast, no hang
    assert [r.status != "error" for r in first.rows][:2] == [True, True]
    kept = {r.key: r.median_ms for r in first.rows if r.status != "error"}

    with make_runner(dev) as runner:
        second = measure_space(dev, space, runner, out, only=only)
    assert second.skipped == len(kept) and second.measured == len(errors) and second.errors == 0
    assert {r.key for r in second.rows} == {r.key for r in errors}
    table = load_table(out)
    assert set(table.rows) == set(keys) and all(r["status"] != "error" for r in table.rows.values())
    # finished rows are kept as they were
    assert all(table.rows[k]["median_ms"] == pytest.approx(v, rel=1e-4, abs=1e-6) for k, v in kept.items())
    # the dropped connection could not remove its directory on the board; the resumed run removed its own
    stale = leftovers(sshd)
    assert len(stale) == 1
    shutil.rmtree(sshd.root / stale[0])


@needs_sshd
def test_unreachable_port_is_one_line_error(sshd, board_python):
    from sshd import _free_port

    port = _free_port()  # nothing listens there
    with pytest.raises(SshError, match=f"root@127.0.0.1:{port}: cannot connect|:{port}: cannot connect"):
        make_runner(loop_device(sshd, board_python, port=port))


@needs_sshd
def test_doctor_reports_on_ssh_loop(sshd, board_python, tmp_path):
    from profiler.measuring.doctor import run_doctor

    checks = run_doctor(loop_device(sshd, board_python))
    assert [c.name for c in checks] == ["ssh", "board python", "board", "threads", "tiny op"]
    assert all(c.ok for c in checks), [c for c in checks if not c.ok]
    assert "onnxruntime" in checks[1].detail and "median" in checks[-1].detail
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    bad = run_doctor(loop_device(sshd, board_python, known_hosts=str(empty)))
    assert len(bad) == 1 and not bad[0].ok and bad[0].fix.startswith("check that fingerprint")
    assert "ssh-keyscan" in bad[0].fix
    assert leftovers(sshd) == []


@needs_sshd
def test_board_without_onnxruntime_fails_at_start_with_the_pip_command(sshd, tmp_path):
    bare = sshd.root / "bare-python"
    # -S: no site-packages, so no onnxruntime
    bare.write_text(f"#!/bin/sh\nexec {shlex.quote(sys.executable)} -S \"$@\"\n")
    bare.chmod(0o755)
    with pytest.raises(SshError, match="lacks onnxruntime .*-m pip install onnxruntime numpy"):
        make_runner(loop_device(sshd, str(bare)))
    assert leftovers(sshd) == []


@needs_sshd
def test_remeasure_while_a_job_is_suspended_and_a_crashing_board_process(sshd, tmp_path):
    from profiler.measuring.export import export_key

    a = export_key("v1|avg_pool_3x3|1x8x32x32|c8|s1|float32")
    b = export_key("v1|sep_conv_3x3|1x8x32x32|c8|s1|float32")
    crash = tmp_path / "crash.onnx"
    crash.write_bytes(b"CRASH")
    # the board's python segfaults (a real SIGSEGV) when it loads a model whose bytes are b"CRASH"
    shim = sshd.root / "crashy.py"
    shim.write_text(
        "import os, runpy, signal, sys\n"
        "import onnxruntime\n"
        "real = onnxruntime.InferenceSession\n"
        "def session(path, *a, **k):\n"
        "    if open(path, 'rb').read() == b'CRASH':\n"
        "        os.kill(os.getpid(), signal.SIGSEGV)\n"
        "    return real(path, *a, **k)\n"
        "onnxruntime.InferenceSession = session\n"
        "sys.argv = sys.argv[1:]\n"
        "runpy.run_path(sys.argv[0], run_name='__main__')\n")
    py = sshd.root / "crashy-python"
    py.write_text(f"#!/bin/sh\nexec {shlex.quote(sys.executable)} {shlex.quote(str(shim))} \"$@\"\n")
    py.chmod(0o755)
    dev = loop_device(sshd, str(py))
    reqs = [MeasureRequest(a.key, a.path, a.input_shape), MeasureRequest("boom", crash, (1, 8, 32, 32)),
            MeasureRequest(b.key, b.path, b.input_shape)]
    with SshRunner(dev, chunk_size=8) as runner:
        stream = runner.measure_many(reqs, dev.protocol)
        first = next(stream)
        again = runner.measure(reqs[0], dev.protocol)  # the sweep's CV re-measure, while the job is suspended
        rest = list(stream)
        assert runner.board_starts == 2
    assert first.ok and again.ok and first.key == again.key == a.key
    assert [r.key for r in rest] == ["boom", b.key]
    assert not rest[0].ok and "board process was killed by a signal" in rest[0].error
    assert rest[1].ok  # measured by a fresh board process
    assert leftovers(sshd) == []


@needs_sshd
def test_board_sweeps_folders_of_killed_runs_and_keeps_live_or_fresh_ones(sshd, board_python, tmp_path):
    """A host killed mid-run leaves its hwprof-<12 hex> folder on the board: the next run's board process removes it,
    but never a folder whose owner still runs, one a starting run is filling (recently changed), or one hwprof did
    not make (another name, or no owner file written by hwprof: e.g. a user's hwprof-venv)."""
    from profiler.measuring.export import export_key

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    old = os.path.getmtime(sshd.root) - 2 * 3600
    made = {}
    for name, owner, age in (("hwprof-dead00000000", dead.stdout.strip(), old), ("hwprof-00000000a000", "0", old),
                             ("hwprof-a0000000000b", None, old), ("hwprof-venv", dead.stdout.strip(), old),
                             ("hwprof-11ee00000000", str(os.getpid()), old), ("hwprof-f00000000000", "0", None)):
        d = sshd.root / name
        d.mkdir()
        (d / "m0000.onnx").write_bytes(b"left over")
        if owner is not None:
            (d / "owner.pid").write_text(f"hwprof-board {owner}\n")
        if age is not None:
            for p in (*d.iterdir(), d):
                os.utime(p, (age, age))
        made[name] = d
    other = sshd.root / "not-ours-keep"  # anything not named hwprof-* is never touched
    other.mkdir()
    os.utime(other, (old, old))
    try:
        good = export_key("v1|avg_pool_3x3|1x8x32x32|c8|s1|float32")
        dev = loop_device(sshd, board_python)
        with SshRunner(dev) as runner:
            assert runner.measure(MeasureRequest(good.key, good.path, good.input_shape), dev.protocol).ok
        assert leftovers(sshd) == ["hwprof-11ee00000000", "hwprof-a0000000000b", "hwprof-f00000000000", "hwprof-venv"]
        assert other.is_dir()
    finally:
        for d in (*made.values(), other):
            shutil.rmtree(d, ignore_errors=True)
