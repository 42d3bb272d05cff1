"""Peer LUT formats: import them as normal tables, export tables in their form.

- ``ofa``: ProxylessNAS / Once-for-All YAML, ``{key: {count, mean, std}}`` in ms, keys such as
  ``expanded_conv-input:112x112x16-output:56x56x24-expand:3-kernel:5-stride:2-idskip:0`` (shapes H x W x C, batch 1),
  ``Conv-input:...-output:...`` (stem), ``Conv_1-...`` (head), ``Logits-input:HxWxC-output:CLASSES`` (classifier).
  It names inverted-residual blocks without groups only; our grouped blocks, skips and DARTS ops do not fit it.
- ``nni``: NNI-style ``lut.txt``, one JSON object per line ``{op_name, op_data_shape, op_dtype, op_latency}`` (ms,
  shape N x C x H x W). We also write ``c_out``, ``stride`` and ``params``; a file without them is matched to the
  space by op, shape and dtype, and an entry that matches several keys is listed as ambiguous.
- ``fbnet-grid``: FBNet's per-layer text table: one line per searchable layer, one number (ms) per op, whitespace
  separated; ``#`` lines are comments. We write ``# ops: ...`` (column order) and ``# fixed: stem=... ...``
  and read them back when present. Chain spaces only (a grid cell has to be one key).

Imported tables are ordinary tables whose header carries ``imported: {format, source, sha256, missing, unused}``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import inspect
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml

from .keys import KEY_VERSION, output_hw, parse_key
from .ops import get_op
from .spaces import Space
from .tables import SCHEMA_VERSION, LatencyTable, Row, TableWriter, atomic_write_text

FORMATS = ("ofa", "nni", "fbnet-grid")


class FormatError(ValueError):
    """A peer-format problem; the message is the one line shown to the user."""


@dataclass
class ImportReport:
    path: Path
    format: str
    imported: int
    missing: list[str] = field(default_factory=list)  # keys of the space the file has no entry for
    unused: list[str] = field(default_factory=list)  # file entries that match no key of the space
    ambiguous: list[str] = field(default_factory=list)  # file entries that match several keys


@dataclass
class ExportReport:
    path: Path
    format: str
    written: int
    unexpressible: list[str] = field(default_factory=list)  # table keys the format cannot name


def _check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise FormatError(f"unknown format {fmt!r}; formats: {', '.join(FORMATS)}")


# ----------------------------------------------------------------------------------------------------- OFA


def _hwc(shape: tuple[int, int, int, int]) -> str:
    _, c, h, w = shape
    return f"{h}x{w}x{c}"


def _block_params(op: str) -> dict[str, Any]:
    """kernel / expansion / groups of an inverted-residual op, read from its factory's signature."""
    sig = inspect.signature(get_op(op).factory)
    out = {k: p.default for k, p in sig.parameters.items() if p.default is not inspect.Parameter.empty}
    out.update(get_op(op).defaults)
    return out


def ofa_key(key: str) -> str | None:
    """The OFA/ProxylessNAS key naming the same block, or None when the format cannot express it."""
    k = parse_key(key)
    if k.input_shape[0] != 1 or k.dtype != "float32":
        return None
    h, w = output_hw(k.input_shape[2], k.input_shape[3], k.stride)
    io = f"input:{_hwc(k.input_shape)}-output:{h}x{w}x{k.c_out}"
    spec = get_op(k.op)
    if spec.kind == "fixed":
        if k.op == "stem" and k.params_dict().get("kernel", 3) == 3:
            return f"Conv-{io}"
        if k.op == "head":
            return f"Conv_1-{io}"
        if k.op == "classifier":
            return f"Logits-input:{_hwc(k.input_shape)}-output:{k.c_out}"
        return None
    if spec.family != "fbnet" or spec.kind != "conv":
        return None
    p = _block_params(k.op)
    if p.get("groups", 1) != 1 or "kernel" not in p or "expansion" not in p:
        return None
    idskip = int(k.stride == 1 and k.c_in == k.c_out)
    return f"expanded_conv-{io}-expand:{p['expansion']}-kernel:{p['kernel']}-stride:{k.stride}-idskip:{idskip}"


