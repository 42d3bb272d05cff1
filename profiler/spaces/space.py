"""Search spaces as data.

A :class:`Space` is a frozen description of a network family: fixed sites (stem, head, classifier, DARTS cell
preprocessing) and searchable layers. Each searchable layer is one row of architecture logits; it owns one or
more :class:`Site` s (a chain space has one site per layer; the DARTS cell space shares one row across every cell of
the same type, so a row owns one site per cell). Every site knows its exact input shape, so the table key of any
choice at any site comes from the one key function.

Spaces are named by a spec string ``NAME[:param=value,...]`` (e.g. ``darts-3ops:C=8,cells=5``); ``Space.spec`` is
the canonical form and ``Space.to_json()`` / :func:`space_from_json` round-trip.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

from profiler.errors import InputError
from profiler.spaces.keys import op_key, output_hw
from profiler.spaces.ops import get_op, make_divisible


class SpaceError(InputError):
    """A space spec that names no space, or a parameter out of range."""

FBNET_OPS = ("k3_e1", "k3_e1_g2", "k3_e3", "k3_e6", "k5_e1", "k5_e1_g2", "k5_e3", "k5_e6", "skip")
DARTS_OPS = ("none", "max_pool_3x3", "avg_pool_3x3", "skip_connect", "sep_conv_3x3", "sep_conv_5x5",
             "dil_conv_3x3", "dil_conv_5x5")
DARTS_3OPS = ("avg_pool_3x3", "skip_connect", "sep_conv_3x3")
DARTS_5OPS = ("max_pool_3x3", "avg_pool_3x3", "skip_connect", "sep_conv_3x3", "sep_conv_5x5")


@dataclass(frozen=True)
class Site:
    """One place in a network where a block sits, at its exact shape."""

    name: str
    c_in: int
    c_out: int
    stride: int
    input_hw: tuple[int, int]
    op: str | None = None  # the op of a fixed site; None for a searchable site
    params: tuple[tuple[str, Any], ...] = ()

    def key(self, op: str | None = None, batch: int = 1) -> str:
        name = op or self.op
        if name is None:
            raise ValueError(f"site {self.name} is searchable: name the op")
        return op_key(name, (batch, self.c_in, *self.input_hw), self.c_out, self.stride,
                      get_op(name).own_params(dict(self.params)))

    @property
    def output_hw(self) -> tuple[int, int]:
        if self.op is not None and get_op(self.op).output != "same":
            return (1, 1)
        return output_hw(*self.input_hw, self.stride)


@dataclass(frozen=True)
class SearchLayer:
    """One row of architecture logits. ``choices[k]`` is the op of column ``k`` (``Space.ops[k]``) at this layer:
    the same op everywhere, except where a space substitutes a legal op for a column the layer cannot take
    (ProxylessNAS has no zero, OFA no skip, at a stage's leading blocks)."""

    name: str
    choices: tuple[str, ...]
    sites: tuple[Site, ...]


@dataclass(frozen=True)
class Space:
    name: str
    family: str  # "chain" | "cell"
    params: dict[str, Any]
    input_shape: tuple[int, int, int]  # C, H, W
    num_classes: int
    layers: tuple[SearchLayer, ...]
    fixed: tuple[Site, ...]
    # cell spaces: topology needed by the network builder (cells, nodes, reduction flags); chain spaces: "pre", the
    # number of fixed sites before the searchable layers (default 1, the stem)
    topology: dict[str, Any] = field(default_factory=dict)
    columns: tuple[str, ...] = ()  # op of each logit column; default: the first layer's choices

    @property
    def ops(self) -> tuple[str, ...]:
        return self.columns or self.layers[0].choices

    @property
    def spec(self) -> str:
        defaults = SPACES[self.name].defaults
        extra = {k: v for k, v in self.params.items() if defaults.get(k) != v}
        return self.name + (":" + ",".join(f"{k}={v}" for k, v in sorted(extra.items())) if extra else "")

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "params": dict(self.params)}

    def candidate_keys(self, batch: int = 1) -> list[str]:
        """Every unique key a table for this space must hold (searchable choices and fixed sites), in order."""
        seen: dict[str, None] = {}
        for site in self.fixed:
            seen.setdefault(site.key(batch=batch))
        for layer in self.layers:
            for site in layer.sites:
                for op in layer.choices:
                    seen.setdefault(site.key(op, batch))
        return list(seen)

    def arch_keys(self, choices: list[str] | tuple[str, ...], batch: int = 1) -> list[str]:
        """The keys (with repeats) of one concrete architecture: fixed sites plus each layer's chosen op."""
        self.check_choices(choices)
        keys = [s.key(batch=batch) for s in self.fixed]
        for layer, op in zip(self.layers, choices):
            keys += [s.key(op, batch) for s in layer.sites]
        return keys

    def check_choices(self, choices: list[str] | tuple[str, ...]) -> None:
        if len(choices) != len(self.layers):
            raise ValueError(f"space {self.spec} has {len(self.layers)} searchable layers, got {len(choices)} choices")
        for layer, op in zip(self.layers, choices):
            if op not in layer.choices:
                raise ValueError(f"layer {layer.name}: op {op!r} is not one of {', '.join(layer.choices)}")


