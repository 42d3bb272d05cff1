"""Family table and plots: Pareto front (accuracy vs measured latency, predicted latency as a second marker) and
training curves from ``metrics.jsonl`` (search) and ``curve.jsonl`` (each member's retraining). matplotlib Agg only.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

from profiler.latency.plots import legend_below, pyplot, save_and_close, wrap_title
from profiler.spaces.arch import collapse_runs

FAMILY_COLUMNS = ["member", "ops", "params", "flops", "predicted_ms", "measured_ms", "error_pct", "test_acc",
                  "predicted_raw_ms", "control", "status", "note"]


def error_pct(predicted_ms: float | None, measured_ms: float | None) -> float | None:
    """(predicted - measured) / measured in percent; None when either is missing."""
    if predicted_ms is None or measured_ms is None or not measured_ms > 0 or not math.isfinite(predicted_ms):
        return None
    return (predicted_ms - measured_ms) / measured_ms * 100.0


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of points not dominated on (latency lower, accuracy higher), sorted by latency."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best = [], -math.inf
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


def hypervolume(points: Sequence[tuple[float, float]], ref_latency_ms: float, ref_acc: float = 0.0) -> float:
    """Area dominated by (latency, accuracy) points w.r.t. the reference (ref_latency_ms, ref_acc): latency lower and
    accuracy higher are better; points beyond the reference add nothing."""
    pts = [(lat, acc) for lat, acc in points if lat < ref_latency_ms and acc > ref_acc]
    if not pts:
        return 0.0
    idx = pareto_front(pts)
    front = [pts[i] for i in idx]  # latency increasing, accuracy increasing
    area = 0.0
    for j, (lat, acc) in enumerate(front):
        nxt = front[j + 1][0] if j + 1 < len(front) else ref_latency_ms
        area += (nxt - lat) * (acc - ref_acc)
    return area


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """The family as a plain-text table (for logs and the README). Rows whose ``predicted_ms_by_device`` names
    several devices get a ``pred ms DEVICE`` column per device after ``pred ms`` (the first device's); rows timed
    on every device (``measured_ms_by_device``) show ``pred ms``, ``meas ms`` and ``err %`` per device instead."""
    devices = list(dict.fromkeys(k for r in rows for k in (r.get("predicted_ms_by_device") or {})))
    devices = devices if len(devices) > 1 else []
    first = [("pred ms", "predicted_ms", 3), ("meas ms", "measured_ms", 3), ("err %", "error_pct", 1)]
    cols = [(h, (lambda r, k=k: r.get(k)), n) for h, k, n in first]  # (header, value of a row, digits)
    per = [(f"{h} {d}", (lambda r, k=k, d=d: (r.get(k) or {}).get(d)), n) for d in devices
           for h, k, n in (("pred ms", "predicted_ms_by_device", 3), ("meas ms", "measured_ms_by_device", 3),
                           ("err %", "error_pct_by_device", 1))]
    if devices and any(r.get("measured_ms_by_device") for r in rows):
        cols = per
    elif devices:
        cols = cols[:1] + per[::3] + cols[1:]
    head = ["member", "architecture", "params", *(c[0] for c in cols), "test acc"]
    noted = any(r.get("note") for r in rows)
    head += ["note"] if noted else []
    lines = []
    for r in rows:
        lines.append([r["member"], _short_ops(r.get("ops", "")), f"{int(r['params']):,}",
                      *(_num(value(r), n) for _, value, n in cols),
                      _num(None if r.get("test_acc") is None else r["test_acc"] * 100, 1, "%")]
                     + ([r.get("note") or ""] if noted else []))
    widths = [max(len(h), *(len(x[i]) for x in lines)) if lines else len(h) for i, h in enumerate(head)]
    left = (0, 1, len(head) - 1) if noted else (0, 1)
    fmt = "  ".join(f"{{:<{w}}}" if i in left else f"{{:>{w}}}" for i, w in enumerate(widths))
    return "\n".join([fmt.format(*head), fmt.format(*("-" * w for w in widths))] + [fmt.format(*x) for x in lines])


def _num(v: Any, digits: int, suffix: str = "") -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    return f"{v:.{digits}f}{suffix}"


def _short_ops(ops: str, width: int = 48) -> str:
    s = collapse_runs(ops.split())
    return s if len(s) <= width else s[: width - 3] + "..."


def pareto_figure(rows: Sequence[dict[str, Any]], title: str = "family"):
    """Test accuracy vs latency, one colour per member: measured filled, predicted hollow, joined by a line; the
    measured Pareto front drawn; legend and member key right of the axes, off the data."""
    from matplotlib.lines import Line2D

    plt = pyplot()
    pts = [r for r in rows if r.get("test_acc") is not None and (r.get("measured_ms") or r.get("predicted_ms"))]
    if not pts:
        return None
    fig, ax = plt.subplots(figsize=(7.6, 4.6), dpi=120)
    cmap = plt.get_cmap("tab10" if len(pts) <= 10 else "tab20")
    handles = []
    for i, r in enumerate(pts):
        color, acc = cmap(i % cmap.N), r["test_acc"] * 100
        meas, pred = r.get("measured_ms"), r.get("predicted_ms")
        if meas and pred:
            ax.plot([pred, meas], [acc, acc], color=color, lw=1.0, alpha=0.7, zorder=1)
        if pred:
            ax.scatter([pred], [acc], facecolors="white", edgecolors=[color], marker="D", s=42, lw=1.4, zorder=2)
        if meas:
            ax.scatter([meas], [acc], color=[color], marker="o", s=44, zorder=3)
        label = str(r["member"]).replace("member-", "m")
        ax.annotate(label, (meas or pred, acc), textcoords="offset points", xytext=(5, 5), fontsize=7, color=color)
        note = " (not Pareto-optimal)" if str(r.get("note", "")).startswith("not Pareto") else ""
        err = r.get("error_pct")
        handles.append(Line2D([], [], color=color, marker="o", lw=1.0,
                              label=f"{label}{note}" + (f": pred {err:+.0f} %" if isinstance(err, (int, float))
                                                        else "")))
    meas_pts = [(r["measured_ms"], r["test_acc"] * 100) for r in pts if r.get("measured_ms")]
    if meas_pts:
        front = [meas_pts[i] for i in pareto_front(meas_pts)]
        ax.step(*zip(*front), where="post", color="0.35", lw=1.0, ls=":", zorder=0)
    key = [Line2D([], [], color="0.2", marker="o", ls="", label="measured (whole model)"),
           Line2D([], [], color="0.2", marker="D", mfc="white", ls="", label="predicted (table)"),
           Line2D([], [], color="0.35", ls=":", label="Pareto front (measured)")]
    ax.set_xlabel("latency (ms)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(wrap_title(title, 56), fontsize=10)
    ax.grid(alpha=0.3)
    first = ax.legend(handles=key, fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False)
    ax.add_artist(first)
    ax.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 0.72), frameon=False,
              title="member (prediction error)", title_fontsize=7)
    fig.tight_layout()
    return fig


def plot_pareto(rows: Sequence[dict[str, Any]], path: Path, title: str = "family") -> Path | None:
    """:func:`pareto_figure`, saved to ``path`` (None when no member has a result)."""
    fig = pareto_figure(rows, title)
    return None if fig is None else save_and_close(fig, path)


def curves_figure(metrics: Sequence[dict[str, Any]], members: dict[str, Sequence[dict[str, Any]]],
                  title: str = "training curves"):
    """Search and retraining curves by epoch, four panels: accuracy; cross-entropy (train and validation, the same
    quantity); the latency/params penalty (train loss = CE + penalty, so it is not mixed with the CE); expected
    latency. Legends under each panel."""
    plt = pyplot()
    if not metrics and not members:
        return None
    fig, grid = plt.subplots(2, 2, figsize=(11, 8.6), dpi=110)
    axes = grid.ravel()
    ep = [m.get("epoch", i) + 1 for i, m in enumerate(metrics)]  # search epochs are 0-based: plot "after epoch N"

    def series(*names: str) -> list[tuple[str, list[float]]]:
        out = []
        for n in names:
            vals = [m.get(n) for m in metrics]
            if any(isinstance(v, (int, float)) for v in vals):
                out.append((n, [v if isinstance(v, (int, float)) else math.nan for v in vals]))
        return out

    for name, ys in series("train_acc", "val_acc"):
        axes[0].plot(ep, [y * 100 if y <= 1.0 else y for y in ys], marker="o", ms=3, lw=1.6,
                     label=f"search {name.replace('_acc', '')}")
    for member, curve in members.items():
        if curve:
            axes[0].plot([c["epoch"] for c in curve], [c["val_acc"] * 100 for c in curve], lw=0.9, ls="--",
                         label=f"{member.replace('member-', 'm')} retrain val")
    ce_names = {"train_ce": "train CE", "val_loss": "validation CE", "ce": "CE"}
    if not any(m.get("train_ce") is not None for m in metrics):
        ce_names["train_loss"] = "train loss"
    for name, ys in series(*ce_names):
        axes[1].plot(ep, ys, marker="o", ms=3, label=f"search {ce_names[name]}")
    for name, ys in series("train_penalty", "penalty"):
        axes[2].plot(ep, ys, marker="o", ms=3, color="tab:red", label="search train penalty (loss − CE)")
    lat = [k for k in (metrics[0] if metrics else {}) if "latency" in k and isinstance(metrics[0][k], (int, float))]
    for name, ys in series(*lat):
        axes[3].plot(ep, ys, marker="o", ms=3, label=name)
    from matplotlib.ticker import MaxNLocator

    labels = ["accuracy (%)", "cross-entropy", "penalty", "expected latency (ms)"]
    for ax, ylabel in zip(axes, labels):
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        n = len(ax.get_legend_handles_labels()[0])
        if n:
            legend_below(ax, y=-0.17, fontsize=7, ncol=3)
        else:
            ax.text(0.5, 0.5, "not recorded", ha="center", va="center", transform=ax.transAxes, color="0.5")
    fig.suptitle(wrap_title(title, 90), fontsize=10)
    fig.tight_layout()
    return fig


def plot_curves(metrics: Sequence[dict[str, Any]], members: dict[str, Sequence[dict[str, Any]]], path: Path,
                title: str = "training curves") -> Path | None:
    """:func:`curves_figure`, saved to ``path``."""
    fig = curves_figure(metrics, members, title)
    return None if fig is None else save_and_close(fig, path)
