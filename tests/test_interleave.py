"""Interleaved rounds, robust entries, the drift check and the table's validity verdict."""

from __future__ import annotations

import json

import pytest

from profiler.latency.tables import TableWriter, load_table, meta_path
from profiler.measuring.measure import REFERENCE_KEY, sweep, sweep_validity
from profiler.measuring.protocol import INVALID, VALID, Protocol, Validity, validity_line
from profiler.measuring.runners import MeasureResult
from profiler.measuring.runners.base import LocalRunner
from profiler.measuring.stats import drift_ratio, round_spread
from profiler.spaces.space import get_space

SPACE = "darts-3ops:C=8,cells=3,nodes=2"
META = {"schema_version": 1, "key_version": 1, "device": "x", "space": SPACE}


class RecordingRunner(LocalRunner):
    """A fake runner for sweep order only: records each request and answers from ``script(key, visit)``."""

    name = "recording"

    def __init__(self, script):
        self.script = script
        self.order: list[str] = []

    def fingerprint(self):
        return {"runtime": "recording"}

    def measure(self, request, protocol):
        visit = self.order.count(request.key)
        self.order.append(request.key)
        return self.script(request.key, visit)


def steady(key, visit):
    return MeasureResult(key, (1.0, 1.0, 1.0))


def keys(n=4):
    return [k for k in get_space(SPACE).candidate_keys() if k != REFERENCE_KEY][:n]


def run(tmp_path, ks, script, **proto):
    runner = RecordingRunner(script)
    protocol = Protocol(**{"rounds": 3, "retries": 0, **proto})
    with TableWriter(tmp_path / "t.csv", META) as w:
        prog = sweep(ks, runner, protocol, w)
    return runner, prog, protocol


def test_rounds_visit_every_key_once_per_round_with_the_reference_first(tmp_path):
    ks = keys(4)
    runner, prog, _ = run(tmp_path, ks, steady)
    rounds = [runner.order[i:i + 5] for i in range(0, len(runner.order), 5)]
    assert len(rounds) == 3
    for r, visit in enumerate(rounds):
        assert visit[0] == REFERENCE_KEY and sorted(visit[1:]) == sorted(ks)
        assert visit[1] == ks[r]  # the order rotates, so no key always runs right after the reference
    flat = [k for k in runner.order if k != REFERENCE_KEY]
    assert all(a != b for a, b in zip(flat, flat[1:]))  # never two visits of one key back to back
    assert len(prog.rows) == 4 and len(prog.reference_ms) == 3


def test_chunks_write_rows_as_each_chunk_finishes(tmp_path):
    ks = keys(5)
    out = tmp_path / "t.csv"
    rows_at_reference: list[int] = []

    def script(key, visit):
        if key == REFERENCE_KEY:
            rows_at_reference.append(out.read_text().count("\n") - 1)
        return steady(key, visit)

    runner = RecordingRunner(script)
    with TableWriter(out, META) as w:
        sweep(ks, runner, Protocol(rounds=2, chunk=2, retries=0), w)
    assert load_table(out).rows.keys() == set(ks)
    assert rows_at_reference == [0, 0, 2, 2, 4, 4]  # two rounds per chunk; a chunk's rows land when it ends


def test_one_burst_round_neither_moves_the_median_nor_flags_the_entry(tmp_path):
    ks = keys(2)

    def script(key, visit):
        if key == ks[0] and visit == 2:
            return MeasureResult(key, (10.0, 10.0, 10.0))  # another job grabbed the core for this round
        return MeasureResult(key, (1.0, 1.01, 0.99))

    _, prog, _ = run(tmp_path, ks, script, rounds=5)
    row = {r.key: r for r in prog.rows}[ks[0]]
    assert row.status == "ok" and row.median_ms == pytest.approx(1.0, rel=0.02) and row.n == 15


def test_entries_that_disagree_across_rounds_are_noisy_and_remeasured(tmp_path):
    ks = keys(2)

    def script(key, visit):
        if key == ks[0]:
            return MeasureResult(key, (1.0 + 0.3 * visit,) * 3)  # slower every visit
        return MeasureResult(key, (1.0, 1.0, 1.0))

    runner, prog, _ = run(tmp_path, ks, script, retries=1)
    rows = {r.key: r for r in prog.rows}
    assert rows[ks[0]].status == "noisy" and rows[ks[0]].attempts == 2 and rows[ks[1]].status == "ok"
    assert prog.remeasured == 1 and runner.order.count(ks[0]) == 6 and runner.order.count(ks[1]) == 3


def test_failed_rounds_give_an_error_row_only_when_most_fail(tmp_path):
    ks = keys(2)

    def script(key, visit):
        if key == ks[0] or (key == ks[1] and visit == 0):
            return MeasureResult.failed(key, RuntimeError("kernel exploded"))
        return MeasureResult(key, (1.0, 1.0, 1.0))

    _, prog, _ = run(tmp_path, ks, script)
    rows = {r.key: r for r in prog.rows}
    assert rows[ks[0]].status == "error" and "kernel exploded" in rows[ks[0]].error
    assert rows[ks[1]].status == "ok"


