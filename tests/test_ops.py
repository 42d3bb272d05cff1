"""Parametrized over the registry: add an op and it is tested with no new test code."""

import numpy as np
import onnxruntime as ort
import pytest
import torch

from profiler.measuring.export import export_key
from profiler.spaces.keys import op_key
from profiler.spaces.ops import OPS, build_op, count_params, register_op


def _case(name: str):
    spec = OPS[name]
    if spec.output == "flat":
        return [((1, 32, 1, 1), 10, 1)]  # classifiers of a pooled (or 1x1) feature map
    if spec.same_shape_only or spec.output == "pooled":
        return [((1, 8, 8, 8), 8, 1)]
    if spec.family == "darts" or name in ("preprocess",):
        return [((1, 8, 8, 8), 8, 1), ((1, 8, 8, 8), 8, 2)]
    return [((1, 8, 8, 8), 8, 1), ((1, 8, 8, 8), 16, 2)]


CASES = [(n, shape, c_out, s) for n in sorted(OPS) for shape, c_out, s in _case(n)]


def _expected_shape(name, shape, c_out, stride):
    if OPS[name].output == "flat":
        return (shape[0], c_out)
    if OPS[name].output == "pooled":
        return (shape[0], c_out, 1, 1)
    h = (shape[2] + stride - 1) // stride
    return (shape[0], c_out, h, h)


@pytest.mark.parametrize("name,shape,c_out,stride", CASES)
def test_op_builds_with_right_shape(name, shape, c_out, stride):
    m = build_op(name, shape[1], c_out, stride).eval()
    y = m(torch.randn(*shape))
    assert tuple(y.shape) == _expected_shape(name, shape, c_out, stride)


@pytest.mark.parametrize("name,shape,c_out,stride", CASES)
def test_op_exports_and_onnxruntime_agrees(name, shape, c_out, stride, tmp_path):
    key = op_key(name, shape, c_out, stride, OPS[name].defaults)
    res = export_key(key, tmp_path)
    assert res.path.stat().st_size > 0
    assert res.max_abs_err < 1e-4
    sess = ort.InferenceSession(str(res.path), providers=["CPUExecutionProvider"])
    x = np.ones(shape, np.float32)
    out = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    assert out.shape == _expected_shape(name, shape, c_out, stride)
    # self-contained: no external data file next to the model
    assert not list(tmp_path.glob("*.data"))


def test_duplicate_registration_is_an_error():
    with pytest.raises(ValueError, match="already registered"):
        register_op("k3_e6", "fbnet")(lambda c_in, c_out, stride: torch.nn.Identity())


def test_unknown_op_names_the_registered_ones():
    with pytest.raises(KeyError, match="registered ops"):
        build_op("k7_e9", 8, 8, 1)


def test_fbnet_block_residual_and_skip():
    assert build_op("k3_e6", 16, 16, 1).residual
    assert not build_op("k3_e6", 16, 24, 2).residual
    assert isinstance(build_op("skip", 16, 16, 1), torch.nn.Identity)
    assert count_params(build_op("skip", 16, 24, 2)) > 0


def test_grouped_block_shuffles_channels():
    m = build_op("k3_e1_g2", 16, 16, 1)
    kinds = [type(x).__name__ for x in m.body]
    assert "ChannelShuffle" in kinds
    assert m.body[0][0].groups == 2


def test_op_output_shape_property_matches_the_module():
    for name, shape, c_out, stride in CASES:
        assert OPS[name].output_shape(shape, c_out, stride) == _expected_shape(name, shape, c_out, stride)


def test_mbconv_blocks_follow_proxyless_and_ofa():
    from profiler.spaces.ops import MBConv, SqueezeExcite

    e1 = build_op("mb_k3_e1", 16, 16, 1)  # expansion 1: no inverted bottleneck, residual kept
    assert e1.residual and sum(isinstance(m, torch.nn.Conv2d) for m in e1.body) == 2
    b = build_op("mb_k7_e6", 24, 40, 2, se=1, act="hswish")
    assert isinstance(b, MBConv) and not b.residual
    dw = [m for m in b.body if isinstance(m, torch.nn.Conv2d) and m.groups > 1][0]
    assert dw.kernel_size == (7, 7) and dw.in_channels == 24 * 6 and dw.stride == (2, 2)
    se = [m for m in b.body if isinstance(m, SqueezeExcite)][0]
    assert se.reduce.out_channels == 40  # make_divisible(144 // 4, 8)
    assert any(isinstance(m, torch.nn.Hardswish) for m in b.body)
    assert any(isinstance(m, torch.nn.ReLU6) for m in build_op("mb_k3_e3", 8, 8, 1).body)  # ProxylessNAS default


def test_style_params_reach_only_the_ops_that_take_them():
    from profiler.spaces.ops import get_op

    assert get_op("skip").own_params({"act": "hswish", "se": 1}) == {}
    assert get_op("mb_k3_e3").own_params({"act": "hswish", "se": 1}) == {"act": "hswish", "se": 1}
    assert isinstance(build_op("skip", 8, 8, 1, act="relu", se=1), torch.nn.Identity)
    with pytest.raises(TypeError):
        build_op("skip", 8, 8, 1, kernel=3)  # any other unknown param is still an error
    with pytest.raises(ValueError, match="exists only where stride is 1"):
        build_op("zero", 8, 16, 2)
    with pytest.raises(ValueError, match="activation 'gelu'"):
        build_op("mb_k3_e3", 8, 8, 1, act="gelu")
