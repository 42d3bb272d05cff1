"""Several devices: one search conditioned on two real tables (onnxruntime on one thread and on all cores), then
budgets per device, a Pareto front over both devices' latencies, and every device's prediction in the output."""

from __future__ import annotations

import csv
import dataclasses

import pytest
from typer.testing import CliRunner

from profiler.spaces.arch import load_arch
from search.cli import app
from search.derive import (
    Budget,
    Candidate,
    DeriveError,
    Deriver,
    DeviceLimit,
    derive_budgets,
    derive_family,
    pareto,
    parse_budgets,
)

SPEC = "fbnet-cifar:input_size=16,width=0.25"
DEVICES = ["cpu-1t", "cpu"]
TERMS = ("params", "latency", "latency:1")


@pytest.fixture(scope="module")
def two_run(two_device_tables, tiny_search, tmp_path_factory):
    """A short real hwnas-preset search whose penalty holds params and the latency on both devices."""
    root = tmp_path_factory.mktemp("multidev")
    return tiny_search([two_device_tables[d] for d in DEVICES], root / "run", TERMS)


@pytest.fixture(scope="module")
def run(two_run):
    from search.run import load_run

    return load_run(two_run)


@pytest.fixture(scope="module")
def deriver(run):
    d = Deriver(run)
    d.sweep()
    return d


def _on_device(run, n, choices):
    """The prediction of table ``n`` of the run, asked of its LatencyModel directly."""
    return run.tables[n].model(run.space).exact(list(choices))


def test_the_run_searched_and_derives_with_both_recorded_tables(run, two_device_tables):
    from search.provenance import read_provenance

    uses = read_provenance(run.path)
    assert [u.device for u in uses] == DEVICES
    assert [u.path for u in uses] == [str(two_device_tables[d].resolve()) for d in DEVICES]
    assert [str(t.path) for t in run.tables] == [u.path for u in uses]
    rng = run.control_range()
    assert rng["cost_terms"] == list(TERMS) and rng["S_dim"] == 3  # the penalty conditions on both devices
    d = Deriver(run)
    assert d.devices == DEVICES
    c = d.evaluate({"kappa": 1.0, "S": [0.2, 0.4, 0.4]})
    assert c.latencies == pytest.approx([_on_device(run, n, c.choices) for n in range(2)], rel=1e-12)
    assert c.latency_ms == c.latencies[0]


