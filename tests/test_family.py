"""Family: derive from a trained run (at a control, by budget, a family), retrain, export, and the report maths."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import onnxruntime as ort
import pytest
import torch
from typer.testing import CliRunner

from profiler.spaces.arch import load_arch, load_weights
from search.cli import app
from search.derive import (
    Budget,
    BudgetResult,
    DeriveError,
    Deriver,
    check_control,
    derive_budgets,
    derive_family,
    pareto,
    parse_control,
    parse_count,
    to_arch,
)
from search.report import hypervolume, pareto_front

SPEC = "fbnet-cifar:input_size=16,width=0.25"


@pytest.fixture(scope="module")
def tiny_run(small_tables, tiny_search, tmp_path_factory):
    """A short real hwnas-preset (tradeoff control) search on digits with the small measured table."""
    root = tmp_path_factory.mktemp("family")
    table = root / "table.csv"  # a private copy: nothing here may touch the session's shared table
    shutil.copy(small_tables[SPEC], table)
    shutil.copy(small_tables[SPEC].with_suffix(".meta.json"), table.with_suffix(".meta.json"))
    return tiny_search([table], root / "run")


@pytest.fixture(scope="module")
def run(tiny_run):
    from search.run import load_run

    return load_run(tiny_run)


def test_derive_at_control_is_deterministic(run):
    d = Deriver(run)
    c = check_control(run, parse_control("kappa=0.5,S=1:1"))
    assert c["S"] == [0.5, 0.5]
    a, b = d.evaluate(c), d.evaluate(dict(c))
    assert a.choices == b.choices and a.latency_ms == b.latency_ms
    arch = to_arch(run, a, "control")
    assert arch.predicted_ms == pytest.approx(run.table.predict_ms(run.space.arch_keys(list(a.choices))))
    assert arch.predicted_ms_by_device == {run.table.device: arch.predicted_ms}  # one table: its device's prediction
    assert arch.control == {"kappa": 0.5, "S": [0.5, 0.5]}


@pytest.mark.parametrize("text, match", [
    ("kappa=100,S=0.5:0.5", "outside the run's trained range"),
    ("lambda=0.3", "does not apply"),
    ("kappa=0.5,S=1:1:1", "must be 2 non-negative"),
    ("kappa", "is not NAME=VALUE"),
    ("kappa=abc", "is not a number"),
])
def test_bad_controls(run, text, match):
    with pytest.raises(DeriveError, match=match):
        check_control(run, parse_control(text))


def test_budget_met_with_least_pressure(run):
    d = Deriver(run)
    lats = [c.latency_ms for c in d.sweep()]
    budget = Budget(latency_ms=float(np.median(lats)))
    (res,) = derive_budgets(d, [budget])
    assert res.ok and res.found.latency_ms <= budget.latency_ms
    # no evaluated control that meets the budget has less pressure than the one chosen
    assert all(res.found.pressure <= c.pressure for c in d.evaluated if budget.meets(c))
    # and a params budget alone works the same way
    params = sorted(c.params for c in d.evaluated)[len(d.evaluated) // 2]
    (rp,) = derive_budgets(d, [Budget(params=params)])
    assert rp.ok and rp.found.params <= params


def test_impossible_budget_says_none_and_shows_closest(run):
    d = Deriver(run)
    fastest = min(c.latency_ms for c in d.sweep())
    (res,) = derive_budgets(d, [Budget(latency_ms=fastest * 0.5)])
    assert not res.ok and res.found is None
    assert res.closest.latency_ms == pytest.approx(fastest)
    assert "no control of this run meets it" in res.message() and "% over" in res.message()


def test_family_distinct_nondominated_spanning(run):
    d = Deriver(run)
    members, stats = derive_family(d, 4, keep_blind=True)  # the front as it is (blind networks: a test below)
    assert len(members) == min(4, stats["distinct"])  # as many as asked, unless the run has fewer to give
    assert len({m.choices for m in members}) == len(members)
    lats = [m.latency_ms for m in members]
    assert lats == sorted(lats)
    front = pareto(d.evaluated)
    if len(front) >= 4:  # members come from the front and span it
        assert {m.choices for m in members} <= {c.choices for c in front}
        assert lats[0] == pytest.approx(front[0].latency_ms) and lats[-1] == pytest.approx(front[-1].latency_ms)


def test_derive_train_export_onnx_equals_torch(run, tiny_run, tmp_path):
    """derive -> train (1 short epoch) -> export -> onnxruntime output equals PyTorch with the trained weights."""
    r = CliRunner().invoke(app, ["derive", str(tiny_run), "--control", "kappa=1,S=0.5:0.5", "--out",
                                 str(tmp_path / "d")])
    assert r.exit_code == 0, r.output
    arch_path = tmp_path / "d" / "arch.json"
    rows = list(csv.DictReader(open(tmp_path / "d" / "summary.csv")))
    assert rows[0]["file"] == "arch.json" and float(rows[0]["predicted_ms"]) > 0
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        from search.retrain import TrainConfig, retrain

        res = retrain(load_arch(arch_path), TrainConfig(epochs=1, max_train_batches=4), tmp_path / "t")
    finally:
        torch.set_num_threads(threads)
    assert 0.0 <= res.test_acc <= 1.0 and res.weights.name == "weights.safetensors"
    assert json.loads((tmp_path / "t" / "train.json").read_text())["test_acc"] == res.test_acc
    r = CliRunner().invoke(app, ["export", str(arch_path), "--weights", str(res.weights), "--out",
                                 str(tmp_path / "m.onnx")])
    assert r.exit_code == 0, r.output
    arch = load_arch(arch_path)
    net = load_weights(arch.build(), res.weights).eval()
    x = torch.randn(1, *arch.space.input_shape)
    sess = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        np.testing.assert_allclose(got, net(x).numpy(), atol=1e-4, rtol=1e-4)


def test_cli_budgets_and_family(tiny_run, run, tmp_path):
    d = Deriver(run)
    lats = sorted(c.latency_ms for c in d.sweep())
    ok_budget, bad_budget = lats[-1] * 1.01, lats[0] * 0.5
    r = CliRunner().invoke(app, ["derive", str(tiny_run), "--latency-ms", f"{ok_budget},{bad_budget}", "--out",
                                 str(tmp_path / "b")])
    assert r.exit_code == 1  # one budget cannot be met: said, and the exit status shows it
    assert "no control of this run meets it" in r.output
    rows = list(csv.DictReader(open(tmp_path / "b" / "summary.csv")))
    assert [x["meets"] for x in rows] == ["yes", "no"]
    assert float(rows[0]["predicted_ms"]) <= ok_budget
    r = CliRunner().invoke(app, ["derive", str(tiny_run), "--family", "3", "--out", str(tmp_path / "f")])
    assert r.exit_code == 0, r.output
    files = sorted((tmp_path / "f").glob("member-*.json"))
    expected, _ = derive_family(Deriver(run), 3)  # the CLI writes exactly the library's family, fastest first
    assert [tuple(load_arch(f).choices) for f in files] == [m.choices for m in expected]
    assert len({load_arch(f).digest() for f in files}) == len(files)
    r = CliRunner().invoke(app, ["derive", str(tiny_run), "--family", "3", "--control", "kappa=1"])
    assert r.exit_code == 2 and "exactly one of" in r.output
    r = CliRunner().invoke(app, ["derive", str(tmp_path / "nope"), "--family", "2"])
    assert r.exit_code == 2 and "not a run directory" in r.output


def test_train_cli_bad_arch(tmp_path):
    p = tmp_path / "a.json"
    p.write_text("[]")
    r = CliRunner().invoke(app, ["train", str(p), "--epochs", "1", "--out", str(tmp_path / "o")])
    assert r.exit_code == 2 and "not an architecture" in r.output
    assert not (tmp_path / "o").exists()


def test_parse_count():
    assert parse_count("100k") == 100_000 and parse_count("1.5M") == 1_500_000 and parse_count("250") == 250
    with pytest.raises(DeriveError):
        parse_count("lots")


def test_pareto_front_and_hypervolume():
    pts = [(1.0, 0.5), (2.0, 0.8), (1.5, 0.4), (3.0, 0.9), (2.5, 0.7)]
    assert pareto_front(pts) == [0, 1, 3]
    # front (1,0.5) (2,0.8) (3,0.9) against reference latency 4, accuracy 0:
    assert hypervolume(pts, 4.0) == pytest.approx(1 * 0.5 + 1 * 0.8 + 1 * 0.9)
    assert hypervolume(pts, 4.0) >= hypervolume(pts[:1], 4.0)
    assert hypervolume([(5.0, 0.9)], 4.0) == 0.0


def _layer_saves(costs, start, back):
    """(latency saved, layer) per layer where the choices ``start`` and ``back`` differ, by setting that layer of
    ``start`` to ``back``'s op; the largest saving first."""
    return sorted(((costs.latency_ms(start) - costs.latency_ms(start[:i] + (b,) + start[i + 1:]), i)
                   for i, (a, b) in enumerate(zip(start, back)) if a != b), reverse=True)


