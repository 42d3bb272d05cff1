"""Peer LUT formats: import them as normal tables, export tables in their form.

Formats (``FORMATS``), each read as its published tools write it:

- ``ofa``: Once-for-All's MobileNetV3 LUT (``224_lookup_table.yaml``: Note10 and the other devices). YAML
  ``{key: {mean, var, count, ...}}`` in ms. Keys ``expanded_conv-input:HxWxC-output:HxWxC-expand:MID-kernel:K-
  stride:S-idskip:I-se:0|1-hs:0|1`` (``expand`` = middle channels), ``Conv`` (stem), ``Conv_1`` (final expand),
  ``AvgPool2D``, ``Conv_2`` (feature mix, no BN), ``Logits-input:1x1xC-output:CLASSES``.
- ``proxyless``: ProxylessNAS' LUT (``mobile_lookup_table.yaml``, and OFA's ProxylessNASLatencyTable): the same
  YAML, keys without ``se``/``hs`` and ``expand`` = the expansion *ratio*; ``Conv``, ``Conv_1`` (feature mix),
  ``Logits-input:HxWxC-output:CLASSES`` (pool + linear).
  Both dialects name MBConv blocks (``mb_*`` ops) and those networks' fixed layers only. ``var`` becomes a std,
  ``mean`` stands in for the median (the files hold no median), ``count`` becomes ``n``; other value fields are
  ignored and listed. Comments, either order of the fields inside a key and duplicate keys (conflicts) are read.
  A skipped block (OFA's depth, ProxylessNAS' zero) has no entry: both estimators count it as free, so the import
  writes those identity keys as 0 ms rows (variant ``zero-cost``), and says so.
- ``nni``: NNI's FBNet lookup table: Python-literal dicts ``{'op_name': ..., 'op_data_shape': (w, h, C_in, C_out,
  stride), 'op_latency': ...}`` one per line (or one list of them), read with :func:`ast.literal_eval` (never
  ``eval``). Op names in FBNet's spellings (``k3_e1``, ``ir_k3_e1``, ``k3_e1_g2`` / ``ir_k3_s2``, ``skip``).
- ``fbnet-grid``: FBNet's per-layer grid: one line per searchable layer, one number per op. An op-name header
  line (``ir_k3_e1 ir_k3_s2 ...`` as FBNet-PyTorch writes it, or our names) or a ``# ops:`` comment gives the column
  order; ``# fixed: stem=...`` the fixed layers; ``# unit: ms|us``. Chain spaces only (a grid cell is one key).
- ``hwprof-jsonl``: hwprof's own lossless JSON lines ``{op_name, op_data_shape: [N, C, H, W], c_out, stride,
  params, op_dtype, op_latency (ms)}`` (this format was called ``nni`` before; it is not NNI's).

Units: ``unit`` = ``ms`` | ``us``; without it the unit comes from the file (a ``# unit:`` line, "(us)" in a comment)
or the format's convention, and the report says which and why.

Several file entries for one key (grid cells of same-shaped layers, repeated lines) are averaged -- or refused with
``on_conflict="error"`` -- and reported as conflicts with their spread; a key whose cells disagree by more than the
protocol's CV threshold is stored as ``noisy``. Every import reports entries matched, keys missing, entries unused,
ambiguous and conflicting, and the table header carries it all under ``imported``.
"""

from __future__ import annotations

import ast
import datetime as dt
import hashlib
import json
import math
import re
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import yaml

from profiler.errors import InputError, UserError
from profiler.fileio import atomic_write_text, read_text
from profiler.latency.tables import SCHEMA_VERSION, ZERO_COST, LatencyTable, Row, TableError, TableWriter, read_meta
from profiler.measuring.protocol import Protocol
from profiler.spaces.keys import KEY_VERSION, op_key, parse_key
from profiler.spaces.ops import get_op, mbconv_mid
from profiler.spaces.space import Space

FORMATS = ("ofa", "proxyless", "nni", "fbnet-grid", "hwprof-jsonl")
UNITS = ("ms", "us")
CONFLICT_MODES = ("mean", "error")
_TO_MS = {"ms": 1.0, "us": 1e-3}


class FormatError(UserError, ValueError):
    """A peer-format problem; the message is the one line shown to the user."""


@dataclass
class Conflict:
    key: str
    sources: list[str]  # where each value came from (file line, grid cell)
    values_ms: list[float]

    @property
    def spread(self) -> float:
        """max / min of the values (1.0 = they agree)."""
        return max(self.values_ms) / min(self.values_ms) if min(self.values_ms) > 0 else math.inf

    def to_json(self) -> dict[str, Any]:
        return {"key": self.key, "sources": self.sources, "values_ms": [round(v, 6) for v in self.values_ms],
                "spread": round(self.spread, 4)}


