"""Reading a run directory back: the trained control, its space, table and cost tensors.

``load_run(RUN)`` rebuilds the control module from ``config.json`` and loads ``control.pt`` (or, for a run that was
interrupted, the control part of ``checkpoint.pt``), all with ``torch.load(weights_only=True)`` (the files are those
of :class:`search.rundir.RunDir`). A control value is
a plain dict: ``{}`` (static), ``{"lambda": 0.3}``, ``{"kappa": 5.0, "S": [0.5, 0.5]}``, ``{"S": [...one per op]}``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from profiler.latency.tables import LatencyTable
from profiler.spaces.ops import get_op
from profiler.spaces.space import Space

from .config import SearchConfig
from .control import Control, ControlSpace, Value
from .costs import CostModel
from .provenance import as_used, check_tables, read_provenance
from .rundir import RunDir, SearchError, load_state  # noqa: F401 - load_state: read run files as before
from .train import build


@dataclass
class Run:
    path: Path
    config: SearchConfig
    space: Space
    tables: list[LatencyTable]
    costs: CostModel
    control: Control
    metrics: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # accepted table changes, calibrations applied from the record

    @property
    def table(self) -> LatencyTable | None:
        return self.tables[0] if self.tables else None

    @property
    def control_kind(self) -> str:
        return self.control.kind

    def control_space(self) -> ControlSpace:
        return self.control.space()

    def control_range(self) -> dict[str, Any]:
        """The control space in its plain form (for display)."""
        return self.control_space().as_dict()

    def value(self, control: dict[str, Any]) -> Value:
        return self.control.value(dict(control))

    @torch.no_grad()
    def logits(self, control: dict[str, Any]) -> torch.Tensor:
        """Architecture logits [layers, ops] at a control value."""
        return self.control(self.value(control)).detach().clone()

    def probs(self, control: dict[str, Any]) -> torch.Tensor:
        return torch.softmax(self.logits(control), dim=-1)

    def choices(self, control: dict[str, Any]) -> list[str]:
        """Argmax op per layer. With a zero op ('none') in a cell space: DARTS' derivation -- every node keeps its
        two strongest incoming edges (by their best non-zero op) and the other edges become the zero op."""
        return derive_choices(self.space, self.probs(control))

    def expected(self, control: dict[str, Any]) -> dict[str, float]:
        """Expected cost per available term (params, flops, latency, ...) at a control value."""
        p = self.probs(control)
        return {t: float(self.costs.expected(t, p)) for t in self.costs.names}


def derive_choices(space: Space, probs: torch.Tensor) -> list[str]:
    ops = space.ops
    zero = [k for k, op in enumerate(ops) if get_op(op).kind == "zero"]
    if not zero or space.family != "cell":
        return [layer.choices[int(i)] for layer, i in zip(space.layers, probs.argmax(dim=-1))]
    masked = probs.clone()
    masked[:, zero] = -1.0
    best = masked.max(dim=-1)
    row = {layer.name: i for i, layer in enumerate(space.layers)}
    choices = [ops[zero[0]]] * len(space.layers)
    nodes = space.topology["nodes"]
    for kind in ("normal", "reduce"):
        e = 0
        for node in range(nodes):
            rows = [row[f"{kind}.e{e + j}"] for j in range(2 + node) if f"{kind}.e{e + j}" in row]
            e += 2 + node
            for r in sorted(rows, key=lambda r: -float(best.values[r]))[:2]:
                choices[r] = ops[int(best.indices[r])]
    return choices


def load_run(run_dir: str | Path, accept_changed_tables: bool = False) -> Run:
    """A run as its search left it: the tables it recorded (``provenance.json``), with the calibrations it used. A
    table that is gone or changed is refused unless ``accept_changed_tables``."""
    rd = RunDir.find(run_dir)
    path = rd.path
    cfg = rd.read_config()
    uses = read_provenance(path)
    notes = check_tables(path, uses, cfg.tables, accept_changed_tables)
    missing = [t for t in cfg.tables if not Path(t).is_file()]
    if missing:
        raise SearchError(f"{path}: latency table {missing[0]} of this run is gone; restore it or measure it again")
    setup = build(cfg, check_terms=False, with_model=False)
    tables, cal_notes = as_used(setup.tables, uses)
    costs = CostModel(setup.space, tables) if cal_notes else setup.costs
    control, state = setup.control, rd.control_state()
    try:
        control.load_state_dict(state)
    except RuntimeError as e:
        raise SearchError(f"{path}: the stored control does not fit this run's config ({str(e).splitlines()[0]}); "
                          f"re-run the search") from None
    control.eval()
    return Run(path, setup.cfg, setup.space, tables, costs, control, rd.read_metrics(), notes + cal_notes)