def test_budgets_on_every_device_are_all_honoured(run, deriver):
    lat = [sorted(c.latencies[n] for c in deriver.evaluated) for n in range(2)]
    mid = [v[len(v) // 2] for v in lat]
    low = [v[len(v) // 5] for v in lat]
    # loose on cpu-1t and tight on cpu, then the reverse, then both at their medians
    budgets = parse_budgets(f"cpu-1t={lat[0][-1]}:{low[0]}:{mid[0]},cpu={low[1]}:{lat[1][-1]}:{mid[1]}", DEVICES)
    assert [len(b.devices) for b in budgets] == [2, 2, 2]
    results = derive_budgets(deriver, budgets)
    assert any(r.ok for r in results)
    for r in results:
        if r.ok:
            for limit in r.budget.devices:
                assert _on_device(run, limit.table, r.found.choices) <= limit.ms
        else:  # none met: then no evaluated architecture meets every limit
            assert not any(r.budget.meets(c) for c in deriver.evaluated)
    # a budget on one device only leaves the other free, and a device's limit alone decides
    only = parse_budgets(f"cpu={low[1]}", DEVICES)[0]
    assert only.devices == (DeviceLimit(1, "cpu", low[1]),)
    (r,) = derive_budgets(deriver, [only])
    assert r.ok and _on_device(run, 1, r.found.choices) <= low[1]


def test_cli_budgets_per_device_write_every_prediction(two_run, run, deriver, tmp_path):
    lat = [sorted(c.latencies[n] for c in deriver.evaluated) for n in range(2)]
    ok = [v[-1] * 1.01 for v in lat]
    bad = [v[0] * 0.5 for v in lat]
    r = CliRunner().invoke(app, ["derive", str(two_run), "--latency-ms", f"cpu-1t={ok[0]}:{bad[0]},cpu={ok[1]}",
                                 "--out", str(tmp_path / "b")])
    assert r.exit_code == 1, r.output  # the second budget cannot be met on cpu-1t
    text = " ".join(r.output.split())
    assert "no control of this run meets it" in text and "ms on cpu-1t" in text and "ms on cpu," in text
    rows = list(csv.DictReader(open(tmp_path / "b" / "summary.csv")))
    assert [x["meets"] for x in rows] == ["yes", "no"]
    assert rows[0]["budget_ms_by_device"] == f"cpu-1t={ok[0]:g} cpu={ok[1]:g}"
    for row in rows:
        arch = load_arch(tmp_path / "b" / row["file"])
        assert list(arch.predicted_ms_by_device) == DEVICES
        for n, dev in enumerate(DEVICES):
            assert arch.predicted_ms_by_device[dev] == pytest.approx(_on_device(run, n, arch.choices), rel=1e-12)
        assert arch.predicted_ms == pytest.approx(arch.predicted_ms_by_device["cpu-1t"], rel=1e-12)
    met = load_arch(tmp_path / "b" / rows[0]["file"]).predicted_ms_by_device
    assert met["cpu-1t"] <= ok[0] and met["cpu"] <= ok[1]


@pytest.mark.parametrize("text, match", [
    ("gpu=3", "'gpu' is not a device of this run; its devices are cpu-1t, cpu"),
    ("3,5", "this run has 2 devices (cpu-1t, cpu); name the device of each limit"),
    ("cpu=1,3", "not both"),
    ("cpu=1,cpu=2", "given twice"),
    ("cpu=[fast]", "'[fast]' is not a ':'-separated list of numbers"),  # printed as given, not read as markup
])
def test_bad_device_budgets_are_one_line(two_run, tmp_path, text, match):
    r = CliRunner().invoke(app, ["derive", str(two_run), "--latency-ms", text, "--out", str(tmp_path / "x")])
    assert r.exit_code == 2 and "Traceback" not in r.output
    assert match in " ".join(r.output.split())
    assert len(r.output.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists()


def test_family_front_is_over_both_devices(run, deriver, tmp_path):
    front = pareto(deriver.evaluated)
    least: dict = {}
    for c in deriver.evaluated:  # one candidate per architecture, at its least pressure (as the front keeps it)
        least[c.choices] = min(least.get(c.choices, c), c, key=lambda x: x.pressure)
    uniq = list(least.values())
    for m in front:  # no member is dominated on both devices (and params, pressure) by any evaluated architecture
        assert not any(all(a <= b for a, b in zip(o.objectives, m.objectives)) and o.objectives != m.objectives
                       for o in uniq)
    members, stats = derive_family(deriver, 4)
    assert len(members) == min(4, stats["distinct"] - stats["blind_left_out"])
    # the front over one device is the same candidates judged without the second latency
    single = pareto([dataclasses.replace(c, latencies=c.latencies[:1]) for c in deriver.evaluated])
    extra = {c.choices for c in front} - {c.choices for c in single}
    for choices in extra:  # on the two-device front only because it is faster on cpu than what beats it on cpu-1t
        m = next(c for c in front if c.choices == choices)
        beaten_by = [c for c in uniq if (c.latency_ms, c.params, c.pressure) != (m.latency_ms, m.params, m.pressure)
                     and c.latency_ms <= m.latency_ms and c.params <= m.params and c.pressure <= m.pressure]
        assert beaten_by and all(c.latencies[1] > m.latencies[1] for c in beaten_by)
    r = CliRunner().invoke(app, ["derive", str(run.path), "--family", "3", "--out", str(tmp_path / "f")])
    assert r.exit_code == 0, r.output
    head = r.output.split("member-00")[0]
    assert "pred ms cpu-1t" in head and "pred ms cpu " in head
    for f in sorted((tmp_path / "f").glob("member-*.json")):
        assert list(load_arch(f).predicted_ms_by_device) == DEVICES


def _cand(lat0, lat1, params=100, pressure=1.0, tag="a"):
    return Candidate({}, pressure, (tag,), lat0, params, latencies=(lat0, lat1))


def test_pareto_keeps_an_architecture_that_wins_only_on_the_second_device():
    a, b, c = _cand(1.0, 5.0, tag="a"), _cand(2.0, 1.0, tag="b"), _cand(2.0, 6.0, tag="c")
    assert [x.choices for x in pareto([a, b, c])] == [("a",), ("b",)]  # c is dominated on both devices
    single = [dataclasses.replace(x, latencies=()) for x in (a, b, c)]
    assert [x.choices for x in pareto(single)] == [("a",)]
    budget = Budget(devices=(DeviceLimit(0, "cpu-1t", 2.5), DeviceLimit(1, "cpu", 2.0)))
    assert [budget.meets(x) for x in (a, b, c)] == [False, True, False]
    assert budget.excess(a) == pytest.approx(2.5) and budget.label() == "2.5 ms on cpu-1t and 2 ms on cpu"


def test_single_table_budgets_parse_as_before():
    assert parse_budgets("3,5", ["cpu-1t"], 1000) == [Budget(3.0, 1000), Budget(5.0, 1000)]
    assert parse_budgets(None, ["cpu-1t"], 1000) == [Budget(None, 1000)]
    assert parse_budgets("latency=3", ["cpu-1t"]) == [Budget(devices=(DeviceLimit(0, "cpu-1t", 3.0),))]
    with pytest.raises(DeriveError, match="not a device of this run; its devices are cpu-1t"):
        parse_budgets("cpu=3", ["cpu-1t"])


def _private_tables(two_device_tables, root):
    """Copies of both tables (hwnas run may write a calibration beside a table)."""
    import shutil

    out = []
    for d in DEVICES:
        src = two_device_tables[d]
        dst = root / f"{d}.csv"
        shutil.copy(src, dst)
        shutil.copy(src.with_suffix(".meta.json"), dst.with_suffix(".meta.json"))
        out.append(dst)
    return out


@pytest.mark.slow
def test_run_with_two_devices_searches_once_on_both(two_device_tables, tmp_path):
    import json

    tables = _private_tables(two_device_tables, tmp_path)
    out = tmp_path / "run"
    args = ["run", "--quick", "--device", DEVICES[0], "--device", DEVICES[1], "--table", str(tables[0]), "--table",
            str(tables[1]), "--data", "digits", "--search-epochs", "1", "--family", "2", "--retrain-epochs", "1",
            "--no-calibrate", "--out", str(out)]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    text = " ".join(r.output.split())
    assert "device cpu-1t+cpu" in text and "conditioned on 2 devices" in text
    cfg = json.loads((out / "search" / "config.json").read_text())
    assert cfg["control"]["cost_terms"] == list(TERMS) and cfg["tables"] == [str(t.resolve()) for t in tables]
    rows = json.loads((out / "family.json").read_text())
    assert rows and all(row["status"] == "ok" for row in rows)
    for row in rows:
        arch = load_arch(out / "family" / f"{row['member']}.json")
        assert list(arch.predicted_ms_by_device) == DEVICES and row["predicted_ms_by_device"] == pytest.approx(
            arch.predicted_ms_by_device)
        meas = row["measured_ms_by_device"]
        assert list(meas) == DEVICES and all(v > 0 for v in meas.values())
        assert row["measured_ms"] == row["measured_ms_by_device"]["cpu-1t"]  # every member timed on both devices
    assert "pred ms cpu-1t" in r.stdout and "pred ms cpu " in r.stdout
    assert "meas ms cpu-1t" in r.stdout and "meas ms cpu " in r.stdout
    assert "every member timed on 2 devices" in (out / "summary.txt").read_text()
    assert "measured_ms_by_device" in (out / "family.csv").read_text().splitlines()[0]


@pytest.mark.parametrize("extra, match", [
    (["--device", "cpu", "--device", "cpu"], "a device is given twice"),
    (["--device", "cpu", "--table", "a.csv", "--table", "b.csv"], "give at most one table per device"),
])
def test_run_bad_devices_are_one_line(tmp_path, extra, match):
    r = CliRunner().invoke(app, ["run", "--quick", "--data", "digits", "--out", str(tmp_path / "r"), *extra])
    assert r.exit_code == 2 and "Traceback" not in r.output and match in " ".join(r.output.split())


def test_search_notes_a_table_that_no_cost_term_reads():
    from search.cli import _tables_outside_loss
    from search.config import apply_overrides, preset

    cfg = preset("hwnas", space=SPEC, tables=("a.csv", "b.csv"))
    note = _tables_outside_loss(cfg)
    assert note and "b.csv (latency:1)" in note and "a.csv" not in note
    assert """control.cost_terms=["params","latency","latency:1"]""" in note
    both = apply_overrides(cfg, ['control.cost_terms=["params","latency","latency:1"]'])
    assert _tables_outside_loss(both) is None
    assert _tables_outside_loss(preset("hwnas", space=SPEC, tables=("a.csv",))) is None


def test_a_member_is_timed_on_every_device_with_its_protocol(run, tmp_path, one_thread):
    """hwnas run's measure stage: one retrained member timed on cpu-1t and on cpu (real onnxruntime sessions), each
    with its own protocol; measured vs predicted per device in the row, the table and the summary line."""
    from profiler.measuring.devices import get_device
    from profiler.measuring.protocol import Protocol
    from search.derive import to_arch
    from search.pipeline import device_errors_line, run_member
    from search.report import error_pct, format_table
    from search.retrain import TrainConfig

    arch = to_arch(run, Deriver(run).evaluate({"kappa": 1.0, "S": [0.2, 0.4, 0.4]}), "control", str(run.path))
    devs = [get_device(d) for d in DEVICES]
    fast = Protocol(warmup_s=0.01, min_samples=3, min_seconds=0.01, max_seconds=1.0, retries=0)
    more = Protocol(warmup_s=0.01, min_samples=7, min_seconds=0.01, max_seconds=1.0, retries=0)
    tcfg = TrainConfig(data="digits", epochs=1, max_train_batches=2)
    row = run_member(arch, "m", tmp_path / "m", devs[0], fast, tcfg, more=((devs[1], more),))
    meas, err = row["measured_ms_by_device"], row["error_pct_by_device"]
    assert row["status"] == "ok" and list(meas) == DEVICES and all(meas[d] > 0 for d in DEVICES)
    assert row["measured_ms"] == meas["cpu-1t"] and row["samples"] == row["samples_by_device"]["cpu-1t"]
    assert row["samples_by_device"]["cpu-1t"] >= 3 and row["samples_by_device"]["cpu"] >= 7  # each its protocol
    for d in DEVICES:
        assert err[d] == pytest.approx(error_pct(arch.predicted_ms_by_device[d], meas[d]))
    row = {**row, "predicted_ms_by_device": arch.predicted_ms_by_device}  # as the pipeline's extra adds it
    table = format_table([row])
    assert all(f"{h} {d}" in table for h in ("pred ms", "meas ms", "err %") for d in DEVICES)
    line = device_errors_line([row], DEVICES)
    assert f"cpu-1t {abs(err['cpu-1t']):.1f} %" in line and f"cpu {abs(err['cpu']):.1f} %" in line
    # the second device really runs its own measurement: a protocol it cannot meet fails there, not on the first
    hopeless = Protocol(warmup_s=0.01, min_samples=3, min_seconds=5.0, max_seconds=5.0, retries=0, key_timeout_s=0.05)
    row = run_member(arch, "m2", tmp_path / "m2", devs[0], fast, tcfg, more=((devs[1], hopeless),))
    assert row["status"].startswith("measure failed on cpu: ") and "timed out after 0.05 s" in row["status"]
    assert row["measured_ms"] > 0 and row["measured_ms_by_device"]["cpu"] is None