def test_a_drifting_reference_makes_the_sweep_invalid(tmp_path):
    def drifting(key, visit):
        if key == REFERENCE_KEY:
            return MeasureResult(key, (1.0 + 0.5 * visit,) * 3)  # the machine slows down round by round
        return MeasureResult(key, (1.0, 1.0, 1.0))

    _, prog, protocol = run(tmp_path, keys(3), drifting)
    v = sweep_validity(prog, protocol)
    assert v.verdict == INVALID and "drifted 100 %" in v.reasons[0]
    assert v.details["reference_ms"] == [1.0, 1.5, 2.0]
    _, prog, protocol = run(tmp_path, keys(3), steady)
    assert sweep_validity(prog, protocol).verdict == VALID


def test_too_many_noisy_entries_make_the_sweep_invalid(tmp_path):
    ks = keys(4)

    def script(key, visit):
        if key in ks[:2]:
            return MeasureResult(key, (1.0 + visit,) * 3)
        return MeasureResult(key, (1.0,) * 3)

    _, prog, protocol = run(tmp_path, ks, script, max_noisy_fraction=0.25)
    v = sweep_validity(prog, protocol)
    assert v.verdict == INVALID and "2 of 4 entries are noisy" in " ".join(v.reasons)
    assert "cpu-1t" in v.reasons[-1]  # the fix


def test_round_spread_and_drift_ratio():
    assert round_spread([1.0, 1.0, 1.0]) == 0.0
    assert round_spread([1.0, 1.1, 1.0, 1.0, 9.0]) == pytest.approx(0.1)  # highest and lowest dropped
    assert round_spread([1.0, 2.0]) == pytest.approx(2 / 3)
    assert drift_ratio([1.0, 1.2]) == pytest.approx(0.2)
    assert drift_ratio([1.0] * 9 + [5.0] + [1.0] * 10) == pytest.approx(0.0)  # one burst of 20 is not drift


def test_an_invalid_verdict_survives_a_resumed_sweep_until_fresh():
    bad = Validity(INVALID, ("the reference op drifted 40 %",))
    good = Validity(VALID, (), {"reference_drift": 0.01, "noisy": 0, "entries": 3})
    merged = good.merged(bad)
    assert merged.verdict == INVALID and merged.reasons == ("earlier sweep: the reference op drifted 40 %",)
    assert good.merged(None) is good and good.line().startswith("VALID (reference drift 1.0 %")
    assert Validity.from_dict(merged.to_dict()) == merged
    assert validity_line({}).startswith("unknown")


def test_real_onnxruntime_interleaved_table_has_a_verdict_in_its_header(tmp_path, ort_sweep):
    proto = {"warmup_s": 0.01, "min_samples": 6, "min_seconds": 0.03, "retries": 0, "target_sample_ms": 1.0,
             "rounds": 3, "chunk": 4}
    space = get_space(SPACE)
    out = tmp_path / "t.csv"
    s = ort_sweep(proto, space, out, only="*avg_pool*")
    assert s.measured > 0 and s.errors == 0 and s.validity is not None
    meta = json.loads(meta_path(out).read_text())
    v = Validity.from_dict(meta["validity"])
    assert v is not None and v.verdict in (VALID, INVALID)  # which one depends on the machine's load
    assert len(v.details["reference_ms"]) == 3 * -(-s.measured // 4) and v.details["reference"] == REFERENCE_KEY
    t = load_table(out)
    assert all(r["n"] >= 3 * 3 and r["median_ms"] > 0 for r in t.rows.values())
    again = ort_sweep(proto, space, out, only="*avg_pool*")
    assert again.measured == 0 and again.validity is None
    assert json.loads(meta_path(out).read_text())["validity"] == meta["validity"]  # nothing measured: kept


def test_hwnas_run_notes_the_table_verdict(tmp_path):
    from profiler.measuring.devices import get_device
    from search import pipeline as pl

    cfg = pl.RunConfig(space=SPACE, quick=True)
    notes: list[str] = []
    path = pl.ensure_table(cfg, get_device("cpu-1t"), get_space(SPACE), tmp_path, lambda e: None, notes)
    assert any(n.startswith("table validity: VALID") or n.startswith("table validity: INVALID") for n in notes)
    notes2: list[str] = []
    assert pl.ensure_table(cfg, get_device("cpu-1t"), get_space(SPACE), tmp_path, lambda e: None, notes2) == path
    assert [n for n in notes2 if "validity" in n] == [n for n in notes if "validity" in n]  # said again on a rerun
    assert pl.RunConfig().device == "cpu-1t"


def test_show_prints_the_verdict(tmp_path):
    from typer.testing import CliRunner

    from profiler.cli import app

    runner = RecordingRunner(steady)
    out = tmp_path / "t.csv"
    with TableWriter(out, META) as w:
        prog = sweep(keys(3), runner, Protocol(rounds=2), w)
    from profiler.measuring.measure import write_validity

    write_validity(out, sweep_validity(prog, Protocol(rounds=2)), fresh=True)
    r = CliRunner().invoke(app, ["show", str(out)])
    assert r.exit_code == 0, r.output
    assert "validity: VALID (reference drift 0.0 %, 0/3 noisy)" in r.output