@dataclass
class ImportReport:
    path: Path
    format: str
    imported: int  # keys written (zero-cost rows included)
    entries: int = 0  # entries (lines, cells) the file holds
    matched: int = 0  # file entries that named exactly one key of the space (or one peer block)
    block_entries: int = 0  # ofa/proxyless: expanded_conv entries in the file
    block_matched: int = 0  # ... and how many of them matched
    missing: list[str] = field(default_factory=list)  # keys of the space the file has no entry for
    unused: list[str] = field(default_factory=list)  # file entries that match no key of the space
    ambiguous: list[str] = field(default_factory=list)  # file entries that match several keys
    conflicts: list[Conflict] = field(default_factory=list)  # keys with several file entries
    zero_cost: list[str] = field(default_factory=list)  # identity keys written as 0 ms (the peer counts them free)
    unit: str = "ms"
    unit_source: str = ""
    dialect: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def block_match_pct(self) -> float | None:
        return 100.0 * self.block_matched / self.block_entries if self.block_entries else None

    def summary(self) -> str:
        parts = [f"{self.matched} of {self.entries} file entries matched"]
        if self.block_entries:
            parts.append(f"blocks {self.block_matched}/{self.block_entries} ({self.block_match_pct:.1f} %)")
        parts += [f"{len(self.missing)} key(s) missing", f"{len(self.unused)} unused", f"{len(self.ambiguous)} "
                  f"ambiguous", f"{len(self.conflicts)} conflicting"]
        if self.zero_cost:
            parts.append(f"{len(self.zero_cost)} identity key(s) at 0 ms")
        return ", ".join(parts)


@dataclass
class ExportReport:
    path: Path
    format: str
    written: int
    unexpressible: list[str] = field(default_factory=list)  # table keys the format cannot name
    free: list[str] = field(default_factory=list)  # identity keys left out: the format counts them as free


def _check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise FormatError(f"unknown format {fmt!r}; formats: {', '.join(FORMATS)}")


# --------------------------------------------------------------------------------------------- op names

_GRID_ALIASES = {"identity": "skip", "skip_connect": "skip", "id": "skip"}


def canonical_op(name: str, space_ops: Iterable[str]) -> str | None:
    """Our op for a peer's spelling of it: ``k3_e1``, ``ir_k3_e1`` (FBNet-PyTorch, mobile-vision), ``ir_k3_s2`` /
    ``k3_e1_g2`` / ``ir_k3_g2`` (group 2 + shuffle), ``skip`` / ``identity``, ``3x3_MBConv6`` (ProxylessNAS), ``Zero``.
    None when it names none of ``space_ops``."""
    ops = set(space_ops)
    s = name.strip().lower()
    if s in ops:
        return s
    s = _GRID_ALIASES.get(s, s)
    m = re.fullmatch(r"(\d)x\1_mbconv(\d)", s)  # ProxylessNAS: 3x3_MBConv6
    if m:
        s = f"mb_k{m.group(1)}_e{m.group(2)}"
    s = re.sub(r"^ir_", "", s)
    s = re.sub(r"^(k\d)_s2$", r"\1_e1_g2", s)  # FBNet-PyTorch: ir_k3_s2 = kernel 3, expansion 1, group 2 + shuffle
    s = re.sub(r"^(k\d)_g2$", r"\1_e1_g2", s)
    for cand in (s, f"mb_{s}"):
        if cand in ops:
            return cand
    return None


# ------------------------------------------------------------------------------------------ OFA / Proxyless

_BLOCK_FIELDS = {"proxyless": ("input", "output", "expand", "kernel", "stride", "idskip"),
                 "ofa": ("input", "output", "expand", "kernel", "stride", "idskip", "se", "hs")}
_IO_FIELDS = ("input", "output")
_LAYER_TYPES = {"proxyless": ("Conv", "Conv_1", "Logits"), "ofa": ("Conv", "Conv_1", "AvgPool2D", "Conv_2", "Logits")}
_DIALECT_ACT = {"proxyless": ("relu6",), "ofa": ("relu", "hswish")}


def _hwc(shape: tuple[int, ...]) -> str:
    if len(shape) == 2:
        return str(shape[1])
    _, c, h, w = shape
    return f"{h}x{w}x{c}"


def _merged_params(k: Any) -> dict[str, Any]:
    return {**get_op(k.op).defaults, **k.params_dict()}


def peer_key(key: str, dialect: str) -> str | None:
    """The OFA (``dialect="ofa"``) or ProxylessNAS (``"proxyless"``) key naming the same block, or None when that
    format cannot name it (only MBConv blocks and those networks' fixed layers have names there)."""
    k = parse_key(key)
    if k.input_shape[0] != 1 or k.dtype != "float32":
        return None
    spec = get_op(k.op)
    out = spec.output_shape(k.input_shape, k.c_out, k.stride)
    io = f"input:{_hwc(k.input_shape)}-output:{_hwc(out)}"
    p = _merged_params(k)
    if spec.family == "mbconv" and spec.kind == "conv":
        act, se = p.get("act"), int(p.get("se", 0))
        if act not in _DIALECT_ACT[dialect] or (dialect == "proxyless" and se):
            return None
        idskip = int(k.stride == 1 and k.c_in == k.c_out)
        expand = mbconv_mid(k.c_in, p["expansion"]) if dialect == "ofa" else p["expansion"]
        s = f"expanded_conv-{io}-expand:{expand}-kernel:{p['kernel']}-stride:{k.stride}-idskip:{idskip}"
        return s + (f"-se:{se}-hs:{int(act == 'hswish')}" if dialect == "ofa" else "")
    if k.op == "conv":
        if p.get("act") not in (("hswish",) if dialect == "ofa" else ("relu6",)):
            return None
        name = {(3, 1): "Conv", (1, 1): "Conv_1", (1, 0): "Conv_2"}.get((int(p["kernel"]), int(p["bn"])))
        return f"{name}-{io}" if name in _LAYER_TYPES[dialect] else None
    if k.op == "global_pool" and dialect == "ofa":
        return f"AvgPool2D-{io}"
    if (k.op, dialect) in (("linear", "ofa"), ("classifier", "proxyless")):
        return f"Logits-{io}"
    return None