@dataclass(frozen=True)
class SpaceDef:
    name: str
    build: Callable[..., Space]
    defaults: dict[str, Any]
    doc: str


SPACES: dict[str, SpaceDef] = {}


def register_space(name: str, doc: str, **defaults: Any) -> Callable[[Callable[..., Space]], Callable[..., Space]]:
    def deco(fn: Callable[..., Space]) -> Callable[..., Space]:
        if name in SPACES:
            raise ValueError(f"space {name!r} is already registered")
        SPACES[name] = SpaceDef(name, fn, dict(defaults), doc)
        return fn

    return deco


def _coerce(name: str, key: str, raw: str, default: Any) -> Any:
    try:
        if isinstance(default, bool):
            return raw.lower() in ("1", "true", "yes")
        if isinstance(default, int):
            return int(raw)
        if isinstance(default, float):
            return float(raw)
    except ValueError:
        raise SpaceError(f"space {name}: parameter {key}={raw!r} must be a {type(default).__name__}") from None
    return raw


def get_space(spec: str, **overrides: Any) -> Space:
    """Build a space from ``NAME[:k=v,...]``. Unknown names or parameters give a one-line error."""
    name, _, rest = spec.partition(":")
    if name not in SPACES:
        raise SpaceError(f"unknown space {name!r}; known spaces: {', '.join(sorted(SPACES))}")
    d = SPACES[name]
    params = dict(d.defaults)
    for item in filter(None, rest.split(",")):
        k, eq, v = item.partition("=")
        if not eq or k not in d.defaults:
            raise SpaceError(f"space {name}: unknown parameter {item!r}; parameters: "
                             + ", ".join(f"{k}={v}" for k, v in d.defaults.items()))
        params[k] = _coerce(name, k, v, d.defaults[k])
    for k, v in overrides.items():
        if k not in d.defaults:
            raise SpaceError(f"space {name}: unknown parameter {k!r}")
        params[k] = v
    for k, v in params.items():
        _check_param(name, k, v, d.defaults[k])
    space = d.build(**params)
    _check_sizes(space)
    return space


MAX_WIDTH = 16.0  # a width multiplier above this is a typo (and an enormous network)


def _check_param(name: str, key: str, value: Any, default: Any) -> None:
    """Numbers in range: counts and sizes >= 1, width finite and in (0, MAX_WIDTH]."""
    if isinstance(default, bool) or not isinstance(default, (int, float)):
        return
    kind = "an integer" if isinstance(default, int) else "a number"
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (isinstance(default, int)
                                                                          and not isinstance(value, int)):
        raise SpaceError(f"space {name}: parameter {key}={value!r} must be {kind}")
    if isinstance(default, float):
        if not (math.isfinite(value) and 0 < value <= MAX_WIDTH):
            raise SpaceError(f"space {name}: parameter {key}={value!r} must be a finite number in (0, {MAX_WIDTH:g}] "
                             f"(default {default})")
    elif value < 1:
        raise SpaceError(f"space {name}: parameter {key}={value!r} must be >= 1 (default {default})")


