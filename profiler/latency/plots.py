"""Pictures (matplotlib, Agg backend): a table's layer x op heat-map and the verification scatter."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from profiler.latency.tables import LatencyTable
from profiler.spaces.space import Space


def pyplot():
    """matplotlib.pyplot on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path) -> Path:
    """Save atomically (a temporary file in the same folder, then rename)."""
    from profiler.fileio import atomic_path

    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=130, bbox_inches="tight", format=path.suffix.lstrip(".") or "png")
    return path


def save_and_close(fig, path: Path) -> Path:
    """:func:`save_figure`, then close the figure (also when saving fails), so long runs do not pile figures up."""
    try:
        return save_figure(fig, path)
    finally:
        pyplot().close(fig)


def latency_grid(table: LatencyTable, space: Space) -> tuple[np.ndarray, list[str], list[str]]:
    """``[layers, ops]`` raw latency (ms; a row sums its sites), NaN where the table has no usable entry."""
    return table.model(space, None).grid(), [layer.name for layer in space.layers], list(space.ops)


def plot_table(table: LatencyTable, space: Space, path: Path) -> Path:
    """Layer x op heat-map of a table's raw latencies (log colour scale, values written in the cells)."""
    from matplotlib.colors import LogNorm

    plt = pyplot()
    grid, rows, ops = latency_grid(table, space)
    fixed = []
    for s in space.fixed:
        try:
            fixed.append(f"{s.name} {table.latency_ms(s.key(batch=table.batch)):.3g}")
        except KeyError:
            fixed.append(f"{s.name} missing")
    h = max(3.5, 0.32 * len(rows) + 1.8)
    w = max(6.0, 0.95 * len(ops) + 2.5)
    fig, ax = plt.subplots(figsize=(w, h))
    finite = grid[np.isfinite(grid) & (grid > 0)]
    norm = LogNorm(vmin=finite.min(), vmax=finite.max()) if finite.size and finite.min() < finite.max() else None
    cmap = plt.get_cmap("viridis").with_extremes(bad="#d9d9d9")
    im = ax.imshow(np.ma.masked_invalid(grid), aspect="auto", cmap=cmap, norm=norm)
    ax.set_xticks(range(len(ops)), ops, rotation=40, ha="right", fontsize=8)
    ax.set_yticks(range(len(rows)), rows, fontsize=7 if len(rows) > 20 else 8)
    ax.set_xlabel("candidate op")
    ax.set_ylabel("searchable layer" + (" (row = all its sites)" if any(len(x.sites) > 1 for x in space.layers)
                                        else ""))
    if grid.size <= 400:
        mid = np.sqrt(finite.min() * finite.max()) if finite.size else 0
        for i in range(grid.shape[0]):
            for j in range(grid.shape[1]):
                v = grid[i, j]
                text = "n/a" if not np.isfinite(v) else f"{v:.3g}"
                ax.text(j, i, text, ha="center", va="center", fontsize=6,
                        color="white" if np.isfinite(v) and v < mid else "black")
    cb = fig.colorbar(im, ax=ax)
    cb.set_label("latency per layer (ms, median, log scale)")
    import textwrap

    ax.set_title(f"{table.space} on {table.device}: raw table latency (ms)\n"
                 + "\n".join(textwrap.wrap("fixed layers (ms): " + ", ".join(fixed), width=int(w * 11))), fontsize=9)
    return save_and_close(fig, path)


def wrap_title(text: str, width: int = 64) -> str:
    """A title broken into lines that fit the figure (a long space spec or device name is never cut off)."""
    import textwrap

    return "\n".join(textwrap.wrap(text, width=width, break_on_hyphens=False)) or text


def legend_below(ax, y: float = -0.12, **kw):
    """A legend under the axes (``y`` in axes fractions, below the x label), outside the data;
    ``bbox_inches='tight'`` keeps it in the saved image."""
    return ax.legend(loc="upper center", bbox_to_anchor=(0.5, y), frameon=False, **kw)


