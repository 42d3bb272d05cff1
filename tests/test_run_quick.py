"""`hwnas run --quick` end to end: table -> calibrate -> search -> family -> retrain -> ONNX -> measure -> table + PNG."""

from __future__ import annotations

import csv
import json
import re
import shutil

import pytest
from typer.testing import CliRunner

from search.cli import app

SPEC = "fbnet-cifar:input_size=16,width=0.25"


@pytest.mark.slow
def test_run_quick_end_to_end(small_tables, tmp_path):
    table = tmp_path / "table.csv"  # a private copy: the run writes a calibration beside it
    shutil.copy(small_tables[SPEC], table)
    shutil.copy(small_tables[SPEC].with_suffix(".meta.json"), table.with_suffix(".meta.json"))
    out = tmp_path / "run"
    args = ["run", "--quick", "--device", "cpu", "--out", str(out), "--table", str(table), "--search-epochs", "3",
            "--family", "3", "--retrain-epochs", "2"]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    rows = list(csv.DictReader(open(out / "family.csv")))
    text = re.sub(r"\s+", " ", r.output)  # the console wraps long lines
    assert re.search(r"estimate: about \d+ (s|min) on a 2-core machine", text), r.output
    said = re.search(r"-> (\d+) distinct architectures -> (?:(\d+) that cannot see the image left out "
                     r"\(--keep-blind keeps them\) -> )?\d+ Pareto-optimal -> (\d+) members", text)
    assert said, r.output
    seeing = int(said.group(1)) - int(said.group(2) or 0)
    assert len(rows) == int(said.group(3)) == min(3, seeing)  # as asked, unless fewer exist
    for row in rows:
        assert row["status"] == "ok"
        assert float(row["measured_ms"]) > 0 and float(row["predicted_ms"]) > 0
        assert 0.0 <= float(row["test_acc"]) <= 1.0
        assert row["error_pct"] != ""
    assert len({r["ops"] for r in rows}) == len(rows)
    for name in ("pareto.png", "curves.png", "summary.txt", "family.json"):
        assert (out / name).stat().st_size > 0
    # the calibration stage ran: stored beside the table, or rejected with the reason said
    assert (out / "verify" / "summary.json").is_file() and "calibration:" in r.output
    assert table.with_suffix(".calib.json").is_file() != ("REJECTED" in r.output)
    for row in rows:
        m = out / "members" / row["member"]
        assert (m / "model.onnx").is_file() and (m / "weights.safetensors").is_file()
    assert "pred ms" in r.stdout and "meas ms" in r.stdout

    # a rerun with the same options reuses every finished stage and member
    before = json.loads((out / "family.json").read_text())
    summary1 = (out / "summary.txt").read_text()
    r2 = CliRunner().invoke(app, args)
    assert r2.exit_code == 0, r2.output
    assert "reused" in r2.output
    assert json.loads((out / "family.json").read_text()) == before
    # what the first run said about calibration and the family is said again and stays in summary.txt
    first = [ln for ln in summary1.splitlines() if ln.startswith(("calibration:", "family:", "WARNING"))]
    assert first and any(ln.startswith("family:") for ln in first), summary1
    summary = (out / "summary.txt").read_text()
    for ln in first:
        key = ln.split(";")[0].strip()
        assert key in re.sub(r"\s+", " ", r2.output) and key in summary, (key, summary)

    # other options on the same directory are refused, not mixed in
    r3 = CliRunner().invoke(app, args[:-1] + ["3"])
    assert r3.exit_code == 2 and "holds a run with other settings" in r3.output

    # hwnas report rebuilds the table and plots from the directory
    (out / "pareto.png").unlink()
    r4 = CliRunner().invoke(app, ["report", str(out)])
    assert r4.exit_code == 0, r4.output
    assert (out / "pareto.png").is_file() and rows[0]["member"] in r4.stdout


