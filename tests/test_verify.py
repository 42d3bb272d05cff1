"""Whole-network verification on the real CPU runtime: sampling, the output files, resume, calibration, CLI."""

import csv
import json
import shutil

import numpy as np
import pytest
from typer.testing import CliRunner

from profiler.cli import app
from profiler.latency.tables import calib_path, load_table, meta_path
from profiler.latency.verify import VerifyError, extreme_archs, layer_costs, plan_archs, run_verify
from profiler.measuring.devices import get_device
from profiler.measuring.model_measure import export_network, measure_model
from profiler.measuring.protocol import Protocol
from profiler.measuring.runners import make_runner
from profiler.spaces.space import get_space

SPEC = "fbnet-cifar:input_size=16,width=0.25"  # one of conftest.SMALL_SPACES


@pytest.fixture()
def table_copy(small_tables, tmp_path):
    """A private copy of the session's small table (verify writes a calibration beside it)."""
    dst = tmp_path / "t.csv"
    shutil.copy(small_tables[SPEC], dst)
    shutil.copy(meta_path(small_tables[SPEC]), meta_path(dst))
    return dst


def test_plan_has_extremes_first_and_disjoint_deterministic_sets(table_copy):
    table, space = load_table(table_copy), get_space(SPEC)
    test, calib = plan_archs(table, space, 8, 6, seed=3)
    small, large = extreme_archs(table, space)
    costs = layer_costs(table, space)
    assert test[:2] == [small, large] and len(test) == 8 and len(calib) == 6
    assert all(c[op] == min(c.values()) for c, op in zip(costs, small))
    assert all(c[op] == max(c.values()) for c, op in zip(costs, large))
    assert not set(test) & set(calib) and len(set(test)) == 8
    assert plan_archs(table, space, 8, 6, seed=3) == (test, calib)
    assert plan_archs(table, space, 8, 6, seed=4)[1] != calib
    with pytest.raises(VerifyError, match="too few distinct"):
        plan_archs(table, space, 9 ** 22 + 1, 0, 0)  # more networks than the space holds


def test_calibration_set_covers_cheap_heavy_networks(table_copy):
    """A latency-pressured search derives networks mostly made of each layer's cheapest op: the calibration set must
    hold such networks too (uniform draws average 1 in 9 cheapest layers), not only the test set's uniform ones."""
    table, space = load_table(table_copy), get_space(SPEC)
    test, calib = plan_archs(table, space, 10, 30, seed=0)
    small, _ = extreme_archs(table, space)

    def cheap_share(arch):
        return np.mean([op == s for op, s in zip(arch, small)])

    shares = sorted(cheap_share(a) for a in calib)
    assert sum(s >= 0.5 for s in shares) >= 3, shares
    assert max(cheap_share(a) for a in test[2:]) < 0.5  # the held-out networks stay uniform draws