def _fewest_needed(d, start, back, budget):
    """The fewest layers of ``start`` that, set to ``back``'s op, bring it within a latency budget (savings add)."""
    saves = [save for save, _ in _layer_saves(d.costs, start.choices, back.choices)]
    need = start.latency_ms - budget.latency_ms
    return next(k for k in range(len(saves) + 1) if sum(saves[:k]) >= need - 1e-12)


def test_budget_fill_changes_the_fewest_layers_and_is_marked(run):
    d = Deriver(run)
    lats = sorted({c.latency_ms for c in d.sweep()})
    # an even grid, plus a budget just under every architecture of the sweep but the cheapest: there the sweep's
    # answer sits a whole step below the budget while the architecture just over it may be a few layer changes from
    # meeting it. Whether any budget fills depends on the run (on 1 of 20 perturbed copies of one table, and on 2 of
    # 10 search seeds of another, none did: every ray stepped one layer at a time, or some ray met each budget at its
    # smallest magnitude), so the fill itself is asserted on a ray that jumps, in the test after this one.
    grid = np.linspace(lats[0], lats[-1], 14)[1:-1]
    budgets = [Budget(latency_ms=float(b)) for b in sorted({*grid, *(x - 1e-6 * x for x in lats[1:])})]
    plain = derive_budgets(d, budgets, fill=False)
    filled = derive_budgets(d, budgets)
    assert all(p.ok and f.ok for p, f in zip(plain, filled))
    for p, f in zip(plain, filled):
        assert f.found.latency_ms <= f.budget.latency_ms  # never over the budget
        assert f.found.latency_ms >= p.found.latency_ms  # never further from it
        assert f.found.latency_ms == pytest.approx(run.table.predict_ms(run.space.arch_keys(list(f.found.choices))))
        if f.found is p.found or f.found.nearest_control is None:
            assert f.found.choices == p.found.choices and f.found.filled == 0
            continue
        nearest = d.evaluate(dict(f.found.nearest_control))  # the architecture the fill started from
        assert not f.budget.meets(nearest) and nearest.pressure < p.found.pressure
        assert f.found.filled == sum(a != b for a, b in zip(nearest.choices, f.found.choices)) == len(f.found.changed)
        assert f.found.filled == _fewest_needed(d, nearest, p.found, f.budget)  # no more layers than needed
        assert all(c in (a, b) for c, a, b in zip(f.found.choices, nearest.choices, p.found.choices))
        arch = to_arch(run, f.found, "budget")
        assert arch.control is None and arch.source["kind"] == "filled"  # nothing claims a control produced it
        assert arch.source["nearest_control"] == f.found.nearest_control
        assert [c["index"] for c in arch.source["layers_changed"]] == [i for i, _, _ in f.found.changed]
        assert "filled: the architecture of" in f.message()
    # a params budget fills the same way, by params
    params = sorted({c.params for c in d.evaluated})
    pb = [Budget(params=int(p)) for p in np.linspace(params[0], params[-1], 8)[1:-1]]
    for p, f in zip(derive_budgets(d, pb, fill=False), derive_budgets(d, pb)):
        assert p.ok and f.ok and p.found.params <= f.found.params <= f.budget.params


