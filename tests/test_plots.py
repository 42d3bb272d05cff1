"""Pictures: the table heat-map and the verification scatter are real PNGs of a readable size."""

import struct
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from profiler.cli import app
from profiler.plots import latency_grid, plot_table, plot_verify
from profiler.spaces import get_space
from profiler.tables import load_table

from test_formats import synthetic_table  # noqa: E402  (tests/ is on sys.path under pytest's rootdir conftest)


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
