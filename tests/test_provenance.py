"""Provenance: a search records the tables and calibrations it used; derive uses exactly those, refuses a changed or
missing table in one line (unless --accept-changed-tables), and a fresh measure / import drops a stale calibration.
Also the typed contracts a run relies on: Calibration validates itself and carries its table's sha256."""

from __future__ import annotations

import csv
import io
import json
import shutil

import pytest
import torch
from typer.testing import CliRunner

from profiler.latency.calibrate import write_calibration
from profiler.latency.model import Calibration, CalibrationError
from profiler.latency.tables import calib_path, load_table, table_sha256
from profiler.spaces.arch import load_arch
from search.cli import app
from search.provenance import PROVENANCE, ProvenanceError, read_provenance

SPEC = "fbnet-cifar:input_size=16,width=0.25"


def _copy_table(src, dst):
    shutil.copy(src, dst)
    shutil.copy(src.with_suffix(".meta.json"), dst.with_suffix(".meta.json"))
    return dst


@pytest.fixture(scope="module")
def searched(small_tables, tmp_path_factory):
    """A 1-epoch search on a private, calibrated copy of the small table."""
    from search.config import preset
    from search.train import search

    root = tmp_path_factory.mktemp("prov")
    table = _copy_table(small_tables[SPEC], root / "table.csv")
    write_calibration(table, {"version": 1, "model": "scale+offset", "scale": 1.1, "offset_ms": 0.01,
                              "table_sha256": table_sha256(table)})
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cfg = preset("hwnas", space=SPEC, tables=(str(table),), epochs=1, train_limit=128, eval_limit=64)
        search(cfg, root / "run")
    finally:
        torch.set_num_threads(threads)
    return root / "run", table


def test_run_records_table_and_calibration(searched):
    run_dir, table = searched
    uses = read_provenance(run_dir)
    assert len(uses) == 1 and uses[0].path == str(table.resolve()) and uses[0].sha256 == table_sha256(table)
    stored = json.loads((run_dir / PROVENANCE).read_text())["tables"][0]
    assert stored["calibration"]["scale"] == 1.1 and stored["calibration_sha256"] == uses[0].calibration.sha256


def test_derive_uses_the_recorded_calibration_and_refuses_a_changed_table(searched, tmp_path):
    from search.run import load_run

    run_dir, table = searched
    used = load_run(run_dir).table.calibration
    # hwprof verify refits the calibration: an old run still derives with the one it searched with
    write_calibration(table, {"version": 1, "scale": 3.0, "offset_ms": 0.0, "table_sha256": table_sha256(table)})
    run = load_run(run_dir)
    assert run.table.calibration == used and run.table.calibration["scale"] == 1.1
    assert any("calibration changed since the search" in n for n in run.notes)
    r = CliRunner().invoke(app, ["derive", str(run_dir), "--control", "kappa=1,S=0.5:0.5",
                                 "--out", str(tmp_path / "a")])
    assert r.exit_code == 0, r.output
    arch = load_arch(tmp_path / "a" / "arch.json")
    assert arch.table.calibration_sha256 == used.sha256
    assert arch.predicted_ms == pytest.approx(run.table.model(run.space).exact(arch.choices))
    # one entry is re-measured (its median changes): refused in one line, accepted with the flag
    rows = list(csv.reader(io.StringIO(table.read_text())))
    col = rows[0].index("median_ms")
    rows[1][col] = f"{float(rows[1][col]) * 1.5:.6g}"
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(rows)
    table.write_text(buf.getvalue())
    r = CliRunner().invoke(app, ["derive", str(run_dir), "--control", "kappa=1,S=0.5:0.5",
                                 "--out", str(tmp_path / "b")])
    assert r.exit_code != 0 and "changed since the search" in r.output and "--accept-changed-tables" in r.output
    assert "Traceback" not in r.output
    with pytest.raises(ProvenanceError, match="changed since the search"):
        load_run(run_dir)
    assert load_run(run_dir, accept_changed_tables=True).notes[0].endswith("using it as it is now")
    r = CliRunner().invoke(app, ["derive", str(run_dir), "--control", "kappa=1,S=0.5:0.5", "--accept-changed-tables",
                                 "--out", str(tmp_path / "c")])
    assert r.exit_code == 0, r.output


def test_a_missing_table_names_it(searched, tmp_path):
    from search.run import load_run

    run_dir, table = searched
    moved = tmp_path / "moved.csv"
    _copy_table(table, moved)
    table.unlink()
    try:
        with pytest.raises(ProvenanceError, match=f"table {table.resolve()} of this run is gone"):
            load_run(run_dir)
    finally:
        _copy_table(moved, table)


def test_fresh_table_drops_a_stale_calibration(small_tables, tmp_path):
    from profiler.latency.tables import TableWriter, read_meta

    table = _copy_table(small_tables[SPEC], tmp_path / "t.csv")
    write_calibration(table, {"version": 1, "scale": 1.0, "offset_ms": 0.0, "table_sha256": table_sha256(table)})
    with TableWriter(table, read_meta(table)) as w:  # a resume keeps it (it still matches the rows)
        assert w.dropped_calibration is None
    assert load_table(table).calibration is not None
    with TableWriter(table, read_meta(table), fresh=True) as w:
        assert w.dropped_calibration == calib_path(table)
    assert not calib_path(table).exists()


def test_calibration_validates_itself():
    c = Calibration.from_dict({"version": 1, "scale": 2.0, "offset_ms": 0.5}, "c.json")
    assert c.scale_of("any") == 2.0 and c == {"version": 1, "stat": "median", "scale": 2.0, "scale_by_op": {},
                                              "offset_ms": 0.5}
    with pytest.raises(CalibrationError, match="c.json: field 'table_sha256'"):
        Calibration.from_dict({"version": 1, "scale": 1.0, "offset_ms": 0.0, "table_sha256": "abc"}, "c.json")
    with pytest.raises(CalibrationError, match="field 'offset_ms' must be a finite number"):
        Calibration(offset_ms=float("inf"))
    with pytest.raises(Exception):
        c.scale = 3.0  # frozen