def _parse_peer_key(raw: str) -> tuple[str, dict[str, str]] | None:
    """``type-name:value-...`` -> (type, fields); None when the string is not in that grammar."""
    parts = [p.strip() for p in str(raw).strip().split("-")]
    if not parts[0] or ":" in parts[0]:
        return None
    fields: dict[str, str] = {}
    for p in parts[1:]:
        name, colon, value = p.partition(":")
        if not colon or not name or not value or name in fields:
            return None
        fields[name.strip()] = value.strip()
    return parts[0], fields


def _canonical_peer_key(raw: str) -> tuple[str | None, str, str]:
    """(canonical key or None, dialect or '', why not). Field order and spacing are normalised; a key with fields
    outside the grammar has no canonical form."""
    parsed = _parse_peer_key(raw)
    if parsed is None:
        return None, "", "not a type-name:value-... key"
    typ, f = parsed
    if not f:
        return None, "", "not a type-name:value-... key"
    try:
        norm = {n: ("x".join(str(int(d)) for d in v.split("x")) if n in _IO_FIELDS else str(int(v)))
                for n, v in f.items()}
    except ValueError:
        return None, "", "a field value is not an integer shape or number"
    if typ == "expanded_conv":
        for dialect in ("ofa", "proxyless"):
            if set(norm) == set(_BLOCK_FIELDS[dialect]):
                return typ + "".join(f"-{n}:{norm[n]}" for n in _BLOCK_FIELDS[dialect]), dialect, ""
        return None, "", f"fields {', '.join(sorted(norm))} are neither OFA's nor ProxylessNAS' block fields"
    if set(norm) == set(_IO_FIELDS):
        return f"{typ}-input:{norm['input']}-output:{norm['output']}", "", ""
    return None, "", f"a {typ} entry has fields {', '.join(sorted(norm))}, expected input and output"


def _yaml_pairs(src: Path) -> list[tuple[int, Any, Any]]:
    """Top-level (line, key, value) triples of a YAML mapping, duplicates kept (yaml.safe_load keeps the last)."""
    loader = yaml.SafeLoader(src.read_text())
    try:
        root = loader.get_single_node()
        if root is None:
            return []
        if not isinstance(root, yaml.MappingNode):
            raise FormatError(f"{src}: an OFA/ProxylessNAS LUT is a YAML mapping of keys to {{mean, var, count}}, "
                              f"got a {root.id}; check --format")
        return [(kn.start_mark.line + 1, loader.construct_object(kn, deep=True),
                 loader.construct_object(vn, deep=True)) for kn, vn in root.value]
    except yaml.YAMLError as e:
        raise FormatError(f"{src}: not valid YAML ({' '.join(str(e).split())[:160]}); check --format") from None
    finally:
        loader.dispose()


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _as_number(v: Any) -> Any:
    """A number written as a string (PyYAML reads ``1e-06``, without a dot, as a string) becomes a float."""
    if isinstance(v, str):
        try:
            f = float(v)
        except ValueError:
            return v
        return f if math.isfinite(f) else v
    return v


def _yaml_value(src: Path, line: int, key: Any, v: Any, ignored: set[str]) -> tuple[float, float, int]:
    """(mean, std, count) of one entry in the file's unit. std from ``std`` or the square root of ``var``."""
    v = _as_number(v)
    if _number(v):
        v = {"mean": v}
    if isinstance(v, dict):
        v = {str(k).strip(): _as_number(x) for k, x in v.items()}
    if not isinstance(v, dict) or not _number(v.get("mean")):
        got = v.get("mean") if isinstance(v, dict) else v
        raise FormatError(f"{src}: line {line}: entry {key!r}: field 'mean' = {got!r} must be a number (the "
                          f"latency); fix the entry or delete it")
    if v["mean"] < 0:
        raise FormatError(f"{src}: line {line}: entry {key!r}: field 'mean' = {v['mean']!r} must be >= 0; fix the "
                          f"entry or delete it")
    std = math.nan
    if _number(v.get("std")):
        std = float(v["std"])
    elif "var" in v:
        if not _number(v["var"]) or v["var"] < 0:
            raise FormatError(f"{src}: line {line}: entry {key!r}: field 'var' = {v['var']!r} must be a number >= 0 "
                              f"(a variance); fix the entry or delete the field")
        std = math.sqrt(float(v["var"]))
    count = int(v["count"]) if _number(v.get("count")) and v["count"] >= 0 else 0
    ignored.update(k for k in v if k not in ("mean", "std", "var", "count"))
    return float(v["mean"]), std, count


@dataclass
class _Match:
    label: str  # how the report names the file entry
    keys: list[str]  # candidate keys it names
    value: float  # in the file's unit
    std: float = math.nan
    count: int = 0
    reason: str = ""  # why an unmatched entry matched nothing


