"""Control modules, samplers, temperature schedules and loss forms (unit tests on synthetic tensors)."""

from __future__ import annotations

import math

import pytest
import torch

from profiler.latency.tables import load_table
from profiler.spaces.space import get_space
from search.config import PRESETS, TemperatureConfig
from search.control import ControlError, LambdaControl, SimplexOpsControl, StaticControl, TradeoffControl
from search.costs import CostModel
from search.losses import search_loss
from search.samplers import Sampler, entropy_weight, mean_entropy, temperature
from search.supernet import MixedOp

SPEC = "darts-3ops:C=8,cells=5"


@pytest.fixture(scope="module")
def costs(small_tables):
    space = get_space(SPEC)
    return CostModel(space, [load_table(small_tables[SPEC])])


@pytest.mark.parametrize("hypernet", ["pwl", "mlp"])
def test_gradient_reaches_hypernetwork_through_latency_term(costs, hypernet):
    L, K = len(costs.space.layers), len(costs.space.ops)
    terms = ("params", "latency")
    ctl = TradeoffControl(L, costs.space.ops, terms, [costs.uniform(t) for t in terms], 0.01, 10.0, hypernet)
    c = ctl.value({"kappa": 3.0, "S": [0.0, 1.0]})  # latency direction only
    probs = torch.softmax(ctl(c), dim=-1)
    expected = {t: costs.expected(t, probs) for t in terms}
    pen = ctl.penalty(c, probs, expected)
    assert float(pen.detach()) == pytest.approx(3.0 * float(expected["latency"].detach()) / costs.uniform("latency"),
                                                rel=1e-5)
    pen.backward()
    grads = {n: p.grad for n, p in ctl.named_parameters()}
    assert all(g is not None for g in grads.values())
    main = "anchors" if hypernet == "pwl" else "fc2.weight"
    assert grads[main].abs().sum() > 0
    # a descent step on the penalty lowers the expected latency
    with torch.no_grad():
        for p in ctl.parameters():
            p -= 1.0 * p.grad
    after = costs.expected("latency", torch.softmax(ctl(c), dim=-1))
    assert float(after.detach()) < float(expected["latency"].detach())


def test_lambda_control_interpolates_anchors_and_reaches_pivots(costs):
    L, K = len(costs.space.layers), len(costs.space.ops)
    ctl = LambdaControl(L, costs.space.ops, ("params",), [costs.uniform("params")], 0.01, 1.0, anchors=3)
    with torch.no_grad():
        ctl.anchors.copy_(torch.arange(3.0).view(3, 1, 1).expand(3, L, K))
    assert float(ctl(ctl.value({"lambda": 0.01}))[0, 0].detach()) == pytest.approx(0.0)
    assert float(ctl(ctl.value({"lambda": 1.0}))[0, 0].detach()) == pytest.approx(2.0)
    mid = ctl(ctl.value({"lambda": 0.1}))  # normalised 0.5 = the middle pivot with equal gaps
    assert float(mid[0, 0].detach()) == pytest.approx(1.0, abs=1e-5)
    ctl(ctl.value({"lambda": 0.05})).sum().backward()
    assert ctl.gaps.grad is not None and ctl.gaps.grad.abs().sum() > 0
    with pytest.raises(ControlError, match="lambda"):
        ctl.value({"lambda": -1})


def test_simplex_ops_weights_nearest_pivot_most():
    ctl = SimplexOpsControl(4, ("a", "b", "c"), kappa=50.0, sigma=0.25)
    w = ctl.mixing(torch.tensor([0.8, 0.1, 0.1]))
    assert int(w.argmax()) == 0  # the public code's +sign would pick the farthest pivot
    probs = torch.full((4, 3), 1 / 3)
    c = ctl.value({"S": [1, 0, 0]})
    assert float(ctl.penalty(c, probs, {})) == pytest.approx(50.0 * 4 / 3, rel=1e-6)


def test_static_control_is_a_registered_parameter():
    ctl = StaticControl(5, ("a", "b"))
    assert [n for n, _ in ctl.named_parameters()] == ["alpha"]
    assert "alpha" in ctl.state_dict()
    with pytest.raises(ControlError):
        ctl.value({"kappa": 1.0})


@pytest.mark.parametrize("cfg", [TemperatureConfig("exponential", 5.0, 0.956),
                                 TemperatureConfig("linear", 1.0, slope=0.08, floor=0.1),
                                 TemperatureConfig("linear", 1.0, floor=0.2),
                                 TemperatureConfig("constant", 1.0)])
def test_temperature_stays_positive(cfg):
    taus = [temperature(cfg, e, 200) for e in range(200)]
    assert all(t >= cfg.floor > 0 for t in taus)
    assert all(a >= b for a, b in zip(taus, taus[1:]))
    if cfg.schedule == "exponential":
        assert taus[10] == pytest.approx(5.0 * 0.956 ** 10)
    if cfg.slope == 0.08:
        assert taus[13] == pytest.approx(0.1)  # 1 - 0.08*13 < 0 without the floor


@pytest.mark.parametrize("name", list(PRESETS))
@pytest.mark.parametrize("epochs", [1, 2, 6, 10, 37, 90])
def test_preset_temperature_goes_t0_to_t_end_over_the_run(name, epochs):
    t = PRESETS[name]().temperature
    taus = [temperature(t, e, epochs) for e in range(epochs)]
    if t.schedule == "constant":
        assert taus == [t.t0] * epochs
        return
    assert taus[-1] == pytest.approx(t.t_end)  # decided at the last epoch, whatever the run's length
    if epochs > 1:
        assert taus[0] == pytest.approx(t.t0)
    assert all(a >= b for a, b in zip(taus, taus[1:]))