def _read_ofa(src: Path) -> dict[str, dict[str, float]]:
    try:
        data = yaml.safe_load(src.read_text())
    except yaml.YAMLError as e:
        raise FormatError(f"{src}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise FormatError(f"{src}: an OFA LUT is a mapping of keys to {{count, mean, std}}, got "
                          f"{type(data).__name__}")
    out = {}
    for key, v in data.items():
        if not isinstance(v, dict) or not isinstance(v.get("mean"), (int, float)) or isinstance(v.get("mean"), bool):
            raise FormatError(f"{src}: entry {key!r}: needs a numeric 'mean' (ms), got {v!r}")
        if not v["mean"] > 0:
            raise FormatError(f"{src}: entry {key!r}: mean {v['mean']!r} must be > 0 ms")
        std = v.get("std", math.nan)
        count = v.get("count", 0)
        out[str(key)] = {"mean": float(v["mean"]), "std": float(std) if isinstance(std, (int, float)) else math.nan,
                         "count": int(count) if isinstance(count, (int, float)) else 0}
    return out


def _write_ofa(table: LatencyTable, out: Path) -> ExportReport:
    data: dict[str, dict[str, float]] = {}
    skipped = []
    for key, r in table.rows.items():
        if r["status"] == "error":
            continue
        ok = ofa_key(key)
        if ok is None:
            skipped.append(key)
            continue
        std = r["std_ms"]
        data[ok] = {"count": int(r["n"]), "mean": float(r["median_ms"]),
                    "std": 0.0 if isinstance(std, float) and math.isnan(std) else float(std)}
    header = (f"# Once-for-All / ProxylessNAS latency LUT (ms) exported by hwprof from {table.path}\n"
              f"# device {table.device}, space {table.space}; 'mean' holds the table's median\n")
    atomic_write_text(out, header + yaml.safe_dump(data, sort_keys=True))
    return ExportReport(out, "ofa", len(data), skipped)


# ----------------------------------------------------------------------------------------------------- NNI


