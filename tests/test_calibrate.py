"""Calibration: metrics, model fitting on synthetic truth, the file contract the table reads, no leakage."""

import json

import numpy as np
import pytest

from profiler.latency.calibrate import (
    CALIB_VERSION,
    GOALS,
    calibrated,
    check_calibration,
    cross_validate,
    design,
    fit_calibration,
    fit_model,
    lowest_prediction_ms,
    metrics,
    predict,
    write_calibration,
)
from profiler.latency.tables import calib_path, load_table
from profiler.spaces.space import get_space

from helpers import synthetic_table

SPEC = "fbnet-cifar:width=0.25"


def test_metrics_known_values():
    m = np.array([1.0, 2.0, 3.0, 4.0])
    r = metrics(m * 1.04, m)
    assert r["mape_pct"] == pytest.approx(4.0) and r["rmspe_pct"] == pytest.approx(4.0)
    assert r["bias_pct"] == pytest.approx(4.0) and r["max_err_pct"] == pytest.approx(4.0)
    assert r["within_5_pct"] == 100.0 and r["within_10_pct"] == 100.0
    assert r["kendall_tau"] == pytest.approx(1.0) and r["spearman_rho"] == pytest.approx(1.0)
    r = metrics([1.0, 2.0, 2.4, 4.0], [1.0, 2.0, 2.0, 5.0])  # errors 0, 0, +20 %, -20 %
    assert r["within_5_pct"] == 50.0 and r["within_10_pct"] == 50.0 and r["max_err_pct"] == pytest.approx(20.0)
    assert r["mape_pct"] == pytest.approx(10.0) and r["bias_pct"] == pytest.approx(0.0)
    reversed_rank = metrics([3.0, 2.0, 1.0], [1.0, 2.0, 3.0])
    assert reversed_rank["kendall_tau"] == pytest.approx(-1.0)
    with pytest.raises(ValueError):
        metrics([1.0], [1.0, 2.0])
    assert set(GOALS) <= set(r)


def _archs(space, n, seed):
    rng = np.random.default_rng(seed)
    return [tuple(layer.choices[int(rng.integers(len(layer.choices)))] for layer in space.layers) for _ in range(n)]


@pytest.fixture()
def setup(tmp_path):
    path = synthetic_table(SPEC, tmp_path / "t.csv")
    return path, load_table(path), get_space(SPEC)


def test_per_op_model_recovers_a_linear_truth_and_the_table_applies_it(setup):
    path, table, space = setup
    truth = {op: s for op, s in zip(space.ops, np.linspace(0.3, 1.2, len(space.ops)))}
    fit_a, test_a = _archs(space, 40, 1), _archs(space, 30, 2)

    def measured(archs):
        d = design(table, space, archs)
        return d.by_op @ np.array([truth[op] for op in d.ops]) + d.fixed_ms - 0.25

    fit = fit_calibration(table, space, fit_a, measured(fit_a), test_a, measured(test_a), empty_graph_ms=0.02)
    c = fit.calibration
    assert c["model"].startswith("per-op")
    for op in space.ops:
        assert c["scale_by_op"][op] == pytest.approx(truth[op], rel=1e-3, abs=1e-3)
    assert c["offset_ms"] == pytest.approx(-0.25, abs=1e-3)
    assert fit.held_out[c["model"]]["max_err_pct"] < 0.1
    assert c["fit"]["held_out_after"]["mape_pct"] < c["fit"]["held_out_before"]["mape_pct"]
    assert c["fit"]["n_fit"] == 40 and c["fit"]["n_test"] == 30
    # the stored file is what LatencyTable reads: its predict_ms equals the fitted model's prediction
    write_calibration(path, c)
    t2 = load_table(path)
    assert t2.calibration["model"] == c["model"]
    want = measured(test_a)
    got = [t2.predict_ms(space.arch_keys(list(a))) for a in test_a]
    assert got == pytest.approx(list(want), rel=1e-3)
    # linear in the entries: prediction = offset + sum(entry_ms)
    keys = space.arch_keys(list(test_a[0]))
    assert t2.predict_ms(keys) == pytest.approx(t2.offset_ms + sum(t2.entry_ms(k) for k in keys))


def test_a_model_predicting_non_positive_latency_anywhere_in_the_space_is_never_chosen(setup):
    _, table, space = setup
    truth = {op: s for op, s in zip(space.ops, np.linspace(0.3, 1.2, len(space.ops)))}
    truth_cal = calibrated(table, {"version": CALIB_VERSION, "scale": 1.0, "scale_by_op": truth, "offset_ms": 0.0})
    # an offset that fits every sampled network but drives the cheapest architecture of the space below zero
    offset = -(lowest_prediction_ms(truth_cal, space) + 0.05)
    fit_a, test_a = _archs(space, 40, 5), _archs(space, 20, 6)

    def measured(archs):
        d = design(table, space, archs)
        return d.by_op @ np.array([truth[op] for op in d.ops]) + d.fixed_ms + offset

    y_fit, y_test = measured(fit_a), measured(test_a)
    assert (y_fit > 0).all() and (y_test > 0).all()
    fit = fit_calibration(table, space, fit_a, y_fit, test_a, y_test, models=("raw", "per-op"))
    # the unshrunk per-op model fits the sampled networks exactly, yet it is not eligible
    assert fit.held_out["per-op(ridge=0)"]["max_err_pct"] < 1e-3
    assert fit.cv_mape_pct["per-op(ridge=0)"] == float("inf")
    assert fit.calibration["model"] != "per-op(ridge=0)"
    assert lowest_prediction_ms(calibrated(table, fit.calibration), space) > 0


