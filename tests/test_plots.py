"""Pictures: the table heat-map and the verification scatter are real PNGs of a readable size."""

import struct
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from profiler.cli import app
from profiler.latency.plots import latency_grid, plot_table, plot_verify
from profiler.latency.tables import load_table
from profiler.spaces.space import get_space

from helpers import synthetic_table  # noqa: E402  (tests/ is on sys.path under pytest's rootdir conftest)


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])


@pytest.mark.parametrize("spec", ["fbnet-cifar:width=0.25", "darts-3ops:C=8,cells=5"])
def test_heatmap(tmp_path, spec):
    table = load_table(synthetic_table(spec, tmp_path / "t.csv"))
    space = get_space(spec)
    grid, rows, ops = latency_grid(table, space)
    assert grid.shape == (len(space.layers), len(space.ops)) and np.isfinite(grid).all()
    # a cell-space row sums its sites
    layer = space.layers[-1]
    assert grid[-1, 0] == pytest.approx(sum(table.latency_ms(s.key(ops[0])) for s in layer.sites))
    w, h = png_size(plot_table(table, space, tmp_path / "heat.png"))
    assert 600 < w < 3000 and 400 < h < 3000


def test_heatmap_marks_missing_entries(tmp_path):
    spec = "fbnet-cifar:width=0.25"
    src = synthetic_table(spec, tmp_path / "t.csv")
    table = load_table(src)
    gone = get_space(spec).layers[3].sites[0].key("k5_e6")
    del table.rows[gone]
    space = get_space(spec)
    grid, _, ops = latency_grid(table, space)
    sharing = [i for i, layer in enumerate(space.layers) if layer.sites[0].key("k5_e6") == gone]  # same shape
    assert 3 in sharing
    assert np.isnan(grid[sharing, ops.index("k5_e6")]).all() and np.isfinite(grid).sum() == grid.size - len(sharing)
    png_size(plot_table(table, get_space(spec), tmp_path / "heat.png"))


def test_scatter(tmp_path):
    rng = np.random.default_rng(0)
    m = rng.uniform(1, 5, 30)
    w, h = png_size(plot_verify(m * 1.3, m, m * rng.normal(1, 0.03, 30), tmp_path / "s.png"))
    assert w > 500 and h > 500


def test_cli_plot(tmp_path):
    src = synthetic_table("fbnet-cifar:width=0.25", tmp_path / "t.csv")
    r = CliRunner().invoke(app, ["plot", str(src), "--out", str(tmp_path / "p.png")])
    assert r.exit_code == 0, r.output
    png_size(tmp_path / "p.png")
    r = CliRunner().invoke(app, ["plot", str(tmp_path / "nope.csv")])
    assert r.exit_code == 2 and "no such table" in r.output


# ---------------------------------------------------------------- readable pictures: every figure the tools draw

LONG = "fbnet-cifar:input_size=16,width=0.5 on a-device-with-a-long-name-1t: 42 held-out networks (medians)"


def _corner_heavy(n=40, seed=0):
    """Predictions with points in every corner (where a legend inside the axes would sit)."""
    rng = np.random.default_rng(seed)
    m = np.append(rng.uniform(0.08, 0.6, n), [0.08, 0.6, 0.08, 0.6])
    raw = np.append(m[:n] * rng.uniform(1.2, 2.4, n), [0.6, 0.6, 0.08, 0.08])
    return m, raw, raw * 0.6


def test_layout_checker_finds_a_legend_over_data():
    from profiler.latency.plots import layout_problems, pyplot

    plt = pyplot()
    fig, ax = plt.subplots()
    ax.scatter([0.05, 0.5], [0.95, 0.5], label="a long label that covers the upper-left corner")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.legend(loc="upper left")
    ax.set_title("x" * 400)
    probs = layout_problems(fig)
    plt.close(fig)
    assert any("covers 1 data point" in p for p in probs) and any("wider than the figure" in p for p in probs)


def test_scatter_legend_off_the_data_and_title_fits():
    from profiler.latency.plots import layout_problems, pyplot, verify_figure

    m, raw, cal = _corner_heavy()
    fig = verify_figure(raw, m, cal, LONG)
    assert layout_problems(fig) == []
    pyplot().close(fig)


def _rows(n=6):
    rows = [{"member": f"member-{i:02d}", "predicted_ms": 0.07 + 0.01 * i, "measured_ms": 0.075 + 0.0095 * i,
             "error_pct": -6.0 + i, "test_acc": 0.9 + 0.015 * i, "params": 1000, "ops": "k3_e1"} for i in range(n)]
    rows[2]["note"] = "not Pareto-optimal: fills the latency range"
    return rows


def test_pareto_pairs_are_distinguishable_and_readable():
    from matplotlib.collections import PathCollection

    from profiler.latency.plots import layout_problems, pyplot
    from search.report import pareto_figure

    fig = pareto_figure(_rows(), LONG)
    ax = fig.axes[0]
    assert layout_problems(fig) == []
    colls = [c for c in ax.collections if isinstance(c, PathCollection)]
    meas = [c for c in colls if c.get_facecolor()[0][:3].tolist() != [1.0, 1.0, 1.0]]
    pred = [c for c in colls if c not in meas]
    assert len(meas) == len(pred) == 6
    # every member has its own colour, shared by its predicted and measured marker
    colours = [tuple(np.round(c.get_facecolor()[0], 3)) for c in meas]
    assert len(set(colours)) == 6
    assert [tuple(np.round(c.get_edgecolor()[0], 3)) for c in pred] == colours
    texts = [t.get_text() for leg in (ax.get_legend(), *ax.artists) for t in leg.get_texts()]
    assert any("m02 (not Pareto-optimal)" in t for t in texts)
    pyplot().close(fig)


def test_curves_plot_cross_entropy_and_penalty_apart():
    from profiler.latency.plots import layout_problems, pyplot
    from search.report import curves_figure

    metrics = [{"epoch": e, "train_loss": 3.3 - 0.2 * e, "train_ce": 2.3 - 0.2 * e, "train_penalty": 1.0,
                "val_loss": 2.2 - 0.2 * e, "train_acc": 0.1 * e, "val_acc": 0.1 * e, "train_E_latency": 0.3,
                "eval_E_latency": 0.29} for e in range(5)]
    members = {f"member-{i:02d}": [{"epoch": e + 1, "val_acc": 0.5 + 0.05 * e} for e in range(8)] for i in range(6)}
    fig = curves_figure(metrics, members, LONG)
    assert layout_problems(fig) == []
    labels = [[ln.get_label() for ln in ax.lines] for ax in fig.axes]
    assert labels[1] == ["search train CE", "search validation CE"]  # the same quantity, train vs validation
    assert labels[2] == ["search train penalty (loss − CE)"]
    assert not any("loss" in lbl and "CE" not in lbl for lbl in labels[1])  # train loss (CE + penalty) not here
    pyplot().close(fig)