def _check_sizes(space: Space) -> None:
    """Every site keeps a feature map of at least 1 x 1, and the space has something to search."""
    if not space.layers:
        raise SpaceError(f"space {space.spec}: no searchable layers; raise the parameters (defaults: "
                         + ", ".join(f"{k}={v}" for k, v in SPACES[space.name].defaults.items()) + ")")
    for site in [*space.fixed, *(s for layer in space.layers for s in layer.sites)]:
        if min(site.input_hw) < 1 or min(site.output_hw) < 1:
            raise SpaceError(f"space {space.spec}: input_size={space.params.get('input_size')} is too small: "
                             f"{site.name} would get a {site.input_hw[0]}x{site.input_hw[1]} input; raise input_size")


def space_from_json(data: dict[str, Any]) -> Space:
    return get_space(data["name"], **data.get("params", {}))


# -------------------------------------------------------------------------------------------------- FBNet

FBNET_STAGES = ((16, 1, 1), (24, 4, 2), (32, 4, 2), (64, 4, 2), (112, 4, 1), (184, 4, 2), (352, 1, 1))


def _stage_sites(stages: tuple[tuple[int, int, int], ...], c_in: int, hw: tuple[int, int],
                 w: Callable[[int], int]) -> list[Site]:
    """The searchable sites L00, L01, ... of a chain of ``(channels, blocks, stride)`` stages (channels scaled by
    ``w``): the first block of a stage strides, each block takes the shape the one before gave."""
    sites = []
    for c, n, s in stages:
        for r in range(n):
            sites.append(Site(f"L{len(sites):02d}", c_in, w(c), s if r == 0 else 1, hw))
            hw, c_in = sites[-1].output_hw, w(c)
    return sites


def _fbnet(name: str, *, input_size: int, stem_stride: int, head: int, num_classes: int, in_channels: int,
           width: float) -> Space:
    def w(c: int) -> int:
        return max(8, int(round(c * width / 8)) * 8) if width != 1.0 else c

    hw = (input_size, input_size)
    stem_c = w(16)
    fixed = [Site("stem", in_channels, stem_c, stem_stride, hw, op="stem", params=(("kernel", 3),))]
    hw = fixed[0].output_hw
    sites = _stage_sites(FBNET_STAGES, stem_c, hw, w)
    layers = [SearchLayer(site.name, FBNET_OPS, (site,)) for site in sites]
    c_in, hw = sites[-1].c_out, sites[-1].output_hw
    head_c = w(head)
    fixed.append(Site("head", c_in, head_c, 1, hw, op="head"))
    fixed.append(Site("classifier", head_c, num_classes, 1, hw, op="classifier"))
    params = dict(input_size=input_size, stem_stride=stem_stride, head=head, num_classes=num_classes,
                  in_channels=in_channels, width=width)
    return Space(name, "chain", params, (in_channels, input_size, input_size), num_classes, tuple(layers),
                 tuple(fixed))


def _register_fbnet(name: str, doc: str, **defaults: Any) -> None:
    """One FBNet size: the same stages under ``name``, with its own input, stem stride, head and classes."""
    register_space(name, doc, **defaults, in_channels=3, width=1.0)(lambda **p: _fbnet(name, **p))


_register_fbnet("fbnet", "FBNet ImageNet space: 22 layers x 9 blocks, input 224",
                input_size=224, stem_stride=2, head=1984, num_classes=1000)
_register_fbnet("fbnet-cifar", "FBNet space at CIFAR size: input 32, stem stride 1, head 1504",
                input_size=32, stem_stride=1, head=1504, num_classes=10)


# -------------------------------------------------------------------------------------------------- DARTS


