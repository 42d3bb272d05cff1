"""THE key function. The exporter, the tables and the supernet's cost tensors all call :func:`op_key`.

A key names one whole candidate block at the exact shape it has in a network::

    v1|k3_e6|1x16x32x32|c24|s2|float32|kernel=3

fields: key format version, op name, input shape N x C x H x W, output channels, stride, dtype, then the op's
extra params as sorted ``name=value`` pairs (omitted when empty). Change the format -> bump ``KEY_VERSION``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

KEY_VERSION = 1
_PREFIX = f"v{KEY_VERSION}"


@dataclass(frozen=True)
class OpKey:
    op: str
    input_shape: tuple[int, int, int, int]
    c_out: int
    stride: int
    dtype: str = "float32"
    params: tuple[tuple[str, Any], ...] = ()

    @property
    def key(self) -> str:
        return op_key(self.op, self.input_shape, self.c_out, self.stride, dict(self.params), self.dtype)

    @property
    def c_in(self) -> int:
        return self.input_shape[1]

    def params_dict(self) -> dict[str, Any]:
        return dict(self.params)


def _fmt_value(v: Any) -> str:
    if isinstance(v, bool) or not isinstance(v, (int, float, str)):
        raise TypeError(f"key params must be int, float or str, got {type(v).__name__} ({v!r})")
    s = str(v)
    if any(ch in s for ch in "|=,"):
        raise ValueError(f"key param value {s!r} may not contain '|', '=' or ','")
    return s


def op_key(op: str, input_shape: tuple[int, ...] | list[int], c_out: int, stride: int,
           params: Mapping[str, Any] | None = None, dtype: str = "float32") -> str:
    """The one canonical key string of a block. See the module docstring for the format."""
    shape = tuple(int(d) for d in input_shape)
    if len(shape) != 4:
        raise ValueError(f"input_shape must be N x C x H x W, got {shape}")
    if "|" in op:
        raise ValueError(f"op name {op!r} may not contain '|'")
    fields = [_PREFIX, op, "x".join(map(str, shape)), f"c{int(c_out)}", f"s{int(stride)}", dtype]
    if params:
        fields.append(",".join(f"{k}={_fmt_value(v)}" for k, v in sorted(params.items())))
    return "|".join(fields)


def _parse_value(s: str) -> Any:
    for conv in (int, float):
        try:
            return conv(s)
        except ValueError:
            pass
    return s


def key_label(key: str) -> tuple[str, str] | None:
    """``(op, input shape)`` of a table key for a progress line, or None when ``key`` is no key (a free label)."""
    parts = key.split("|")
    return (parts[1], parts[2]) if len(parts) > 2 and parts[0] == _PREFIX else None


def key_op(key: str) -> str:
    """The op name of a table key (cheap: no full parse)."""
    label = key_label(key)
    if label is None:
        raise ValueError(f"malformed op key {key!r}: expected {_PREFIX}|op|shape|...")
    return label[0]


def parse_key(key: str) -> OpKey:
    """Inverse of :func:`op_key`; raises ``ValueError`` naming the key on any malformation."""
    parts = key.split("|")
    try:
        if parts[0] != _PREFIX:
            raise ValueError(f"key format {parts[0]!r} is not {_PREFIX!r} (re-measure with this version)")
        if len(parts) not in (6, 7):
            raise ValueError(f"expected 6 or 7 '|'-separated fields, got {len(parts)}")
        op, shape_s, c_s, s_s, dtype = parts[1:6]
        shape = tuple(int(d) for d in shape_s.split("x"))
        if len(shape) != 4 or not c_s.startswith("c") or not s_s.startswith("s"):
            raise ValueError("bad shape, c_out or stride field")
        params: tuple[tuple[str, Any], ...] = ()
        if len(parts) == 7 and parts[6]:
            params = tuple(sorted((k, _parse_value(v)) for k, v in (kv.split("=", 1) for kv in parts[6].split(","))))
        return OpKey(op, shape, int(c_s[1:]), int(s_s[1:]), dtype, params)  # type: ignore[arg-type]
    except ValueError as e:
        raise ValueError(f"malformed op key {key!r}: {e}") from None


def output_hw(h: int, w: int, stride: int) -> tuple[int, int]:
    """Spatial size after a 'same'-padded op with this stride (all registry ops pad this way)."""
    return (h + stride - 1) // stride, (w + stride - 1) // stride