def test_verify_writes_results_resumes_and_calibrates(table_copy, tmp_path):
    dev = get_device("cpu")
    space, table = get_space(SPEC), load_table(table_copy)
    out = tmp_path / "v"
    with make_runner(dev) as runner:
        rep = run_verify(dev, space, table, runner, out, n=3, calib_n=3, seed=0)
        s = rep.summary
        rows = list(csv.DictReader(open(out / "networks.csv")))
        assert len(rows) == 6 and {r["split"] for r in rows} == {"test", "calib"}
        assert all(r["status"] == "ok" and float(r["measured_ms"]) > 0 for r in rows), rows
        assert s["n_test"] == 3 and s["n_calib"] == 3 and s["failed"] == []
        for key in ("mape_pct", "rmspe_pct", "max_err_pct", "within_5_pct", "within_10_pct", "kendall_tau",
                    "spearman_rho"):
            assert key in s["raw"] and key in s["calibrated"]
        # the raw prediction is the plain sum of the table's medians over the architecture's keys
        first = next(r for r in rows if r["split"] == "test")
        keys = space.arch_keys(first["arch"].split("+"))
        assert float(first["pred_raw_ms"]) == pytest.approx(sum(table.latency_ms(k) for k in keys), rel=1e-5)
        assert json.loads((out / "summary.json").read_text())["raw"]["n"] == 3
        assert (out / "scatter.png").read_bytes()[:4] == b"\x89PNG"
        # the calibration is stored beside the table and used by its predictions
        cal = json.loads(calib_path(table_copy).read_text())
        assert cal["version"] == 1 and cal["fit"]["n_fit"] == 3 and cal["fit"]["n_test"] == 3
        assert cal["model"] == s["calibrated"]["model"]
        t2 = load_table(table_copy)
        assert t2.calibration == cal
        # a kill mid-run: drop the last two rows and leave a torn line; the rerun measures only those two
        lines = (out / "networks.csv").read_text().splitlines(keepends=True)
        (out / "networks.csv").write_text("".join(lines[:-2]) + lines[-2][:15])
        seen = []
        rep2 = run_verify(dev, space, table, runner, out, n=3, calib_n=3, seed=0, write_calib=False, stat="p10",
                          on_progress=lambda p: seen.append(p.skipped), plot=False)
        assert seen[-1] == 4
        # the same measurements compared on p10s: predictions are sums of the entries' p10s
        assert rep2.summary["stat"] == "p10" and rep2.summary["calibrated"]["n"] == 3
        assert rep2.calibration["stat"] == "p10" and calib_path(table_copy).read_text() == json.dumps(
            cal, indent=2, sort_keys=True) + "\n"  # --no-write-calib left the stored one alone
        rows2 = list(csv.DictReader(open(out / "networks.csv")))
        assert len(rows2) == 6 and [r["arch"] for r in rows2[:4]] == [r["arch"] for r in rows[:4]]
        # other settings in the same folder are refused
        with pytest.raises(VerifyError, match="other settings"):
            run_verify(dev, space, table, runner, out, n=3, calib_n=3, seed=1)


def test_verify_refuses_other_device_and_incomplete_table(table_copy, tmp_path):
    space, table = get_space(SPEC), load_table(table_copy)
    with pytest.raises(VerifyError, match="pass --device cpu"):
        run_verify(get_device("cpu-1t"), space, table, None, tmp_path / "v", n=4, calib_n=0)
    del table.rows[space.candidate_keys()[5]]
    with pytest.raises(VerifyError, match="measure them first"):
        run_verify(get_device("cpu"), space, table, None, tmp_path / "v", n=4, calib_n=0)
    assert not (tmp_path / "v").exists()


def test_measure_model_times_an_exported_network(tmp_path):
    space = get_space(SPEC)
    path, err = export_network(space, [layer.choices[0] for layer in space.layers], tmp_path)
    assert err < 1e-3
    fast = Protocol(warmup_s=0.02, min_samples=3, min_seconds=0.02, retries=0)
    res = measure_model(path, get_device("cpu"), fast)
    assert res.ok and len(res.samples_ms) >= 3 and min(res.samples_ms) > 0
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not onnx")
    res = measure_model(bad, get_device("cpu"), fast)
    assert not res.ok and "not a readable ONNX model" in res.error


def test_cli_verify_without_calibration(table_copy, tmp_path):
    r = CliRunner().invoke(app, ["verify", "--device", "cpu", "--space", SPEC, "--table", str(table_copy), "--n", "2",
                                 "--calib-n", "0", "--out", str(tmp_path / "v")])
    assert r.exit_code == 0, r.output
    assert "raw table sum" in r.output and "Kendall" in r.output
    assert not calib_path(table_copy).exists()
    r = CliRunner().invoke(app, ["verify", "--device", "cpu", "--space", SPEC, "--table", str(tmp_path / "no.csv")])
    assert r.exit_code == 2 and "no such table" in r.output