def _read_yaml_lut(src: Path, fmt: str, space: Space, rep: ImportReport) -> list[_Match]:
    index: dict[str, list[str]] = {}
    for key in space.candidate_keys():
        pk = peer_key(key, fmt)
        if pk is not None:
            index.setdefault(pk, []).append(key)
    out: list[_Match] = []
    dialects: dict[str, int] = {}
    ignored: set[str] = set()
    pairs = _yaml_pairs(src)
    for line, raw, v in pairs:
        mean, std, count = _yaml_value(src, line, raw, v, ignored)
        canon, dialect, why = _canonical_peer_key(str(raw))
        is_block = str(raw).strip().startswith("expanded_conv")
        rep.block_entries += is_block
        if dialect:
            dialects[dialect] = dialects.get(dialect, 0) + 1
        keys = index.get(canon, []) if canon is not None and dialect in ("", fmt) else []
        if canon is None:
            reason = why
        elif dialect not in ("", fmt):
            reason = f"{dialect} dialect"
        else:
            reason = "no block of this shape in the space"
        out.append(_Match(f"line {line}: {raw}", keys, mean, std, count, reason))
        rep.block_matched += bool(is_block and keys)
    other = "proxyless" if fmt == "ofa" else "ofa"
    if dialects.get(other) and not dialects.get(fmt):
        how = "with se/hs fields, expand = middle channels" if other == "ofa" else "without se/hs, expand = ratio"
        raise FormatError(f"{src}: its expanded_conv keys are in the {other} dialect ({how}), not {fmt}'s; "
                          f"use --format {other}")
    rep.dialect = fmt
    if ignored:
        rep.notes.append(f"value fields ignored: {', '.join(sorted(ignored))}")
    return out


def _usable_rows(table: LatencyTable) -> Iterator[tuple[str, dict[str, Any]]]:
    """(key, row) of each table row an export writes: every one but the errors."""
    return ((key, r) for key, r in table.rows.items() if r["status"] != "error")


def _write_yaml_lut(table: LatencyTable, fmt: str, out: Path) -> ExportReport:
    data: dict[str, dict[str, float]] = {}
    skipped, free = [], []
    for key, r in _usable_rows(table):
        pk = peer_key(key, fmt)
        if pk is None:
            k = parse_key(key)
            (free if get_op(k.op).kind == "identity" and k.stride == 1 and k.c_in == k.c_out else skipped).append(key)
            continue
        std = r["std_ms"]
        data[pk] = {"count": int(r["n"]), "mean": float(r["median_ms"]),
                    "var": 0.0 if isinstance(std, float) and math.isnan(std) else float(std) ** 2}
    name = "Once-for-All MobileNetV3" if fmt == "ofa" else "ProxylessNAS"
    header = (f"# {name} latency LUT (ms) exported by hwprof from {table.path}\n"
              f"# device {table.device}, space {table.space}; 'mean' holds the table's median, 'var' its std squared\n")
    atomic_write_text(out, header + yaml.safe_dump(data, sort_keys=True))
    return ExportReport(out, fmt, len(data), skipped, free)


# ----------------------------------------------------------------------------------------------------- NNI


def _nni_records(src: Path) -> list[tuple[str, Any]]:
    """(where, record) of every dict of an NNI LUT file, read with ast.literal_eval (never eval)."""
    text = src.read_text()
    try:
        whole = ast.literal_eval(text) if text.strip() else []
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        whole = None
    if isinstance(whole, dict) and all(isinstance(v, dict) for v in whole.values()) and "op_name" not in whole:
        return [(f"entry {k!r}", v) for k, v in whole.items()]
    if isinstance(whole, (list, tuple)):
        return [(f"item {i}", v) for i, v in enumerate(whole)]
    if isinstance(whole, dict):
        return [("line 1", whole)]
    out = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        s = line.strip().rstrip(",")
        if not s or s.startswith("#"):
            continue
        try:
            out.append((f"line {lineno}", ast.literal_eval(s)))
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            raise FormatError(f"{src}: line {lineno}: {s[:60]!r} is not a Python literal dict; an NNI LUT holds "
                              f"one {{'op_name': ..., 'op_data_shape': (w, h, C_in, C_out, stride), 'op_latency': ...}}"
                              f" per line") from None
    return out


def _read_nni(src: Path, space: Space, rep: ImportReport) -> list[_Match]:
    index: dict[tuple[str, tuple[int, ...], int, int, str], list[str]] = {}
    for key in space.candidate_keys():
        k = parse_key(key)
        index.setdefault((k.op, k.input_shape, k.c_out, k.stride, k.dtype), []).append(key)
    out = []
    for where, e in _nni_records(src):
        if not isinstance(e, dict):
            raise FormatError(f"{src}: {where}: {str(e)[:60]!r} is not a dict with op_name, op_data_shape, op_latency")
        for f in ("op_name", "op_data_shape", "op_latency"):
            if f not in e:
                raise FormatError(f"{src}: {where}: field {f!r} is missing; an NNI entry needs op_name, "
                                  f"op_data_shape (w, h, C_in, C_out, stride) and op_latency")
        lat, shape = e["op_latency"], e["op_data_shape"]
        if not _number(lat) or lat < 0:
            raise FormatError(f"{src}: {where}: field 'op_latency' = {lat!r} must be a number >= 0; fix the entry")
        if (not isinstance(shape, (list, tuple)) or len(shape) != 5
                or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape)):
            hint = (" (4 values N, C, H, W: hwprof's own JSON lines, use --format hwprof-jsonl)"
                    if isinstance(shape, (list, tuple)) and len(shape) == 4 else "")
            raise FormatError(f"{src}: {where}: field 'op_data_shape' = {shape!r} must be 5 positive integers "
                              f"(w, h, C_in, C_out, stride){hint}")
        w, h, c_in, c_out, stride = shape
        op = canonical_op(str(e["op_name"]), space.ops + tuple(s.op for s in space.fixed if s.op))
        dtype = str(e.get("op_dtype", "float32"))
        label = f"{where}: {e['op_name']} {tuple(shape)}"
        keys = index.get((op, (1, c_in, h, w), c_out, stride, dtype), []) if op else []
        reason = "op name not in the space" if op is None else "no site of this shape in the space"
        out.append(_Match(label, keys, float(lat), reason=reason))
    return out


