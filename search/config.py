"""Search configuration: dataclasses, presets, overrides.

A preset is a :class:`SearchConfig` with the defaults of its paper and code, nothing more: the search loop reads
only the config, never the preset's name. ``config.json`` in a run directory is :func:`config_to_dict` of the fully
resolved config and :func:`config_from_dict` reads it back.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from profiler.errors import UserError

CONTROLS = ("static", "lambda", "simplex-ops", "seed", "tradeoff")
SAMPLERS = ("softmax", "gumbel", "gumbel-hard", "lean")
SCHEDULES = ("constant", "exponential", "linear")
LOSSES = ("additive", "fbnet", "proxyless")
OPTIMISATIONS = ("single", "bilevel")
COST_TERMS = ("params", "flops", "latency")
HYPERNETS = {"tradeoff": ("pwl", "mlp"), "seed": ("rbf", "pwl")}
SEED_REGS = ("usage", "params")
S_DISTS = ("concrete", "dirichlet")
SUPERNETS = ("fused", "reference")


class ConfigError(UserError, ValueError):
    """A bad config value; the message names the field, the value and what is accepted."""


@dataclass
class OptimConfig:
    lr: float
    momentum: float = 0.9  # SGD
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)  # Adam
    lr_min: float | None = None  # weights: cosine from lr to lr_min over the run; None = constant
    grad_clip: float | None = None  # weights: clip the gradient norm


@dataclass
class TemperatureConfig:
    """Temperature per epoch. With ``t_end`` set (every preset) the schedule is defined over the run's length: t0 at
    the first epoch, t_end at the last, geometric (exponential) or straight (linear) in between, whatever the
    epoch count. Without it, the per-epoch ``decay`` / ``slope`` of older configs apply."""

    schedule: str = "constant"  # constant | exponential | linear
    t0: float = 1.0
    decay: float = 0.956  # exponential without t_end: t0 * decay**epoch
    slope: float | None = None  # linear without t_end: t0 - slope*epoch; None = reach `floor` at the last epoch
    floor: float = 0.05  # every schedule is clamped above this (> 0)
    t_end: float | None = None  # the temperature at the last epoch (over the run's length); None = decay / slope


@dataclass
class ControlConfig:
    kind: str = "static"  # static | lambda | simplex-ops | seed | tradeoff
    cost_terms: tuple[str, ...] = ("latency",)  # terms of the penalty; "latency" = first table, "latency:N" = table N
    weights: tuple[float, ...] = ()  # static + additive: fixed penalty weight per cost term (default 0)
    range_min: float = 0.01  # lambda / kappa: log-uniform range
    range_max: float = 10.0
    anchors: int = 4  # lambda / tradeoff-pwl: anchor logit tensors (M)
    hypernet: str = "pwl"  # tradeoff: pwl | mlp; seed: rbf | pwl
    hidden: int = 64  # tradeoff-mlp hidden width
    kappa: float = 50.0  # simplex-ops: fixed penalty magnitude; seed: latency weight per ms
    sigma: float = 0.25  # simplex-ops, seed-rbf: pivot bandwidth
    lam: float = 0.1  # seed: weight of the regulariser
    reg: str = "usage"  # seed: usage (S-weighted op usage) | params (E[params]/ref)
    s_dist: str = "concrete"  # seed: S each step from concrete(theta, s_tau) | dirichlet (Dirichlet(1))
    s_theta: tuple[float, ...] = ()  # seed: concrete logits, one per op (default 0: symmetric)
    s_tau: float = 1.0  # seed: concrete temperature
    eval_control: dict[str, Any] = field(default_factory=dict)  # control used for validation metrics


def _check_optim(name: str, o: OptimConfig, bad: Callable[[str, Any, str], ConfigError]) -> None:
    if not o.lr > 0:
        raise bad(f"{name}.lr", o.lr, "a learning rate > 0")
    if o.weight_decay < 0:
        raise bad(f"{name}.weight_decay", o.weight_decay, "at least 0")
    if not 0 <= o.momentum < 1:
        raise bad(f"{name}.momentum", o.momentum, "in [0, 1)")
    if len(o.betas) != 2 or not all(0 <= b < 1 for b in o.betas):
        raise bad(f"{name}.betas", o.betas, "two numbers in [0, 1), e.g. [0.9, 0.999]")
    if o.lr_min is not None and not 0 <= o.lr_min <= o.lr:
        raise bad(f"{name}.lr_min", o.lr_min, f"in [0, lr={o.lr:g}] (or null for a constant rate)")
    if o.grad_clip is not None and not o.grad_clip > 0:
        raise bad(f"{name}.grad_clip", o.grad_clip, "> 0 (or null for no clipping)")


def _one_of(name: str, value: Any, accepted: Iterable[str]) -> None:
    """Refuse ``value`` for config field ``name`` unless it is one of ``accepted`` (named in the error)."""
    if value not in accepted:
        raise ConfigError(f"config field {name}={value!r} is invalid: one of {', '.join(accepted)}")


@dataclass
class SearchConfig:
    preset: str
    space: str = "fbnet-cifar"
    tables: tuple[str, ...] = ()
    data: str = "digits"
    data_dir: str | None = None
    data_limit: int | None = None  # fashion-mnist: read a seeded N of the training set (and N test images)
    epochs: int = 10
    batch_size: int = 64
    seed: int = 0
    torch_device: str = "cpu"
    supernet: str = "fused"  # fused: one kernel per stage where a space allows it (FBNet) | reference: one per op
    # residual branches of the supernet's candidate blocks start at zero (zero-gamma init), for every sampler: with
    # unit-scale branches a path or a sharp mixture drawn per step changes the stream's scale, and at the bench's
    # scale the soft-Gumbel supernets fell back to chance (val acc 0.11-0.12) as the temperature fell; see README,
    # Search. false = the old unit-scale init (the lean sampler does not learn with it)
    zero_residual: bool = True
    control: ControlConfig = field(default_factory=ControlConfig)
    sampler: str = "gumbel"  # softmax | gumbel | gumbel-hard | lean
    per_sample: bool = False  # independent Gumbel noise per sample (soft samplers only)
    # the layers without a shortcut (stride 2, a width change) take their op weights at a temperature of at least
    # this (same noise; evaluation too); null = the schedule's (every preset). It keeps a cold supernet training, but
    # it also mutes cross-entropy's pull on those layers' alpha, and the cost then picks skip there: at 5.0 fbnet and
    # hwnas derived all-skip networks, which see 4 input pixels (README, Search, *Sites without a shortcut*)
    no_shortcut_tau_min: float | None = None
    cost_under: str = "softmax"  # expected costs under softmax(alpha) | sample (the step's op weights, FBNet's form)
    temperature: TemperatureConfig = field(default_factory=TemperatureConfig)
    loss: str = "additive"  # additive | fbnet | proxyless
    loss_alpha: float = 0.2  # fbnet: CE * alpha * log(LAT_us)**beta; proxyless: CE * alpha * (log LAT/log REF)**beta
    loss_beta: float = 0.6
    ref_latency_ms: float | None = None  # proxyless reference; None = expected latency at uniform probabilities
    optimisation: str = "single"  # single | bilevel
    arch_fraction: float = 0.5  # bilevel: share of the training split used for the architecture step
    warmup_epochs: int = 0  # epochs that train the weights only
    # weight of the mean per-layer entropy of softmax(alpha) in the loss at the last epoch, ramped linearly from 0
    # at the first architecture epoch (a discretisation-aware entropy term, as in DA2S): ends the run decided
    entropy_weight: float = 0.0
    weights_opt: OptimConfig = field(default_factory=lambda: OptimConfig(lr=0.025))
    arch_opt: OptimConfig = field(default_factory=lambda: OptimConfig(lr=3e-4))
    train_limit: int | None = None  # use only the first N training samples (tests, quick runs)
    eval_limit: int | None = None  # ... and N validation samples

    def validate(self) -> "SearchConfig":
        def bad(name: str, value: Any, accepted: str) -> ConfigError:
            return ConfigError(f"config field {name}={value!r} is invalid: {accepted}")

        c = self.control
        _one_of("control.kind", c.kind, CONTROLS)
        _one_of("sampler", self.sampler, SAMPLERS)
        if self.per_sample and self.sampler in ("lean",):
            raise bad("per_sample", True, "per-sample noise needs a soft sampler (softmax, gumbel, gumbel-hard)")
        if self.cost_under not in ("softmax", "sample"):
            raise bad("cost_under", self.cost_under, "softmax or sample")
        _one_of("temperature.schedule", self.temperature.schedule, SCHEDULES)
        if not self.temperature.floor > 0 or not self.temperature.t0 > 0:
            raise bad("temperature.floor/t0", (self.temperature.floor, self.temperature.t0), "both must be > 0")
        t_end = self.temperature.t_end
        if t_end is not None and not t_end >= self.temperature.floor:
            raise bad("temperature.t_end", t_end, f"must be >= temperature.floor ({self.temperature.floor})")
        _one_of("loss", self.loss, LOSSES)
        _one_of("optimisation", self.optimisation, OPTIMISATIONS)
        nets = HYPERNETS.get(c.kind)
        if nets and c.hypernet not in nets:
            raise bad("control.hypernet", c.hypernet, f"for control {c.kind}: one of " + ", ".join(nets))
        if c.kind == "seed":
            self._validate_seed(bad)
        for t in c.cost_terms:
            if t.partition(":")[0] not in COST_TERMS:
                raise bad("control.cost_terms", t, "terms are params, flops, latency, latency:N (N-th table)")
        if c.weights and len(c.weights) != len(c.cost_terms):
            raise bad("control.weights", c.weights, f"one weight per cost term ({len(c.cost_terms)})")
        if not 0 < c.range_min < c.range_max:
            raise bad("control.range_min/range_max", (c.range_min, c.range_max), "need 0 < min < max")
        if c.anchors < 2:
            raise bad("control.anchors", c.anchors, "at least 2")
        if self.epochs < 1:
            raise bad("epochs", self.epochs, "at least 1")
        if self.batch_size < 1:
            raise bad("batch_size", self.batch_size, "at least 1")
        if not 0 < self.arch_fraction < 1:
            raise bad("arch_fraction", self.arch_fraction, "strictly between 0 and 1")
        _one_of("supernet", self.supernet, SUPERNETS)
        t = self.no_shortcut_tau_min
        if t is not None and (isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or t <= 0):
            raise bad("no_shortcut_tau_min", t, "a temperature > 0, or null for the schedule's")
        if self.torch_device not in ("cpu", "cuda") and not self.torch_device.startswith("cuda:"):
            raise bad("torch_device", self.torch_device, "cpu or cuda")
        for name, o in (("weights_opt", self.weights_opt), ("arch_opt", self.arch_opt)):
            _check_optim(name, o, bad)
        if not (math.isfinite(self.entropy_weight) and self.entropy_weight >= 0):
            raise bad("entropy_weight", self.entropy_weight, "a number >= 0 (0 = no entropy term)")
        for name in ("warmup_epochs", "seed"):
            if getattr(self, name) < 0:
                raise bad(name, getattr(self, name), "at least 0")
        for name in ("train_limit", "eval_limit"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise bad(name, getattr(self, name), "at least 1 (or null for all)")
        return self

    def _validate_seed(self, bad) -> None:
        c = self.control
        _one_of("control.reg", c.reg, SEED_REGS)
        _one_of("control.s_dist", c.s_dist, S_DISTS)
        if not c.s_tau > 0 or not c.sigma > 0:
            raise bad("control.s_tau/sigma", (c.s_tau, c.sigma), "both must be > 0")
        if c.kappa < 0 or c.lam < 0:
            raise bad("control.kappa/lam", (c.kappa, c.lam), "both must be >= 0")
        want = ("latency",) if c.reg == "usage" else ("params", "latency")
        if tuple(c.cost_terms) != want:
            raise bad("control.cost_terms", c.cost_terms, f"control seed with reg={c.reg} uses {list(want)}")


def _darts_weights() -> OptimConfig:
    return OptimConfig(lr=0.025, momentum=0.9, weight_decay=3e-4, lr_min=0.001, grad_clip=5.0)


def _darts_arch() -> OptimConfig:
    return OptimConfig(lr=3e-4, betas=(0.5, 0.999), weight_decay=1e-3)


def _preset_darts() -> SearchConfig:
    return SearchConfig(preset="darts", control=ControlConfig(kind="static", cost_terms=("latency",), weights=(0.0,)),
                        sampler="softmax", temperature=TemperatureConfig("constant", 1.0), loss="additive",
                        optimisation="bilevel", arch_fraction=0.5, weights_opt=_darts_weights(),
                        arch_opt=_darts_arch())


def _fbnet_temperature() -> TemperatureConfig:
    # FBNet: 5.0 * 0.956^epoch over its 90 epochs (0.090 at the last), here stretched to the run's length
    return TemperatureConfig("exponential", 5.0, floor=0.05, t_end=5.0 * 0.956 ** 89)


def _preset_fbnet() -> SearchConfig:
    return SearchConfig(preset="fbnet", control=ControlConfig(kind="static", cost_terms=("latency",), weights=(0.0,)),
                        sampler="gumbel", temperature=_fbnet_temperature(), loss="fbnet",
                        loss_alpha=0.2, loss_beta=0.6, optimisation="bilevel", arch_fraction=0.2, warmup_epochs=1,
                        weights_opt=OptimConfig(lr=0.1, momentum=0.9, weight_decay=1e-4, lr_min=0.0),
                        arch_opt=OptimConfig(lr=0.01, weight_decay=5e-4))


def _preset_darts_cc() -> SearchConfig:
    return SearchConfig(preset="darts-cc",
                        control=ControlConfig(kind="lambda", cost_terms=("params",), range_min=0.01, range_max=2.0,
                                              anchors=4, eval_control={"lambda": 0.1}),
                        sampler="gumbel", temperature=TemperatureConfig("linear", 1.0, floor=0.1, t_end=0.1),
                        loss="additive", optimisation="bilevel", arch_fraction=0.5, weights_opt=_darts_weights(),
                        arch_opt=_darts_arch())


def _preset_seed_simplex() -> SearchConfig:
    return SearchConfig(preset="seed-simplex", control=ControlConfig(kind="simplex-ops", kappa=50.0, sigma=0.25),
                        sampler="gumbel", per_sample=True,
                        temperature=TemperatureConfig("linear", 1.0, floor=0.2, t_end=0.2),
                        loss="additive", optimisation="single", weights_opt=_darts_weights(),
                        arch_opt=OptimConfig(lr=1e-3, betas=(0.5, 0.999), weight_decay=1e-3))


def _preset_seed() -> SearchConfig:
    # kappa is per ms of the table: 0.5 makes the latency gradient of a 0.1 ms entry comparable to CE's on the small
    # spaces; lambda prices each op by S (the family's axis)
    return SearchConfig(preset="seed", control=ControlConfig(kind="seed", cost_terms=("latency",), hypernet="rbf",
                                                             kappa=0.5, lam=0.1, sigma=0.25, reg="usage",
                                                             s_dist="concrete", s_tau=1.0),
                        sampler="gumbel", per_sample=True,
                        # soft Gumbel from 5.0 to 0.5 as hwnas (was 1.0 -> 0.2, seed-simplex's: the supernet never
                        # left chance at the bench's scale, val acc 0.05-0.14 over 6 epochs on 1200 Fashion-MNIST
                        # images; 0.61-0.75 from 5.0), arch lr 0.03 (3e-3 left arch_max_prob at 0.12, 1/9 uniform)
                        # and a light entropy term (0.64 at the end with 0.3, 0.29 without); see README, Search
                        temperature=TemperatureConfig("exponential", 5.0, floor=0.1, t_end=0.5), entropy_weight=0.3,
                        loss="additive", optimisation="single", weights_opt=_darts_weights(),
                        arch_opt=OptimConfig(lr=0.03, betas=(0.5, 0.999), weight_decay=0.0))


def _preset_hwnas() -> SearchConfig:
    return SearchConfig(preset="hwnas",
                        # kappa from 1e-4 (was 0.01): with unit-scale residual branches the accuracy end of the family
                        # then reached the space's larger networks (span >= 3x on 3 of 3 seeds); with zero-init
                        # branches (now the default) the trained supernet prefers few blocks even there: arch_max_prob
                        # 0.77-0.80, span 1.6-2.1x at make run's default; see README, Search
                        control=ControlConfig(kind="tradeoff", cost_terms=("params", "latency"), range_min=1e-4,
                                              range_max=10.0, anchors=4, hypernet="pwl",
                                              eval_control={"kappa": 0.1}),
                        # soft Gumbel from 5.0 at the first epoch to t_end at the last, whatever the run's length; the
                        # lean sampler (about 0.45x the step time, learns since its residual branches start at zero)
                        # is --set sampler=lean; the README's decidedness figures were taken with soft Gumbel
                        sampler="gumbel", temperature=TemperatureConfig("exponential", 5.0, floor=0.1, t_end=0.5),
                        # entropy term ramped 0 -> 1.0 over the run: the default run ends decided (arch_max_prob
                        # 0.57 without it, 0.75 with it on Fashion-MNIST; see README, Search)
                        entropy_weight=1.0,
                        loss="additive", optimisation="single",
                        weights_opt=OptimConfig(lr=0.05, momentum=0.9, weight_decay=1e-4, lr_min=0.001, grad_clip=5.0),
                        # arch lr 0.03 (was 3e-3, which left the distribution near uniform after a default run:
                        # arch_max_prob ~0.12 for 1/9 uniform); see README, Search
                        arch_opt=OptimConfig(lr=0.03, betas=(0.5, 0.999), weight_decay=0.0))


PRESETS = {"darts": _preset_darts, "fbnet": _preset_fbnet, "darts-cc": _preset_darts_cc,
           "seed-simplex": _preset_seed_simplex, "seed": _preset_seed, "hwnas": _preset_hwnas}


def preset(name: str, **fields: Any) -> SearchConfig:
    """The preset's config with top-level ``fields`` replaced (space, tables, data, epochs, seed, ...)."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; presets: {', '.join(PRESETS)}")
    cfg = PRESETS[name]()
    cfg = dataclasses.replace(cfg, **{k: v for k, v in fields.items() if v is not None})
    if isinstance(cfg.tables, (str, bytes)):
        cfg.tables = (cfg.tables,)
    cfg.tables = tuple(str(t) for t in cfg.tables)
    return cfg.validate()


