"""Networks from architecture data.

:class:`SpaceNet` lays out a space's topology once; what sits at each searchable site comes from a ``make_block``
callback, so the same topology code builds a derived network (one op per layer, :func:`build_network`) and the
search side's supernet (a mixed op per site that takes that layer's op weights).

``forward(x, layer_weights=None)``: with weights ``[layers, ops]`` every searchable block is called as
``block(x, layer_weights[row])``; without, as ``block(x)``.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from profiler.spaces.ops import build_op, get_op
from profiler.spaces.space import Site, Space

MakeBlock = Callable[[int, Site], nn.Module]


def _fixed(site: Site) -> nn.Module:
    return build_op(site.op, site.c_in, site.c_out, site.stride, **dict(site.params))  # type: ignore[arg-type]


def _call(block: nn.Module, x: torch.Tensor, w: torch.Tensor | None) -> torch.Tensor:
    return block(x) if w is None else block(x, w)


class _Cell(nn.Module):
    def __init__(self, pre0: nn.Module, pre1: nn.Module, edges: list[nn.Module], rows: list[int], nodes: int):
        super().__init__()
        self.pre0, self.pre1 = pre0, pre1
        self.edges = nn.ModuleList(edges)
        self.rows = rows
        self.nodes = nodes

    def forward(self, s0: torch.Tensor, s1: torch.Tensor, w: torch.Tensor | None) -> torch.Tensor:
        states = [self.pre0(s0), self.pre1(s1)]
        e = 0
        for _ in range(self.nodes):
            acc = None
            for j in range(len(states)):
                block = self.edges[e]
                if not isinstance(block, _Absent):
                    y = _call(block, states[j], None if w is None else w[self.rows[e]])
                    acc = y if acc is None else acc + y
                e += 1
            if acc is None:  # every incoming edge is 'none'
                ref = self.edges[e - 1]
                acc = ref.zeros_like(states[0])  # type: ignore[union-attr]
            states.append(acc)
        return torch.cat(states[2:], dim=1)


class _Absent(nn.Module):
    """An edge whose chosen op is 'none': no compute; produces zeros only when a node has no other input."""

    def __init__(self, stride: int):
        super().__init__()
        self.stride = stride

    def zeros_like(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :, :: self.stride, :: self.stride] * 0.0


class SpaceNet(nn.Module):
    def __init__(self, space: Space, make_block: MakeBlock):
        super().__init__()
        self.space = space
        fixed = {s.name: s for s in space.fixed}
        if space.family == "chain":
            # fixed sites run in order: the first `pre` before the searchable layers, the rest after. Each is an
            # attribute named after its site (stem, head, classifier, ...), so state_dict names follow the space.
            n_pre = int(space.topology.get("pre", 1))
            self._pre = [s.name for s in space.fixed[:n_pre]]
            self._post = [s.name for s in space.fixed[n_pre:]]
            for s in space.fixed[:n_pre]:
                self.add_module(s.name, _fixed(s))
            self.blocks = nn.ModuleList(make_block(i, layer.sites[0]) for i, layer in enumerate(space.layers))
            for s in space.fixed[n_pre:]:
                self.add_module(s.name, _fixed(s))
        elif space.family == "cell":
            self.stem = _fixed(fixed["stem"])
            site_row: dict[str, tuple[int, Site]] = {}
            for row, layer in enumerate(space.layers):
                for site in layer.sites:
                    site_row[site.name] = (row, site)
            nodes = space.topology["nodes"]
            cells = []
            for i, _ in enumerate(space.topology["reductions"]):
                names = sorted((n for n in site_row if n.startswith(f"cell{i}.")),
                               key=lambda n: (int(n.split(".")[1][1:]), int(n.split(".")[2][1:])))
                edges, rows = [], []
                for n in names:
                    row, site = site_row[n]
                    edges.append(make_block(row, site))
                    rows.append(row)
                cells.append(_Cell(_fixed(fixed[f"cell{i}.pre0"]), _fixed(fixed[f"cell{i}.pre1"]), edges, rows, nodes))
            self.cells = nn.ModuleList(cells)
            self.classifier = _fixed(fixed["classifier"])
        else:
            raise ValueError(f"space {space.spec}: unknown family {space.family!r}")

    def forward(self, x: torch.Tensor, layer_weights: torch.Tensor | None = None) -> torch.Tensor:
        if self.space.family == "chain":
            for name in self._pre:
                x = getattr(self, name)(x)
            for i, block in enumerate(self.blocks):
                x = _call(block, x, None if layer_weights is None else layer_weights[i])
            for name in self._post:
                x = getattr(self, name)(x)
            return x
        s0 = s1 = self.stem(x)
        for cell in self.cells:
            s0, s1 = s1, cell(s0, s1, layer_weights)
        return self.classifier(s1)


def build_network(space: Space, choices: list[str] | tuple[str, ...]) -> SpaceNet:
    """A standalone network with one op per searchable layer ('none' edges of cell spaces are left out)."""
    space.check_choices(choices)

    def make(row: int, site: Site) -> nn.Module:
        op = choices[row]
        if get_op(op).kind == "zero":
            return _Absent(site.stride)
        return build_op(op, site.c_in, site.c_out, site.stride, **dict(site.params))

    return SpaceNet(space, make)


def input_coverage(space: Space, choices: list[str] | tuple[str, ...]) -> tuple[int, int]:
    """(seen, total): how many of the H x W input pixel positions the logits of ``choices`` depend on at all, from
    the gradient of a randomly initialised network at a random input. A 1x1 stride-2 ``skip`` at a stage transition
    reads one pixel in four: FBNet's all-skip network at 16x16 sees its top-left 2x2 pixels only."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = build_network(space, choices).eval()
        x = torch.randn((1, *space.input_shape), requires_grad=True)
    net(x).sum().backward()
    seen = x.grad.abs().sum(dim=(0, 1)) > 0
    return int(seen.sum()), seen.numel()