def _write_nni(table: LatencyTable, out: Path, unit: str) -> ExportReport:
    lines = [f"# NNI FBNet latency LUT exported by hwprof: device {table.device}, space {table.space}",
             f"# op_data_shape = (w, h, C_in, C_out, stride); op_latency in {unit}"]
    skipped = []
    for key, r in _usable_rows(table):
        k = parse_key(key)
        if k.input_shape[0] != 1:
            skipped.append(key)
            continue
        _, c, h, w = k.input_shape
        rec = {"op_name": k.op, "op_data_shape": (w, h, c, k.c_out, k.stride), "op_dtype": k.dtype,
               "op_latency": float(r["median_ms"]) / _TO_MS[unit]}
        lines.append(repr(rec))
    atomic_write_text(out, "\n".join(lines) + "\n")
    return ExportReport(out, "nni", len(lines) - 2, skipped)


# ------------------------------------------------------------------------------------------ hwprof-jsonl


def _read_jsonl(src: Path, space: Space) -> list[_Match]:
    candidates = set(space.candidate_keys())
    out = []
    for lineno, line in enumerate(src.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            e = json.loads(line)
        except json.JSONDecodeError as err:
            raise FormatError(f"{src}: line {lineno}: not JSON ({err.msg}); hwprof-jsonl holds one JSON object per "
                              f"line (NNI's own Python-literal LUT is --format nni)") from None
        for f in ("op_name", "op_data_shape", "op_latency", "c_out", "stride"):
            if not isinstance(e, dict) or f not in e:
                raise FormatError(f"{src}: line {lineno}: field {f!r} is missing; write the file with hwprof export "
                                  f"--format hwprof-jsonl")
        lat = e["op_latency"]
        if not _number(lat) or lat < 0:
            raise FormatError(f"{src}: line {lineno}: field 'op_latency' = {lat!r} must be a number >= 0 (ms)")
        try:
            key = op_key(str(e["op_name"]), tuple(int(d) for d in e["op_data_shape"]), int(e["c_out"]),
                         int(e["stride"]), e.get("params") or None, str(e.get("op_dtype", "float32")))
        except (TypeError, ValueError) as err:
            raise FormatError(f"{src}: line {lineno}: {err}") from None
        out.append(_Match(f"line {lineno}: {key}", [key] if key in candidates else [], float(lat),
                          reason="key not in the space"))
    return out


def _write_jsonl(table: LatencyTable, out: Path) -> ExportReport:
    lines = []
    for key, r in _usable_rows(table):
        k = parse_key(key)
        lines.append(json.dumps({"op_name": k.op, "op_data_shape": list(k.input_shape), "op_dtype": k.dtype,
                                 "op_latency": float(r["median_ms"]), "c_out": k.c_out, "stride": k.stride,
                                 "params": dict(k.params)}))
    atomic_write_text(out, "\n".join(lines) + "\n")
    return ExportReport(out, "hwprof-jsonl", len(lines), [])


# ---------------------------------------------------------------------------------------------- FBNet grid


def _need_chain(space: Space, what: str) -> None:
    if space.family != "chain" or any(len(layer.sites) != 1 for layer in space.layers):
        raise FormatError(f"format fbnet-grid {what} chain spaces only (one key per grid cell); space {space.spec} "
                          f"is a {space.family} space: use --format nni or hwprof-jsonl")


_UNIT_WORDS = {"us": ("us", "µs", "μs", "usec", "microsecond", "microseconds"),
               "ms": ("ms", "msec", "millisecond", "milliseconds")}


def _unit_in_comment(body: str) -> str | None:
    m = re.match(r"unit\s*[:=]\s*(\S+)", body, re.I)
    words = [m.group(1).lower()] if m else re.findall(r"[(\[]\s*([^\s)\]]+)\s*[)\]]", body.lower())
    for w in words:
        for unit, names in _UNIT_WORDS.items():
            if w in names:
                return unit
    return None


def _is_number(tok: str) -> bool:
    try:
        float(tok)
        return True
    except ValueError:
        return False


def _read_grid(src: Path, space: Space, rep: ImportReport) -> list[_Match]:
    _need_chain(space, "reads")
    columns, fixed, rows = _parse_grid(src, space, rep)
    if columns is None:
        columns = list(range(len(space.ops)))
    if len(rows) != len(space.layers):
        raise FormatError(f"{src}: {len(rows)} rows, space {space.spec} has {len(space.layers)} searchable layers "
                          f"(one row per layer); check --space")
    out = []
    for (lineno, vals), layer in zip(rows, space.layers):
        if len(vals) != len(columns):
            raise FormatError(f"{src}: line {lineno}: {len(vals)} values, expected {len(columns)} (one per op: "
                              f"{' '.join(space.ops[c] for c in columns)})")
        for col, v in zip(columns, vals):
            if not (math.isfinite(v) and v >= 0):  # nan (or a negative filler): no entry
                continue
            column_op, op = space.ops[col], layer.choices[col]
            keys = [layer.sites[0].key(op)] if op == column_op else []
            out.append(_Match(f"line {lineno} {layer.name} {column_op}", keys, v,
                              reason=f"layer {layer.name} has no {column_op}"))
    for site in space.fixed:
        if site.name in fixed:
            lineno, v = fixed.pop(site.name)
            out.append(_Match(f"line {lineno} fixed {site.name}", [site.key()], v))
    for name, (lineno, v) in fixed.items():
        out.append(_Match(f"line {lineno} fixed {name}", [], v, reason=f"space {space.spec} has no fixed site "
                          f"{name} (sites: {' '.join(s.name for s in space.fixed)})"))
    return out


def _grid_header(src: Path, space: Space, names: list[str], lineno: int) -> list[int]:
    """A grid header's op names -> their columns in ``space.ops`` (FBNet-PyTorch spellings accepted)."""
    idx = []
    for n in names:
        op = canonical_op(n, space.ops)
        if op is None:
            raise FormatError(f"{src}: line {lineno}: column {n!r} names no op of space {space.spec} (ops: "
                              f"{' '.join(space.ops)}; FBNet-PyTorch spellings like ir_k3_e1, ir_k3_s2 work too)")
        idx.append(space.ops.index(op))
    if len(set(idx)) != len(idx):
        raise FormatError(f"{src}: line {lineno}: the header names one op twice ({' '.join(names)})")
    return idx


def _parse_grid(src: Path, space: Space, rep: ImportReport) -> tuple[list[int] | None, dict[str, tuple[int, float]],
                                                                     list[tuple[int, list[float]]]]:
    """The grid file's lines: header columns (None where it has none), ``# fixed:`` entries and numeric rows
    (each with its line number); a unit named in a comment goes to ``rep``."""
    columns: list[int] | None = None  # file column -> space column
    fixed: dict[str, tuple[int, float]] = {}
    rows: list[tuple[int, list[float]]] = []
    for lineno, line in enumerate(src.read_text().splitlines(), start=1):
        s = line.strip()
        if not s:
            continue
        if s.startswith("#"):
            body = s[1:].strip()
            unit = _unit_in_comment(body)
            if unit and not rep.unit_source:
                rep.unit, rep.unit_source = unit, f"line {lineno} of the file"
            if body.startswith("ops:"):
                columns = _grid_header(src, space, body[4:].split(), lineno)
            elif body.startswith("fixed:"):
                for item in body[6:].split():
                    name, _, v = item.partition("=")
                    if not _is_number(v):
                        raise FormatError(f"{src}: line {lineno}: fixed entry {item!r} is not name=latency")
                    fixed[name] = (lineno, float(v))
            continue
        toks = [t for t in re.split(r"[,\s]+", s) if t]
        if not any(_is_number(t) for t in toks) and columns is None and not rows:
            columns = _grid_header(src, space, toks, lineno)
            if any(t.lower().startswith("ir_") for t in toks) and not rep.unit_source:
                rep.unit, rep.unit_source = "us", "assumed: ir_* column names are FBNet-PyTorch's, whose " \
                                                  "lookup_table.txt holds microseconds"
            continue
        if columns is not None and len(toks) == len(columns) + 1 and not _is_number(toks[0]):
            toks = toks[1:]  # a leading row label
        bad = [t for t in toks if not _is_number(t)]
        if bad:
            raise FormatError(f"{src}: line {lineno}: value {bad[0]!r} is not a number; a grid row holds one "
                              f"latency per op")
        rows.append((lineno, [float(t) for t in toks]))
    return columns, fixed, rows


def _write_grid(table: LatencyTable, space: Space, out: Path) -> ExportReport:
    _need_chain(space, "writes")
    lines = [f"# FBNet-style latency grid exported by hwprof: device {table.device}, space {table.space}",
             "# unit: ms",
             "# one row per searchable layer (" + ", ".join(x.name for x in space.layers[:2]) + ", ...), "
             "one column per op; nan = no entry (or not an op of that layer)",
             "# ops: " + " ".join(space.ops)]
    fixed = []
    for site in space.fixed:
        try:
            fixed.append(f"{site.name}={table.latency_ms(site.key()):.6g}")
        except KeyError:
            pass
    if fixed:
        lines.append("# fixed: " + " ".join(fixed))
    written, used = 0, {s.key() for s in space.fixed}
    for layer in space.layers:
        vals = []
        for column_op, op in zip(space.ops, layer.choices):
            key = layer.sites[0].key(op)
            used.add(key)
            try:
                if op != column_op:
                    raise KeyError(key)
                vals.append(f"{table.latency_ms(key):.6g}")
                written += 1
            except KeyError:
                vals.append("nan")
        lines.append(" ".join(vals))
    atomic_write_text(out, "\n".join(lines) + "\n")
    return ExportReport(out, "fbnet-grid", written + len(fixed), sorted(set(table.rows) - used))


# ------------------------------------------------------------------------------------------------ public

_DEFAULT_UNIT = {"ofa": ("ms", "OFA's lookup tables hold milliseconds"),
                 "proxyless": ("ms", "ProxylessNAS' lookup tables hold milliseconds"),
                 "nni": ("us", "assumed: NNI's FBNet LookUpTable times in microseconds"),
                 "fbnet-grid": ("ms", "assumed: no unit in the file (our exports say '# unit: ms')"),
                 "hwprof-jsonl": ("ms", "hwprof-jsonl holds milliseconds")}


def _is_free_identity(key: str) -> bool:
    k = parse_key(key)
    return get_op(k.op).kind == "identity" and k.stride == 1 and k.c_in == k.c_out


def _check_out(out: Path, force: bool) -> None:
    """Refuse to replace a measured table with an import unless ``force``: its measurements would be lost."""
    if force or not out.exists():
        return
    try:
        meta = read_meta(out)
    except TableError:
        meta = {}
    if meta.get("runtime") != "imported":
        raise FormatError(f"{out}: --out is a measured table ({meta.get('device', '?')}, {meta.get('space', '?')}); "
                          f"an import would replace its measurements: pass --force to replace it, or choose "
                          f"another --out")


def import_table(src: Path, fmt: str, space: Space, device: str, out: Path, *, unit: str | None = None,
                 on_conflict: str = "mean", cv_threshold: float | None = None, force: bool = False) -> ImportReport:
    """Read a peer LUT into a normal table at ``out`` (written fresh and only when the file is good; a measured
    table at ``out`` is replaced only with ``force``)."""
    _check_format(fmt)
    src = Path(src)
    if unit is not None and unit not in UNITS:
        raise FormatError(f"--unit {unit!r} is not one of {', '.join(UNITS)}")
    if on_conflict not in CONFLICT_MODES:
        raise FormatError(f"--conflicts {on_conflict!r} is not one of {', '.join(CONFLICT_MODES)}")
    if not src.is_file():
        raise FormatError(f"{src}: no such file")
    rep = ImportReport(out, fmt, 0)
    _check_out(out, force)
    matches = _read_matches(src, fmt, space, rep)
    if unit is not None:
        rep.unit, rep.unit_source = unit, "--unit"
    elif not rep.unit_source:
        rep.unit, rep.unit_source = _DEFAULT_UNIT[fmt]
    scale = _TO_MS[rep.unit]
    rep.entries = len(matches)
    found = _route_matches(matches, fmt, scale, rep)
    candidates = space.candidate_keys()
    if not found:
        unused = "; ".join(rep.unused[:2]) or "-"
        amb = f"; {len(rep.ambiguous)} ambiguous, e.g. {rep.ambiguous[0]}" if rep.ambiguous else ""
        raise FormatError(f"{src}: no entry of this {fmt} file matches a key of space {space.spec} ({rep.entries} "
                          f"entries: {len(rep.unused)} unused, e.g. {unused}{amb}); check --space and --format")
    threshold = Protocol().cv_threshold if cv_threshold is None else cv_threshold
    rows = _import_rows(src, fmt, found, on_conflict, threshold, scale, rep)
    if fmt in ("ofa", "proxyless"):
        for key in candidates:
            if key not in rows and _is_free_identity(key):
                rows[key] = Row(key, median_ms=0.0, mean_ms=0.0, std_ms=0.0, cv=math.nan, status="ok",
                                variant=ZERO_COST)
                rep.zero_cost.append(key)
    rep.missing = [k for k in candidates if k not in rows]
    rep.imported = len(rows)
    lat = sorted(r.median_ms for r in rows.values() if r.median_ms > 0)
    if lat and not (1e-4 <= lat[len(lat) // 2] <= 1e4):
        rep.notes.append(f"the median entry is {lat[len(lat) // 2]:.4g} ms: is the unit right? (pass --unit us|ms)")
    with TableWriter(out, _import_meta(src, fmt, space, device, on_conflict, rep), fresh=True) as w:
        for key in candidates:
            if key in rows:
                w.append(rows[key])
    if w.dropped_calibration is not None:
        rep.notes.append(f"removed {w.dropped_calibration}: it was fitted on the table this import replaced")
    return rep


def _read_matches(src: Path, fmt: str, space: Space, rep: ImportReport) -> list[_Match]:
    """The file's entries, each with the keys of ``space`` it names; a non-text file or a latency that is not a
    finite number >= 0 is a :class:`FormatError`."""
    readers: dict[str, Callable[[], list[_Match]]] = {
        "ofa": lambda: _read_yaml_lut(src, "ofa", space, rep),
        "proxyless": lambda: _read_yaml_lut(src, "proxyless", space, rep),
        "nni": lambda: _read_nni(src, space, rep),
        "fbnet-grid": lambda: _read_grid(src, space, rep),
        "hwprof-jsonl": lambda: _read_jsonl(src, space),
    }
    try:
        matches = readers[fmt]()
    except UnicodeDecodeError:
        try:
            read_text(src, f"{fmt} file")
        except InputError as e:
            raise FormatError(f"{e}; or check --format") from None
        raise
    for m in matches:
        if not (math.isfinite(m.value) and m.value >= 0):
            raise FormatError(f"{src}: {m.label}: latency {m.value!r} must be a finite number >= 0; fix the entry "
                              f"or delete it")
    return matches


def _route_matches(matches: list[_Match], fmt: str, scale: float,
                   rep: ImportReport) -> dict[str, list[tuple[_Match, float]]]:
    """Key -> the entries naming it with their value in ms; unused and ambiguous entries go to ``rep``."""
    found: dict[str, list[tuple[_Match, float]]] = {}
    fanout = 0
    for m in matches:
        if m.keys and m.value == 0 and not all(_is_free_identity(k) for k in m.keys):
            m.keys, m.reason = [], "0 ms for a block that is not an identity"
        if not m.keys:
            rep.unused.append(f"{m.label} ({m.reason})" if m.reason else m.label)
            continue
        if len(m.keys) > 1 and fmt == "nni":  # NNI names no params: keys that differ only in them are ambiguous
            rep.ambiguous.append(f"{m.label} matches {len(m.keys)} keys, e.g. {m.keys[0]}")
            continue
        if len(m.keys) > 1:
            fanout += 1
        rep.matched += 1
        for key in m.keys:
            found.setdefault(key, []).append((m, m.value * scale))
    if fanout:
        rep.notes.append(f"{fanout} file entries name a block that is several keys here (the format cannot tell "
                         f"them apart); each such entry is written to all of them")
    return found


def _import_rows(src: Path, fmt: str, found: dict[str, list[tuple[_Match, float]]], on_conflict: str,
                 threshold: float, scale: float, rep: ImportReport) -> dict[str, Row]:
    """One table row per found key: conflicting entries averaged (or refused with ``on_conflict="error"``)."""
    rows: dict[str, Row] = {}
    for key, vals in found.items():
        ms = [v for _, v in vals]
        if len(vals) > 1 and max(ms) > min(ms) * (1 + 1e-9):  # repeats of one value are no conflict
            c = Conflict(key, [m.label for m, _ in vals], ms)
            if on_conflict == "error":
                raise FormatError(f"{src}: {len(ms)} entries name key {key} ({'; '.join(c.sources[:3])}; values "
                                  f"{', '.join(f'{v:.4g}' for v in ms[:3])} ms); pass --conflicts mean to average them")
            rep.conflicts.append(c)
            mean = statistics.fmean(ms)
            spread_std = statistics.stdev(ms)
            cv = spread_std / mean
            rows[key] = Row(key, median_ms=mean, mean_ms=mean, std_ms=spread_std, cv=cv, n=len(ms), attempts=0,
                            status="noisy" if cv > threshold else "ok", variant=f"imported-{fmt}-mean")
        elif ms[0] == 0:  # an identity block written as free (an export of an imported table)
            rows[key] = Row(key, median_ms=0.0, mean_ms=0.0, std_ms=0.0, cv=math.nan, status="ok", variant=ZERO_COST)
            rep.zero_cost.append(key)
        else:
            m, v = vals[0]
            std = m.std * scale
            rows[key] = Row(key, median_ms=v, mean_ms=v, std_ms=std, cv=std / v if math.isfinite(std) else math.nan,
                            n=m.count, attempts=0, status="ok", variant=f"imported-{fmt}")
    return rows


def _import_meta(src: Path, fmt: str, space: Space, device: str, on_conflict: str,
                 rep: ImportReport) -> dict[str, Any]:
    """The imported table's header: a normal table's fields plus what the import read, matched and dropped."""
    return {
        "schema_version": SCHEMA_VERSION, "key_version": KEY_VERSION, "device": device, "runtime": "imported",
        "space": space.spec, "space_json": space.to_json(), "batch": 1, "opset": None,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "fingerprint": None,
        "protocol": {},
        "imported": {"format": fmt, "source": str(src.resolve()),
                     "sha256": hashlib.sha256(src.read_bytes()).hexdigest(),
                     "unit": rep.unit, "unit_source": rep.unit_source, "dialect": rep.dialect or None,
                     "entries": rep.entries, "matched": rep.matched, "block_entries": rep.block_entries,
                     "block_matched": rep.block_matched, "missing": rep.missing, "unused": rep.unused[:200],
                     "n_unused": len(rep.unused), "ambiguous": rep.ambiguous[:200], "n_ambiguous": len(rep.ambiguous),
                     "conflicts": [c.to_json() for c in rep.conflicts[:200]], "n_conflicts": len(rep.conflicts),
                     "conflict_mode": on_conflict, "zero_cost": rep.zero_cost, "notes": rep.notes},
    }


def export_table(table: LatencyTable, fmt: str, out: Path, space: Space | None = None,
                 unit: str | None = None) -> ExportReport:
    """Write ``table`` in a peer format (atomic). Keys the format cannot name are listed in the report."""
    _check_format(fmt)
    if unit is not None and unit not in UNITS:
        raise FormatError(f"--unit {unit!r} is not one of {', '.join(UNITS)}")
    if unit not in (None, "ms") and fmt != "nni":
        raise FormatError(f"--unit {unit}: format {fmt} is written in ms; only nni takes --unit")
    writers: dict[str, Callable[[], ExportReport]] = {
        "ofa": lambda: _write_yaml_lut(table, "ofa", out),
        "proxyless": lambda: _write_yaml_lut(table, "proxyless", out),
        "nni": lambda: _write_nni(table, out, unit or "us"),
        "fbnet-grid": lambda: _write_grid(table, space or _space_of(table), out),
        "hwprof-jsonl": lambda: _write_jsonl(table, out),
    }
    return writers[fmt]()


def _space_of(table: LatencyTable) -> Space:
    from profiler.spaces.space import get_space

    return get_space(table.space)