class _JumpingRay:
    """The trained run, its control answered by a step instead of the hypernetwork: ``heavy`` below ``kappa_at``,
    ``light`` from there on, on every ray -- a family that jumps several layers at once, where fill has slack to use."""

    def __init__(self, run, light, heavy, kappa_at):
        self.run, self.light, self.heavy, self.kappa_at = run, light, heavy, kappa_at

    def __getattr__(self, name):
        return getattr(self.run, name)

    def choices(self, control):
        return list(self.heavy if control["kappa"] < self.kappa_at else self.light)


def test_budget_fill_on_a_ray_that_jumps_uses_the_slack_with_the_fewest_layers(run):
    """derive_budgets end to end: the answer meets the budget a jump below it, fill starts from the architecture over
    it on the same ray and sets back exactly as many layers as the budget needs, marked filled."""
    sweep = list({c.choices: c for c in Deriver(run).sweep()}.values())
    costs = run.costs

    def saves(heavy, light):
        return [save for save, _ in _layer_saves(costs, heavy, light)]

    pair = next(((lo.choices, hi.choices) for lo in sweep for hi in sweep
                 if len(sv := saves(hi.choices, lo.choices)) >= 3 and sv[-1] > 0), None)
    assert pair is not None, "no two architectures of the sweep differ in three layers, each saving latency"
    light, heavy = pair
    d = Deriver(_JumpingRay(run, light, heavy, kappa_at=0.1))
    s = saves(heavy, light)
    budget = Budget(latency_ms=costs.latency_ms(heavy) - (s[0] + s[1]) + 1e-9)  # two layers needed, not one
    (plain,), (res,) = derive_budgets(d, [budget], fill=False), derive_budgets(d, [budget])
    assert plain.found.choices == light and plain.found.filled == 0
    f = res.found
    assert res.ok and f.filled == 2 == len(f.changed) and f.latency_ms <= budget.latency_ms
    assert f.latency_ms > plain.found.latency_ms  # uses the slack the jump left
    assert f.nearest_control["kappa"] < 0.1 and d.run.choices(f.nearest_control) == list(heavy)
    assert all(heavy[i] == a and light[i] == b == f.choices[i] for i, a, b in f.changed)
    assert sum(x != y for x, y in zip(f.choices, heavy)) == 2
    src = to_arch(run, f, "budget").source
    assert src["kind"] == "filled" and src["filled_layers"] == 2 and src["nearest_control"] == f.nearest_control
    assert "filled: the architecture of" in res.message()