def _darts(name: str, ops: tuple[str, ...], *, C: int, cells: int, nodes: int, input_size: int, num_classes: int,
           in_channels: int, stem_multiplier: int) -> Space:
    if cells < 3:
        raise SpaceError(f"space {name}: cells={cells} must be >= 3 (two reduction cells at 1/3 and 2/3)")
    if C % 2:
        raise SpaceError(f"space {name}: C={C} must be even (factorized reduce halves it)")
    reductions = {cells // 3, 2 * cells // 3}
    hw = (input_size, input_size)
    c_stem = stem_multiplier * C
    fixed = [Site("stem", in_channels, c_stem, 1, hw, op="darts_stem")]
    c_pp, c_p, c_cur = c_stem, c_stem, C
    hw_pp, hw_p = hw, hw
    reduction_prev = False
    # sites[(cell type, edge)] -> list of sites over cells of that type
    edge_sites: dict[tuple[str, int], list[Site]] = {}
    cell_flags = []
    for i in range(cells):
        reduction = i in reductions
        if reduction:
            c_cur *= 2
        cell_flags.append(reduction)
        fixed.append(Site(f"cell{i}.pre0", c_pp, c_cur, 2 if reduction_prev else 1, hw_pp, op="preprocess"))
        fixed.append(Site(f"cell{i}.pre1", c_p, c_cur, 1, hw_p, op="preprocess"))
        kind = "reduce" if reduction else "normal"
        e = 0
        for node in range(nodes):
            for j in range(2 + node):
                stride = 2 if reduction and j < 2 else 1
                site = Site(f"cell{i}.n{node}.e{j}", c_cur, c_cur, stride, hw_p)
                edge_sites.setdefault((kind, e), []).append(site)
                e += 1
        c_pp, c_p = c_p, nodes * c_cur
        hw_pp, hw_p = hw_p, (output_hw(*hw_p, 2) if reduction else hw_p)
        reduction_prev = reduction
    fixed.append(Site("classifier", c_p, num_classes, 1, hw_p, op="classifier"))
    layers = []
    for (kind, e), sites in sorted(edge_sites.items(), key=lambda kv: (kv[0][0] != "normal", kv[0][1])):
        layers.append(SearchLayer(f"{kind}.e{e}", ops, tuple(sites)))
    params = dict(C=C, cells=cells, nodes=nodes, input_size=input_size, num_classes=num_classes,
                  in_channels=in_channels, stem_multiplier=stem_multiplier)
    topo = dict(reductions=tuple(cell_flags), nodes=nodes)
    return Space(name, "cell", params, (in_channels, input_size, input_size), num_classes, tuple(layers),
                 tuple(fixed), topo)


_DARTS_DEFAULTS = dict(C=16, cells=8, nodes=4, input_size=32, num_classes=10, in_channels=3, stem_multiplier=3)


@register_space("darts", "DARTS cell space, 8 ops per edge (C, cells, nodes, input_size configurable)",
                **_DARTS_DEFAULTS)
def darts_space(**p: Any) -> Space:
    return _darts("darts", DARTS_OPS, **p)


@register_space("darts-3ops", "DARTS cell space with {avg_pool_3x3, skip_connect, sep_conv_3x3}", **_DARTS_DEFAULTS)
def darts3_space(**p: Any) -> Space:
    return _darts("darts-3ops", DARTS_3OPS, **p)


@register_space("darts-5ops", "DARTS cell space with the 3 ops + {max_pool_3x3, sep_conv_5x5}", **_DARTS_DEFAULTS)
def darts5_space(**p: Any) -> Space:
    return _darts("darts-5ops", DARTS_5OPS, **p)


# ------------------------------------------------------------------------------------------ MBConv spaces
# Both spaces run every MBConv candidate as one whole block (our key level) and keep one logit column per op. A
# column a layer cannot take -- ProxylessNAS offers Zero only where the block has its residual, OFA skips only a
# stage's third and fourth block (depth 2..4) -- holds that layer's smallest block (mb_k3_e3) instead, so every
# column is a legal op, every architecture is a subnet of the published space and the columns stay uniform.

PROXYLESS_OPS = ("mb_k3_e3", "mb_k3_e6", "mb_k5_e3", "mb_k5_e6", "mb_k7_e3", "mb_k7_e6", "zero")
PROXYLESS_STAGES = ((24, 4, 2), (40, 4, 2), (80, 4, 2), (96, 4, 1), (192, 4, 2), (320, 1, 1))  # width, blocks, stride
SMALLEST_BLOCK = "mb_k3_e3"


def _choices(ops: tuple[str, ...], absent: str, allowed: bool) -> tuple[str, ...]:
    return ops if allowed else tuple(SMALLEST_BLOCK if op == absent else op for op in ops)


@register_space("proxyless", "ProxylessNAS mobile space: 21 layers x {MBConv k3/5/7 x e3/6, zero}, input 224",
                input_size=224, width=1.0, num_classes=1000, in_channels=3)
def proxyless_space(*, input_size: int, width: float, num_classes: int, in_channels: int) -> Space:
    def w(c: int) -> int:
        return make_divisible(c * width, 8)

    hw = (input_size, input_size)
    stem = Site("stem", in_channels, w(32), 2, hw, op="conv", params=(("act", "relu6"), ("bn", 1), ("kernel", 3)))
    hw = stem.output_hw
    first = Site("first_block", w(32), w(16), 1, hw, op="mb_k3_e1")  # MBConv1 3x3, act relu6 (the op's default)
    sites = _stage_sites(PROXYLESS_STAGES, w(16), hw, w)
    layers = [SearchLayer(site.name, _choices(PROXYLESS_OPS, "zero", site.stride == 1 and site.c_in == site.c_out),
                          (site,)) for site in sites]
    c_in, hw = sites[-1].c_out, sites[-1].output_hw
    last = 1280 if width <= 1.0 else make_divisible(1280 * width, 8)
    fixed = (stem, first,
             Site("feature_mix", c_in, last, 1, hw, op="conv", params=(("act", "relu6"), ("bn", 1), ("kernel", 1))),
             Site("classifier", last, num_classes, 1, hw, op="classifier"))
    params = dict(input_size=input_size, width=width, num_classes=num_classes, in_channels=in_channels)
    return Space("proxyless", "chain", params, (in_channels, input_size, input_size), num_classes, tuple(layers),
                 fixed, {"pre": 2}, PROXYLESS_OPS)


OFA_OPS = tuple(f"mb_k{k}_e{e}" for k in (3, 5, 7) for e in (3, 4, 6)) + ("skip",)
# OFA MobileNetV3: base widths (stem, first block, 5 stages, final expand, feature mix) scaled by `width`
OFA_BASE_WIDTHS = (16, 16, 24, 40, 80, 112, 160, 960, 1280)
OFA_STAGES = ((2, "relu", 0), (2, "relu", 1), (2, "hswish", 0), (1, "hswish", 1), (2, "hswish", 1))  # stride, act, se
OFA_MAX_DEPTH, OFA_MIN_DEPTH = 4, 2


@register_space("ofa-mbv3", "OFA MobileNetV3 space: 20 layers x {MBConv k3/5/7 x e3/4/6, skip (depth 2-4)}, SE and "
                "h-swish per stage, input 224, width 1.2 (the Note10 table's network)",
                input_size=224, width=1.2, num_classes=1000, in_channels=3)
def ofa_mbv3_space(*, input_size: int, width: float, num_classes: int, in_channels: int) -> Space:
    widths = [make_divisible(c * width, 8) for c in OFA_BASE_WIDTHS]
    hw = (input_size, input_size)
    stem = Site("stem", in_channels, widths[0], 2, hw, op="conv",
                params=(("act", "hswish"), ("bn", 1), ("kernel", 3)))
    hw = stem.output_hw
    first = Site("first_block", widths[0], widths[1], 1, hw, op="mb_k3_e1", params=(("act", "relu"), ("se", 0)))
    c_in, layers, idx = widths[1], [], 0
    for (s, act, se), c in zip(OFA_STAGES, widths[2:7]):
        for r in range(OFA_MAX_DEPTH):
            site = Site(f"L{idx:02d}", c_in, c, s if r == 0 else 1, hw, params=(("act", act), ("se", se)))
            layers.append(SearchLayer(site.name, _choices(OFA_OPS, "skip", r >= OFA_MIN_DEPTH), (site,)))
            hw, c_in, idx = site.output_hw, c, idx + 1
    expand, mix = widths[7], widths[8]
    fixed = (stem, first,
             Site("final_expand", c_in, expand, 1, hw, op="conv", params=(("act", "hswish"), ("bn", 1), ("kernel", 1))),
             Site("pool", expand, expand, 1, hw, op="global_pool"),
             Site("feature_mix", expand, mix, 1, (1, 1), op="conv", params=(("act", "hswish"), ("bn", 0),
                                                                              ("kernel", 1))),
             Site("classifier", mix, num_classes, 1, (1, 1), op="linear"))
    params = dict(input_size=input_size, width=width, num_classes=num_classes, in_channels=in_channels)
    return Space("ofa-mbv3", "chain", params, (in_channels, input_size, input_size), num_classes, tuple(layers),
                 fixed, {"pre": 2}, OFA_OPS)
