"""The fused FBNet supernet (search.fused) against the per-op reference (search.supernet.MixedOp).

Both are built from the same seed, trained a few SGD steps side by side in float64, then compared: outputs,
gradients with respect to every weight and to the control (architecture / hypernetwork) parameters, and the
BatchNorm running statistics, all within a relative error of 1e-5, for every sampler. The space has stride-2
layers, channel-changing (1x1 conv) and identity skips, k3/k5, grouped and shuffled candidates and 1x1 inputs.
"""

from __future__ import annotations

import copy
import os

import pytest
import torch

from profiler.spaces.space import FBNET_OPS, SearchLayer, Site, Space, get_space
from search.config import ConfigError, ControlConfig, SearchConfig
from search.control import build_control
from search.costs import CostModel
from search.fused import FusedMixedOp, fusable, reference_state
from search.samplers import Sampler
from search.supernet import MixedOp, SearchModel, build_supernet

SPEC = "fbnet-cifar:input_size=8,width=0.25"
# (c_in, c_out, stride, input size): identity skip + residual, stride 2 (1x1-conv skip), a channel change at stride
# 1 on a 2x2 input (5x5 kernels cropped to 3x3), stride 2 onto 1x1, a 1x1 input
LAYERS = ((8, 8, 1, 4), (8, 16, 2, 4), (16, 24, 1, 2), (24, 32, 2, 2), (32, 32, 1, 1))


def small_space() -> Space:
    """A chain space of FBNet layers covering every kind of site, small enough for float64 (get_space's smallest
    FBNet space has 22 layers)."""
    layers = tuple(SearchLayer(f"L{i}", FBNET_OPS, (Site(f"L{i}", ci, co, s, (hw, hw)),))
                   for i, (ci, co, s, hw) in enumerate(LAYERS))
    fixed = (Site("stem", 3, 8, 1, (4, 4), op="stem", params=(("kernel", 3),)),
             Site("head", 32, 64, 1, (1, 1), op="head"), Site("classifier", 64, 10, 1, (1, 1), op="classifier"))
    return Space("fbnet-cifar", "chain", {}, (3, 4, 4), 10, layers, fixed)
REL = 1e-5
DEVICE = os.environ.get("HWNAS_TEST_DEVICE", "cpu")  # bench/gpu_check.sh runs the comparison on cuda
CASES = [("softmax", False), ("gumbel", False), ("gumbel", True), ("gumbel-hard", False), ("gumbel-hard", True),
         ("lean", False)]


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """Relative error; a tensor that is analytically zero (the bias gradient of a BatchNorm whose output only feeds
    another BatchNorm) is compared absolutely, at 1e-5 of 1e-8."""
    return float((a - b).norm() / b.norm().clamp_min(1e-8))


def _pair(sampler: str, per_sample: bool) -> tuple[SearchModel, SearchModel]:
    space = small_space()
    costs = CostModel(space, [])
    cfg = ControlConfig(kind="tradeoff", cost_terms=("params",), hypernet="mlp", hidden=8)
    control = build_control(cfg, len(space.layers), space.ops, costs, generator=torch.Generator().manual_seed(0))
    models = []
    for supernet in ("reference", "fused"):
        torch.manual_seed(0)
        models.append(SearchModel(space, copy.deepcopy(control), Sampler(sampler, per_sample), costs, ("params",),
                                  supernet=supernet).double().to(DEVICE))
    return models[0], models[1]


def _step(model: SearchModel, x: torch.Tensor, y: torch.Tensor, seed: int, train: bool):
    model.zero_grad(set_to_none=True)
    c = {k: v.double().to(DEVICE) for k, v in model.control.sample(torch.Generator().manual_seed(seed)).items()}
    r = model.run(x, c, 0.7, torch.Generator().manual_seed(seed))
    loss = torch.nn.functional.cross_entropy(r.out, y) + 0.1 * r.penalty
    loss.backward()
    if train:
        with torch.no_grad():
            for p in model.parameters():
                if p.grad is not None:
                    p -= 0.05 * p.grad
    return r.out.detach()