def test_fill_changes_one_layer_when_one_is_enough(run):
    from search.derive import fill_budget

    d = Deriver(run)
    sweep = list({c.choices: c for c in d.sweep()}.values())  # one candidate per distinct architecture

    def saves(start, back):
        """(latency saved, layer) by setting one layer of ``start`` to ``back``'s op, smallest saving first."""
        return _layer_saves(d.costs, start.choices, back.choices)[::-1]

    # a cheaper architecture (meets) and a slower one with less pressure (over) that differ in three or more layers,
    # each change saving latency (in a real derivation: a budget's answer and the nearest architecture on its ray)
    pair = next(((m, f) for m in sweep for f in sweep
                 if f.pressure < m.pressure and f.latency_ms > m.latency_ms and len(saves(f, m)) >= 3
                 and saves(f, m)[0][0] > 0), None)
    assert pair is not None, "no two architectures of the sweep differ in three layers"
    meet, over = pair
    best_save, _ = saves(over, meet)[-1]
    # layers of one shape share a table entry, so several layers may save exactly as much: any of them is right
    best = {i for s, i in saves(over, meet) if s == pytest.approx(best_save, rel=1e-9)}
    budget = Budget(latency_ms=over.latency_ms - best_save + 1e-9)  # the largest single saving is just enough
    f = fill_budget(d, meet, [over], budget)
    assert f.filled == 1 and len(f.changed) == 1 and f.changed[0][0] in best
    best_i = f.changed[0][0]
    assert f.changed == ((best_i, over.choices[best_i], meet.choices[best_i]),)
    assert f.latency_ms <= budget.latency_ms and f.latency_ms == pytest.approx(over.latency_ms - best_save)
    assert f.nearest_control == over.control and f.control == {}
    assert sum(a != b for a, b in zip(f.choices, over.choices)) == 1
    res = BudgetResult(budget, f, f)
    assert "1 layer(s) changed (no control gives it)" in res.message()
    src = to_arch(run, f, "budget").source
    assert src["kind"] == "filled" and src["filled_layers"] == 1 and src["layers_changed"][0]["index"] == best_i
    # no slack beyond meet: nothing filled; no neighbour: nothing to start from
    assert fill_budget(d, meet, [over], Budget(latency_ms=meet.latency_ms)) is meet
    assert fill_budget(d, meet, [], budget) is meet


def test_derive_accepts_an_hwnas_run_root(tiny_run, tmp_path):
    """`hwnas derive runs/cpu` works like `hwnas derive runs/cpu/search` (hwnas run keeps its search there)."""
    root = tmp_path / "runs-cpu"
    shutil.copytree(tiny_run, root / "search")
    r = CliRunner().invoke(app, ["derive", str(root), "--family", "2"])
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in (root / "derived").glob("member-*.json"))  # default out: RUN/derived


