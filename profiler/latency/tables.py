"""The latency table (LUT): plain CSV rows plus a JSON sidecar header.

``tables/<device>/<space>.csv`` holds one row per key (``pandas.read_csv`` loads it in one line);
``<space>.meta.json`` beside it holds the schema version, device, space, fingerprint and protocol.

Rows are appended and flushed as each entry finishes, so a kill at any moment leaves a valid table: a torn last
line (no newline) is ignored on load and cut off before the next append.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from profiler.errors import InputError, UserError

# atomic_write_text: also re-exported
from profiler.fileio import Closing, FileLock, atomic_write_text, loads_json, read_text, sha256_file
from profiler.latency.model import (
    TABLE_CALIBRATION,
    Calibration,
    LatencyModel,
    build_model,
    calibration_terms,
    entry_ms,
)
from profiler.spaces.keys import KEY_VERSION, key_op, parse_key

SCHEMA_VERSION = 1
COLUMNS = ["key", "op", "input_shape", "c_out", "stride", "params", "median_ms", "p10_ms", "p90_ms", "mean_ms",
           "std_ms", "cv", "mad_outliers", "n", "calls_per_sample", "attempts", "status", "variant", "error",
           "max_abs_err", "samples_ms"]
# a table resumed with ``hwprof measure --mixed`` under another protocol or fingerprint gets one more column: each
# row's setup hash (see :func:`setup_hash`), resolved by the header's ``setups``; readers accept both headers
SETUP_COLUMN = "setup"
MIXED_COLUMNS = COLUMNS + [SETUP_COLUMN]
# a table measured by a device farm (several boards in parallel, see profiler.measuring.farm) gets a last column: the board
# that measured each row (a server address or a pool member's name; empty for rows from before)
BOARD_COLUMN = "board"
HEADERS = (COLUMNS, MIXED_COLUMNS, COLUMNS + [BOARD_COLUMN], MIXED_COLUMNS + [BOARD_COLUMN])
STATUSES = ("ok", "noisy", "error")
# variant of a row that costs 0 ms by construction: an identity block (a skipped layer) that a peer LUT has no entry
# for because its estimator counts it as free (written by hwprof import only)
ZERO_COST = "zero-cost"


class TableError(UserError, ValueError):
    """A table problem; the message is the one line shown to the user."""


def default_table_path(device: str, space_spec: str, root: Path | str = "tables") -> Path:
    from profiler.measuring.devices import check_device_name

    check_device_name(device, "--device")
    safe = space_spec.replace(":", "__").replace(",", "_").replace("=", "-")
    return Path(root) / device / f"{safe}.csv"


def meta_path(table: Path) -> Path:
    return table.with_suffix(".meta.json")


def calib_path(table: Path) -> Path:
    return table.with_suffix(".calib.json")


def read_json_or_none(path: Path) -> Any:
    """The JSON stored in ``path``, or None when the file is missing or not valid JSON (a torn or foreign file)."""
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
        return None


_FLOATS = ("median_ms", "p10_ms", "p90_ms", "mean_ms", "std_ms", "cv", "max_abs_err")
_INTS = ("mad_outliers", "n", "calls_per_sample", "attempts")
_TIMES = ("median_ms", "p10_ms", "p90_ms", "mean_ms", "std_ms")
_KEY_COLUMNS = ("op", "input_shape", "c_out", "stride", "params")
_FRESH = "fix the line or re-measure with hwprof measure --fresh"


@dataclass
class Row:
    """One table row, as written by a sweep and as read back (typed and validated). A new column is one more field
    here (with a default) and one more name in ``COLUMNS``. It also reads by column name (``row["median_ms"]``);
    the key-derived columns (op, input_shape, c_out, stride, params) come from the key."""

    key: str
    median_ms: float = math.nan
    p10_ms: float = math.nan
    p90_ms: float = math.nan
    mean_ms: float = math.nan
    std_ms: float = math.nan
    cv: float = math.nan
    mad_outliers: int = 0
    n: int = 0
    calls_per_sample: int = 0
    attempts: int = 0
    status: str = "error"
    variant: str = ""
    error: str = ""
    max_abs_err: float = math.nan
    samples_ms: tuple[float, ...] = ()
    setup: str = ""  # mixed tables only: the short hash of the protocol and fingerprint it was measured under
    board: str = ""  # which board measured it (written only to a table with the board column)

    def _key_columns(self) -> dict[str, Any]:
        k = parse_key(self.key)
        return {"op": k.op, "input_shape": "x".join(map(str, k.input_shape)), "c_out": k.c_out, "stride": k.stride,
                "params": ",".join(f"{a}={b}" for a, b in k.params)}

    def to_record(self, columns: Sequence[str] = COLUMNS) -> list[Any]:
        vals = {**self.__dict__, **self._key_columns(), "samples_ms": " ".join(f"{s:.6g}" for s in self.samples_ms)}
        return ["" if isinstance(vals[c], float) and math.isnan(vals[c]) else
                (f"{vals[c]:.6g}" if isinstance(vals[c], float) else vals[c]) for c in columns]

    @property
    def usable(self) -> bool:
        return self.status != "error"

    def __getitem__(self, name: str) -> Any:
        if name in self.__dict__:
            return self.__dict__[name]
        if name in _KEY_COLUMNS:
            return self._key_columns()[name]
        raise KeyError(name)

    def get(self, name: str, default: Any = None) -> Any:
        try:
            return self[name]
        except KeyError:
            return default

    @classmethod
    def from_record(cls, rec: dict[str, str], where: str) -> "Row":
        """A CSV record checked field by field; a bad value is one ``TableError`` line naming file, line, field."""
        if rec["status"] not in STATUSES:
            raise TableError(f"{where}: status {rec['status']!r} is not one of {', '.join(STATUSES)}")
        vals: dict[str, Any] = {"key": rec["key"], "status": rec["status"], "variant": rec["variant"],
                                "error": rec["error"], "setup": rec.get(SETUP_COLUMN, ""),
                                "board": rec.get(BOARD_COLUMN, "")}
        name = "key"
        try:
            k = parse_key(rec["key"])
            for name in _FLOATS:
                vals[name] = float(rec[name]) if rec[name] != "" else math.nan
            for name in _INTS:
                vals[name] = int(rec[name]) if rec[name] != "" else 0
            name = "samples_ms"
            vals["samples_ms"] = tuple(float(x) for x in rec["samples_ms"].split())
        except ValueError as e:
            raise TableError(f"{where}: field {name}: {e} ({_FRESH})") from None
        if k.op != rec["op"]:
            raise TableError(f"{where}: field op {rec['op']!r} does not match key {rec['key']} ({_FRESH})")
        row = cls(**vals)
        row.check(where)
        return row

    def check(self, where: str) -> None:
        """A usable row has a positive median (0 only for a zero-cost identity) and finite, non-negative times."""
        if not self.usable:
            return
        if not (self.median_ms > 0 or (self.median_ms == 0 and self.variant == ZERO_COST)):
            raise TableError(f"{where}: status {self.status} but median_ms {self.median_ms!r}")
        for c in _TIMES:
            v = getattr(self, c)
            if not math.isnan(v) and not (math.isfinite(v) and v >= 0):
                raise TableError(f"{where}: {c} {v!r} of {self.key} must be a finite number >= 0 (fix the line, or "
                                 f"delete it and re-measure the key with hwprof measure)")


class LatencyTable:
    """A loaded table: header (``meta``) and the last row of every key."""

    def __init__(self, path: Path, meta: dict[str, Any], rows: dict[str, Row],
                 calibration: Calibration | dict[str, Any] | None = None):
        self.path = path
        self.meta = meta
        self.rows = rows
        self.calibration = Calibration.from_dict(calibration, f"{path}: calibration") if calibration else None

    @property
    def device(self) -> str:
        return self.meta["device"]

    @property
    def space(self) -> str:
        return self.meta["space"]

    def latency_ms(self, key: str) -> float:
        """The measured (raw) median of a key; ``KeyError`` when missing or errored."""
        row = self.rows.get(key)
        if row is None or row["status"] == "error":
            raise KeyError(key)
        return float(row["median_ms"])

    @property
    def header(self) -> TableHeader:
        """The header, typed (validated when the table was loaded)."""
        return TableHeader.from_dict(self.meta, self.path)

    @property
    def batch(self) -> int:
        return self.header.batch

    def model(self, space: Any = None, calibration: Any = TABLE_CALIBRATION, stat: str | None = None) -> LatencyModel:
        """The :class:`profiler.latency.model.LatencyModel` of ``space`` (default: the table's) on this table, built once
        per (space, calibration, statistic). Every prediction of an architecture goes through it."""
        if space is None:
            from profiler.spaces.space import get_space

            space = get_space(self.space)
        if not (calibration is TABLE_CALIBRATION or calibration is None):
            return build_model(space, self, calibration, stat)
        key = (space.spec, calibration is None, stat)
        cache = self.__dict__.setdefault("_models", {})
        hit = cache.get(key)
        if hit is None or hit[0] is not self.calibration:  # a reassigned calibration builds a new model
            hit = cache[key] = (self.calibration, build_model(space, self, calibration, stat))
        return hit[1]

    # The prediction of a list of keys (an architecture file's keys) = offset_ms + sum of entry_ms: the same entry
    # function (profiler.latency.model.entry_ms) the model is built from, so both agree by construction.
    def entry_ms(self, key: str) -> float:
        """The calibrated entry of a key; ``KeyError`` when missing or errored."""
        v = entry_ms(self.rows.get(key), key_op(key), self.calibration)
        if math.isnan(v):
            raise KeyError(key)
        return v

    @property
    def offset_ms(self) -> float:
        return calibration_terms(self.calibration)[3]

    def predict_ms(self, keys: Iterable[str]) -> float:
        return self.offset_ms + sum(self.entry_ms(k) for k in keys)

    def missing(self, keys: Iterable[str]) -> list[str]:
        """Keys without a usable (ok or noisy) row."""
        return [k for k in keys if k not in self.rows or self.rows[k]["status"] == "error"]

    def counts(self) -> dict[str, int]:
        out = {s: 0 for s in STATUSES}
        for r in self.rows.values():
            out[r["status"]] = out.get(r["status"], 0) + 1
        return out

    def to_frame(self):
        import pandas as pd

        return pd.read_csv(self.path)


def _read_rows(path: Path) -> tuple[dict[str, Row], int]:
    """Rows by key (last wins) and the byte length of the complete (newline-terminated) part of the file."""
    data = path.read_bytes()
    complete = data.rfind(b"\n") + 1
    try:
        text = data[:complete].decode("utf-8", errors="strict")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise TableError(f"{path}: line {line}: byte {data[e.start:e.start + 1]!r} is not UTF-8 (corrupt; fix the "
                         f"line or re-measure with hwprof measure --fresh)") from None
    reader = csv.reader(io.StringIO(text))
    header = next(reader, None)
    if header not in HEADERS:
        raise TableError(f"{path}: not a hwprof table (header {','.join(header or [])[:80]!r}); "
                         f"re-measure with hwprof measure --fresh")
    columns = header
    rows: dict[str, Row] = {}
    first_line: dict[str, int] = {}
    for lineno, rec in enumerate(reader, start=2):
        if len(rec) != len(columns):
            raise TableError(f"{path}: line {lineno} has {len(rec)} fields, expected {len(columns)} "
                             f"(corrupt; fix the line or re-measure with --fresh)")
        row = Row.from_record(dict(zip(columns, rec)), f"{path}: line {lineno}")
        earlier = rows.get(row.key)
        if earlier is not None and earlier.usable:
            raise TableError(f"{path}: line {lineno}: key {row.key} appears again (first at line "
                             f"{first_line[row.key]}); delete one of the two lines, or re-measure with hwprof "
                             f"measure --fresh")
        rows[row.key] = row
        first_line[row.key] = lineno
    return rows, complete


_HEADER_FIX = "restore the header or re-measure with hwprof measure --fresh"


@dataclass(frozen=True)
class TableHeader:
    """A table's header (``<table>.meta.json``), typed and validated on read and before every write. Fields this
    version does not name are kept in ``extra`` and written back unchanged."""

    device: str
    space: str
    batch: int = 1
    schema_version: int = SCHEMA_VERSION
    key_version: int = KEY_VERSION
    runtime: str | None = None
    created: str | None = None
    protocol: dict[str, Any] | None = None
    fingerprint: Any = None
    validity: dict[str, Any] | None = None
    imported: dict[str, Any] | None = None
    setups: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    present: frozenset[str] = field(default=frozenset(), compare=False, repr=False)  # fields the file spelled out

    @classmethod
    def from_dict(cls, meta: Any, path: Path) -> "TableHeader":
        """Check the schema, key format and the fields every reader relies on; one ``TableError`` line otherwise."""
        mp = meta_path(path)
        if not isinstance(meta, dict) or meta.get("schema_version") != SCHEMA_VERSION:
            got = meta.get("schema_version") if isinstance(meta, dict) else None
            raise TableError(f"{path}: schema version {got!r}, this hwprof reads {SCHEMA_VERSION}; "
                             f"re-measure with hwprof measure --fresh")
        if meta.get("key_version") != KEY_VERSION:
            raise TableError(f"{path}: key format v{meta.get('key_version')}, this hwprof uses v{KEY_VERSION}; "
                             f"re-measure with hwprof measure --fresh")
        for f in ("device", "space"):
            if not isinstance(meta.get(f), str) or not meta[f]:
                raise TableError(f"{mp}: field {f!r} is {meta.get(f)!r}, expected a non-empty string; {_HEADER_FIX}")
        batch = meta.get("batch", 1)
        if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
            raise TableError(f"{mp}: field 'batch' is {batch!r}, expected an integer >= 1; {_HEADER_FIX}")
        for f in ("validity", "imported", "setups"):
            if meta.get(f) is not None and not isinstance(meta[f], dict):
                raise TableError(f"{mp}: field {f!r} is {str(meta[f])[:60]!r}, expected an object; {_HEADER_FIX}")
        if "protocol" in meta:
            _check_protocol(mp, meta["protocol"])
        known = {f.name for f in dataclasses.fields(cls)} - {"extra", "present"}
        return cls(**{k: v for k, v in meta.items() if k in known},
                   extra={k: v for k, v in meta.items() if k not in known}, present=frozenset(meta) & known)

    def to_dict(self) -> dict[str, Any]:
        """The JSON of the header: the fields it was read with (or that differ from their defaults), then extra."""
        out = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if f.name not in ("extra", "present") and (f.name in self.present or v != f.default):
                out[f.name] = v
        return {**out, **self.extra}


def _check_protocol(mp: Path, proto: Any) -> None:
    from profiler.measuring.protocol import Protocol

    try:
        Protocol.from_dict(proto if isinstance(proto, dict) else {"?": proto}, f"{mp}: protocol")
    except UserError as e:
        raise TableError(f"{e}; {_HEADER_FIX}") from None


def read_meta(path: Path) -> dict[str, Any]:
    """The header of a table as a plain dict, validated through :class:`TableHeader`."""
    mp = meta_path(path)
    try:
        meta = loads_json(read_text(mp, "table header"), str(mp))
    except FileNotFoundError:
        raise TableError(f"{path}: header {mp.name} is missing (was the table copied without it?)") from None
    except InputError as e:
        raise TableError(f"{e} (corrupt header)") from None
    TableHeader.from_dict(meta, path)
    return meta


def load_table(path: str | Path, device: str | None = None, space: str | None = None) -> LatencyTable:
    """Load and check a table. ``device`` / ``space``, when given, must match the header."""
    path = Path(path)
    if not path.is_file():
        raise TableError(f"{path}: no such table; measure it with hwprof measure")
    meta = read_meta(path)
    if device is not None and meta.get("device") != device:
        raise TableError(f"{path}: table is for device {meta.get('device')!r}, not {device!r}")
    if space is not None and meta.get("space") != space:
        raise TableError(f"{path}: table is for space {meta.get('space')!r}, not {space!r}")
    rows, _ = _read_rows(path)
    return LatencyTable(path, meta, rows, read_calibration(path))


def table_sha256(path: str | Path) -> str:
    """The sha256 of a table's CSV: what a calibration and a search run record, to notice a changed table."""
    return sha256_file(path)


def drop_stale_calibration(path: Path) -> Path | None:
    """Delete ``<table>.calib.json`` when it was not fitted on the table as it is now (another sha256, none recorded,
    or unreadable); returns the deleted path. ``hwprof measure --fresh`` and ``hwprof import`` call it."""
    cp = calib_path(Path(path))
    if not cp.is_file():
        return None
    try:
        cal = read_calibration(Path(path))
    except TableError:
        cal = None
    if cal is not None and Path(path).is_file() and cal.table_sha256 == table_sha256(path):
        return None
    cp.unlink()
    return cp


def read_calibration(path: Path) -> Calibration | None:
    """The validated calibration stored beside a table, or None."""
    cp = calib_path(path)
    if not cp.is_file():
        return None
    try:
        return Calibration.from_dict(loads_json(read_text(cp, "calibration"), str(cp)), str(cp))
    except InputError as e:
        raise TableError(f"{e} (corrupt calibration; refit it with hwprof verify or delete it)") from None


def setup_hash(meta: dict[str, Any]) -> str:
    """A short sha256 of a header's protocol and fingerprint: what a row of a mixed table was measured under."""
    import hashlib

    blob = json.dumps({"protocol": _protocol_dict(meta.get("protocol")), "fingerprint": meta.get("fingerprint")},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def _protocol_dict(proto: Any) -> Any:
    """A stored protocol with its defaults filled in (older headers lack newer fields), for comparison."""
    if not isinstance(proto, dict):
        return proto
    from profiler.measuring.protocol import Protocol

    try:
        return Protocol.from_dict(proto).to_dict()
    except UserError:
        return proto


def _differences(old: Any, new: Any, limit: int = 3) -> str:
    if not (isinstance(old, dict) and isinstance(new, dict)):
        return f"{old!r} -> {new!r}"
    diff = [f"{k} {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
    return ", ".join(diff[:limit]) + (f" (+{len(diff) - limit} more)" if len(diff) > limit else "")


def resume_mismatch(path: Path, old: dict[str, Any], new: dict[str, Any]) -> str | None:
    """Which of protocol / fingerprint differs between a table's header and this sweep, and how (None: same)."""
    parts = []
    if "protocol" in old and "protocol" in new:
        a, b = _protocol_dict(old["protocol"]), _protocol_dict(new["protocol"])
        if a != b:
            parts.append(f"protocol ({_differences(a, b)})")
    if "fingerprint" in old and "fingerprint" in new and old["fingerprint"] != new["fingerprint"]:
        parts.append(f"fingerprint ({_differences(old['fingerprint'], new['fingerprint'])})")
    if not parts:
        return None
    return f"{path}: resumed under another {' and '.join(parts)}"


class TableWriter(Closing):
    """Appends rows to a table, flushing each one. Opening an existing table keeps its ok/noisy rows.

    Resuming under another protocol or fingerprint is refused unless ``mixed``; then every row gets a ``setup``
    column (the short hash of what it was measured under, listed in the header's ``setups``). With ``boards`` (a
    farm sweep), or when the table has one already, every row gets a ``board`` column (who measured it).
    """

    def __init__(self, path: Path, meta: "dict[str, Any] | TableHeader", fresh: bool = False, mixed: bool = False,
                 boards: bool = False):
        self.mixed = mixed
        self.boards = boards
        self.path = path
        self.dropped_calibration: Path | None = None  # the stale calibration a fresh start removed
        self._lock = FileLock(path, "table", fix="wait for that hwprof to finish or stop it (two writers would "
                                                 "measure the same keys twice)")
        self._lock.acquire()
        try:
            self._open(path, meta, fresh)
        except BaseException:
            self._lock.release()
            raise

    def _open(self, path: Path, meta: "dict[str, Any] | TableHeader", fresh: bool) -> None:
        if not isinstance(meta, TableHeader):  # the writer stamps the schema and key format it writes
            meta = TableHeader.from_dict({"schema_version": SCHEMA_VERSION, "key_version": KEY_VERSION, **meta}, path)
        meta = meta.to_dict()
        if fresh or not path.exists():
            atomic_write_text(meta_path(path), json.dumps(meta, indent=2, sort_keys=True))
            buf = io.StringIO()
            csv.writer(buf, lineterminator="\n").writerow(COLUMNS + [BOARD_COLUMN] * self.boards)
            atomic_write_text(path, buf.getvalue())
            # a calibration fitted on the table this one replaces no longer holds (measure --fresh, import)
            self.dropped_calibration = drop_stale_calibration(path)
            self.existing: dict[str, Row] = {}
            self._setup = None
        else:
            old = read_meta(path)
            for field in ("device", "space"):
                if old.get(field) != meta.get(field):
                    raise TableError(f"{path}: table is for {field} {old.get(field)!r}, not {meta.get(field)!r}; "
                                     f"use another --out or --fresh")
            self._setup = None
            columns = COLUMNS
            with open(path, newline="") as f:
                header = next(csv.reader(f), [])
            was_mixed = SETUP_COLUMN in header
            self.boards = self.boards or BOARD_COLUMN in header
            mismatch = resume_mismatch(path, old, meta)
            if mismatch and not self.mixed:
                raise TableError(mismatch, fix="hwprof measure --fresh to start over, or --mixed to keep both "
                                               "(each new row records its protocol and fingerprint hash)")
            rows, complete = _read_rows(path)
            if mismatch or was_mixed:
                columns = MIXED_COLUMNS
                self._setup = setup_hash(meta)
                setups = dict(old.get("setups") or {})
                for m in (old, meta):
                    setups.setdefault(setup_hash(m), {"protocol": m.get("protocol"), "fingerprint": m.get("fingerprint")})
                old["setups"] = setups
                atomic_write_text(meta_path(path), json.dumps(old, indent=2, sort_keys=True))
                first = setup_hash(old)
                for r in rows.values():
                    r.setup = r.setup or first
            columns = columns + [BOARD_COLUMN] * self.boards
            kept = {k: r for k, r in rows.items() if r.usable}
            if len(kept) != len(rows) or complete != path.stat().st_size or columns != header:
                # drop error rows (they are re-measured) and any torn last line; rewrite atomically
                buf = io.StringIO()
                w = csv.writer(buf, lineterminator="\n")
                w.writerow(columns)
                for r in kept.values():
                    w.writerow(r.to_record(columns))
                atomic_write_text(path, buf.getvalue())
            self.existing = kept
        self._f = open(path, "a", newline="")
        self._w = csv.writer(self._f, lineterminator="\n")

    def append(self, row: Row) -> None:
        try:
            self._w.writerow(row.to_record() + ([self._setup] if self._setup else []) + [row.board] * self.boards)
            self._f.flush()
            os.fsync(self._f.fileno())
        except OSError as e:
            raise TableError(f"{self.path}: cannot append a row ({e.strerror or e}); the rows before it are kept: "
                             f"free disk space and run the same command again to resume") from None

    def close(self) -> None:
        try:
            self._f.close()
        finally:
            self._lock.release()


def samples_of(row: Row) -> np.ndarray:
    return np.array(row.samples_ms, dtype=float)