def idle_tables(cfg: SearchConfig) -> list[int]:
    """Indices N >= 1 of the tables whose cost term (``latency:N``) is not among ``cfg``'s cost terms."""
    return [n for n in range(1, len(cfg.tables)) if f"latency:{n}" not in cfg.control.cost_terms]


def config_to_dict(cfg: SearchConfig) -> dict[str, Any]:
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def _check_type(where: str, v: Any, tp: Any) -> Any:
    """``v`` as the field's type (int for int, a finite number for float, ...); a ``ConfigError`` otherwise."""
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        if v is None and type(None) in args:
            return None
        return _check_type(where, v, next(a for a in args if a is not type(None)))
    if tp is bool:
        if not isinstance(v, bool):
            raise ConfigError(f"{where}={v!r} must be true or false")
    elif tp is int:
        if isinstance(v, bool) or not isinstance(v, int):
            raise ConfigError(f"{where}={v!r} must be an integer")
    elif tp is float:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ConfigError(f"{where}={v!r} must be a finite number")
        return float(v)
    elif tp is str:
        if not isinstance(v, str):
            raise ConfigError(f"{where}={v!r} must be a string")
    elif typing.get_origin(tp) is tuple:
        if not isinstance(v, (list, tuple)):
            raise ConfigError(f"{where}={v!r} must be a list, e.g. [0.5, 0.999]")
        inner = args[0] if args else Any
        return tuple(v) if inner is Any else tuple(_check_type(where, x, inner) for x in v)
    elif typing.get_origin(tp) is dict and not isinstance(v, dict):
        raise ConfigError(f"{where}={v!r} must be a mapping, e.g. {{\"kappa\": 0.1}}")
    return v