@pytest.mark.parametrize("sampler,per_sample", CASES)
def test_fused_equals_reference_outputs_gradients_and_statistics(sampler, per_sample):
    ref, fused = _pair(sampler, per_sample)
    assert sum(isinstance(m, FusedMixedOp) for m in fused.modules()) == len(ref.space.layers)
    assert not any(isinstance(m, FusedMixedOp) for m in ref.modules())
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 3, 4, 4, generator=g, dtype=torch.float64).to(DEVICE)
    y = torch.randint(0, 10, (4,), generator=g).to(DEVICE)
    for step in range(3):  # two SGD steps side by side, then the compared one
        a, b = _step(ref, x, y, step, train=step < 2), _step(fused, x, y, step, train=step < 2)
        assert _rel(b, a) <= REL
    want, got = ref.net.state_dict(), reference_state(fused.net)  # weights after two steps, running statistics
    assert set(got) == {k for k in want if "num_batches" not in k}
    for k, v in got.items():
        assert _rel(v, want[k]) <= REL, k
    grads = reference_state(fused.net, "grad")
    for k, p in ref.net.named_parameters():
        want_g = torch.zeros_like(p) if p.grad is None else p.grad
        assert _rel(grads[k], want_g) <= REL, k
    for (k, p), q in zip(ref.control.named_parameters(), fused.control.parameters()):
        assert p.grad is not None and _rel(q.grad, p.grad) <= REL, k
    ref.eval()
    fused.eval()
    with torch.no_grad():
        c = {k: v.double().to(DEVICE) for k, v in ref.control.sample(torch.Generator().manual_seed(9)).items()}
        assert _rel(fused.run(x, c, 0.7, None, deterministic=True).out,
                    ref.run(x, c, 0.7, None, deterministic=True).out) <= REL


def test_lean_fused_layer_runs_every_op_alone_as_the_reference_does():
    space = get_space(SPEC)
    for site in (space.layers[1].sites[0], space.layers[2].sites[0]):  # stride 2 (conv skip); identity skip
        torch.manual_seed(0)
        ref = MixedOp(site, space.ops).double()
        torch.manual_seed(0)
        fused = FusedMixedOp(site, space.ops).double()
        x = torch.randn(3, site.c_in, *site.input_hw, dtype=torch.float64)
        for k in range(len(space.ops)):
            assert _rel(fused.single(x, k), ref.ops[k](x)) <= REL


def test_fused_runs_in_float32_and_only_where_it_applies():
    space = small_space()  # (22 BatchNormed layers on 1x1 inputs amplify float32 rounding far beyond 1e-4)
    torch.manual_seed(0)
    ref = build_supernet(space, "reference")
    torch.manual_seed(0)
    fused = build_supernet(space, "fused")
    w = torch.softmax(torch.randn(len(space.layers), len(space.ops)), -1)
    x = torch.randn(4, 3, 4, 4)
    assert _rel(fused(x, w), ref(x, w)) <= 1e-4
    assert not fusable(get_space("darts-3ops:C=8,cells=5").ops)
    assert not any(isinstance(m, FusedMixedOp) for m in build_supernet(get_space("darts-3ops:C=8,cells=5")).modules())


def test_supernet_config_value_is_checked():
    with pytest.raises(ConfigError, match="supernet"):
        SearchConfig(preset="x", supernet="fast").validate()


def test_a_run_config_from_before_the_fused_supernet_loads_as_the_per_op_layout():
    """config.json files without ``supernet`` were written by per-op runs: they must resume with the reference path."""
    from search.config import config_from_dict, config_to_dict, preset

    data = config_to_dict(preset("hwnas", space="fbnet-cifar:input_size=16,width=0.25", tables=("t.csv",)))
    assert config_from_dict(data).supernet == "fused"
    data.pop("supernet")
    assert config_from_dict(data).supernet == "reference"
