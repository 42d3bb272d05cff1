from pathlib import Path

import pytest
import torch

from profiler.spaces.keys import KEY_VERSION, op_key, parse_key
from profiler.spaces.network import build_network
from profiler.spaces.space import SPACES, get_space, space_from_json

GOLDEN = Path(__file__).parent / "golden" / "fbnet-cifar.keys.txt"


def test_golden_keys_of_fbnet_cifar():
    """An accidental change of the key function or of the space fails here."""
    assert get_space("fbnet-cifar").candidate_keys() == GOLDEN.read_text().split()


def test_key_round_trip_and_version():
    k = op_key("k5_e1_g2", (1, 24, 16, 16), 32, 2, {"kernel": 3})
    assert k.startswith(f"v{KEY_VERSION}|")
    p = parse_key(k)
    assert (p.op, p.input_shape, p.c_out, p.stride, p.params_dict()) == ("k5_e1_g2", (1, 24, 16, 16), 32, 2,
                                                                         {"kernel": 3})
    assert p.key == k


@pytest.mark.parametrize("bad", ["v0|k3_e1|1x3x4x4|c3|s1|float32", "v1|k3_e1|1x3x4|c3|s1|float32", "garbage"])
def test_malformed_keys_are_rejected(bad):
    with pytest.raises(ValueError, match="malformed op key"):
        parse_key(bad)


def test_fbnet_spaces_follow_the_paper():
    s = get_space("fbnet")
    assert len(s.layers) == 22 and len(s.ops) == 9
    assert [l.sites[0].c_out for l in s.layers][:6] == [16, 24, 24, 24, 24, 32]
    assert s.layers[-1].sites[0].c_out == 352
    assert s.fixed[0].stride == 2 and s.fixed[1].c_out == 1984
    c = get_space("fbnet-cifar")
    assert c.fixed[0].stride == 1 and c.fixed[1].c_out == 1504 and c.input_shape == (3, 32, 32)


def test_darts_spaces_and_subsets():
    s = get_space("darts-3ops:C=8,cells=6,nodes=3")
    assert s.ops == ("avg_pool_3x3", "skip_connect", "sep_conv_3x3")
    assert s.topology["reductions"] == (False, False, True, False, True, False)
    n_edges = sum(2 + i for i in range(3))
    assert len(s.layers) == 2 * n_edges  # normal and reduce rows, shared by the cells of each type
    assert len(get_space("darts-5ops").ops) == 5 and len(get_space("darts").ops) == 8
    with pytest.raises(ValueError, match="unknown parameter"):
        get_space("darts:widht=3")
    with pytest.raises(ValueError, match="unknown space"):
        get_space("nasbench")


@pytest.mark.parametrize("name", sorted(SPACES))
def test_space_json_round_trip_and_network(name):
    small = {"fbnet": "fbnet:input_size=64,width=0.25", "fbnet-cifar": "fbnet-cifar:width=0.25",
             "proxyless": "proxyless:input_size=32,width=0.25", "ofa-mbv3": "ofa-mbv3:input_size=32,width=0.25"}
    s = get_space(small.get(name, name + ":C=8,cells=3"))
    assert space_from_json(s.to_json()) == s
    assert get_space(s.spec) == s
    choices = [l.choices[i % len(l.choices)] for i, l in enumerate(s.layers)]
    net = build_network(s, choices).eval()
    assert net(torch.randn(2, *s.input_shape)).shape == (2, s.num_classes)
    keys = s.arch_keys(choices)
    assert set(keys) <= set(s.candidate_keys())
