"""One latency model: on random architectures and random probability tensors, every caller that predicts a latency
agrees with :class:`profiler.latency.model.LatencyModel` (raw and calibrated, median and p10, batch 1 and 2, chain and
cell spaces, and a space that substitutes ops at some layers)."""

from __future__ import annotations

import types
from pathlib import Path

import numpy as np
import pytest
import torch

from profiler.latency.calibrate import _to_file_params, design, lowest_prediction_ms, predict
from profiler.latency.model import MissingEntries, build_model
from profiler.latency.plots import latency_grid
from profiler.latency.predict import predict_with
from profiler.latency.tables import SCHEMA_VERSION, LatencyTable, load_table
from profiler.latency.verify import layer_costs, raw_predict_ms
from profiler.spaces.arch import make_arch, predict_ms
from profiler.spaces.keys import KEY_VERSION, key_op
from profiler.spaces.space import get_space
from search.control import ControlSpace
from search.costs import CostModel
from search.derive import Deriver

SPACES = ("fbnet-cifar:input_size=16,width=0.25", "darts-3ops:C=8,cells=5", "proxyless:input_size=32,width=0.25")


def synthetic_table(spec: str, batch: int, seed: int, calibrated: bool) -> LatencyTable:
    """A table of ``spec`` with random (finite, positive) medians and p10s, and optionally a random calibration."""
    space = get_space(spec)
    rng = np.random.default_rng(seed)
    rows = {}
    for key in space.candidate_keys(batch):
        med = float(rng.uniform(0.01, 1.0))
        rows[key] = {"key": key, "status": "ok", "median_ms": med, "p10_ms": med * float(rng.uniform(0.5, 1.0)),
                     "variant": ""}
    cal = None
    if calibrated:
        ops = sorted({key_op(k) for k in rows})
        cal = {"version": 1, "model": "per-op", "stat": str(rng.choice(["median", "p10"])),
               "scale": float(rng.uniform(0.5, 1.5)), "offset_ms": float(rng.uniform(-0.05, 0.05)),
               "scale_by_op": {op: float(rng.uniform(0.5, 2.0)) for op in ops[: len(ops) // 2]}}
    meta = {"schema_version": SCHEMA_VERSION, "key_version": KEY_VERSION, "device": "cpu", "space": space.spec,
            "batch": batch}
    return LatencyTable(Path(f"synthetic-{seed}.csv"), meta, rows, cal)


def random_choices(space, rng) -> list[str]:
    return [layer.choices[int(rng.integers(len(layer.choices)))] for layer in space.layers]


def one_hot(space, choices) -> torch.Tensor:
    p = torch.zeros(len(space.layers), len(space.ops), dtype=torch.float64)
    for i, (layer, op) in enumerate(zip(space.layers, choices)):
        p[i, layer.choices.index(op)] = 1.0
    return p


def check_every_caller(space, table: LatencyTable, rng, n: int = 6) -> None:
    model = table.model(space)
    raw = table.model(space, None)
    costs = CostModel(space, [table])
    deriver = Deriver(types.SimpleNamespace(space=space, table=table, costs=costs, control_kind="static",
                                            control_space=lambda: ControlSpace("static"), choices=lambda c: []))
    for _ in range(n):
        ch = random_choices(space, rng)
        want = model.exact(ch)
        assert table.predict_ms(space.arch_keys(ch, table.batch)) == pytest.approx(want, rel=1e-12)
        assert costs.latency_ms(ch) == pytest.approx(want, rel=1e-12)
        assert deriver.price(tuple(ch))[0] == pytest.approx(want, rel=1e-12)
        assert float(costs.expected_latency_ms(one_hot(space, ch).float())) == pytest.approx(want, rel=1e-5)
        assert lowest_prediction_ms(table, space) <= want + 1e-12
        raw_want = raw.exact(ch)
        assert raw_predict_ms(table, space, ch) == pytest.approx(raw_want, rel=1e-12)
        assert raw_want == pytest.approx(raw.const_ms + sum(c[op] for c, op in zip(layer_costs(table, space), ch)))
        if table.batch == 1:
            assert predict_ms(space, ch, table) == pytest.approx(want, rel=1e-12)
    # a random probability tensor: the model's expectation, the cost tensors' and the linear sum agree, with grad
    logits = torch.randn(len(space.layers), len(space.ops), dtype=torch.float64, requires_grad=True)
    probs = torch.softmax(logits, dim=-1)
    e = model.expected(probs)
    lin = model.const_ms + float((probs.detach().numpy() * model.entries).sum())
    assert float(e.detach()) == pytest.approx(lin, rel=1e-12)
    assert float(costs.expected_latency_ms(probs.detach().float())) == pytest.approx(lin, rel=1e-5)
    e.backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0
    # the cheapest architecture is the lowest prediction
    assert model.exact(model.cheapest()) == pytest.approx(model.lowest(), rel=1e-12)
    assert lowest_prediction_ms(table, space) == pytest.approx(model.lowest(), rel=1e-12)


@pytest.mark.parametrize("spec", SPACES)
@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("calibrated", [False, True])
def test_every_caller_agrees_with_the_model(spec, batch, calibrated):
    seed = SPACES.index(spec) * 10 + batch * 2 + calibrated
    table = synthetic_table(spec, batch, seed, calibrated)
    check_every_caller(get_space(spec), table, np.random.default_rng(seed))


@pytest.mark.parametrize("spec", SPACES[:2])
def test_arch_prediction_and_predict_use_the_model(spec):
    space = get_space(spec)
    table = synthetic_table(spec, 1, 7, True)
    rng = np.random.default_rng(3)
    for _ in range(2):
        ch = random_choices(space, rng)
        arch = make_arch(space, ch, table)
        assert arch.predicted_ms == pytest.approx(table.model(space).exact(ch), rel=1e-12)
        p = predict_with(arch, table)
        assert p.calibrated_ms == pytest.approx(arch.predicted_ms, rel=1e-12)
        assert p.raw_ms == pytest.approx(table.model(space, None).exact(ch), rel=1e-12)


@pytest.mark.parametrize("spec", SPACES)
@pytest.mark.parametrize("stat", ["median", "p10"])
def test_calibration_design_agrees_with_the_model(spec, stat):
    """The fit's design matrix and parameters predict what the model built from the stored calibration predicts."""
    space = get_space(spec)
    table = synthetic_table(spec, 1, 11, False)
    rng = np.random.default_rng(5)
    archs = [random_choices(space, rng) for _ in range(6)]
    params = {"scale": 1.0, "offset_ms": -0.01,
              "scale_by_op": {**{op: float(rng.uniform(0.5, 2)) for op in space.ops}, "__fixed__": 1.3}}
    stored = {"version": 1, "stat": stat, **_to_file_params(params, space)}
    model = build_model(space, table, stored)
    got = predict(design(table, space, archs, stat), params)
    assert np.allclose(got, [model.exact(a) for a in archs], rtol=1e-12)
    assert np.allclose(design(table, space, archs, stat).raw_ms, [table.model(space, None, stat).exact(a) - 0.0
                                                                  for a in archs], rtol=1e-12)


def test_plot_grid_is_the_models_grid():
    spec = SPACES[2]  # proxyless: the zero column is substituted at each stage's first block (NaN in the grid)
    space = get_space(spec)
    table = synthetic_table(spec, 1, 13, True)
    grid, _, ops = latency_grid(table, space)
    costs = layer_costs(table, space)
    for i, layer in enumerate(space.layers):
        for j, op in enumerate(ops):
            if layer.choices[j] == op:
                assert grid[i, j] == pytest.approx(costs[i][op], rel=1e-12)
            else:
                assert np.isnan(grid[i, j])
    assert np.isnan(grid).any() and np.isfinite(grid).any()


def test_a_missing_key_is_named_and_cells_stay_nan():
    spec = SPACES[0]
    space = get_space(spec)
    table = synthetic_table(spec, 1, 17, False)
    ch = [layer.choices[0] for layer in space.layers]
    gone = space.layers[1].sites[0].key(ch[1])
    del table.rows[gone]
    model = table.model(space)
    with pytest.raises(MissingEntries, match=f"lacks 1 key.*{gone.replace('|', '.')}"):
        model.exact(ch)
    with pytest.raises(MissingEntries):
        model.expected(torch.full((len(space.layers), len(space.ops)), 1 / len(space.ops)))
    assert np.isnan(model.entries[1, 0]) and np.isfinite(model.entries[0, 0])


def test_a_measured_table_agrees(small_tables):
    spec = SPACES[0]
    check_every_caller(get_space(spec), load_table(small_tables[spec]), np.random.default_rng(1), n=3)
