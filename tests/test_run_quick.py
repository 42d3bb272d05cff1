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
    said = re.search(r"-> (\d+) distinct architectures -> \d+ Pareto-optimal -> (\d+) members", text)
    assert said, r.output
    assert len(rows) == int(said.group(2)) == min(3, int(said.group(1)))  # as asked, unless fewer exist
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
    r2 = CliRunner().invoke(app, args)
    assert r2.exit_code == 0, r2.output
    assert "reused" in r2.output
    assert json.loads((out / "family.json").read_text()) == before

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
    from profiler.devices import get_device
    from profiler.spaces import get_space

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
    assert len(warned) == (1 if stored and threshold < 0 else 0), notes
    if warned:
        assert "on device cpu " in warned[0] and "held-out whole networks by" in warned[0]
