"""Architectures as data: one JSON file per derived network.

An :class:`Arch` names its space (name + parameters), the op chosen at every searchable layer with the table key of
each of that layer's sites, the fixed sites' keys, the latency the table predicts for it (with the table's device,
path and a hash of its fingerprint, so a prediction says where it came from), params, FLOPs, and the control value
it was derived at. ``Arch.from_json(a.to_json()) == a`` exactly; :func:`save_arch` writes atomically and
:func:`load_arch` turns every malformation into one :class:`ArchError` line naming the file, the field and the fix.

The network itself is always rebuilt from this data (:meth:`Arch.build` -> :func:`profiler.spaces.network.build_network`).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from profiler.errors import InputError, UserError
from profiler.fileio import atomic_write_text, loads_json
from profiler.latency.tables import LatencyTable
from profiler.spaces.ops import count_params
from profiler.spaces.space import Space, get_space, space_from_json

ARCH_SCHEMA = "hwnas-arch/1"


class ArchError(UserError, ValueError):
    """An architecture-file problem; the message is the one line shown to the user."""


@dataclass(frozen=True)
class LayerChoice:
    name: str
    op: str
    keys: tuple[str, ...]  # table key of every site this layer's op sits at (one for chain spaces)


@dataclass(frozen=True)
class TableRef:
    path: str
    device: str
    space: str
    fingerprint_hash: str
    calibrated: bool
    calibration_sha256: str | None = None  # of the calibration the prediction used (None: raw sums)


@dataclass(frozen=True)
class Arch:
    space_name: str
    space_params: dict[str, Any]
    layers: tuple[LayerChoice, ...]
    fixed_keys: tuple[str, ...]
    params: int
    flops: int  # multiply-accumulates of every conv and linear layer, batch 1 (the NAS convention for "FLOPs")
    predicted_ms: float | None = None
    table: TableRef | None = None
    control: dict[str, Any] | None = None  # e.g. {"kappa": 0.3, "S": [0.5, 0.5]}; None for a hand-made arch
    source: dict[str, Any] = field(default_factory=dict)  # free provenance (run dir, kind of derivation)
    # the prediction (ms) on every device of the run it was derived from (hwnas derive; empty without a table)
    predicted_ms_by_device: dict[str, float] = field(default_factory=dict)

    # ------------------------------------------------------------------------------------------------- views
    @property
    def choices(self) -> tuple[str, ...]:
        return tuple(layer.op for layer in self.layers)

    @property
    def space(self) -> Space:
        return space_from_json({"name": self.space_name, "params": self.space_params})

    @property
    def space_spec(self) -> str:
        return self.space.spec

    def keys(self) -> list[str]:
        """Every key of the network (fixed sites and each layer's sites), with repeats."""
        return list(self.fixed_keys) + [k for layer in self.layers for k in layer.keys]

    def short(self) -> str:
        """A compact op string, e.g. ``k3_e1 k3_e6 skip ...``, runs collapsed (``skip*3``)."""
        return collapse_runs(self.choices)

    def digest(self) -> str:
        """A short hash of (space, choices): equal for the same network whatever control it came from."""
        blob = json.dumps([self.space_name, self.space_params, list(self.choices)], sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:10]

    def build(self) -> nn.Module:
        from profiler.spaces.network import build_network

        return build_network(self.space, list(self.choices))

    # -------------------------------------------------------------------------------------------------- JSON
    def to_json(self) -> dict[str, Any]:
        return {
            "schema": ARCH_SCHEMA,
            "space": {"name": self.space_name, "params": dict(self.space_params)},
            "space_spec": self.space_spec,
            "layers": [{"name": c.name, "op": c.op, "keys": list(c.keys)} for c in self.layers],
            "fixed_keys": list(self.fixed_keys),
            "params": self.params,
            "flops": self.flops,
            "predicted_ms": self.predicted_ms,
            "table": None if self.table is None else dict(self.table.__dict__),
            "control": self.control,
            "source": dict(self.source),
            "predicted_ms_by_device": dict(self.predicted_ms_by_device),
        }

    def dumps(self) -> str:
        return json.dumps(self.to_json(), indent=2, sort_keys=False, allow_nan=False) + "\n"

    @classmethod
    def from_json(cls, data: Any, where: str = "architecture") -> "Arch":
        return _parse(data, where)


def collapse_runs(ops: Any) -> str:
    """``a a a b`` -> ``a*3 b``: a compact string of an op sequence."""
    out: list[str] = []
    prev, n = None, 0
    for op in [*ops, None]:
        if op == prev:
            n += 1
            continue
        if prev is not None:
            out.append(prev if n == 1 else f"{prev}*{n}")
        prev, n = op, 1
    return " ".join(out)


# ------------------------------------------------------------------------------------------------ building


def count_flops(module: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Multiply-accumulates of every Conv2d and Linear for one forward pass at ``input_shape`` (batch 1); NAS papers
    call this count "FLOPs", and so does search.costs."""
    macs = 0

    def conv_hook(m: nn.Conv2d, inp: Any, out: torch.Tensor) -> None:
        nonlocal macs
        kh, kw = m.kernel_size
        macs += out.numel() * (m.in_channels // m.groups) * kh * kw

    def linear_hook(m: nn.Linear, inp: Any, out: torch.Tensor) -> None:
        nonlocal macs
        macs += out.numel() * m.in_features

    hooks = []
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            hooks.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            hooks.append(m.register_forward_hook(linear_hook))
    was_training = module.training
    try:
        module.eval()
        with torch.no_grad():
            module(torch.zeros(1, *input_shape[-3:]))
    finally:
        for h in hooks:
            h.remove()
        module.train(was_training)
    return macs


def fingerprint_hash(fingerprint: Any) -> str:
    return hashlib.sha256(json.dumps(fingerprint, sort_keys=True, default=str).encode()).hexdigest()[:16]


def table_ref(table: LatencyTable) -> TableRef:
    cal = table.calibration
    return TableRef(str(table.path), table.device, table.space, fingerprint_hash(table.meta.get("fingerprint")),
                    cal is not None, None if cal is None else cal.sha256)


def predict_ms(space: Space, choices: list[str] | tuple[str, ...], table: LatencyTable) -> float:
    """The table's prediction for a concrete architecture; ``KeyError`` names the first missing key."""
    return table.model(space).exact(list(choices))


def make_arch(space: Space, choices: list[str] | tuple[str, ...], table: LatencyTable | None = None,
              control: dict[str, Any] | None = None, source: dict[str, Any] | None = None) -> Arch:
    """An :class:`Arch` for ``choices`` in ``space``: keys, params and FLOPs computed, latency predicted by ``table``."""
    from profiler.spaces.network import build_network

    space.check_choices(choices)
    if table is not None and table.space != space.spec:
        raise ArchError(f"table {table.path} is for space {table.space!r}, not {space.spec!r}")
    net = build_network(space, list(choices))
    layers = tuple(LayerChoice(layer.name, op, tuple(s.key(op) for s in layer.sites))
                   for layer, op in zip(space.layers, choices))
    fixed = tuple(s.key() for s in space.fixed)
    pred = predict_ms(space, choices, table) if table is not None else None
    return Arch(space.name, dict(space.params), layers, fixed, count_params(net), count_flops(net, space.input_shape),
                pred, table_ref(table) if table is not None else None, _plain(control), dict(source or {}))


def _plain(control: dict[str, Any] | None) -> dict[str, Any] | None:
    """Control values as JSON-native data (floats and lists of floats), so the round-trip is exact."""
    if control is None:
        return None
    out: dict[str, Any] = {}
    for k, v in control.items():
        if isinstance(v, torch.Tensor):
            v = v.detach().cpu().tolist()
        if isinstance(v, (list, tuple)):
            v = [float(x) for x in v]
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            v = float(v)
        out[str(k)] = v
    return out


# ------------------------------------------------------------------------------------------------- parsing

_FIX = "re-derive it with hwnas derive"


def _need(d: dict[str, Any], name: str, types: type | tuple[type, ...], where: str) -> Any:
    if name not in d:
        raise ArchError(f"{where}: field {name!r} is missing; {_FIX}")
    v = d[name]
    if not isinstance(v, types) or isinstance(v, bool):
        raise ArchError(f"{where}: field {name!r} = {str(v)[:60]!r} has the wrong type; {_FIX}")
    return v


def _parse(data: Any, where: str) -> Arch:
    if not isinstance(data, dict):
        raise ArchError(f"{where}: not an architecture (a JSON object with 'schema': {ARCH_SCHEMA!r}); {_FIX}")
    if data.get("schema") != ARCH_SCHEMA:
        raise ArchError(f"{where}: field 'schema' = {data.get('schema')!r}, this hwnas reads {ARCH_SCHEMA!r}; {_FIX}")
    sp = _need(data, "space", dict, where)
    name = _need(sp, "name", str, where + " space")
    params = _need(sp, "params", dict, where + " space")
    try:
        space = get_space(name, **params)
    except (ValueError, TypeError) as e:
        raise ArchError(f"{where}: field 'space': {e}") from None
    raw_layers = _need(data, "layers", list, where)
    if len(raw_layers) != len(space.layers):
        raise ArchError(f"{where}: field 'layers' has {len(raw_layers)} entries, space {space.spec} has "
                        f"{len(space.layers)} searchable layers; {_FIX}")
    layers = []
    for i, (raw, layer) in enumerate(zip(raw_layers, space.layers)):
        w = f"{where}: layers[{i}]"
        if not isinstance(raw, dict):
            raise ArchError(f"{w} is not an object; {_FIX}")
        op = _need(raw, "op", str, w)
        if op not in layer.choices:
            raise ArchError(f"{w}.op = {op!r} is not one of {', '.join(layer.choices)}; pick one of those")
        if raw.get("name", layer.name) != layer.name:
            raise ArchError(f"{w}.name = {raw.get('name')!r}, the space calls layer {i} {layer.name!r}; {_FIX}")
        keys = tuple(s.key(op) for s in layer.sites)
        if "keys" in raw and not isinstance(raw["keys"], list):
            raise ArchError(f"{w}.keys = {str(raw['keys'])[:60]!r} must be a list of key strings; {_FIX}")
        if "keys" in raw and tuple(raw["keys"]) != keys:
            raise ArchError(f"{w}.keys do not match the space's keys for op {op!r} (expected {keys[0]}, ...); the "
                            f"file was written for another key format or edited by hand; {_FIX}")
        layers.append(LayerChoice(layer.name, op, keys))
    fixed = tuple(s.key() for s in space.fixed)
    if "fixed_keys" in data and (not isinstance(data["fixed_keys"], list) or tuple(data["fixed_keys"]) != fixed):
        raise ArchError(f"{where}: field 'fixed_keys' does not match space {space.spec}; {_FIX}")
    n_params = _need(data, "params", int, where)
    flops = _need(data, "flops", int, where)
    pred = data.get("predicted_ms")
    if pred is not None and (not isinstance(pred, (int, float)) or isinstance(pred, bool) or not math.isfinite(pred)
                             or pred <= 0):
        raise ArchError(f"{where}: field 'predicted_ms' = {pred!r} must be a positive number or null; {_FIX}")
    tref = data.get("table")
    if tref is not None:
        try:
            tref = TableRef(**tref)
        except TypeError:
            raise ArchError(f"{where}: field 'table' needs exactly path, device, space, fingerprint_hash, "
                            f"calibrated (and optionally calibration_sha256); {_FIX}") from None
    control = data.get("control")
    if control is not None and not isinstance(control, dict):
        raise ArchError(f"{where}: field 'control' = {str(control)[:60]!r} must be an object or null; {_FIX}")
    source = data.get("source") or {}
    if not isinstance(source, dict):
        raise ArchError(f"{where}: field 'source' must be an object; {_FIX}")
    return Arch(name, dict(space.params), tuple(layers), fixed, n_params, flops,
                float(pred) if pred is not None else None, tref, control, source, _by_device(data, where))


def _by_device(data: dict[str, Any], where: str) -> dict[str, float]:
    by = data.get("predicted_ms_by_device") or {}
    if not isinstance(by, dict) or any(isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)
                                       or v <= 0 for v in by.values()):
        raise ArchError(f"{where}: field 'predicted_ms_by_device' = {str(by)[:60]!r} must map device names to "
                        f"positive numbers; {_FIX}")
    return {str(k): float(v) for k, v in by.items()}


def save_arch(arch: Arch, path: str | Path) -> Path:
    path = Path(path)
    atomic_write_text(path, arch.dumps())
    return path


def load_arch(path: str | Path) -> Arch:
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ArchError(f"{path}: no such architecture file; write one with hwnas derive") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ArchError(f"{path}: cannot read ({type(e).__name__}: {e})") from None
    try:
        data = loads_json(text, str(path))
    except InputError as e:
        raise ArchError(f"{e}; {_FIX}") from None
    return _parse(data, str(path))


def arch_from_metadata(props: dict[str, str], where: str = "model") -> Arch:
    """The architecture stored in an exported ONNX model's ``metadata_props`` (key ``hwnas_arch_json``)."""
    if "hwnas_arch_json" not in props:
        raise ArchError(f"{where}: no 'hwnas_arch_json' metadata (was it exported with hwnas export?)")
    try:
        return _parse(json.loads(props["hwnas_arch_json"]), where)
    except json.JSONDecodeError as e:
        raise ArchError(f"{where}: metadata 'hwnas_arch_json' is not valid JSON ({e.msg})") from None


# -------------------------------------------------------------------------------------------------- weights


def save_weights(module: nn.Module, path: str | Path) -> Path:
    """A state_dict as safetensors (no pickle), written atomically."""
    import errno

    from safetensors.torch import save_file

    from profiler.fileio import atomic_path

    path = Path(path)
    state = {k: v.detach().cpu().contiguous().clone() for k, v in module.state_dict().items()}
    with atomic_path(path) as tmp:
        try:
            save_file(state, tmp)
        except Exception as e:  # noqa: BLE001 - safetensors reports a full disk as its own error type
            if "No space left" not in str(e) and not isinstance(e, OSError):
                raise
            raise OSError(errno.ENOSPC, "No space left on device") from None
    return path


def load_weights(module: nn.Module, path: str | Path) -> nn.Module:
    """Load a ``.safetensors`` file (or a plain state_dict via ``torch.load(weights_only=True)``) strictly."""
    path = Path(path)
    if not path.is_file():
        raise ArchError(f"{path}: no such weights file; train one with hwnas train")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a corrupt file of either format: one line, not a traceback
        raise ArchError(f"{path}: cannot read weights ({type(e).__name__}: {str(e)[:120]})") from None
    if not isinstance(state, dict):
        raise ArchError(f"{path}: not a state_dict")
    missing, unexpected = set(module.state_dict()) - set(state), set(state) - set(module.state_dict())
    if missing or unexpected:
        some = sorted(missing)[:1] + sorted(unexpected)[:1]
        raise ArchError(f"{path}: weights do not fit this architecture ({len(missing)} missing, {len(unexpected)} "
                        f"unexpected tensors, e.g. {', '.join(some)}); pass the weights trained for it")
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ArchError(f"{path}: weights do not fit this architecture ({' '.join(str(e).split())[:160]})") from None
    return module


def export_arch(arch: Arch, out: str | Path, weights: str | Path | None = None) -> tuple[Path, float]:
    """A self-contained ONNX model of ``arch`` (weights loaded when given, else seeded init) with the architecture
    JSON in ``metadata_props["hwnas_arch_json"]``; returns (path, max |onnxruntime - torch| / max |torch| on one
    input: relative, since an untrained net's output can be ~1e-7)."""
    from profiler.measuring.export import export_module

    torch.manual_seed(0)
    net = arch.build()
    if weights is not None:
        load_weights(net, weights)
    net.eval()
    meta = {"hwnas_arch_json": json.dumps(arch.to_json(), sort_keys=True, allow_nan=False),
            "hwnas_arch_digest": arch.digest()}
    if weights is not None:
        meta["hwnas_weights"] = Path(weights).name
    err = export_module(net, (1, *arch.space.input_shape), Path(out), metadata=meta, relative=True)
    return Path(out), err


def onnx_arch(path: str | Path) -> Arch:
    """The architecture stored in an exported model."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return arch_from_metadata({p.key: p.value for p in model.metadata_props}, str(path))
