"""Which latency tables and calibrations a search run used: ``provenance.json`` in the run directory.

A search records, for every table, its path and the sha256 of its CSV, and the calibration it was built with (the
whole calibration, so a later ``hwprof verify`` that refits ``<table>.calib.json`` cannot change what the run
derives). Reading a run back (derive, family, budgets) checks each table against its record: a table that is gone
or changed is one line saying what changed and how to go on (re-run the search, or accept the change with
``--accept-changed-tables``, which uses the tables and calibrations as they are now).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from profiler.errors import UserError
from profiler.fileio import atomic_write_text, loads_json, read_text
from profiler.latency.model import Calibration, CalibrationError
from profiler.latency.tables import LatencyTable, calib_path, table_sha256

from .rundir import PROVENANCE, RunDir

VERSION = 1
ACCEPT_FLAG = "--accept-changed-tables"


class ProvenanceError(UserError, ValueError):
    """A run's table is gone or changed since the search, or its provenance.json is malformed."""


@dataclass(frozen=True)
class TableUse:
    """One table as a search used it: path, sha256 of its CSV, and its calibration then (None: raw sums)."""

    path: str
    sha256: str
    device: str
    calibration: Calibration | None = None

    @property
    def calibration_sha256(self) -> str | None:
        return None if self.calibration is None else self.calibration.sha256

    def to_json(self) -> dict[str, Any]:
        cal = self.calibration
        return {"path": self.path, "sha256": self.sha256, "device": self.device,
                "calibration_path": str(calib_path(Path(self.path))) if cal is not None else None,
                "calibration_sha256": self.calibration_sha256,
                "calibration": None if cal is None else cal.to_dict()}

    @classmethod
    def from_json(cls, d: Any, where: str) -> "TableUse":
        if not isinstance(d, dict) or not all(isinstance(d.get(k), str) for k in ("path", "sha256", "device")):
            raise ProvenanceError(f"{where}: each table needs path, sha256 and device strings; re-run the search")
        try:
            cal = None if d.get("calibration") is None else Calibration.from_dict(d["calibration"], where)
        except CalibrationError as e:
            raise ProvenanceError(f"{e} (in the run's provenance); re-run the search") from None
        return cls(d["path"], d["sha256"], d["device"], cal)


def table_use(table: LatencyTable) -> TableUse:
    return TableUse(str(table.path), table_sha256(table.path), table.device, table.calibration)


def write_provenance(run_dir: Path, tables: Sequence[LatencyTable]) -> Path:
    """Record the tables (and calibrations) a search is about to use."""
    path = RunDir(run_dir).provenance
    data = {"version": VERSION, "tables": [table_use(t).to_json() for t in tables]}
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")
    return path


def read_provenance(run_dir: Path) -> list[TableUse] | None:
    """The recorded table uses; None for a run written before provenance was recorded."""
    path = RunDir(run_dir).provenance
    if not path.is_file():
        return None
    data = loads_json(read_text(path, "run provenance"), str(path))
    if not isinstance(data, dict) or data.get("version") != VERSION or not isinstance(data.get("tables"), list):
        raise ProvenanceError(f"{path}: not a provenance file of version {VERSION}; re-run the search")
    return [TableUse.from_json(d, f"{path}: tables[{i}]") for i, d in enumerate(data["tables"])]


def check_table(run_dir: Path, use: TableUse, accept_changed: bool = False) -> str | None:
    """Refuse a table that is gone or changed since the search (unless ``accept_changed``: then the change is
    returned as a note). None when the table is the one the search used."""
    p = Path(use.path)
    if not p.is_file():
        raise ProvenanceError(f"{run_dir}: latency table {p} of this run is gone (the search used sha256 "
                              f"{use.sha256[:12]}); restore it, or re-run the search with a table that exists")
    now = table_sha256(p)
    if now == use.sha256:
        return None
    change = (f"{run_dir}: latency table {p} changed since the search (sha256 {use.sha256[:12]} -> {now[:12]}, "
              f"e.g. re-measured)")
    if not accept_changed:
        raise ProvenanceError(change, fix=f"re-run the search on the table as it is now, or pass {ACCEPT_FLAG} to "
                                          f"derive from the run with the changed table and its current calibration")
    return change + f"; {ACCEPT_FLAG}: using it as it is now"


def check_tables(run_dir: Path, uses: Sequence[TableUse] | None, tables: Sequence[str],
                 accept_changed: bool = False) -> list[str]:
    """Check every recorded table before the run is rebuilt: the config's ``tables`` are exactly the recorded ones,
    in order (so a run of several devices derives from the tables it searched with); the notes of accepted
    changes."""
    if uses is None:
        return []
    if len(uses) != len(tables):
        raise ProvenanceError(f"{run_dir}: {PROVENANCE} records {len(uses)} table(s), config.json has "
                              f"{len(tables)}; re-run the search")
    for n, (use, path) in enumerate(zip(uses, tables)):
        if Path(use.path) != Path(path):
            raise ProvenanceError(f"{run_dir}: config.json's table {n} is {path}, {PROVENANCE} records {use.path}; "
                                  f"re-run the search")
    return [n for n in (check_table(run_dir, u, accept_changed) for u in uses) if n is not None]


def as_used(tables: Sequence[LatencyTable], uses: Sequence[TableUse] | None) -> tuple[list[LatencyTable], list[str]]:
    """The run's tables with the calibration each had when the search ran (what the search optimised), and notes.
    A table whose CSV changed (accepted by :func:`check_tables`) keeps its current calibration."""
    if uses is None:
        return list(tables), []
    out, notes = [], []
    for table, use in zip(tables, uses):
        if table_sha256(table.path) != use.sha256 or table.calibration == use.calibration or (
                table.calibration is None and use.calibration is None):
            out.append(table)
            continue
        notes.append(f"{table.path}: its calibration changed since the search (e.g. refitted by hwprof verify); "
                     f"the one the search used is applied")
        out.append(LatencyTable(table.path, table.meta, table.rows, use.calibration))
    return out, notes


def record_provenance(run_dir: Path, tables: Sequence[LatencyTable], resume: bool) -> Path:
    """Write ``provenance.json`` for a new search; a resumed one keeps its record, refusing a changed table."""
    uses = read_provenance(run_dir) if resume else None
    if uses is None:
        return write_provenance(run_dir, tables)
    check_tables(run_dir, uses, [str(t.path) for t in tables])
    return RunDir(run_dir).provenance
