"""Multi-process search: 2 CPU ranks end where 1 process ends; a killed worker ends the run, --resume continues it.

The equality runs in float64: in float32 these tiny supernets are chaotic enough that one process with 1 or 2 torch
threads already ends 5 % apart after four steps (Adam's first steps follow the sign of near-zero gradients), so only
float64 separates "exact up to rounding" (relative difference ~1e-14) from a real mistake (~1e-2 and up).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch.utils.data import TensorDataset
from typer.testing import CliRunner

from search import distributed
from search.cli import app
from search.config import apply_overrides, preset
from search.data import Splits, load_data
from search.train import build, search

DARTS = "darts-3ops:C=4,cells=3,nodes=2,input_size=8"  # tiny: digits are 8 x 8 pixels
# single-level + tradeoff hypernet + Gumbel + grad clip; bilevel + lambda control; per-sample noise (sliced)
JOBS = [("hwnas", ['control.cost_terms=["params"]']), ("darts-cc", []), ("seed-simplex", ["control.cost_terms=[]"])]
LIMITS = ["train_limit=48", "eval_limit=20"]  # batch 16 -> 3 steps (bilevel: 2 of 16 + 8); val 20: ranks hold 10


def _cfg(name, sets, epochs=2):
    return apply_overrides(preset(name, space=DARTS, tables=(), epochs=epochs, batch_size=16), [*LIMITS, *sets])


def _splits64() -> Splits:
    s = load_data("digits", 8, 3, seed=0)

    def d(ds):
        return TensorDataset(ds.tensors[0].double(), ds.tensors[1])

    return Splits(d(s.train), d(s.val), d(s.test), s.num_classes, s.name)


def _worker(rank: int, world: int, port: int, root: str) -> None:
    torch.set_num_threads(1)
    torch.set_default_dtype(torch.float64)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), **{distributed.TIMEOUT_ENV: "60"})
    distributed.init_from_env("cpu")
    finished = False
    try:
        for i, (name, sets) in enumerate(JOBS):
            search(_cfg(name, sets), Path(root) / f"{i}", splits=_splits64())
        finished = True
    finally:
        distributed.shutdown(finished)


def _spawn(root: Path, world: int = 2, limit_s: float = 120) -> None:
    import torch.multiprocessing as mp

    ctx = mp.start_processes(_worker, args=(world, distributed.free_port(), str(root)), nprocs=world, join=False,
                             start_method="spawn")
    deadline = time.monotonic() + limit_s
    while not ctx.join(timeout=1):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail(f"{world} ranks did not finish in {limit_s} s")


def _params(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "checkpoint.pt", weights_only=True)["model"]


@pytest.fixture
def float64():
    old, threads = torch.get_default_dtype(), torch.get_num_threads()
    torch.set_default_dtype(torch.float64)
    torch.set_num_threads(1)
    yield
    torch.set_default_dtype(old)
    torch.set_num_threads(threads)


def test_two_ranks_end_with_the_parameters_of_one_process(tmp_path, float64):
    one, two = tmp_path / "one", tmp_path / "two"
    for i, (name, sets) in enumerate(JOBS):
        search(_cfg(name, sets), one / f"{i}", splits=_splits64())
    _spawn(two)
    for i, (name, _) in enumerate(JOBS):
        a, b = _params(one / f"{i}"), _params(two / f"{i}")
        init = build(_cfg(*JOBS[i])).model.state_dict()
        assert a.keys() == b.keys()
        for group in ("control.", "net."):  # architecture/hypernetwork, then weights
            ks = [k for k in a if k.startswith(group) and "running" not in k and a[k].is_floating_point()]
            diff = sum(float((a[k] - b[k]).pow(2).sum()) for k in ks) ** 0.5
            moved = sum(float((a[k] - init[k]).pow(2).sum()) for k in ks) ** 0.5
            assert moved > 0 and diff <= 1e-9 * moved, (name, group, diff, moved)
        stats = [k for k in a if "running" in k]  # synced BatchNorm: global-batch running statistics
        assert stats and all(torch.allclose(a[k], b[k], rtol=1e-9, atol=1e-12) for k in stats), name
        ma = [json.loads(x) for x in (one / f"{i}" / "metrics.jsonl").read_text().splitlines()]
        mb = [json.loads(x) for x in (two / f"{i}" / "metrics.jsonl").read_text().splitlines()]
        assert [m["train_samples"] for m in ma] == [m["train_samples"] for m in mb]
        for k in ("train_loss", "val_loss", "val_acc"):
            assert [m[k] for m in mb] == pytest.approx([m[k] for m in ma], rel=1e-9), (name, k)
        # rank 0 wrote the run (and holds the single-writer lock file); no other rank left anything
        assert sorted(p.name for p in (two / f"{i}").iterdir()) == [".writer.lock", "checkpoint.pt", "config.json",
                                                                   "control.pt", "metrics.jsonl", "provenance.json"]


def _children(pid: int) -> dict[int, int]:
    """rank -> pid of the worker processes started by launcher ``pid`` (Linux /proc)."""
    out = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            env = (d / "environ").read_bytes().split(b"\0") if ppid == pid else []
        except (OSError, ValueError, IndexError):
            continue
        for item in env:
            if item.startswith(b"RANK="):
                out[int(item[5:])] = int(d.name)
    return out


def _cli(out: Path, epochs: int, *extra: str) -> list[str]:
    return [sys.executable, "-m", "search", "search", "--space", DARTS, "--preset", "hwnas", "--epochs", str(epochs),
            "--out", str(out), "--batch-size", "16", "--threads", "1", "--nproc", "2",
            "--set", 'control.cost_terms=["params"]', "--set", "train_limit=32", "--set", "eval_limit=16", *extra]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds the workers through /proc")
def test_killed_worker_ends_the_run_with_one_line_and_resume_finishes(tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, distributed.TIMEOUT_ENV: "60", "COLUMNS": "200"}
    launcher = subprocess.Popen(_cli(out, 50), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 90
        while not (out / "checkpoint.pt").is_file():  # the first epoch is checkpointed
            assert launcher.poll() is None and time.monotonic() < deadline, launcher.communicate(timeout=10)
            time.sleep(0.05)
        workers = _children(launcher.pid)
        assert sorted(workers) == [0, 1]
        os.kill(workers[1], signal.SIGKILL)
        _, err = launcher.communicate(timeout=60)
    finally:
        if launcher.poll() is None:
            launcher.kill()
    assert launcher.returncode != 0
    errors = [ln for ln in err.splitlines() if "error" in ln.lower()]
    assert len(errors) == 1, err
    assert "worker rank 1 of 2 failed (killed by SIGKILL)" in errors[0] and "--resume" in errors[0], err
    with pytest.raises(ProcessLookupError):
        os.kill(workers[0], 0)  # rank 0 was stopped (and reaped) too
    done = torch.load(out / "checkpoint.pt", weights_only=True)["epoch"]
    assert done >= 1
    r = subprocess.run(_cli(out, done + 1, "--resume"), env=env, capture_output=True, text=True, timeout=90)
    assert r.returncode == 0, r.stderr
    metrics = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == list(range(done + 1))
    assert (out / "control.pt").is_file()


def test_cli_multi_process_errors_are_one_line(tmp_path, monkeypatch):
    r = CliRunner().invoke(app, ["search", "--space", DARTS, "--out", str(tmp_path / "a"), "--nproc", "0"])
    assert r.exit_code == 2 and "--nproc 0: at least 1" in r.output
    monkeypatch.setenv("WORLD_SIZE", "2")
    r = CliRunner().invoke(app, ["search", "--space", DARTS, "--out", str(tmp_path / "b"), "--nproc", "2"])
    assert r.exit_code == 2 and "use either --nproc or torchrun" in r.output
    monkeypatch.delenv("MASTER_PORT", raising=False)
    r = CliRunner().invoke(app, ["search", "--space", DARTS, "--out", str(tmp_path / "c")])
    assert r.exit_code == 2 and "MASTER_PORT" in r.output and "torchrun" in r.output
    # a rank whose peer never comes: the rendezvous times out (HWNAS_DIST_TIMEOUT_S) with one line, not a hang
    monkeypatch.setenv("MASTER_PORT", str(distributed.free_port()))
    for k, v in {"RANK": "0", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1", distributed.TIMEOUT_ENV: "2"}.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv(distributed.LAUNCHED_ENV, raising=False)
    r = CliRunner().invoke(app, ["search", "--space", DARTS, "--preset", "darts", "--out", str(tmp_path / "d")])
    assert r.exit_code == distributed.PEER_LOST and "did not join in time" in r.output, r.output
    assert len(r.output.strip().splitlines()) == 1, r.output
    assert not any(tmp_path.iterdir())
