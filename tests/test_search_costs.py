"""Cost tensors: expected cost of one-hot probabilities equals the table's sum; bad tables are refused."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from profiler.latency.tables import load_table
from profiler.spaces.network import build_network
from profiler.spaces.ops import count_params
from profiler.spaces.space import get_space
from search.costs import CostError, CostModel, open_table

SPACES = ("fbnet-cifar:input_size=16,width=0.25", "darts-3ops:C=8,cells=5")


def _one_hot(space, choices) -> torch.Tensor:
    p = torch.zeros(len(space.layers), len(space.ops))
    for i, op in enumerate(choices):
        p[i, space.ops.index(op)] = 1.0
    return p


@pytest.mark.parametrize("spec", SPACES)
def test_one_hot_expected_latency_equals_lut_sum(spec, small_tables):
    space = get_space(spec)
    table = open_table(small_tables[spec], space)
    costs = CostModel(space, [table])
    g = torch.Generator().manual_seed(1)
    for _ in range(3):
        choices = [space.ops[int(i)] for i in torch.randint(len(space.ops), (len(space.layers),), generator=g)]
        probs = _one_hot(space, choices)
        lut_sum = table.predict_ms(space.arch_keys(choices))
        assert float(costs.expected_latency_ms(probs)) == pytest.approx(lut_sum, rel=1e-5)
        assert costs.latency_ms(choices) == pytest.approx(lut_sum, rel=1e-12)
        # params of the one-hot expectation = params of the network built from those choices
        assert float(costs.expected_params(probs)) == pytest.approx(count_params(build_network(space, choices)),
                                                                    rel=1e-6)
        assert costs.params(choices) == count_params(build_network(space, choices))


def test_expected_cost_is_a_differentiable_dot_product(small_tables):
    spec = SPACES[0]
    space = get_space(spec)
    costs = CostModel(space, [load_table(small_tables[spec])])
    logits = torch.zeros(len(space.layers), len(space.ops), requires_grad=True)
    e = costs.expected_latency_ms(torch.softmax(logits, dim=-1))
    e.backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0
    uniform = float(e.detach())
    assert uniform == pytest.approx(costs.uniform("latency"), rel=1e-5)


def test_table_of_another_space_is_refused(small_tables):
    with pytest.raises(CostError, match=r"table is for space 'darts-3ops:C=8,cells=5', not 'fbnet-cifar.*"
                                        r"hwprof measure --device cpu --space fbnet-cifar"):
        open_table(small_tables[SPACES[1]], get_space(SPACES[0]))


def test_missing_keys_name_count_and_measure_command(small_tables, tmp_path):
    spec = SPACES[1]
    src = small_tables[spec]
    dst = tmp_path / "partial.csv"
    lines = src.read_text().splitlines(keepends=True)
    dst.write_text("".join(lines[:-3]))  # drop the last 3 rows
    shutil.copy(src.with_suffix(".meta.json"), dst.with_suffix(".meta.json"))
    with pytest.raises(CostError) as e:
        open_table(dst, get_space(spec))
    msg = str(e.value)
    assert "\n" not in msg
    assert "3 of the keys" in msg and "v1|" in msg
    assert f"hwprof measure --device cpu --space {spec} --out {dst}" in msg
    assert json.loads(dst.with_suffix(".meta.json").read_text())["space"] == spec