def layout_problems(fig) -> list[str]:
    """What makes a saved figure hard to read: a legend over data points, a title wider than the figure.

    The tests call it on every figure the tools draw."""
    fig.canvas.draw()
    r = fig.canvas.get_renderer()
    problems = []
    fw = fig.bbox.width
    for ax in fig.axes:
        leg = ax.get_legend()
        pts = _data_points(ax)
        if leg is not None and len(pts):
            box = leg.get_window_extent(r)
            inside = (pts[:, 0] > box.x0) & (pts[:, 0] < box.x1) & (pts[:, 1] > box.y0) & (pts[:, 1] < box.y1)
            if inside.any():
                problems.append(f"legend of '{ax.get_title()[:40]}' covers {int(inside.sum())} data point(s)")
        for t in (ax.title, ax._left_title, ax._right_title):
            if t.get_text() and t.get_window_extent(r).width > fw * 1.02:
                problems.append(f"title {t.get_text()[:40]!r} is wider than the figure")
    if fig._suptitle is not None and fig._suptitle.get_window_extent(r).width > fw * 1.02:
        problems.append("suptitle is wider than the figure")
    return problems


def _data_points(ax) -> np.ndarray:
    """Display coordinates of every plotted point (scatter offsets and line vertices) inside the axes."""
    from matplotlib.collections import PathCollection

    pts = [c.get_offset_transform().transform(np.asarray(c.get_offsets(), dtype=float))
           for c in ax.collections if isinstance(c, PathCollection) and len(c.get_offsets())]
    for ln in ax.lines:
        if ln.get_marker() not in (None, "", "None", " "):
            xy = np.column_stack([np.asarray(ln.get_xdata(), float), np.asarray(ln.get_ydata(), float)])
            pts.append(ax.transData.transform(xy))
    if not pts:
        return np.zeros((0, 2))
    allp = np.concatenate(pts)
    return allp[np.isfinite(allp).all(axis=1)]


def verify_figure(pred_raw_ms: Sequence[float], measured_ms: Sequence[float], pred_cal_ms: Sequence[float] | None,
                  title: str = "predicted vs measured", stat: str = "median"):
    """Predicted vs measured whole-network latency with the y = x line and a +-10 % band; legend under the axes."""
    from profiler.latency.calibrate import metrics

    plt = pyplot()
    m = np.asarray(measured_ms, dtype=float)
    series = [("table sum (raw)", np.asarray(pred_raw_ms, dtype=float), "tab:orange", "o")]
    if pred_cal_ms is not None:
        series.append(("calibrated", np.asarray(pred_cal_ms, dtype=float), "tab:blue", "s"))
    allv = np.concatenate([m] + [s[1] for s in series])
    pos = allv[allv > 0]
    log = pos.size > 0 and pos.max() / pos.min() > 4  # a wide range: log axes keep the cluster readable
    lo = float(pos.min()) / 1.15 if log else min(0.0, float(allv.min()) * 1.1)
    hi = float(allv.max()) * 1.15
    fig, ax = plt.subplots(figsize=(6.2, 6.4))
    xs = np.geomspace(lo, hi, 50) if log else np.linspace(lo, hi, 2)
    ax.fill_between(xs, xs * 0.9, xs * 1.1, color="0.85", label="±10 % of measured")
    ax.plot(xs, xs, color="0.3", lw=1, label="prediction = measured")
    for name, p, color, marker in series:
        mm = metrics(p, m)
        shown = p > 0 if log else np.ones_like(p, dtype=bool)
        hidden = f" ({int((~shown).sum())} ≤ 0 ms not shown)" if (~shown).any() else ""
        ax.scatter(m[shown], p[shown], s=16, color=color, marker=marker, alpha=0.8,
                   label=f"{name}: MAPE {mm['mape_pct']:.1f} %, ±5 % {mm['within_5_pct']:.0f} %, "
                         f"τ {mm['kendall_tau']:.2f}{hidden}")
    if log:
        ax.set_xscale("log")
        ax.set_yscale("log")
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_xlabel(f"measured end-to-end latency (ms, {stat})")
    ax.set_ylabel("predicted latency (ms)")
    ax.set_title(wrap_title(title, 60), fontsize=10)
    legend_below(ax, fontsize=8)
    ax.grid(alpha=0.3)
    return fig


def plot_verify(pred_raw_ms: Sequence[float], measured_ms: Sequence[float], pred_cal_ms: Sequence[float] | None,
                path: Path, title: str = "predicted vs measured", stat: str = "median") -> Path:
    """:func:`verify_figure`, saved to ``path``."""
    pyplot()
    return save_and_close(verify_figure(pred_raw_ms, measured_ms, pred_cal_ms, title, stat), path)