def test_lean_sampler_runs_only_the_sampled_op_and_carries_gradient():
    space = get_space(SPEC)
    site = space.layers[3].sites[0]
    mixed = MixedOp(site, space.ops)
    mixed.lean = True
    calls = []
    for k, op in enumerate(mixed.ops):
        op.register_forward_hook(lambda m, i, o, k=k: calls.append(k))
    logits = torch.zeros(len(space.ops), requires_grad=True)
    w = Sampler("lean")(logits, 1.0, torch.Generator().manual_seed(0))
    assert sorted(w.detach().tolist()) == [0.0, 0.0, 1.0]
    y = mixed(torch.randn(2, site.c_in, *site.input_hw), w)
    assert calls == [int(w.argmax())]
    y.square().mean().backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0


def test_gumbel_samplers_are_seeded_and_shaped():
    logits = torch.zeros(4, 3)
    a = Sampler("gumbel")(logits, 1.0, torch.Generator().manual_seed(3))
    b = Sampler("gumbel")(logits, 1.0, torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and torch.allclose(a.sum(-1), torch.ones(4))
    h = Sampler("gumbel-hard")(logits, 1.0, torch.Generator().manual_seed(3))
    assert torch.equal(h.detach().sum(-1), torch.ones(4)) and set(h.detach().unique().tolist()) <= {0.0, 1.0}
    ps = Sampler("gumbel", per_sample=True)(logits, 1.0, torch.Generator().manual_seed(3), n=5)
    assert ps.shape == (5, 4, 3) and not torch.allclose(ps[0], ps[1])


def test_fbnet_loss_is_log_to_the_beta_not_log_of_power():
    ce = torch.tensor(2.0)
    lat_ms = torch.tensor(3.0)
    got = search_loss("fbnet", ce, torch.tensor(0.0), lat_ms, alpha=0.2, beta=0.6)
    assert float(got) == pytest.approx(2.0 * 0.2 * math.log(3000.0) ** 0.6)
    assert float(got) != pytest.approx(2.0 * 0.2 * math.log(3000.0 ** 0.6))
    prox = search_loss("proxyless", ce, torch.tensor(0.0), lat_ms, alpha=0.2, beta=0.3, ref_latency_ms=3.0)
    assert float(prox) == pytest.approx(2.0 * 0.2)
    assert float(search_loss("additive", ce, torch.tensor(0.5), None)) == pytest.approx(2.5)


@pytest.mark.parametrize("epochs,warmup", [(1, 0), (2, 0), (10, 0), (10, 1), (37, 3), (90, 0)])
def test_entropy_weight_ramps_from_zero_to_its_value_at_the_last_epoch(epochs, warmup):
    ws = [entropy_weight(0.4, e, epochs, warmup) for e in range(epochs)]
    assert ws[-1] == pytest.approx(0.4)
    assert all(w == 0.0 for w in ws[:warmup])
    if epochs - warmup > 1:
        assert ws[warmup] == 0.0
    assert all(a <= b for a, b in zip(ws, ws[1:]))
    assert [entropy_weight(0.0, e, epochs, warmup) for e in range(epochs)] == [0.0] * epochs


def test_mean_entropy_is_log_k_at_uniform_and_zero_when_decided():
    assert float(mean_entropy(torch.full((3, 4), 0.25))) == pytest.approx(math.log(4))
    assert float(mean_entropy(torch.eye(4)[:3])) == pytest.approx(0.0, abs=1e-9)
    p = torch.softmax(torch.randn(5, 9, generator=torch.Generator().manual_seed(0)), dim=-1)
    assert 0 < float(mean_entropy(p)) < math.log(9)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_control_space_is_what_the_control_samples_and_what_derive_and_the_grid_use(costs, name):
    """One contract: the names a control samples are the space's names, the magnitude it samples lies in the
    space's bounds, S has the space's dimension, and derive's check and the metrics grid read the same space."""
    from search.control import build_control
    from search.derive import DeriveError, check_control
    from search.train import control_grid

    cfg = PRESETS[name]().control
    layers, ops = len(costs.space.layers), costs.space.ops
    control = build_control(cfg, layers, ops, costs, torch.Generator().manual_seed(0))
    cs = control.space()
    assert cs.kind == control.kind
    for _ in range(5):
        c = control.sample(torch.Generator().manual_seed(_))
        assert sorted(c) == sorted(cs.names)
        if cs.magnitude:
            assert cs.bounds[0] <= float(c[cs.magnitude]) <= cs.bounds[1]
        if cs.s_dim:
            assert c["S"].numel() == cs.s_dim
    run = type("R", (), {"control_space": lambda self: cs, "control_kind": cs.kind})()
    good = {**({cs.magnitude: float(cs.bounds[0])} if cs.magnitude else {}),
            **({"S": [1.0] + [0.0] * (cs.s_dim - 1)} if cs.s_dim else {})}
    assert sorted(check_control(run, good)) == sorted(cs.names)
    with pytest.raises(DeriveError):
        check_control(run, {**good, "nonsense": 1.0})
    if cs.magnitude:
        with pytest.raises(DeriveError, match="outside the run's trained range"):
            check_control(run, {**good, cs.magnitude: float(cs.bounds[1]) * 2})
    grid = control_grid(control)
    assert all(sorted(v) == sorted(cs.names) for v in grid)
    assert cs.as_dict()["cost_terms"] == list(cs.cost_terms)
