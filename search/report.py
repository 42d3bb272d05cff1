"""Family table and plots: Pareto front (accuracy vs measured latency, predicted latency as a second marker) and
training curves from ``metrics.jsonl`` (search) and ``curve.jsonl`` (each member's retraining). matplotlib Agg only.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Sequence

from profiler.arch import collapse_runs
from profiler.plots import pyplot, save_figure

FAMILY_COLUMNS = ["member", "ops", "params", "flops", "predicted_ms", "measured_ms", "error_pct", "test_acc",
                  "predicted_raw_ms", "control", "status"]


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
    """The family as a plain-text table (for logs and the README)."""
    head = ["member", "architecture", "params", "pred ms", "meas ms", "err %", "test acc"]
    lines = []
    for r in rows:
        lines.append([r["member"], _short_ops(r.get("ops", "")), f"{int(r['params']):,}",
                      _num(r.get("predicted_ms"), 3), _num(r.get("measured_ms"), 3), _num(r.get("error_pct"), 1),
                      _num(None if r.get("test_acc") is None else r["test_acc"] * 100, 1, "%")])
    widths = [max(len(h), *(len(x[i]) for x in lines)) if lines else len(h) for i, h in enumerate(head)]
    fmt = "  ".join(f"{{:<{w}}}" if i in (0, 1) else f"{{:>{w}}}" for i, w in enumerate(widths))
    return "\n".join([fmt.format(*head), fmt.format(*("-" * w for w in widths))] + [fmt.format(*x) for x in lines])


def _num(v: Any, digits: int, suffix: str = "") -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    return f"{v:.{digits}f}{suffix}"


def _short_ops(ops: str, width: int = 48) -> str:
    s = collapse_runs(ops.split())
    return s if len(s) <= width else s[: width - 3] + "..."


def plot_pareto(rows: Sequence[dict[str, Any]], path: Path, title: str = "family") -> Path | None:
    """Test accuracy vs latency: measured (filled, Pareto front drawn) and predicted (hollow) for every member."""
    plt = pyplot()
    pts = [r for r in rows if r.get("test_acc") is not None and (r.get("measured_ms") or r.get("predicted_ms"))]
    if not pts:
        return None
    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=120)
    meas = [(r["measured_ms"], r["test_acc"] * 100) for r in pts if r.get("measured_ms")]
    pred = [(r["predicted_ms"], r["test_acc"] * 100) for r in pts if r.get("predicted_ms")]
    for r in pts:
        if r.get("measured_ms") and r.get("predicted_ms"):
            ax.plot([r["predicted_ms"], r["measured_ms"]], [r["test_acc"] * 100] * 2, color="0.75", lw=0.8, zorder=1)
    if pred:
        ax.scatter(*zip(*pred), facecolors="none", edgecolors="tab:orange", s=46, label="predicted (table)", zorder=2)
    if meas:
        ax.scatter(*zip(*meas), color="tab:blue", s=40, label="measured (whole model)", zorder=3)
        front = [meas[i] for i in pareto_front(meas)]
        ax.step(*zip(*front), where="post", color="tab:blue", lw=1.2, alpha=0.6, label="Pareto front (measured)")
        for r in pts:
            if r.get("measured_ms"):
                ax.annotate(str(r["member"]).replace("member-", "m"), (r["measured_ms"], r["test_acc"] * 100),
                            textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.set_xlabel("latency (ms)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)
    return path


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Records of a JSON-lines file; a torn last line (a killed writer) is skipped."""
    out = []
    if not path.is_file():
        return out
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict):
            out.append(rec)
    return out


def plot_curves(metrics: Sequence[dict[str, Any]], members: dict[str, Sequence[dict[str, Any]]], path: Path,
                title: str = "training curves") -> Path | None:
    """Search curves (accuracy, loss, expected latency by epoch) and each member's retraining validation accuracy."""
    plt = pyplot()
    if not metrics and not members:
        return None
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6), dpi=110)
    ep = [m.get("epoch", i) + 1 for i, m in enumerate(metrics)]  # search epochs are 0-based: plot "after epoch N"

    def series(*names: str) -> list[tuple[str, list[float]]]:
        out = []
        for n in names:
            vals = [m.get(n) for m in metrics]
            if any(isinstance(v, (int, float)) for v in vals):
                out.append((n, [v if isinstance(v, (int, float)) else math.nan for v in vals]))
        return out

    for name, ys in series("train_acc", "val_acc"):
        axes[0].plot(ep, [y * 100 if y <= 1.0 else y for y in ys], marker="o", ms=3, label=f"search {name}")
    for name, ys in series("train_loss", "val_loss", "loss", "ce"):
        axes[1].plot(ep, ys, marker="o", ms=3, label=name)
    lat = [k for k in (metrics[0] if metrics else {}) if "latency" in k and isinstance(metrics[0][k], (int, float))]
    for name, ys in series(*lat):
        axes[2].plot(ep, ys, marker="o", ms=3, label=name)
    for member, curve in members.items():
        if curve:
            axes[0].plot([c["epoch"] for c in curve], [c["val_acc"] * 100 for c in curve], lw=0.9, ls="--",
                         label=f"{member} retrain val")
    axes[0].set_ylabel("accuracy (%)")
    axes[1].set_ylabel("loss")
    axes[2].set_ylabel("expected latency (ms)")
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=6)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)
    return path