def test_family_beyond_the_front_says_how_many_are_pareto(run, tmp_path):
    d = Deriver(run)
    _, stats = derive_family(d, 1)
    n = stats["pareto"] + 2
    members, stats = derive_family(d, n)
    off = stats["off_front"]
    from search.derive import blind_note

    seeing = [c for c in d.evaluated if not blind_note(run.space, c.choices)]  # the family's pool
    front = {c.choices for c in pareto(seeing or d.evaluated)}
    assert off == [i for i, m in enumerate(members) if m.choices not in front]
    assert len(members) - len(off) == stats["pareto"]
    r = CliRunner().invoke(app, ["derive", str(run.path), "--family", str(n), "--out", str(tmp_path / "f")])
    assert r.exit_code == 0, r.output
    text = " ".join(r.output.split())
    assert f"{stats['pareto']} Pareto-optimal" in text
    if off:
        assert f"only {stats['pareto']} are Pareto-optimal" in text
        rows = list(csv.DictReader(open(tmp_path / "f" / "summary.csv")))
        assert [i for i, x in enumerate(rows) if x["note"].startswith("not Pareto-optimal")] == off


@pytest.mark.parametrize("cli", ["search.cli", "profiler.cli"])
def test_version(cli):
    import importlib

    r = CliRunner().invoke(importlib.import_module(cli).app, ["--version"])
    assert r.exit_code == 0 and r.output.startswith(("hwnas 0.", "hwprof 0.")) and "onnxruntime" in r.output


def test_a_network_that_cannot_see_the_image_is_noted(run, tmp_path):
    from profiler.spaces.arch import make_arch
    from profiler.spaces.network import input_coverage
    from search.derive import Derived, write_derived

    space = run.space
    blind = ["skip"] * len(space.layers)
    # every stage transition a 1x1 stride-2 conv: 16x16 -> 1x1 keeps the top-left 2x2 input pixels
    assert input_coverage(space, blind) == (4, 256)
    # a 3x3 depthwise block at each transition sees the whole input again
    seeing = ["k3_e1" if not layer_has_skip_identity else "skip"
              for layer_has_skip_identity in (s.c_in == s.c_out and s.stride == 1
                                              for s in (layer.sites[0] for layer in space.layers))]
    assert input_coverage(space, seeing) == (256, 256)
    items = [Derived(f"m{i}", make_arch(space, ch, run.table, None, {"derived": "test"}), note=note)
             for i, (ch, note) in enumerate([(blind, "not Pareto-optimal: fills the latency range"), (seeing, "")])]
    summary = write_derived(items, tmp_path / "d")
    rows = list(csv.DictReader(open(summary)))
    assert rows[0]["note"] == "not Pareto-optimal: fills the latency range; sees only 4 of 256 input pixels: " \
                              "expect chance accuracy"
    assert rows[1]["note"] == ""
    write_derived(items, tmp_path / "d")  # rewriting does not repeat the note
    assert list(csv.DictReader(open(summary)))[0]["note"] == rows[0]["note"]


def test_family_leaves_out_networks_that_cannot_see_unless_asked(run, tmp_path, monkeypatch):
    from search.derive import blind_note

    # the all-skip network (16x16 -> 1x1 through 1x1 stride-2 convs: 4 pixels seen) as the sweep's high-kappa end
    blind = ("skip",) * len(run.space.layers)
    sweep = Deriver.sweep
    monkeypatch.setattr(Deriver, "sweep", lambda self: [*sweep(self), self.candidate(blind, {"kappa": 10.0}, 10.0)])
    d = Deriver(run)
    kept, kept_stats = derive_family(d, 6, keep_blind=True)
    assert blind in [c.choices for c in kept] and kept_stats["blind_left_out"] == 0
    members, stats = derive_family(d, 6)
    assert not any(blind_note(run.space, c.choices) for c in members)
    assert stats["blind_left_out"] >= 1 and stats["distinct"] == kept_stats["distinct"]
    r = CliRunner().invoke(app, ["derive", str(run.path), "--family", "6", "--out", str(tmp_path / "f")])
    assert r.exit_code == 0, r.output
    assert f"{stats['blind_left_out']} that cannot see the image left out" in " ".join(r.output.split())
    r = CliRunner().invoke(app, ["derive", str(run.path), "--family", "6", "--keep-blind", "--out",
                                 str(tmp_path / "k")])
    assert r.exit_code == 0, r.output
    rows = list(csv.DictReader(open(tmp_path / "k" / "summary.csv")))
    assert [x["note"].endswith("expect chance accuracy") for x in rows] == [x["ops"] == " ".join(blind) for x in rows]
