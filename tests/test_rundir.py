"""RunDir: the run directory's files written and read back, atomic checkpoints, resume of an interrupted real
search, and one-line errors on a foreign or corrupt directory."""

from __future__ import annotations

import pytest
import torch
from typer.testing import CliRunner

from profiler.errors import UserError
from search.cli import app
from search.config import config_to_dict, preset
from search.rundir import PipelineDir, RunDir, SearchError
from search.train import search

SPACE = "darts-3ops:C=8,cells=3,nodes=2"


def _cfg(**kw):
    """A darts-preset config with no table (its zero-weight latency term is dropped), tiny data."""
    fields = {"space": SPACE, "data": "digits", "epochs": 2, "batch_size": 16, "train_limit": 32, "eval_limit": 16}
    return preset("darts", **{**fields, **kw})


def test_config_metrics_and_states_round_trip(tmp_path):
    rd = RunDir(tmp_path / "run")
    assert not rd.started and not rd.finished
    cfg = rd.start(_cfg(), resume=False)
    rd.write_start(cfg, [], False, [])
    assert rd.started and rd.config.parent == rd.path and rd.provenance.is_file()
    assert config_to_dict(rd.read_config()) == config_to_dict(cfg)
    assert rd.stored_config()["data"] == "digits"
    recs = [{"epoch": 0, "val_acc": 0.5, "eval_arch": ["skip"]}, {"epoch": 1, "val_acc": 0.625}]
    for r in recs:
        rd.append_metrics(r)
    assert rd.read_metrics() == recs and rd.read_metrics(before_epoch=1) == recs[:1]
    with open(rd.metrics, "a") as f:
        f.write('{"epoch": 2, "val_a')  # a kill in the middle of a line
    assert rd.read_metrics() == recs
    rd.write_start(cfg, [], True, recs[:1])  # a resume cuts the metrics to the checkpoint's epochs
    assert rd.read_metrics() == recs[:1]
    state = {"epoch": 1, "model": {"control.alpha": torch.arange(6.0).reshape(2, 3), "w": torch.ones(2)}}
    rd.save_checkpoint(state)
    back = rd.load_checkpoint()
    assert back["epoch"] == 1 and torch.equal(back["model"]["w"], torch.ones(2))
    assert list(rd.control_state()) == ["alpha"]  # no control.pt yet: the control part of the checkpoint
    rd.save_control({"alpha": torch.zeros(2, 3)})
    assert rd.finished and torch.equal(rd.control_state()["alpha"], torch.zeros(2, 3))


def test_a_failed_checkpoint_save_leaves_the_old_one_and_no_temp_file(tmp_path):
    rd = RunDir(tmp_path)
    rd.save_checkpoint({"epoch": 1, "model": {"w": torch.ones(3)}})
    before = rd.checkpoint.read_bytes()
    with pytest.raises(Exception):  # torch.save fails part-way: a lambda cannot be pickled
        rd.save_checkpoint({"epoch": 2, "model": {"w": torch.zeros(1 << 16)}, "bad": lambda: 0})
    assert rd.checkpoint.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]
    assert rd.load_checkpoint()["epoch"] == 1


def test_an_interrupted_search_is_detected_and_resumed(tmp_path, one_thread):
    rd = RunDir(tmp_path / "run")
    part = search(_cfg(), rd.path, stop_after=1)  # "killed" after its first epoch
    assert len(part) == 1 and rd.started and not rd.finished
    assert rd.load_checkpoint()["epoch"] == 1 and [m["epoch"] for m in rd.read_metrics()] == [0]
    with pytest.raises(SearchError, match="already holds a run; pass --resume"):
        rd.start(_cfg(), resume=False)
    with pytest.raises(SearchError, match="run was started with seed=0, not 1; resume with the same options"):
        rd.start(_cfg(seed=1), resume=True)
    stored = rd.start(_cfg(epochs=3), resume=True)
    assert stored.epochs == 3 and stored.train_limit == 32
    with pytest.raises(SearchError, match="nothing to resume"):
        RunDir(tmp_path / "empty").start(_cfg(), resume=True)
    done = search(_cfg(), rd.path, resume=True)
    assert [m["epoch"] for m in done] == [0, 1] and rd.finished
    assert [m["epoch"] for m in rd.read_metrics()] == [0, 1]
    assert RunDir.find(rd.path) == rd


def test_find_reads_an_hwnas_run_output_and_refuses_other_folders(tmp_path):
    out = PipelineDir(tmp_path / "out")
    out.search.path.mkdir(parents=True)
    out.search.config.write_text("{}")
    assert RunDir.find(out.path) == out.search
    with pytest.raises(SearchError, match="not a run directory .no config.json, no search/config.json"):
        RunDir.find(tmp_path)


@pytest.mark.parametrize("config, match", [
    ("[1, 2]", "config.json: not a run config"),
    ("{not json", "config.json: not valid JSON"),
    ('{"preset": "hwnas", "epochs": "ten"}', "epochs='ten' must be an integer"),
])
def test_a_foreign_config_is_one_line(tmp_path, config, match):
    rd = RunDir(tmp_path)
    rd.config.write_text(config)
    with pytest.raises(UserError, match=match):
        rd.read_config()
    with pytest.raises(UserError, match=match):
        rd.start(_cfg(), resume=True)
    r = CliRunner().invoke(app, ["derive", str(tmp_path), "--family", "2"])
    assert r.exit_code == 2 and "Traceback" not in r.output and len(r.output.strip().splitlines()) == 1
    assert match.split(":")[-1].strip() in " ".join(r.output.split())


def test_a_torn_or_foreign_checkpoint_is_one_line(tmp_path):
    rd = RunDir(tmp_path)
    rd.checkpoint.write_bytes(b"PK\x03\x04 torn")
    with pytest.raises(SearchError, match="checkpoint.pt: not a readable checkpoint .* restore it or re-run"):
        rd.load_checkpoint()
    torch.save({"weights": torch.ones(1)}, rd.checkpoint)  # readable, but not what hwnas search writes
    with pytest.raises(SearchError, match="checkpoint.pt: not a checkpoint written by hwnas search"):
        rd.control_state()
    rd.checkpoint.unlink()
    with pytest.raises(SearchError, match="no control.pt or checkpoint.pt; the search has not finished an epoch"):
        rd.control_state()
    torch.save([1, 2], rd.control)
    with pytest.raises(SearchError, match="control.pt: not a checkpoint written by hwnas search"):
        rd.control_state()
