"""The op registry: every candidate operation, built by one factory signature.

Every factory is ``(c_in, c_out, stride, **params) -> nn.Module``. Ops are registered by name with
:func:`register_op`; a duplicate name is an error. Properties that other code needs (is it a pooling op, does it
have weights, which family) live on :class:`OpSpec`, never in substring checks on names.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

Factory = Callable[..., nn.Module]


@dataclass(frozen=True)
class OpSpec:
    name: str
    factory: Factory
    family: str  # "fbnet" | "darts" | "mbconv" | "fixed"
    defaults: dict[str, Any] = field(default_factory=dict)
    kind: str = "conv"  # "conv" | "pool" | "identity" | "zero" | "fixed"
    doc: str = ""
    output: str = "same"  # "same": N x c_out x H/s x W/s | "pooled": N x c_out x 1 x 1 | "flat": N x c_out
    same_shape_only: bool = False  # exists only where stride == 1 and c_in == c_out (e.g. ProxylessNAS' zero)

    def accepts(self, param: str) -> bool:
        """Whether the factory takes ``param`` (a registered default or a keyword of its signature)."""
        if param in self.defaults:
            return True
        sig = inspect.signature(self.factory)
        return param in sig.parameters or any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values())

    def own_params(self, params: dict[str, Any]) -> dict[str, Any]:
        """``params`` without the site style params (:data:`STYLE_PARAMS`) this op does not use; the key and the
        factory both see exactly this."""
        return {k: v for k, v in params.items() if k not in STYLE_PARAMS or self.accepts(k)}

    def build(self, c_in: int, c_out: int, stride: int, **params: Any) -> nn.Module:
        if self.same_shape_only and (stride != 1 or c_in != c_out):
            raise ValueError(f"op {self.name!r} exists only where stride is 1 and c_in == c_out, got {c_in} -> "
                             f"{c_out}, stride {stride}")
        merged = {**self.defaults, **self.own_params(params)}
        return self.factory(c_in, c_out, stride, **merged)

    def output_shape(self, input_shape: tuple[int, ...], c_out: int, stride: int) -> tuple[int, ...]:
        """Shape of the op's output for an N x C x H x W input (all spatial ops pad 'same')."""
        n, _, h, w = input_shape
        if self.output == "flat":
            return (n, c_out)
        if self.output == "pooled":
            return (n, c_out, 1, 1)
        return (n, c_out, (h + stride - 1) // stride, (w + stride - 1) // stride)


OPS: dict[str, OpSpec] = {}

# Site style params: a space may set them on every site of a stage (OFA chooses squeeze-excite and the activation
# per stage). An op that does not use one (an identity skip) ignores it, in its key and in its factory alike; any
# other unknown param is an error.
STYLE_PARAMS = ("act", "se")


def register_op(name: str, family: str, kind: str = "conv", *, output: str = "same", same_shape_only: bool = False,
                **defaults: Any) -> Callable[[Factory], Factory]:
    """Decorator: register ``factory`` under ``name``. Registering a name twice raises ``ValueError``."""

    def deco(factory: Factory) -> Factory:
        if name in OPS:
            raise ValueError(f"op {name!r} is already registered (by {OPS[name].factory.__qualname__})")
        OPS[name] = OpSpec(name, factory, family, dict(defaults), kind, (factory.__doc__ or "").strip(), output,
                           same_shape_only)
        return factory

    return deco


def get_op(name: str) -> OpSpec:
    try:
        return OPS[name]
    except KeyError:
        raise KeyError(f"unknown op {name!r}; registered ops: {', '.join(sorted(OPS))}") from None


def build_op(name: str, c_in: int, c_out: int, stride: int, **params: Any) -> nn.Module:
    return get_op(name).build(c_in, c_out, stride, **params)


def ops_of_family(family: str) -> list[str]:
    return [n for n, s in OPS.items() if s.family == family]


# --------------------------------------------------------------------------------------------------- blocks


class ChannelShuffle(nn.Module):
    def __init__(self, groups: int):
        super().__init__()
        self.groups = groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        g = self.groups
        return x.reshape(n, g, c // g, h, w).transpose(1, 2).reshape(n, c, h, w)


def conv_bn(c_in: int, c_out: int, k: int, stride: int = 1, groups: int = 1, dilation: int = 1, relu: bool = True,
            affine: bool = True) -> nn.Sequential:
    pad = dilation * (k - 1) // 2
    layers: list[nn.Module] = [
        nn.Conv2d(c_in, c_out, k, stride, pad, dilation=dilation, groups=groups, bias=False),
        nn.BatchNorm2d(c_out, affine=affine),
    ]
    if relu:
        layers.append(nn.ReLU(inplace=False))
    return nn.Sequential(*layers)


class _Residual(nn.Module):
    """A block of ``body`` whose input is added to its output where ``residual`` (stride 1, c_in == c_out)."""

    body: nn.Module
    residual: bool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.body(x)
        return x + y if self.residual else y


class InvertedResidual(_Residual):
    """FBNet block: grouped 1x1 expand -> BN -> ReLU -> shuffle (g>1) -> dw kxk -> BN -> ReLU -> grouped 1x1 -> BN."""

    def __init__(self, c_in: int, c_out: int, stride: int, kernel: int, expansion: int, groups: int = 1):
        super().__init__()
        mid = c_in * expansion
        if groups > 1:  # grouped convs need divisible channel counts; round the middle width up
            mid = -(-mid // groups) * groups
        g_in = groups if c_in % groups == 0 else 1
        g_out = groups if c_out % groups == 0 and mid % groups == 0 else 1
        parts: list[nn.Module] = [conv_bn(c_in, mid, 1, groups=g_in)]
        if g_in > 1:
            parts.append(ChannelShuffle(g_in))
        parts += [conv_bn(mid, mid, kernel, stride, groups=mid), conv_bn(mid, c_out, 1, groups=g_out, relu=False)]
        self.body = nn.Sequential(*parts)
        self.residual = stride == 1 and c_in == c_out


def _register_fbnet() -> None:
    for k in (3, 5):
        for e, g in ((1, 1), (1, 2), (3, 1), (6, 1)):
            name = f"k{k}_e{e}" + (f"_g{g}" if g > 1 else "")

            def factory(c_in, c_out, stride, kernel=k, expansion=e, groups=g):
                return InvertedResidual(c_in, c_out, stride, kernel, expansion, groups)

            factory.__doc__ = f"inverted residual, kernel {k}, expansion {e}, groups {g}"
            factory.__qualname__ = f"fbnet_{name}"
            register_op(name, "fbnet")(factory)


_register_fbnet()


@register_op("skip", "fbnet", kind="identity")
def fbnet_skip(c_in: int, c_out: int, stride: int) -> nn.Module:
    """identity when shapes match, else 1x1 conv (stride) + BN"""
    if stride == 1 and c_in == c_out:
        return nn.Identity()
    return conv_bn(c_in, c_out, 1, stride, relu=False)


# ---------------------------------------------------------------------------------------------------- DARTS


class Zero(nn.Module):
    def __init__(self, stride: int, c_out: int | None = None):
        super().__init__()
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            return x.mul(0.0)
        return x[:, :, :: self.stride, :: self.stride].mul(0.0)


class FactorizedReduce(nn.Module):
    """DARTS' strided skip: two offset 1x1 stride-2 convs concatenated."""

    def __init__(self, c_in: int, c_out: int, affine: bool = True):
        super().__init__()
        assert c_out % 2 == 0, "FactorizedReduce needs an even c_out"
        self.relu = nn.ReLU(inplace=False)
        self.conv_1 = nn.Conv2d(c_in, c_out // 2, 1, stride=2, bias=False)
        self.conv_2 = nn.Conv2d(c_in, c_out // 2, 1, stride=2, bias=False)
        self.bn = nn.BatchNorm2d(c_out, affine=affine)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(x)
        shifted = nn.functional.pad(x[:, :, 1:, 1:], (0, 1, 0, 1))  # offset branch; padding keeps odd sizes valid
        return self.bn(torch.cat([self.conv_1(x), self.conv_2(shifted)], dim=1))


class ReLUConvBN(nn.Sequential):
    def __init__(self, c_in: int, c_out: int, k: int, stride: int, pad: int, affine: bool = True):
        super().__init__(nn.ReLU(inplace=False), nn.Conv2d(c_in, c_out, k, stride, pad, bias=False),
                         nn.BatchNorm2d(c_out, affine=affine))


class SepConv(nn.Sequential):
    def __init__(self, c_in: int, c_out: int, k: int, stride: int, affine: bool = True):
        p = (k - 1) // 2
        super().__init__(
            nn.ReLU(inplace=False), nn.Conv2d(c_in, c_in, k, stride, p, groups=c_in, bias=False),
            nn.Conv2d(c_in, c_in, 1, bias=False), nn.BatchNorm2d(c_in, affine=affine),
            nn.ReLU(inplace=False), nn.Conv2d(c_in, c_in, k, 1, p, groups=c_in, bias=False),
            nn.Conv2d(c_in, c_out, 1, bias=False), nn.BatchNorm2d(c_out, affine=affine))


class DilConv(nn.Sequential):
    def __init__(self, c_in: int, c_out: int, k: int, stride: int, dilation: int, affine: bool = True):
        p = dilation * (k - 1) // 2
        super().__init__(
            nn.ReLU(inplace=False), nn.Conv2d(c_in, c_in, k, stride, p, dilation=dilation, groups=c_in, bias=False),
            nn.Conv2d(c_in, c_out, 1, bias=False), nn.BatchNorm2d(c_out, affine=affine))


class PoolBN(nn.Module):
    """DARTS pooling; BN after it and a 1x1 projection when channel counts differ."""

    def __init__(self, mode: str, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.pool = (nn.MaxPool2d(3, stride, 1) if mode == "max"
                     else nn.AvgPool2d(3, stride, 1, count_include_pad=False))
        self.proj = None if c_in == c_out else nn.Conv2d(c_in, c_out, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.pool(x)
        return y if self.proj is None else self.proj(y)


@register_op("none", "darts", kind="zero")
def darts_none(c_in, c_out, stride):
    """zero op (no connection)"""
    return Zero(stride)


@register_op("max_pool_3x3", "darts", kind="pool")
def darts_max_pool(c_in, c_out, stride):
    """3x3 max pooling"""
    return PoolBN("max", c_in, c_out, stride)


@register_op("avg_pool_3x3", "darts", kind="pool")
def darts_avg_pool(c_in, c_out, stride):
    """3x3 average pooling (padding excluded)"""
    return PoolBN("avg", c_in, c_out, stride)


@register_op("skip_connect", "darts", kind="identity")
def darts_skip(c_in, c_out, stride):
    """identity, or factorized reduce when strided"""
    if stride == 1 and c_in == c_out:
        return nn.Identity()
    return FactorizedReduce(c_in, c_out)


@register_op("sep_conv_3x3", "darts")
def darts_sep3(c_in, c_out, stride):
    """separable conv 3x3 applied twice"""
    return SepConv(c_in, c_out, 3, stride)


@register_op("sep_conv_5x5", "darts")
def darts_sep5(c_in, c_out, stride):
    """separable conv 5x5 applied twice"""
    return SepConv(c_in, c_out, 5, stride)


@register_op("dil_conv_3x3", "darts")
def darts_dil3(c_in, c_out, stride):
    """dilated (2) depthwise-separable conv 3x3"""
    return DilConv(c_in, c_out, 3, stride, 2)


@register_op("dil_conv_5x5", "darts")
def darts_dil5(c_in, c_out, stride):
    """dilated (2) depthwise-separable conv 5x5"""
    return DilConv(c_in, c_out, 5, stride, 2)


# ---------------------------------------------------------------------------------------------- fixed layers


@register_op("stem", "fixed", kind="fixed", kernel=3)
def fixed_stem(c_in, c_out, stride, kernel=3):
    """stem: kxk conv (stride) + BN + ReLU"""
    return conv_bn(c_in, c_out, kernel, stride)


@register_op("darts_stem", "fixed", kind="fixed")
def fixed_darts_stem(c_in, c_out, stride):
    """DARTS stem: 3x3 conv + BN (no ReLU)"""
    return conv_bn(c_in, c_out, 3, stride, relu=False)


@register_op("head", "fixed", kind="fixed")
def fixed_head(c_in, c_out, stride):
    """head: 1x1 conv + BN + ReLU"""
    return conv_bn(c_in, c_out, 1, stride)


@register_op("preprocess", "fixed", kind="fixed")
def fixed_preprocess(c_in, c_out, stride):
    """DARTS cell input: ReLU-conv1x1-BN, or factorized reduce when strided"""
    if stride == 2:
        return FactorizedReduce(c_in, c_out)
    return ReLUConvBN(c_in, c_out, 1, 1, 0)


class Classifier(nn.Module):
    def __init__(self, c_in: int, num_classes: int):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(x).flatten(1))


@register_op("classifier", "fixed", kind="fixed", output="flat")
def fixed_classifier(c_in, c_out, stride):
    """global average pool + linear classifier (c_out = number of classes)"""
    return Classifier(c_in, c_out)

# ------------------------------------------------------------------------------- MBConv (ProxylessNAS / OFA)

ACTIVATIONS = ("relu", "relu6", "hswish")


def activation(name: str) -> nn.Module:
    """ReLU, ReLU6 (MobileNetV2 / ProxylessNAS) or h-swish, x * relu6(x + 3) / 6 (MobileNetV3 / OFA)."""
    if name == "relu":
        return nn.ReLU(inplace=False)
    if name == "relu6":
        return nn.ReLU6(inplace=False)
    if name == "hswish":
        return nn.Hardswish(inplace=False)
    raise ValueError(f"activation {name!r} is not one of {', '.join(ACTIVATIONS)}")


def make_divisible(v: float, divisor: int = 8, min_value: int | None = None) -> int:
    """The MobileNet channel rounding: nearest multiple of ``divisor``, never more than 10 % below ``v``."""
    min_value = min_value or divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


def mbconv_mid(c_in: int, expansion: float) -> int:
    """Middle (expanded) width of an MBConv block: round(c_in * expansion), as ProxylessNAS and OFA compute it."""
    return int(round(c_in * expansion))


class SqueezeExcite(nn.Module):
    """OFA's SE module: global mean -> 1x1 conv (C -> C/4, rounded to 8) -> ReLU -> 1x1 conv -> h-sigmoid -> scale."""

    def __init__(self, channels: int, reduction: int = 4):
        super().__init__()
        mid = make_divisible(channels // reduction, 8)
        self.reduce = nn.Conv2d(channels, mid, 1, bias=True)
        self.relu = nn.ReLU(inplace=False)
        self.expand = nn.Conv2d(mid, channels, 1, bias=True)
        self.gate = nn.Hardsigmoid(inplace=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x.mean(dim=(2, 3), keepdim=True)
        return x * self.gate(self.expand(self.relu(self.reduce(y))))


class MBConv(_Residual):
    """Mobile inverted bottleneck (ProxylessNAS, OFA): [1x1 expand -> BN -> act] (absent at expansion 1) -> dw kxk
    -> BN -> act -> [SE] -> 1x1 -> BN, plus the identity shortcut where stride is 1 and c_in == c_out."""

    def __init__(self, c_in: int, c_out: int, stride: int, kernel: int, expansion: int, se: int = 0,
                 act: str = "relu6"):
        super().__init__()
        mid = mbconv_mid(c_in, expansion)
        parts: list[nn.Module] = []
        if expansion != 1:
            parts += [nn.Conv2d(c_in, mid, 1, bias=False), nn.BatchNorm2d(mid), activation(act)]
        parts += [nn.Conv2d(mid, mid, kernel, stride, kernel // 2, groups=mid, bias=False), nn.BatchNorm2d(mid),
                  activation(act)]
        if se:
            parts.append(SqueezeExcite(mid))
        parts += [nn.Conv2d(mid, c_out, 1, bias=False), nn.BatchNorm2d(c_out)]
        self.body = nn.Sequential(*parts)
        self.residual = stride == 1 and c_in == c_out


MBCONV_KERNELS = (3, 5, 7)
MBCONV_EXPANSIONS = (1, 3, 4, 6)


def _register_mbconv() -> None:
    for k in MBCONV_KERNELS:
        for e in MBCONV_EXPANSIONS:
            name = f"mb_k{k}_e{e}"

            def factory(c_in, c_out, stride, kernel=k, expansion=e, se=0, act="relu6"):
                return MBConv(c_in, c_out, stride, kernel, expansion, int(se), act)

            factory.__doc__ = f"MBConv, kernel {k}, expansion {e} (params: se 0/1, act relu|relu6|hswish)"
            factory.__qualname__ = f"mbconv_{name}"
            register_op(name, "mbconv", kernel=k, expansion=e, se=0, act="relu6")(factory)


_register_mbconv()


@register_op("zero", "mbconv", kind="identity", same_shape_only=True)
def mbconv_zero(c_in: int, c_out: int, stride: int) -> nn.Module:
    """ProxylessNAS' Zero candidate: the block's branch outputs zero, so the residual block is the identity"""
    return nn.Identity()


@register_op("conv", "fixed", kind="fixed", kernel=1, act="relu", bn=1)
def fixed_conv(c_in, c_out, stride, kernel=1, act="relu", bn=1):
    """kxk conv (stride) + [BN] + act: MobileNet stems, final-expand and feature-mix layers"""
    layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, bias=False)]
    if bn:
        layers.append(nn.BatchNorm2d(c_out))
    layers.append(activation(act))
    return nn.Sequential(*layers)


@register_op("global_pool", "fixed", kind="fixed", output="pooled")
def fixed_global_pool(c_in, c_out, stride):
    """global average pool to 1x1, channels kept (c_out == c_in)"""
    if c_in != c_out:
        raise ValueError(f"global_pool keeps the channels: c_out {c_out} must equal c_in {c_in}")
    return nn.AdaptiveAvgPool2d(1)


class Linear4d(nn.Module):
    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.fc = nn.Linear(c_in, c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1))


@register_op("linear", "fixed", kind="fixed", output="flat")
def fixed_linear(c_in, c_out, stride):
    """linear classifier of an already pooled N x C x 1 x 1 input (c_out = number of classes)"""
    return Linear4d(c_in, c_out)


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
