"""Cost terms as dense tensors, built once: latency [layers x ops] from hwprof tables, params and FLOPs.

Row ``i``, column ``k`` of a term is the cost of op ``k`` at every site of layer ``i`` (a DARTS row owns one site per
cell of its type, so its entries are sums). Fixed sites (stem, head, classifier, cell preprocessing) and a table's
calibration offset are a constant. So the expected cost of op probabilities ``p`` is ``const + (p * T).sum()`` and
the exact cost of choices is ``const + sum_i T[i, choice_i]``. Latency terms take ``T`` and the constant from the
table's :class:`profiler.latency.model.LatencyModel` (the one place a prediction is computed). No dict lookups happen
after construction.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from profiler.errors import UserError
from profiler.latency.model import LatencyModel
from profiler.latency.tables import LatencyTable, TableError, load_table
from profiler.spaces.arch import count_flops
from profiler.spaces.ops import build_op, count_params
from profiler.spaces.space import Site, Space


class CostError(UserError, ValueError):
    """A cost-term problem (table for another space, missing keys); one line with the fix."""


def measure_command(device: str, space: Space, path: Path | str) -> str:
    return f"hwprof measure --device {device} --space {space.spec} --out {path}"


def check_table(table: LatencyTable, space: Space) -> None:
    """Refuse a table of another space; list missing keys with the command that measures them."""
    if table.space != space.spec:
        raise CostError(f"{table.path}: table is for space {table.space!r}, not {space.spec!r}; measure one with "
                        f"`{measure_command(table.device, space, '...')}`")
    missing = table.missing(space.candidate_keys(table.batch))
    if missing:
        shown = ", ".join(missing[:3]) + (f" ... (+{len(missing) - 3} more)" if len(missing) > 3 else "")
        raise CostError(f"{table.path}: {len(missing)} of the keys space {space.spec} needs are missing or errored "
                        f"({shown}); fill them with `{measure_command(table.device, space, table.path)}`")


def open_table(path: str | Path, space: Space) -> LatencyTable:
    try:
        table = load_table(path)
    except TableError as e:
        raise CostError(str(e)) from None
    check_table(table, space)
    return table


@lru_cache(maxsize=4096)
def _site_costs(op: str, c_in: int, c_out: int, stride: int, hw: tuple[int, int],
                params: tuple[tuple[str, object], ...]) -> tuple[int, int]:
    m = build_op(op, c_in, c_out, stride, **dict(params))
    return count_params(m), count_flops(m, (c_in, *hw))


def site_costs(site: Site, op: str | None = None) -> tuple[int, int]:
    """(params, FLOPs) of ``op`` (or the fixed op) at ``site``."""
    return _site_costs(op or site.op, site.c_in, site.c_out, site.stride, tuple(site.input_hw), site.params)


@dataclass(frozen=True)
class TermInfo:
    name: str  # params | flops | latency | latency:N
    unit: str
    table: LatencyTable | None


class CostModel(nn.Module):
    """Dense cost tensors of a space. ``terms`` names them; each has ``T`` [layers, ops] and a constant.

    Tensors are buffers, so ``.to(device)`` moves them with the supernet.
    """

    def __init__(self, space: Space, tables: Sequence[LatencyTable] = ()):
        super().__init__()
        self.space = space
        self.tables = list(tables)
        self.models: list[LatencyModel] = []  # one per table: the latency terms' tensors come from these
        L, K = len(space.layers), len(space.ops)
        params = torch.zeros(L, K, dtype=torch.float64)
        flops = torch.zeros(L, K, dtype=torch.float64)
        for i, layer in enumerate(space.layers):
            for k, op in enumerate(layer.choices):
                for site in layer.sites:
                    p, f = site_costs(site, op)
                    params[i, k] += p
                    flops[i, k] += f
        fixed = [site_costs(s) for s in space.fixed]
        self.info: dict[str, TermInfo] = {}
        self._add("params", params, float(sum(p for p, _ in fixed)), "", None)
        self._add("flops", flops, float(sum(f for _, f in fixed)), "MAC", None)
        for n, table in enumerate(self.tables):
            check_table(table, space)
            model = table.model(space)
            name = "latency" if n == 0 else f"latency:{n}"
            self.models.append(model)
            self._add(name, torch.as_tensor(model.entries), model.const_ms, "ms", table)

    def _add(self, name: str, tensor: torch.Tensor, const: float, unit: str, table: LatencyTable | None) -> None:
        self.register_buffer(self._buf(name), tensor.float(), persistent=False)
        self.register_buffer(self._buf(name) + "_const", torch.tensor(const, dtype=torch.float64), persistent=False)
        self.info[name] = TermInfo(name, unit, table)

    @staticmethod
    def _buf(name: str) -> str:
        return "T_" + name.replace(":", "_")

    @property
    def names(self) -> list[str]:
        return list(self.info)

    def tensor(self, name: str) -> torch.Tensor:
        if name not in self.info:
            hint = " (pass --table for latency terms)" if name.startswith("latency") else ""
            raise CostError(f"cost term {name!r} is not available; available: {', '.join(self.info)}{hint}")
        return getattr(self, self._buf(name))

    def const(self, name: str) -> float:
        self.tensor(name)
        return float(getattr(self, self._buf(name) + "_const"))

    def expected(self, name: str, probs: torch.Tensor) -> torch.Tensor:
        """const + sum(p * T): differentiable in ``probs`` ([layers, ops], or [N, layers, ops] -> [N])."""
        t = self.tensor(name)
        return (probs * t).sum(dim=(-2, -1)) + self.const(name)

    def exact(self, name: str, choices: Sequence[str]) -> float:
        self.space.check_choices(choices)
        t = self.tensor(name)
        idx = [layer.choices.index(op) for layer, op in zip(self.space.layers, choices)]
        return self.const(name) + float(t[torch.arange(len(idx)), torch.tensor(idx)].double().sum())

    def uniform(self, name: str) -> float:
        """Expected cost at uniform op probabilities (the default reference scale)."""
        t = self.tensor(name).double()
        return float(t.mean(dim=1).sum()) + self.const(name)

    # ------------------------------------------------------------------ the names the family code relies on
    def expected_latency_ms(self, probs: torch.Tensor, table: int = 0) -> torch.Tensor:
        return self.expected("latency" if table == 0 else f"latency:{table}", probs)

    def expected_params(self, probs: torch.Tensor) -> torch.Tensor:
        return self.expected("params", probs)

    def expected_flops(self, probs: torch.Tensor) -> torch.Tensor:
        return self.expected("flops", probs)

    def latency_ms(self, choices: Sequence[str], table: int = 0) -> float:
        """Exact prediction of an architecture by the table's :class:`profiler.latency.model.LatencyModel`."""
        if table >= len(self.models):
            raise CostError("no latency table: pass --table")
        return self.models[table].exact(choices)

    def params(self, choices: Sequence[str]) -> int:
        return int(round(self.exact("params", choices)))

    def flops(self, choices: Sequence[str]) -> int:
        return int(round(self.exact("flops", choices)))
