"""Table header and rows are dataclasses on write and on read: a row round-trips exactly, and every malformation
is one TableError line naming the file, the line and the field."""

from __future__ import annotations

import json
import math

import pytest

from profiler.latency.tables import (
    SCHEMA_VERSION,
    Row,
    TableError,
    TableHeader,
    TableWriter,
    load_table,
    meta_path,
    read_meta,
)
from profiler.spaces.keys import KEY_VERSION
from profiler.spaces.space import get_space

SPEC = "fbnet-cifar:input_size=16,width=0.25"


def _header() -> dict:
    return {"schema_version": SCHEMA_VERSION, "key_version": KEY_VERSION, "device": "cpu", "space": SPEC, "batch": 1,
            "protocol": {}, "fingerprint": {"host": "x"}, "opset": 17}


def _write(tmp_path, n: int = 3):
    keys = get_space(SPEC).candidate_keys()[:n]
    path = tmp_path / "t.csv"
    rows = [Row(k, median_ms=0.1 * (i + 1), p10_ms=0.09 * (i + 1), p90_ms=0.11 * (i + 1), mean_ms=0.1 * (i + 1),
                std_ms=0.01, cv=0.1, n=5, calls_per_sample=2, attempts=1, status="ok", samples_ms=(0.1, 0.2))
            for i, k in enumerate(keys)]
    with TableWriter(path, _header(), fresh=True) as w:
        for r in rows:
            w.append(r)
    return path, rows


def test_rows_and_header_round_trip(tmp_path):
    path, rows = _write(tmp_path)
    t = load_table(path)
    for r in rows:
        got = t.rows[r.key]
        assert isinstance(got, Row) and got.to_record() == r.to_record()
        assert got["median_ms"] == pytest.approx(r.median_ms) and got["op"] == r["op"] and got.samples_ms == (0.1, 0.2)
    h = t.header
    assert isinstance(h, TableHeader) and h.batch == 1 and h.extra == {"opset": 17}
    assert h.to_dict() == json.loads(meta_path(path).read_text()) == read_meta(path)


def _edit_line(path, lineno: int, column: str, value: str) -> None:
    lines = path.read_text().splitlines()
    header = lines[0].split(",")
    cells = lines[lineno - 1].split(",")
    cells[header.index(column)] = value
    lines[lineno - 1] = ",".join(cells)
    path.write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("column,value,message", [
    ("median_ms", "abc", "line 3: field median_ms"),
    ("p10_ms", "-1", "line 3: p10_ms -1.0 of .* must be a finite number >= 0"),
    ("p90_ms", "inf", "line 3: p90_ms inf of .* must be a finite number >= 0"),
    ("n", "1.5", "line 3: field n"),
    ("status", "great", "line 3: status 'great' is not one of ok, noisy, error"),
    ("op", "k5_e6", "line 3: field op 'k5_e6' does not match key"),
])
def test_a_bad_row_is_one_line_naming_line_and_field(tmp_path, column, value, message):
    path, _ = _write(tmp_path)
    _edit_line(path, 3, column, value)
    with pytest.raises(TableError, match=f"{path.name}: {message}") as e:
        load_table(path)
    assert "\n" not in str(e.value)


def test_a_duplicate_key_names_both_lines(tmp_path):
    path, rows = _write(tmp_path)
    with open(path, "a") as f:
        f.write(",".join(map(str, rows[0].to_record())) + "\n")
    with pytest.raises(TableError, match=r"line 5: key .* appears again \(first at line 2\)"):
        load_table(path)


@pytest.mark.parametrize("field,value,message", [
    ("schema_version", 9, "schema version 9"),
    ("batch", 0, "field 'batch' is 0, expected an integer >= 1"),
    ("device", "", "field 'device' is '', expected a non-empty string"),
    ("validity", [1], "field 'validity' is '\\[1\\]', expected an object"),
])
def test_a_bad_header_is_refused_on_read_and_before_a_write(tmp_path, field, value, message):
    path, _ = _write(tmp_path)
    meta = {**_header(), field: value}
    meta_path(path).write_text(json.dumps(meta))
    with pytest.raises(TableError, match=message):
        load_table(path)
    with pytest.raises(TableError, match=message):
        TableWriter(tmp_path / "new.csv", meta, fresh=True)
    assert not (tmp_path / "new.csv").exists()


def test_an_error_row_keeps_nan_times():
    r = Row.from_record({**dict(zip(["key", "status", "variant", "error"], [get_space(SPEC).candidate_keys()[0],
                                                                        "error", "", "boom"])),
                         **{c: "" for c in ("median_ms", "p10_ms", "p90_ms", "mean_ms", "std_ms", "cv", "max_abs_err",
                                            "mad_outliers", "n", "calls_per_sample", "attempts", "samples_ms")},
                         "op": "stem"}, "t.csv: line 2")
    assert not r.usable and math.isnan(r.median_ms) and r.error == "boom"