def test_lowest_prediction_is_the_brute_force_minimum(tmp_path):
    import itertools

    space = get_space("darts-3ops:C=8,cells=3,nodes=1")
    table = load_table(synthetic_table(space.spec, tmp_path / "t.csv"))
    brute = min(table.predict_ms(space.arch_keys(list(c))) for c in itertools.product(*(l.choices for l in space.layers)))
    assert lowest_prediction_ms(table, space) == pytest.approx(brute)


def test_offset_model_is_chosen_for_a_constant_overhead(setup):
    _, table, space = setup
    fit_a, test_a = _archs(space, 20, 3), _archs(space, 10, 4)
    # the network pays one fixed cost less per entry than the table: a pure offset
    y_fit = design(table, space, fit_a).raw_ms - 0.3
    y_test = design(table, space, test_a).raw_ms - 0.3
    fit = fit_calibration(table, space, fit_a, y_fit, test_a, y_test, models=("raw", "offset", "scale+offset"))
    assert fit.calibration["model"] in ("offset", "scale+offset")
    assert fit.calibration["offset_ms"] == pytest.approx(-0.3, abs=1e-6)
    assert fit.held_out["offset"]["max_err_pct"] < 1e-6
    assert fit.held_out["raw"]["bias_pct"] > 0


def test_overhead_model_uses_the_empty_graph_time(setup):
    _, table, space = setup
    d = design(table, space, _archs(space, 5, 5))
    p = fit_model("overhead", d, d.raw_ms, empty_graph_ms=0.01)
    assert p["offset_ms"] == pytest.approx(-(d.n_keys - 1) * 0.01)
    assert d.n_keys == len(space.arch_keys([layer.choices[0] for layer in space.layers]))
    with pytest.raises(ValueError, match="empty-graph"):
        fit_model("overhead", d, d.raw_ms)


def test_offset_never_removes_more_than_the_per_call_overheads(setup):
    _, table, space = setup
    d = design(table, space, _archs(space, 20, 8))
    y = d.raw_ms * 0.8 - 1.0  # a fit would want a large negative offset
    for model in ("offset", "scale+offset", "per-op"):
        p = fit_model(model, d, y, empty_graph_ms=0.01)
        assert p["offset_ms"] >= -(d.n_keys - 1) * 0.01 - 1e-9, model
    assert fit_model("offset", d, y)["offset_ms"] < -0.5  # unbounded without an empty-graph time


def test_cross_validation_prefers_the_true_model(setup):
    _, table, space = setup
    d = design(table, space, _archs(space, 30, 6))
    y = d.raw_ms * 0.7 + 0.05
    assert cross_validate("scale+offset", d, y) < 1e-6 < cross_validate("raw", d, y)
    assert predict(d, fit_model("scale+offset", d, y)) == pytest.approx(y)


def test_fit_and_test_sets_must_not_overlap(setup):
    _, table, space = setup
    a = _archs(space, 6, 7)
    y = design(table, space, a).raw_ms
    with pytest.raises(ValueError, match="leakage"):
        fit_calibration(table, space, a[:4], y[:4], a[3:], y[3:])
    with pytest.raises(ValueError, match="at least 3"):
        fit_calibration(table, space, a[:2], y[:2], a[2:], y[2:])


def test_p10_calibration_scales_the_p10_column(setup):
    path, table, space = setup
    fit_a, test_a = _archs(space, 12, 9), _archs(space, 6, 10)
    y_fit = design(table, space, fit_a, "p10").raw_ms * 1.5
    y_test = design(table, space, test_a, "p10").raw_ms * 1.5
    assert not np.allclose(design(table, space, fit_a, "p10").raw_ms, design(table, space, fit_a).raw_ms)
    fit = fit_calibration(table, space, fit_a, y_fit, test_a, y_test, models=("raw", "scale+offset"), stat="p10")
    assert fit.calibration["stat"] == "p10" and fit.calibration["model"] == "scale+offset"
    write_calibration(path, fit.calibration)
    t2 = load_table(path)
    got = [t2.predict_ms(space.arch_keys(list(a))) for a in test_a]
    assert got == pytest.approx(list(y_test), rel=1e-4)
    with pytest.raises(ValueError, match="stat"):
        design(table, space, fit_a, "p99")


def test_bad_calibration_files(setup):
    path, _, _ = setup
    with pytest.raises(ValueError, match="offset_ms"):
        check_calibration({"version": 1, "scale": 1.0, "offset_ms": "x"}, "c.json")
    with pytest.raises(ValueError, match="version"):
        check_calibration({"version": 9}, "c.json")
    with pytest.raises(ValueError, match="'stat'"):
        check_calibration({"version": 1, "scale": 1.0, "offset_ms": 0.0, "stat": "mean"}, "c.json")
    with pytest.raises(ValueError, match="non-negative"):
        write_calibration(path, {"version": 1, "scale": 1.0, "offset_ms": 0.0, "scale_by_op": {"skip": -1}})
    assert not calib_path(path).exists()
    write_calibration(path, {"version": 1, "scale": 2.0, "offset_ms": 0.5, "scale_by_op": {}})
    assert json.loads(calib_path(path).read_text())["scale"] == 2.0