def _read_nni(src: Path, space: Space) -> tuple[dict[str, dict[str, float]], list[str], list[str]]:
    by_sig: dict[tuple[str, tuple[int, ...], str], list[str]] = {}
    candidates = set(space.candidate_keys())
    for key in candidates:
        k = parse_key(key)
        by_sig.setdefault((k.op, k.input_shape, k.dtype), []).append(key)
    out: dict[str, dict[str, float]] = {}
    unused, ambiguous = [], []
    for lineno, line in enumerate(src.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            e = json.loads(line)
        except json.JSONDecodeError as err:
            raise FormatError(f"{src}: line {lineno}: not JSON ({err.msg}); lut.txt holds one JSON object per "
                              f"line") from None
        for f in ("op_name", "op_data_shape", "op_latency"):
            if not isinstance(e, dict) or f not in e:
                raise FormatError(f"{src}: line {lineno}: field {f!r} is missing")
        lat = e["op_latency"]
        if isinstance(lat, bool) or not isinstance(lat, (int, float)) or not lat > 0:
            raise FormatError(f"{src}: line {lineno}: op_latency {lat!r} must be a number > 0 (ms)")
        try:
            shape = tuple(int(d) for d in e["op_data_shape"])
        except (TypeError, ValueError):
            raise FormatError(f"{src}: line {lineno}: op_data_shape {e['op_data_shape']!r} must be a list of "
                              f"integers (N, C, H, W)") from None
        dtype = str(e.get("op_dtype", "float32"))
        label = f"{e['op_name']} {list(shape)} {dtype}"
        if "c_out" in e and "stride" in e:
            from .keys import op_key

            try:
                key = op_key(str(e["op_name"]), shape, int(e["c_out"]), int(e["stride"]), e.get("params") or None,
                             dtype)
            except (TypeError, ValueError) as err:
                raise FormatError(f"{src}: line {lineno}: {err}") from None
            matches = [key] if key in candidates else []
        else:
            matches = by_sig.get((str(e["op_name"]), shape, dtype), [])
        if not matches:
            unused.append(label)
        elif len(matches) > 1:
            ambiguous.append(label)
        else:
            out[matches[0]] = {"mean": float(lat), "std": math.nan, "count": 0}
    return out, unused, ambiguous


def _write_nni(table: LatencyTable, out: Path) -> ExportReport:
    lines = []
    for key, r in table.rows.items():
        if r["status"] == "error":
            continue
        k = parse_key(key)
        lines.append(json.dumps({"op_name": k.op, "op_data_shape": list(k.input_shape), "op_dtype": k.dtype,
                                 "op_latency": float(r["median_ms"]), "c_out": k.c_out, "stride": k.stride,
                                 "params": dict(k.params)}))
    atomic_write_text(out, "\n".join(lines) + "\n")
    return ExportReport(out, "nni", len(lines), [])


# ---------------------------------------------------------------------------------------------- FBNet grid


def _need_chain(space: Space, what: str) -> None:
    if space.family != "chain" or any(len(layer.sites) != 1 for layer in space.layers):
        raise FormatError(f"format fbnet-grid {what} chain spaces only (one key per grid cell); space {space.spec} "
                          f"is a {space.family} space: use --format nni")


def _read_grid(src: Path, space: Space) -> dict[str, dict[str, float]]:
    _need_chain(space, "reads")
    ops = list(space.ops)
    fixed: dict[str, float] = {}
    rows = []
    for lineno, line in enumerate(src.read_text().splitlines(), start=1):
        s = line.strip()
        if not s:
            continue
        if s.startswith("#"):
            body = s[1:].strip()
            if body.startswith("ops:"):
                ops = body[4:].split()
                unknown = [o for o in ops if o not in space.ops]
                if unknown or len(set(ops)) != len(ops):
                    raise FormatError(f"{src}: line {lineno}: ops {unknown or ops} do not match space {space.spec} "
                                      f"(ops: {' '.join(space.ops)})")
            elif body.startswith("fixed:"):
                for item in body[6:].split():
                    name, _, v = item.partition("=")
                    try:
                        fixed[name] = float(v)
                    except ValueError:
                        raise FormatError(f"{src}: line {lineno}: fixed entry {item!r} is not name=ms") from None
            continue
        try:
            rows.append((lineno, [float(x) for x in re.split(r"[,\s]+", s) if x]))
        except ValueError:
            raise FormatError(f"{src}: line {lineno}: {s[:60]!r} is not a row of numbers (ms)") from None
    if len(rows) != len(space.layers):
        raise FormatError(f"{src}: {len(rows)} rows, space {space.spec} has {len(space.layers)} searchable layers "
                          f"(one row per layer)")
    out: dict[str, dict[str, float]] = {}
    for (lineno, vals), layer in zip(rows, space.layers):
        if len(vals) != len(ops):
            raise FormatError(f"{src}: line {lineno}: {len(vals)} values, expected {len(ops)} (one per op: "
                              f"{' '.join(ops)})")
        for op, v in zip(ops, vals):
            if math.isfinite(v) and v > 0:
                out[layer.sites[0].key(op)] = {"mean": v, "std": math.nan, "count": 0}
    for site in space.fixed:
        if site.name in fixed and fixed[site.name] > 0:
            out[site.key()] = {"mean": fixed[site.name], "std": math.nan, "count": 0}
    return out


def _write_grid(table: LatencyTable, space: Space, out: Path) -> ExportReport:
    _need_chain(space, "writes")
    lines = [f"# FBNet-style latency grid (ms) exported by hwprof: device {table.device}, space {table.space}",
             "# one row per searchable layer (" + ", ".join(x.name for x in space.layers[:2]) + ", ...), "
             "one column per op; nan = no entry",
             "# ops: " + " ".join(space.ops)]
    fixed = []
    for site in space.fixed:
        try:
            fixed.append(f"{site.name}={table.latency_ms(site.key()):.6g}")
        except KeyError:
            pass
    if fixed:
        lines.append("# fixed: " + " ".join(fixed))
    written = 0
    for layer in space.layers:
        vals = []
        for op in space.ops:
            try:
                vals.append(f"{table.latency_ms(layer.sites[0].key(op)):.6g}")
                written += 1
            except KeyError:
                vals.append("nan")
        lines.append(" ".join(vals))
    used = {layer.sites[0].key(op) for layer in space.layers for op in space.ops} | {s.key() for s in space.fixed}
    atomic_write_text(out, "\n".join(lines) + "\n")
    return ExportReport(out, "fbnet-grid", written + len(fixed), sorted(set(table.rows) - used))


# ------------------------------------------------------------------------------------------------ public


def import_table(src: Path, fmt: str, space: Space, device: str, out: Path) -> ImportReport:
    """Read a peer LUT into a normal table at ``out`` (written fresh, atomically per file)."""
    _check_format(fmt)
    src = Path(src)
    if not src.is_file():
        raise FormatError(f"{src}: no such file")
    candidates = space.candidate_keys()
    unused: list[str] = []
    ambiguous: list[str] = []
    if fmt == "ofa":
        entries = _read_ofa(src)
        by_ofa: dict[str, list[str]] = {}
        for key in candidates:
            ok = ofa_key(key)
            if ok is not None:
                by_ofa.setdefault(ok, []).append(key)
        found: dict[str, dict[str, float]] = {}
        for ok, v in entries.items():
            if ok not in by_ofa:
                unused.append(ok)
            for key in by_ofa.get(ok, []):
                found[key] = v
    elif fmt == "nni":
        found, unused, ambiguous = _read_nni(src, space)
    else:
        found = _read_grid(src, space)
    missing = [k for k in candidates if k not in found]
    if not found:
        raise FormatError(f"{src}: no entry of this {fmt} file matches a key of space {space.spec} "
                          f"({len(unused)} unmatched entries, e.g. {unused[0] if unused else '-'}); "
                          f"check --space and --format")
    meta = {
        "schema_version": SCHEMA_VERSION, "key_version": KEY_VERSION, "device": device, "runtime": "imported",
        "space": space.spec, "space_json": space.to_json(), "batch": 1, "opset": None,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "fingerprint": None,
        "protocol": {},
        "imported": {"format": fmt, "source": str(src.resolve()),
                     "sha256": hashlib.sha256(src.read_bytes()).hexdigest(), "missing": missing,
                     "unused": unused[:200], "n_unused": len(unused), "ambiguous": ambiguous},
    }
    with TableWriter(out, meta, fresh=True) as w:
        for key in candidates:
            if key not in found:
                continue
            v = found[key]
            std = v["std"]
            w.append(Row(key, median_ms=v["mean"], mean_ms=v["mean"], std_ms=std,
                         cv=std / v["mean"] if math.isfinite(std) else math.nan, n=int(v["count"]), attempts=0,
                         status="ok", variant=f"imported-{fmt}"))
    return ImportReport(out, fmt, len(found), missing, unused, ambiguous)


def export_table(table: LatencyTable, fmt: str, out: Path, space: Space | None = None) -> ExportReport:
    """Write ``table`` in a peer format (atomic). Keys the format cannot name are listed in the report."""
    _check_format(fmt)
    writers: dict[str, Callable[[], ExportReport]] = {
        "ofa": lambda: _write_ofa(table, out),
        "nni": lambda: _write_nni(table, out),
        "fbnet-grid": lambda: _write_grid(table, space or _space_of(table), out),
    }
    return writers[fmt]()


def _space_of(table: LatencyTable) -> Space:
    from .spaces import get_space

    return get_space(table.space)