@pytest.mark.parametrize("threshold", [-1.0, 1e9])
def test_a_poor_calibration_is_stored_with_a_warning(small_tables, tmp_path, monkeypatch, threshold):
    """Real verify networks on cpu; the warning threshold moved below / above any held-out error."""
    import search.pipeline as pl
    from profiler.measuring.devices import get_device
    from profiler.spaces.space import get_space

    table = tmp_path / "table.csv"
    shutil.copy(small_tables[SPEC], table)
    shutil.copy(small_tables[SPEC].with_suffix(".meta.json"), table.with_suffix(".meta.json"))
    monkeypatch.setattr(pl, "POOR_CALIBRATION_PCT", threshold)
    notes: list[str] = []
    cfg = pl.RunConfig.quick_defaults(verify_n=3, calib_n=9)
    pl.ensure_calibration(cfg, get_device("cpu"), get_space(SPEC), table, tmp_path, lambda e: None, notes)
    stored = table.with_suffix(".calib.json").is_file()
    assert stored != any("REJECTED" in n or "no calibration fitted" in n for n in notes), notes
    warned = [n for n in notes if n.startswith("WARNING")]
    assert len(warned) == (1 if threshold < 0 else 0), notes  # a rejected fit warns about the raw table alike
    if warned:
        assert "on device cpu " in warned[0] and "held-out whole networks by" in warned[0]
    if stored:  # a rerun finds the calibration and says the same figures and warning again
        again: list[str] = []
        pl.ensure_calibration(cfg, get_device("cpu"), get_space(SPEC), table, tmp_path, lambda e: None, again)
        assert [n.split("; ")[0] for n in again] == [n.split("; ")[0] for n in notes[-len(again):]], (notes, again)
        assert "fitted earlier" in again[0] and [n for n in again if n.startswith("WARNING")] == warned


def test_the_estimate_follows_the_plan_and_what_is_done(tmp_path):
    import search.pipeline as pl

    cfg = pl.RunConfig(table=str(tmp_path / "t.csv"))
    total, parts = pl.estimate_run(cfg, tmp_path / "run")
    assert set(parts) == {"table", "calibrate", "search", "members"} and total == pytest.approx(sum(parts.values()))
    longer, _ = pl.estimate_run(pl.RunConfig(table=str(tmp_path / "t.csv"), search_epochs=20), tmp_path / "run")
    assert longer > total
    (tmp_path / "t.csv").write_text("")  # present: not measured again (and not calibrated: calibration stays)
    (tmp_path / "run" / "search").mkdir(parents=True)
    (tmp_path / "run" / "search" / "control.pt").write_bytes(b"")
    for i in range(cfg.family):
        (tmp_path / "run" / "members" / f"member-{i:02d}").mkdir(parents=True)
        (tmp_path / "run" / "members" / f"member-{i:02d}" / "result.json").write_text("{}")
    _, parts = pl.estimate_run(cfg, tmp_path / "run")
    assert set(parts) == {"calibrate", "members"} and parts["members"] == 0
    assert pl.estimate_run(pl.RunConfig(data="npz:x.npz"), tmp_path / "x")[0] is None
    assert "unknown size" in pl.estimate_line(pl.RunConfig(data="npz:x.npz"), tmp_path / "x")
    assert pl.estimate_line(pl.RunConfig(), tmp_path / "y").startswith("estimate: about ")
    # --data-limit N: the search and the members see N less the 10 % validation share, not the whole training set
    full = pl.estimate_run(pl.RunConfig(data="fashion-mnist", table=str(tmp_path / "u.csv")), tmp_path / "z")[1]
    cut = pl.estimate_run(pl.RunConfig(data="fashion-mnist", data_limit=3000, table=str(tmp_path / "u.csv")),
                          tmp_path / "z")[1]
    assert cut["search"] == pytest.approx(full["search"] * 2700 / 54000)
    assert cut["table"] == full["table"] and cut["members"] < full["members"] / 10
