"""Deriving architectures from a trained run, without retraining.

A run's control module answers for every control value (a penalty magnitude κ or λ, and for ``tradeoff`` a
direction S on the simplex of cost terms). Three ways to pick controls:

* :func:`derive_at` — the architecture at one control value;
* :func:`derive_budgets` — for each (latency, params) budget, the control with the *least penalty pressure* whose
  architecture meets it: a log-spaced grid over the magnitude, refined by bisection between the last failing and
  the first meeting grid point, for every direction of a small simplex grid; the least magnitude wins (ties: the
  slower, more accuracy-leaning architecture). Then the budget's slack is used honestly: the nearest
  less-pressured architecture on its ray (over the budget) gets the fewest layers changed back that meet it, and
  the result is marked ``kind: filled`` with its ``nearest_control`` and ``layers_changed``, since no control
  produces it (:func:`fill_budget`; ``fill=False`` / ``--no-fill`` turns it off). When no control meets a budget
  the result says so and carries the closest architecture;
* :func:`derive_family` — N distinct architectures spanning the control range, Pareto-filtered on (predicted
  latency on every device of the run, params, penalty pressure — the accuracy proxy) and spread evenly over the
  first device's predicted latency.

Several devices: a run searched with several tables (``latency``, ``latency:1``, ...) names each by its table's
device (:func:`device_names`). A budget may hold one latency limit per device (:class:`DeviceLimit`,
``--latency-ms cpu-1t=0.2,tvm-cpu=3``); an architecture meets it only when it meets every limit.

Everything is judged with the run's cost model: each latency table's :class:`profiler.latency.model.LatencyModel` (the
table's batch, calibration and statistic) and exact params from the op registry; no network is trained or timed here.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import itertools
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Protocol, Sequence

import numpy as np

from profiler.errors import UserError
from profiler.latency.tables import LatencyTable, atomic_write_text
from profiler.spaces.arch import Arch, make_arch, save_arch
from profiler.spaces.network import input_coverage
from profiler.spaces.space import Space

from .control import ControlSpace
from .costs import CostModel


class DeriveError(UserError, ValueError):
    """A derivation problem (bad control, budget, run); one line for the user."""


class RunLike(Protocol):
    """What derivation needs from :class:`search.run.Run`."""

    space: Space
    table: LatencyTable | None
    tables: list[LatencyTable]  # every table of the run (the recorded ones), in cost-term order
    costs: CostModel  # exact params and, per table, the latency model's prediction
    control_kind: str

    def control_space(self) -> ControlSpace: ...

    def choices(self, control: dict[str, Any]) -> list[str]: ...


@dataclass(frozen=True)
class Candidate:
    control: dict[str, Any]
    pressure: float  # the penalty magnitude (κ or λ); lower = more accuracy-leaning
    choices: tuple[str, ...]
    latency_ms: float
    params: int
    filled: int = 0  # fill_budget: layers of the nearest control's architecture changed to meet the budget
    nearest_control: dict[str, Any] | None = None  # fill_budget: the control whose architecture it started from
    changed: tuple[tuple[int, str, str], ...] = ()  # fill_budget: (layer, op there, op here) per changed layer
    latencies: tuple[float, ...] = ()  # predicted ms on every table of the run (latencies[0] == latency_ms)

    @property
    def key(self) -> tuple[str, ...]:
        return self.choices

    @property
    def objectives(self) -> tuple[float, ...]:
        """What the Pareto front minimises: the latency on every device, params, pressure (the accuracy proxy)."""
        return (*(self.latencies or (self.latency_ms,)), float(self.params), self.pressure)


def device_names(tables: Sequence[LatencyTable]) -> list[str]:
    """A name per table of a run: its device, or its cost term (``latency:N``) when an earlier table has the same
    device."""
    names: list[str] = []
    for n, t in enumerate(tables):
        names.append(t.device if t.device not in names else f"latency:{n}")
    return names


class Deriver:
    """Evaluates controls of one run: control -> choices -> (predicted ms, params), cached by choices."""

    def __init__(self, run: RunLike, grid: int = 40, bisect_steps: int = 10, simplex_step: float = 0.25):
        self.run = run
        self.kind = run.control_kind
        self.cs = run.control_space()
        self.costs = run.costs
        self.devices = device_names(self.costs.tables)  # one per latency model of the cost model, in order
        self.grid, self.bisect_steps, self.simplex_step = grid, bisect_steps, simplex_step
        self._by_choices: dict[tuple[str, ...], tuple[float, int, tuple[float, ...]]] = {}
        self.evaluated: list[Candidate] = []

    # ----------------------------------------------------------------------------------- control geometry
    @property
    def magnitude_name(self) -> str | None:
        return self.cs.magnitude

    def magnitude_bounds(self) -> tuple[float, float]:
        name = self.magnitude_name
        if name is None or self.cs.bounds is None:
            raise DeriveError(f"a {self.kind!r} run has no penalty magnitude to vary")
        lo, hi = (float(v) for v in self.cs.bounds)
        if not (0 < lo <= hi):
            raise DeriveError(f"run's {name} range [{lo}, {hi}] must be positive and increasing")
        return lo, hi

    def magnitudes(self, n: int | None = None) -> np.ndarray:
        lo, hi = self.magnitude_bounds()
        return np.geomspace(lo, hi, n or self.grid) if hi > lo else np.array([lo])

    def directions(self) -> list[list[float] | None]:
        """Directions S on the simplex of cost terms (``tradeoff``); [None] for kinds without a direction."""
        if self.cs.s_over != "cost_terms":
            return [None]
        dim = self.cs.s_dim
        if dim <= 1:
            return [[1.0]]
        steps = max(1, int(round(1 / self.simplex_step)))
        out = []
        for combo in itertools.product(range(steps + 1), repeat=dim - 1):
            if sum(combo) <= steps:
                out.append([c / steps for c in combo] + [(steps - sum(combo)) / steps])
        return out

    def control(self, magnitude: float | None, direction: list[float] | None) -> dict[str, Any]:
        c: dict[str, Any] = {}
        if self.magnitude_name is not None and magnitude is not None:
            c[self.magnitude_name] = float(magnitude)
        if direction is not None:
            c["S"] = [float(s) for s in direction]
        return c

    # ------------------------------------------------------------------------------------------ evaluation
    def evaluate(self, control: dict[str, Any]) -> Candidate:
        mag = self.magnitude_name
        cand = self.candidate(tuple(self.run.choices(control)), dict(control),
                              float(control.get(mag, 0.0)) if mag else 0.0)
        self.evaluated.append(cand)
        return cand

    def candidate(self, choices: tuple[str, ...], control: dict[str, Any] | None = None,
                  pressure: float = 0.0) -> Candidate:
        lat, params, lats = self.price(choices)
        return Candidate(control or {}, pressure, choices, lat, params, latencies=lats)

    def price(self, choices: tuple[str, ...]) -> tuple[float, int, tuple[float, ...]]:
        """(predicted ms by the run's first table -- NaN without one --, exact params, predicted ms by every table),
        cached by choices."""
        if choices not in self._by_choices:
            lats = tuple(self.costs.latency_ms(choices, n) for n in range(len(self.costs.models)))
            self._by_choices[choices] = (lats[0] if lats else math.nan, self.costs.params(choices), lats)
        return self._by_choices[choices]

    def sweep(self) -> list[Candidate]:
        """Every (magnitude, direction) grid point, evaluated."""
        if self.kind == "static" or self.magnitude_name is None:
            if self.cs.s_over == "ops":  # simplex-ops, seed: S over the ops is the whole control
                return [self.evaluate({"S": s}) for s in self._op_simplex(2 * self.grid)]
            return [self.evaluate({})]
        return [self.evaluate(self.control(m, d)) for d in self.directions() for m in self.magnitudes()]

    def _op_simplex(self, n: int = 48) -> list[list[float]]:
        dim = self.cs.s_dim or len(self.run.space.ops)
        eye = np.eye(dim).tolist()
        rng = np.random.default_rng(0)
        return [[1.0 / dim] * dim, *eye, *rng.dirichlet(np.ones(dim), size=n).tolist()]


# --------------------------------------------------------------------------------------------------- budgets


@dataclass(frozen=True)
class DeviceLimit:
    """A latency limit on one device of the run: its table's index (cost term ``latency:N``) and name."""

    table: int
    device: str
    ms: float


@dataclass(frozen=True)
class Budget:
    latency_ms: float | None = None  # on the run's first table (a bare ``--latency-ms 3``)
    params: int | None = None
    devices: tuple[DeviceLimit, ...] = ()  # a limit per named device (``--latency-ms cpu-1t=0.2,tvm-cpu=3``)

    def limits(self, c: Candidate) -> list[tuple[float, float]]:
        """(the candidate's value, the limit) for every limit of the budget."""
        out = [] if self.latency_ms is None else [(c.latency_ms, self.latency_ms)]
        lats = c.latencies or (c.latency_ms,)
        out += [(lats[d.table] if d.table < len(lats) else math.nan, d.ms) for d in self.devices]
        return out + ([] if self.params is None else [(float(c.params), float(self.params))])

    @property
    def has_latency(self) -> bool:
        return self.latency_ms is not None or bool(self.devices)

    def meets(self, c: Candidate) -> bool:
        """Every limit met (on every device the budget names)."""
        return all(v <= lim for v, lim in self.limits(c))

    def excess(self, c: Candidate) -> float:
        """How far over the budget, as the worst ratio over its limits (<= 1 when met)."""
        return max((v / lim for v, lim in self.limits(c)), default=0.0)

    def label(self) -> str:
        parts = [] if self.latency_ms is None else [f"{self.latency_ms:g} ms"]
        parts += [f"{d.ms:g} ms on {d.device}" for d in self.devices]
        if self.params is not None:
            parts.append(f"{self.params:,} params")
        return " and ".join(parts) or "no budget"


@dataclass
class BudgetResult:
    budget: Budget
    found: Candidate | None
    closest: Candidate  # the found one, or the evaluated candidate least over the budget
    devices: Sequence[str] = ()  # the run's device names (:func:`device_names`): the message shows each latency

    @property
    def ok(self) -> bool:
        return self.found is not None

    def message(self) -> str:
        if self.found is not None:
            f = self.found
            at = (f"filled: the architecture of {_fmt_control(f.nearest_control)} with {f.filled} layer(s) "
                  f"changed (no control gives it)" if f.nearest_control is not None else
                  f"met at {_fmt_control(f.control)}")
            return f"budget {self.budget.label()}: {at} ({self._costs(f)})"
        c = self.closest
        return (f"budget {self.budget.label()}: no control of this run meets it; closest is "
                f"{_fmt_control(c.control)} ({self._costs(c)}, {(self.budget.excess(c) - 1) * 100:.1f} % over)")

    def _costs(self, c: Candidate) -> str:
        if len(self.devices) > 1 and len(c.latencies) == len(self.devices):
            lat = ", ".join(f"{ms:.3f} ms on {name}" for name, ms in zip(self.devices, c.latencies))
        else:
            lat = f"{c.latency_ms:.3f} ms"
        return f"{lat}, {c.params:,} params"


def _least_meeting_on_ray(d: Deriver, direction: list[float] | None,
                          budget: Budget) -> tuple[Candidate, list[Candidate]] | None:
    """The smallest magnitude along one direction whose architecture meets ``budget`` (grid, then bisection), with
    the failing architectures evaluated below it on the ray, nearest (most pressure) first."""
    mags = d.magnitudes()
    fails: list[Candidate] = []
    for m in mags:
        c = d.evaluate(d.control(m, direction))
        if budget.meets(c):
            best = c
            if not fails:
                return best, []
            lo, hi = math.log(fails[-1].pressure), math.log(m)
            for _ in range(d.bisect_steps):
                mid = 0.5 * (lo + hi)
                cm = d.evaluate(d.control(math.exp(mid), direction))
                if budget.meets(cm):
                    best, hi = cm, mid
                else:
                    fails.append(cm)
                    lo = mid
            return best, sorted(fails, key=lambda f: -f.pressure)
        fails.append(c)
    return None


def fill_budget(d: Deriver, meet: Candidate, towards: Sequence[Candidate], budget: Budget) -> Candidate:
    """Use the slack a budget leaves, changing as little as possible. The family is discrete: the least-pressure
    architecture that meets a budget (``meet``) can sit well under it while the less-pressured ones on its ray
    (``towards``, nearest first) are over. Starting from the nearest of those, the fewest layers go back to
    ``meet``'s op that bring it within the budget -- the layer that lowers the budget's worst ratio most first, so for
    a budget of one limit (latency on one device, or params) no smaller set of layers would do; when that uses the
    budget no better than ``meet``, the next
    one is tried. No control produces the result: it is marked filled (``nearest_control``, ``changed``, ``filled``
    = how many layers). It is ``meet`` itself when no architecture on the ray gives a closer fill."""
    seen: set[tuple[str, ...]] = {meet.choices}
    for target in towards:
        if target.choices in seen:
            continue
        seen.add(target.choices)
        filled = _fill_from(d, target, meet, budget)
        if filled is not None:
            return filled
    return meet


def _fill_from(d: Deriver, target: Candidate, meet: Candidate, budget: Budget) -> Candidate | None:
    """``target`` with the fewest layers set back to ``meet``'s op that meet ``budget``; None unless closer than
    ``meet``."""
    cur = target.choices
    todo = [i for i, (a, b) in enumerate(zip(cur, meet.choices)) if a != b]
    trial = target
    while not budget.meets(trial) and todo:
        options = []
        for i in todo:
            ch = cur[:i] + (meet.choices[i],) + cur[i + 1:]
            options.append((budget.excess(_priced(d, ch)), i, ch))
        _, i, cur = min(options)
        todo.remove(i)
        trial = _priced(d, cur)
    if not todo or not budget.meets(trial) or budget.excess(trial) <= budget.excess(meet):
        return None  # every layer went back (that is meet), or no closer to the budget than meet
    changed = tuple((i, a, b) for i, (a, b) in enumerate(zip(target.choices, cur)) if a != b)
    return dataclasses.replace(trial, control={}, pressure=target.pressure, filled=len(changed),
                               nearest_control=dict(target.control), changed=changed)


def _priced(d: Deriver, choices: tuple[str, ...]) -> Candidate:
    return d.candidate(choices)


def derive_budgets(d: Deriver, budgets: Sequence[Budget], fill: bool = True) -> list[BudgetResult]:
    """Per budget, the least-pressure control that meets it; with ``fill`` its architecture then takes ops of the
    less-pressured architectures on the same ray while the budget holds (:func:`fill_budget`)."""
    out = []
    for budget in budgets:
        if budget.has_latency and d.run.table is None:
            raise DeriveError("a latency budget needs a run with a latency table")
        meeting: list[tuple[Candidate, list[Candidate]]] = []
        if d.magnitude_name is None:
            meeting = [(c, []) for c in d.sweep() if budget.meets(c)]
        else:
            for direction in d.directions():
                hit = _least_meeting_on_ray(d, direction, budget)
                if hit is not None:
                    meeting.append(hit)
        if meeting:
            best, below = min(meeting, key=lambda m: (m[0].pressure, -m[0].latency_ms, -m[0].params))
            if fill:
                best = fill_budget(d, best, below, budget)
            out.append(BudgetResult(budget, best, best, d.devices))
        else:
            closest = min(d.evaluated, key=lambda c: (budget.excess(c), c.pressure))
            out.append(BudgetResult(budget, None, closest, d.devices))
    return out


# ---------------------------------------------------------------------------------------------------- family


def pareto(cands: Iterable[Candidate]) -> list[Candidate]:
    """Architectures not dominated on (predicted latency on every device of the run, params, pressure), one per
    architecture (its least-pressure control), sorted by the first device's latency. Pressure stands in for accuracy
    (a lower penalty magnitude leans to accuracy): a member is dropped when another is no slower on any device, no
    bigger and was derived at no higher pressure (:attr:`Candidate.objectives`). (Latency and params alone are both
    costs and correlate, so their front would hold only the fastest few architectures.)"""
    uniq: dict[tuple[str, ...], Candidate] = {}
    for c in cands:
        if c.choices not in uniq or c.pressure < uniq[c.choices].pressure:
            uniq[c.choices] = c
    items = list(uniq.values())

    def dominates(o: tuple[float, ...], c: tuple[float, ...]) -> bool:
        return all(a <= b for a, b in zip(o, c)) and any(a < b for a, b in zip(o, c))

    objs = {id(c): c.objectives for c in items}
    front = [c for c in items if not any(dominates(objs[id(o)], objs[id(c)]) for o in items if o is not c)]
    return sorted(front, key=lambda c: (c.latency_ms, c.params))


def nondominated_ranks(cands: Sequence[Candidate]) -> list[list[Candidate]]:
    """Successive Pareto fronts (:func:`pareto`): rank 0 is the front, rank 1 the front of the rest, ..."""
    rest = list(cands)
    ranks = []
    while rest:
        front = pareto(rest)
        ranks.append(front)
        ids = {c.choices for c in front}
        rest = [c for c in rest if c.choices not in ids]
    return ranks


def spread(cands: Sequence[Candidate], n: int) -> list[Candidate]:
    """``n`` candidates spread evenly over predicted latency: for each of n targets between the fastest and the
    slowest, the nearest candidate not taken yet. Returned fastest first."""
    pool = sorted(cands, key=lambda c: (c.latency_ms, c.params))
    if len(pool) <= n:
        return pool
    lo, hi = pool[0].latency_ms, pool[-1].latency_ms
    taken: list[Candidate] = []
    for t in np.linspace(lo, hi, n):
        free = [c for c in pool if c not in taken]
        taken.append(min(free, key=lambda c: (abs(c.latency_ms - t), c.pressure)))
    return sorted(taken, key=lambda c: (c.latency_ms, c.params))


def derive_family(d: Deriver, n: int, keep_blind: bool = False) -> tuple[list[Candidate], dict[str, Any]]:
    """``n`` distinct architectures spanning the run's control range, fastest first.

    Architectures that cannot see the image (their logits depend on under BLIND_BELOW of the input's pixels, see
    :func:`blind_note`) are left out before anything is ranked, unless ``keep_blind`` or every one is blind: they
    train to about chance whatever their cost (every such network of the bench reached <= 59 %, every other >= 68 %).
    The stats count them (``blind_left_out``).

    Every grid control is derived; duplicates keep their least-pressure control. Members come from the Pareto front
    on (predicted latency on every device, params, pressure) (see :func:`pareto`), spread evenly over the first
    device's latency range; when the
    front holds fewer than ``n`` architectures, the next non-dominated ranks fill in (so the family still spans the
    range), and the stats say how many members are on the front itself.
    """
    if n < 1:
        raise DeriveError(f"--family {n}: need at least 1 member")
    cands = d.sweep()
    uniq: dict[tuple[str, ...], Candidate] = {}
    for c in cands:
        if c.choices not in uniq or c.pressure < uniq[c.choices].pressure:
            uniq[c.choices] = c
    n_distinct = len(uniq)
    seeing = uniq if keep_blind else {k: c for k, c in uniq.items() if not blind_note(d.run.space, k)}
    left_out = len(uniq) - len(seeing) if seeing else 0
    uniq = seeing or uniq
    if d.run.table is None:  # no latency: spread over params instead
        pool = sorted(uniq.values(), key=lambda c: c.params)
        idx = sorted(set(int(round(i)) for i in np.linspace(0, len(pool) - 1, min(n, len(pool)))))
        return [pool[i] for i in idx], {"evaluated": len(cands), "distinct": n_distinct, "pareto": len(pool),
                                        "off_front": [], "blind_left_out": left_out}
    ranks = nondominated_ranks(list(uniq.values()))
    if len(ranks[0]) >= n:
        chosen = spread(ranks[0], n)
    else:
        chosen = list(ranks[0])
        for front in ranks[1:]:
            need = n - len(chosen)
            if need <= 0:
                break
            chosen += front if len(front) <= need else _fill(chosen, front, need)
    chosen = sorted(chosen, key=lambda c: (c.latency_ms, c.params))
    front = {c.choices for c in ranks[0]}
    off = [i for i, c in enumerate(chosen) if c.choices not in front]
    return chosen, {"evaluated": len(cands), "distinct": n_distinct, "pareto": len(ranks[0]), "off_front": off,
                    "blind_left_out": left_out}


NOT_PARETO = "not Pareto-optimal: fills the latency range"
BLIND_BELOW = 0.25  # input coverage under which a derived network is noted as unable to see the image


def blind_note(space: Space, choices: Sequence[str]) -> str:
    """A note when the network's logits depend on under BLIND_BELOW of the input's pixel positions, else ''. Such a
    network trains to about chance (FBNet's all-skip network at 16x16 Fashion-MNIST: 4 of 256 pixels, 10 %), and its
    cost puts it in a family's cheap end all the same."""
    seen, total = input_coverage(space, list(choices))
    if seen >= BLIND_BELOW * total:
        return ""
    return f"sees only {seen} of {total} input pixels: expect chance accuracy"


def family_message(stats: dict[str, Any], n: int, got: int) -> list[str]:
    """What ``--family N`` found: how many Pareto members exist, and how many members are fill from later fronts."""
    blind = stats.get("blind_left_out", 0)
    lines = [f"family: {stats['evaluated']} controls -> {stats['distinct']} distinct architectures -> "
             + (f"{blind} that cannot see the image left out (--keep-blind keeps them) -> " if blind else "")
             + f"{stats['pareto']} Pareto-optimal -> {got} members"]
    off = len(stats.get("off_front", ()))
    if off:
        lines.append(f"asked for {n} members but only {stats['pareto']} are Pareto-optimal: {off} member(s) come from "
                     f"the next non-dominated fronts (marked '{NOT_PARETO}' in summary.csv); ask for --family "
                     f"{stats['pareto']} or fewer for a pure front")
    elif got < n:
        lines.append(f"only {got} distinct architectures (asked for {n})")
    return lines


def _fill(chosen: list[Candidate], pool: Sequence[Candidate], k: int) -> list[Candidate]:
    """``k`` candidates of ``pool`` that best fill the largest latency gaps left by ``chosen``."""
    out: list[Candidate] = []
    free = list(pool)
    for _ in range(k):
        lats = sorted(c.latency_ms for c in chosen + out)
        best = max(free, key=lambda c: min(abs(c.latency_ms - x) for x in lats))
        out.append(best)
        free.remove(best)
    return out


# ---------------------------------------------------------------------------------------------- controls, IO


def parse_control(text: str) -> dict[str, Any]:
    """``kappa=0.3,S=0.2:0.8`` -> {"kappa": 0.3, "S": [0.2, 0.8]} (a list is ':'-separated)."""
    out: dict[str, Any] = {}
    for item in filter(None, (p.strip() for p in text.split(","))):
        k, eq, v = item.partition("=")
        if not eq or not k:
            raise DeriveError(f"--control {text!r}: {item!r} is not NAME=VALUE (e.g. kappa=0.3,S=0.5:0.5)")
        try:
            vals = [float(x) for x in v.split(":")]
        except ValueError:
            raise DeriveError(f"--control {text!r}: {k}={v!r} is not a number or ':'-separated numbers") from None
        out[k.strip()] = vals if ":" in v else vals[0]
    return out


def check_control(run: RunLike, control: dict[str, Any]) -> dict[str, Any]:
    """Validate a control against the run's range: names, magnitude inside the range, S on the simplex."""
    cs = run.control_space()
    for k in control:
        if k not in cs.names:
            raise DeriveError(f"control {k!r} does not apply to a {run.control_kind!r} run; it takes "
                              f"{', '.join(cs.names) or 'no control'} (range: {_fmt_range(cs.as_dict())})")
    if cs.magnitude and cs.bounds:
        k, (lo, hi) = cs.magnitude, cs.bounds
        if k not in control:
            raise DeriveError(f"control needs {k}=VALUE in [{lo:g}, {hi:g}]")
        v = control[k]
        if not isinstance(v, float) or not (lo <= v <= hi):
            raise DeriveError(f"control {k}={v} is outside the run's trained range [{lo:g}, {hi:g}]")
    if cs.s_dim:
        dim = cs.s_dim
        s = control.get("S", [1.0 / dim] * dim)
        s = [s] if isinstance(s, float) else s
        if len(s) != dim or any(x < 0 for x in s) or not sum(s) > 0:
            raise DeriveError(f"control S={':'.join(f'{x:g}' for x in s)} must be {dim} non-negative weights, not all "
                              f"zero (over: {', '.join(_s_axes(cs))})")
        control = {**control, "S": [float(x) / sum(s) for x in s]}
    return control


def _s_axes(cs: ControlSpace) -> list[str]:
    """What S weighs, in order: the cost terms (tradeoff) or the ops (simplex-ops, seed)."""
    return list(cs.cost_terms) if cs.s_over == "cost_terms" else list(dict(cs.details).get("ops", []))


def _fmt_range(rng: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in rng.items())


def _fmt_control(control: dict[str, Any]) -> str:
    if not control:
        return "the run's static architecture"
    parts = []
    for k, v in control.items():
        parts.append(f"{k}=" + (":".join(f"{x:.3g}" for x in v) if isinstance(v, list) else f"{v:.4g}"))
    return ",".join(parts)


def parse_count(text: str, what: str = "--params") -> int:
    """``100k`` / ``1.5M`` / ``250000`` -> int."""
    t = text.strip().lower().replace("_", "")
    mult = {"k": 1e3, "m": 1e6, "g": 1e9}.get(t[-1:], 1)
    try:
        v = float(t[:-1] if t[-1:] in "kmg" else t) * mult
    except ValueError:
        raise DeriveError(f"{what} {text!r} is not a count like 100k, 1.5M or 250000") from None
    if v <= 0:
        raise DeriveError(f"{what} {text!r} must be positive")
    return int(v)


def parse_floats(text: str, what: str = "--latency-ms", sep: str = ",") -> list[float]:
    try:
        vals = [float(x) for x in text.split(sep) if x.strip()]
    except ValueError:
        raise DeriveError(f"{what} {text!r} is not a {'comma' if sep == ',' else repr(sep)}-separated list of "
                          f"numbers (e.g. {sep.join(('3', '5', '8'))})") from None
    if not vals or any(v <= 0 or not math.isfinite(v) for v in vals):
        raise DeriveError(f"{what} {text!r}: every value must be a positive number")
    return vals


def parse_budgets(text: str | None, devices: Sequence[str], params: int | None = None) -> list[Budget]:
    """``--latency-ms`` (with ``--params``) as budgets. ``3,5`` is one budget per value on the run's only table;
    ``cpu-1t=0.2,tvm-cpu=3`` is one budget with a limit per named device (``DEV=0.2:0.3`` gives one budget per
    ':'-separated value, paired in order across devices; a single value applies to each). A device the text does
    not name is unconstrained. A device is named as :func:`device_names` does (or by its term, ``latency:N``)."""
    if text is None:
        return [Budget(None, params)]
    items = [p.strip() for p in text.split(",") if p.strip()]
    named = [("=" in p) for p in items]
    if not any(named):
        if len(devices) > 1:
            raise DeriveError(f"--latency-ms {text!r}: this run has {len(devices)} devices ({', '.join(devices)}); "
                              f"name the device of each limit, e.g. --latency-ms "
                              + ",".join(f"{d}={v}" for d, v in zip(devices, ("3", "5", "8", "13"))))
        return [Budget(v, params) for v in parse_floats(text)]
    if not all(named):
        raise DeriveError(f"--latency-ms {text!r}: give either plain numbers (3,5) or DEVICE=MS for every item "
                          f"(e.g. {devices[0] if devices else 'cpu-1t'}=3), not both")
    limits: dict[int, list[float]] = {}
    for item in items:
        name, _, value = (x.strip() for x in item.partition("="))
        n = _device_index(name, devices, text)
        if n in limits:
            raise DeriveError(f"--latency-ms {text!r}: device {devices[n]!r} is given twice; give each device once")
        limits[n] = parse_floats(value, f"--latency-ms {name}=", sep=":")
    count = max(len(v) for v in limits.values())
    if any(len(v) not in (1, count) for v in limits.values()):
        raise DeriveError(f"--latency-ms {text!r}: each device needs 1 or {count} ':'-separated values (one per "
                          f"budget)")
    return [Budget(None, params, tuple(DeviceLimit(n, devices[n], v[i if len(v) > 1 else 0])
                                       for n, v in limits.items())) for i in range(count)]


def _device_index(name: str, devices: Sequence[str], text: str) -> int:
    """The table index of a device name (or cost term ``latency`` / ``latency:N``) of the run."""
    if name in devices:
        return list(devices).index(name)
    term, _, num = name.partition(":")
    if term == "latency" and (not num or num.isdigit()) and int(num or 0) < len(devices):
        return int(num or 0)
    raise DeriveError(f"--latency-ms {text!r}: {name!r} is not a device of this run; its devices are "
                      f"{', '.join(devices) or 'none (the run has no latency table)'}")


@dataclass
class Derived:
    """One derived architecture as written: the arch, its file, and the budget it answered (if any)."""

    name: str
    arch: Arch
    path: Path | None = None
    budget: Budget | None = None
    meets: bool | None = None
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def family_items(run: RunLike, cands: Sequence[Candidate], stats: dict[str, Any], run_dir: str) -> list[Derived]:
    """``member-NN`` items of a family, fill from beyond the Pareto front labelled as such."""
    off = set(stats.get("off_front", ()))
    return [Derived(f"member-{i:02d}", to_arch(run, c, "family", run_dir), note=NOT_PARETO if i in off else "")
            for i, c in enumerate(cands)]


SUMMARY_COLUMNS = ["name", "file", "digest", "control", "predicted_ms", "params", "flops", "budget_ms",
                   "budget_params", "meets", "note", "ops", "predicted_ms_by_device", "budget_ms_by_device"]


def to_arch(run: RunLike, cand: Candidate, how: str, run_dir: str | None = None) -> Arch:
    """The architecture of a candidate, its prediction on every device of the run recorded
    (``predicted_ms_by_device``, as :func:`device_names` names them)."""
    meta = {"derived": how, **({"run": str(run_dir)} if run_dir else {})}
    control = cand.control
    if cand.nearest_control is not None:  # fill_budget's answer: no control produces it, the trained family did not
        names = [layer.name for layer in run.space.layers]
        meta.update(kind="filled", nearest_control=dict(cand.nearest_control), filled_layers=cand.filled,
                    layers_changed=[{"layer": names[i], "index": i, "from": a, "to": b} for i, a, b in cand.changed])
        control = None
    arch = make_arch(run.space, list(cand.choices), run.table, control, meta)
    models = run.costs.models
    by_device = {name: m.exact(cand.choices) for name, m in zip(device_names(run.costs.tables), models)}
    return dataclasses.replace(arch, predicted_ms_by_device=by_device)


def write_derived(items: Sequence[Derived], out_dir: Path) -> Path:
    """One JSON per architecture plus ``summary.csv``; returns the summary path. A network that cannot see the image
    (:func:`blind_note`) gets it in its note."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for it in items:
        blind = blind_note(it.arch.space, it.arch.choices)
        if blind and blind not in it.note:
            it.note = f"{it.note}; {blind}" if it.note else blind
        if it.path is None:
            it.path = out_dir / f"{it.name}.json"
        save_arch(it.arch, it.path)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(SUMMARY_COLUMNS)
    for it in items:
        a = it.arch
        ctl = (f"filled from {_fmt_control(a.source['nearest_control'])}" if a.source.get("kind") == "filled"
               else _fmt_control(a.control or {}))
        w.writerow([it.name, it.path.name if it.path else "", a.digest(), ctl,
                    "" if a.predicted_ms is None else f"{a.predicted_ms:.6g}", a.params, a.flops,
                    "" if not it.budget or it.budget.latency_ms is None else f"{it.budget.latency_ms:g}",
                    "" if not it.budget or it.budget.params is None else it.budget.params,
                    "" if it.meets is None else ("yes" if it.meets else "no"), it.note, " ".join(a.choices),
                    " ".join(f"{k}={v:.6g}" for k, v in a.predicted_ms_by_device.items()),
                    "" if not it.budget else " ".join(f"{b.device}={b.ms:g}" for b in it.budget.devices)])
    path = out_dir / "summary.csv"
    atomic_write_text(path, buf.getvalue())
    return path