def _build(cls: type, data: dict[str, Any], where: str) -> Any:
    known = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for k, v in data.items():
        if k not in known:
            raise ConfigError(f"{where}: unknown field {k!r}; fields: {', '.join(known)}")
        sub = {"control": ControlConfig, "temperature": TemperatureConfig, "weights_opt": OptimConfig,
               "arch_opt": OptimConfig}.get(k) if cls is SearchConfig else None
        if sub is not None:
            if not isinstance(v, dict):
                raise ConfigError(f"{where}: {k}={v!r}: {k} is a section, not a value; set one of its fields, "
                                  f"e.g. {k}.{dataclasses.fields(sub)[0].name}=...")
            v = _build(sub, v, f"{where}.{k}")
        else:
            v = _check_type(f"{where}: {k}", v, hints[k])
        kwargs[k] = v
    return cls(**kwargs)


def config_from_dict(data: dict[str, Any], where: str = "config.json") -> SearchConfig:
    if isinstance(data, dict) and "supernet" not in data:
        # a run written before the fused supernet existed trained the per-op modules: resume and load it as such
        data = {**data, "supernet": "reference"}
    return _build(SearchConfig, data, where).validate()


def _parse_value(raw: str) -> Any:
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw


def apply_overrides(cfg: SearchConfig, items: list[str]) -> SearchConfig:
    """Apply ``field.sub=value`` overrides (values parsed as JSON when they parse, else strings)."""
    data = config_to_dict(cfg)
    for item in items:
        path, eq, raw = item.partition("=")
        if not eq:
            raise ConfigError(f"--set {item!r}: expected FIELD=VALUE, e.g. loss_beta=0.8 or control.range_max=5")
        node = data
        parts = path.split(".")
        for p in parts[:-1]:
            if not isinstance(node.get(p), dict):
                raise ConfigError(f"--set {item!r}: {p!r} is not a config section; sections: control, "
                                  "temperature, weights_opt, arch_opt")
            node = node[p]
        if parts[-1] not in node:
            raise ConfigError(f"--set {item!r}: unknown field {parts[-1]!r}; fields here: {', '.join(node)}")
        node[parts[-1]] = _parse_value(raw)
    return config_from_dict(data, "--set")


RESUMABLE_OVERRIDES = ("epochs", "torch_device")  # what a resumed run may change; the rest is the stored config


def check_resume_overrides(stored: dict[str, Any], cfg: SearchConfig, items: list[str], where: str) -> None:
    """``--resume`` with ``--set``: refuse, in one line, every override that differs from the run's stored config
    (a resumed run keeps its config, so such an override would be ignored without a word)."""
    old = config_to_dict(config_from_dict(stored, where))
    new = config_to_dict(cfg)
    differ = []
    for item in items:
        path = item.partition("=")[0]
        if path in RESUMABLE_OVERRIDES:
            continue
        a, b = old, new
        for p in path.split("."):
            a, b = (a.get(p) if isinstance(a, dict) else None), (b.get(p) if isinstance(b, dict) else None)
        if a != b:
            differ.append(f"{path}={b!r} (run has {a!r})")
    if differ:
        raise ConfigError(f"{where}: --resume keeps the run's stored config, so --set {', '.join(differ)} would be "
                          f"ignored", fix="drop those --set options, or start a new run with another --out")
