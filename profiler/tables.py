"""The latency table (LUT): plain CSV rows plus a JSON sidecar header.

``tables/<device>/<space>.csv`` holds one row per key (``pandas.read_csv`` loads it in one line);
``<space>.meta.json`` beside it holds the schema version, device, space, fingerprint and protocol.

Rows are appended and flushed as each entry finishes, so a kill at any moment leaves a valid table: a torn last
line (no newline) is ignored on load and cut off before the next append.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from .errors import UserError
from .errors import InputError
from .fileio import FileLock, atomic_write_text, loads_json, read_text  # atomic_write_text: also re-exported
from .keys import KEY_VERSION, key_op, parse_key

SCHEMA_VERSION = 1
COLUMNS = ["key", "op", "input_shape", "c_out", "stride", "params", "median_ms", "p10_ms", "p90_ms", "mean_ms",
           "std_ms", "cv", "mad_outliers", "n", "calls_per_sample", "attempts", "status", "variant", "error",
           "max_abs_err", "samples_ms"]
# a table resumed with ``hwprof measure --mixed`` under another protocol or fingerprint gets one more column: each
# row's setup hash (see :func:`setup_hash`), resolved by the header's ``setups``; readers accept both headers
SETUP_COLUMN = "setup"
MIXED_COLUMNS = COLUMNS + [SETUP_COLUMN]
# a table measured by a device farm (several boards in parallel, see profiler.farm) gets a last column: the board
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
    from .devices import check_device_name

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


@dataclass
class Row:
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
    board: str = ""  # which board measured it (written only to a table with the board column)

    def to_record(self) -> list[Any]:
        k = parse_key(self.key)
        params = ",".join(f"{a}={b}" for a, b in k.params)
        vals = dict(self.__dict__)
        vals.update(op=k.op, input_shape="x".join(map(str, k.input_shape)), c_out=k.c_out, stride=k.stride,
                    params=params, samples_ms=" ".join(f"{s:.6g}" for s in self.samples_ms))
        return ["" if isinstance(vals[c], float) and math.isnan(vals[c]) else
                (f"{vals[c]:.6g}" if isinstance(vals[c], float) else vals[c]) for c in COLUMNS]


class LatencyTable:
    """A loaded table: header (``meta``) and the last row of every key."""

    def __init__(self, path: Path, meta: dict[str, Any], rows: dict[str, dict[str, Any]],
                 calibration: dict[str, Any] | None = None):
        self.path = path
        self.meta = meta
        self.rows = rows
        self.calibration = calibration

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

    # Prediction = offset_ms + sum of entry_ms over an architecture's keys: linear in the entries, so the search's
    # expected latency stays a dot product. A calibration (``<table>.calib.json``, see profiler.calibrate) rescales
    # entries per op and sets the offset; without one, entries are raw medians and the offset is 0.
    def entry_ms(self, key: str) -> float:
        raw = self.latency_ms(key)
        if not self.calibration:
            return raw
        if self.calibration.get("stat", "median") == "p10":  # fitted on p10s (robust on a busy host)
            p10 = float(self.rows[key]["p10_ms"])
            raw = p10 if p10 > 0 else raw
        op = key_op(key)
        return raw * float(self.calibration.get("scale_by_op", {}).get(op, self.calibration.get("scale", 1.0)))

    @property
    def offset_ms(self) -> float:
        return float(self.calibration.get("offset_ms", 0.0)) if self.calibration else 0.0

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


def _read_rows(path: Path) -> tuple[dict[str, dict[str, Any]], int]:
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
    rows: dict[str, dict[str, Any]] = {}
    for lineno, rec in enumerate(reader, start=2):
        if len(rec) != len(columns):
            raise TableError(f"{path}: line {lineno} has {len(rec)} fields, expected {len(columns)} "
                             f"(corrupt; fix the line or re-measure with --fresh)")
        r = dict(zip(columns, rec))
        if r["status"] not in STATUSES:
            raise TableError(f"{path}: line {lineno}: status {r['status']!r} is not one of {', '.join(STATUSES)}")
        try:
            for c in ("median_ms", "p10_ms", "p90_ms", "mean_ms", "std_ms", "cv", "max_abs_err"):
                r[c] = float(r[c]) if r[c] != "" else math.nan
            for c in ("mad_outliers", "n", "calls_per_sample", "attempts"):
                r[c] = int(r[c]) if r[c] != "" else 0
        except ValueError as e:
            raise TableError(f"{path}: line {lineno}: {e} (corrupt; fix the line or re-measure with --fresh)") from None
        if r["status"] != "error" and not (r["median_ms"] > 0 or (r["median_ms"] == 0 and r["variant"] == ZERO_COST)):
            raise TableError(f"{path}: line {lineno}: status {r['status']} but median_ms {r['median_ms']!r}")
        _check_row(path, lineno, r, rows.get(r["key"]))
        r["_line"] = lineno
        rows[r["key"]] = r
    for r in rows.values():
        del r["_line"]
    return rows, complete


_TIMES = ("median_ms", "p10_ms", "p90_ms", "mean_ms", "std_ms")


def _check_row(path: Path, lineno: int, r: dict[str, Any], earlier: dict[str, Any] | None) -> None:
    """A usable row has finite, non-negative times; a key has one usable row (an error row may be superseded)."""
    if r["status"] != "error":
        for c in _TIMES:
            if not math.isnan(r[c]) and not (math.isfinite(r[c]) and r[c] >= 0):
                raise TableError(f"{path}: line {lineno}: {c} {r[c]!r} of {r['key']} must be a finite number >= 0 "
                                 f"(fix the line, or delete it and re-measure the key with hwprof measure)")
    if earlier is not None and earlier["status"] != "error":
        raise TableError(f"{path}: line {lineno}: key {r['key']} appears again (first at line {earlier['_line']}); "
                         f"delete one of the two lines, or re-measure with hwprof measure --fresh")


def _check_meta(path: Path, meta: dict[str, Any]) -> None:
    """The header fields every reader relies on: device and space (non-empty strings), batch, protocol."""
    for f in ("device", "space"):
        if not isinstance(meta.get(f), str) or not meta[f]:
            raise TableError(f"{meta_path(path)}: field {f!r} is {meta.get(f)!r}, expected a non-empty string; "
                             f"restore the header or re-measure with hwprof measure --fresh")
    batch = meta.get("batch", 1)
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise TableError(f"{meta_path(path)}: field 'batch' is {batch!r}, expected an integer >= 1; "
                         f"restore the header or re-measure with hwprof measure --fresh")
    if "protocol" in meta:
        from .protocol import Protocol

        proto = meta["protocol"]
        try:
            Protocol.from_dict(proto if isinstance(proto, dict) else {"?": proto}, f"{meta_path(path)}: protocol")
        except UserError as e:
            raise TableError(f"{e}; restore the header or re-measure with hwprof measure --fresh") from None


def read_meta(path: Path) -> dict[str, Any]:
    mp = meta_path(path)
    try:
        meta = loads_json(read_text(mp, "table header"), str(mp))
    except FileNotFoundError:
        raise TableError(f"{path}: header {mp.name} is missing (was the table copied without it?)") from None
    except InputError as e:
        raise TableError(f"{e} (corrupt header)") from None
    if not isinstance(meta, dict) or meta.get("schema_version") != SCHEMA_VERSION:
        got = meta.get("schema_version") if isinstance(meta, dict) else None
        raise TableError(f"{path}: schema version {got!r}, this hwprof reads {SCHEMA_VERSION}; "
                         f"re-measure with hwprof measure --fresh")
    if meta.get("key_version") != KEY_VERSION:
        raise TableError(f"{path}: key format v{meta.get('key_version')}, this hwprof uses v{KEY_VERSION}; "
                         f"re-measure with hwprof measure --fresh")
    _check_meta(path, meta)
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
    calibration = None
    cp = calib_path(path)
    if cp.is_file():
        from .calibrate import check_calibration

        try:
            calibration = loads_json(read_text(cp, "calibration"), str(cp))
            check_calibration(calibration, str(cp))
        except InputError as e:
            raise TableError(f"{e} (corrupt calibration; refit it with hwprof verify or delete it)") from None
    return LatencyTable(path, meta, rows, calibration)


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
    from .protocol import Protocol

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


class TableWriter:
    """Appends rows to a table, flushing each one. Opening an existing table keeps its ok/noisy rows.

    Resuming under another protocol or fingerprint is refused unless ``mixed``; then every row gets a ``setup``
    column (the short hash of what it was measured under, listed in the header's ``setups``). With ``boards`` (a
    farm sweep), or when the table has one already, every row gets a ``board`` column (who measured it).
    """

    def __init__(self, path: Path, meta: dict[str, Any], fresh: bool = False, mixed: bool = False,
                 boards: bool = False):
        self.mixed = mixed
        self.boards = boards
        self.path = path
        self._lock = FileLock(path, "table", fix="wait for that hwprof to finish or stop it (two writers would "
                                                 "measure the same keys twice)")
        self._lock.acquire()
        try:
            self._open(path, meta, fresh)
        except BaseException:
            self._lock.release()
            raise

    def _open(self, path: Path, meta: dict[str, Any], fresh: bool) -> None:
        if fresh or not path.exists():
            atomic_write_text(meta_path(path), json.dumps(meta, indent=2, sort_keys=True))
            buf = io.StringIO()
            csv.writer(buf, lineterminator="\n").writerow(COLUMNS + [BOARD_COLUMN] * self.boards)
            atomic_write_text(path, buf.getvalue())
            self.existing: dict[str, dict[str, Any]] = {}
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
                    r[SETUP_COLUMN] = r.get(SETUP_COLUMN) or first
            columns = columns + [BOARD_COLUMN] * self.boards
            for r in rows.values():
                r.setdefault(BOARD_COLUMN, "")
            kept = {k: r for k, r in rows.items() if r["status"] != "error"}
            if len(kept) != len(rows) or complete != path.stat().st_size or columns != header:
                # drop error rows (they are re-measured) and any torn last line; rewrite atomically
                buf = io.StringIO()
                w = csv.writer(buf, lineterminator="\n")
                w.writerow(columns)
                for r in kept.values():
                    w.writerow([r[c] if not (isinstance(r[c], float) and math.isnan(r[c])) else "" for c in columns])
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

    def __enter__(self) -> "TableWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def samples_of(row: dict[str, Any]) -> np.ndarray:
    return np.array([float(s) for s in str(row.get("samples_ms", "")).split()], dtype=float)
