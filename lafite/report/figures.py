"""Figures of the report, rendered with matplotlib's Agg canvas into PNG data URIs.

The figures are built on ``matplotlib.figure.Figure`` with an explicit Agg canvas, never
through pyplot: no global backend switch in library code, no figure registry to leak, and the
PNG bytes go straight into the page (``data:image/png;base64,...``) so a report is one file
that works offline.
"""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from lafite.report.tables import TableResult, is_world_scale

DPI = 90
_PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b",
            "#e377c2", "#7f7f7f", "#bcbd22")


def to_data_uri(fig: Figure) -> str:
    """PNG bytes of ``fig`` as a data URI (the figure is discarded afterwards)."""
    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    # No bbox_inches="tight" and no constrained layout: both re-draw the figure to measure it,
    # which doubles the cost of every figure; fixed margins are set where figures are made.
    fig.savefig(buffer, format="png", dpi=DPI)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def file_data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _panels(n: int, width: float = 4.2, height: float = 3.0, max_cols: int = 4,
            legend_space: float = 0.0) -> tuple[Figure, list]:
    """A grid of ``n`` panels with fixed margins (in inches, so they hold for any grid size)."""
    cols = min(n, max_cols)
    rows = math.ceil(n / cols)
    fig_w, fig_h = width * cols, height * rows + legend_space
    fig = Figure(figsize=(fig_w, fig_h))
    axes = fig.subplots(rows, cols, squeeze=False).ravel().tolist()
    fig.subplots_adjust(left=0.7 / fig_w, right=1 - 0.25 / fig_w, top=1 - 0.4 / fig_h,
                        bottom=(0.6 + legend_space) / fig_h, wspace=0.35, hspace=0.55)
    for extra in axes[n:]:
        extra.set_visible(False)
    return fig, axes[:n]


def training_curves(
    histories: pd.DataFrame,
    row_of_run: Mapping[str, str],
    row_order: Sequence[str],
    panels: Sequence[tuple[str, str]],
) -> str | None:
    """One panel per metric (``(key, title)``), one line per row: the mean over seeds against
    kimg. Panels where no row has two points are left out (nothing to see as a curve)."""
    if histories.empty:
        return None
    data = histories.assign(row=histories["run_id"].map(row_of_run))
    shown = []
    for key, title in panels:
        part = data[data["key"] == key]
        if part.empty or part.groupby("run_id")["kimg"].nunique().max() < 2:
            continue
        shown.append((key, title, part))
    if not shown:
        return None
    legend_rows = math.ceil(len(row_order) / 4)
    fig, axes = _panels(len(shown), legend_space=0.25 * legend_rows + 0.2)
    colours = {row: _PALETTE[i % len(_PALETTE)] for i, row in enumerate(row_order)}
    for ax, (_key, title, part) in zip(axes, shown):
        for row in row_order:
            series = part[part["row"] == row]
            if series.empty:
                continue
            mean = series.groupby("kimg")["value"].mean().sort_index()
            ax.plot(mean.index, mean.values, color=colours[row], lw=1.4, label=row)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("kimg (thousands of images shown)")
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncols=min(4, len(labels)), fontsize=8,
               frameon=False)
    return to_data_uri(fig)


def model_size_figure(table: TableResult, our_x: Mapping[str, float]) -> str | None:
    """Figure 1's left panel: each model's size as the paper states it, and beside LAFITE's the
    size counted on the networks this suite builds (``our_x``), on a log axis."""
    spec = table.spec
    labels, stated, counted = [], [], []
    for r in table.rows:
        if r.row.x is None:
            continue
        labels.append(r.name)
        stated.append(r.row.x)
        counted.append(our_x.get(r.name))
    if not labels:
        return None
    unit = spec.x_axis.get("unit", "")
    fig, (ax,) = _panels(1, width=5.5, height=3.2)
    positions = np.arange(len(labels))
    ax.bar(positions - 0.2, stated, width=0.4, color="#999999", label="stated in the paper")
    ours = [(p, v) for p, v in zip(positions, counted) if v is not None]
    if ours:
        ax.bar([p + 0.2 for p, _ in ours], [v for _, v in ours], width=0.4, color=_PALETTE[0],
               label="counted here (G + D at paper scale)")
        for p, v in ours:
            ax.annotate(f"{v:,.1f}", (p + 0.2, v), ha="center", va="bottom", fontsize=8)
    for p, v in zip(positions, stated):
        ax.annotate(f"{v:,.0f}", (p - 0.2, v), ha="center", va="bottom", fontsize=8)
    ax.set_xticks(positions, labels)
    ax.set_yscale("log")
    ax.set_ylabel(f"{spec.x_axis.get('label', 'size')}" + (f" ({unit})" if unit else ""))
    ax.set_title("model size", fontsize=10)
    ax.legend(fontsize=7)
    return to_data_uri(fig)


def x_axis_figure(table: TableResult, our_x: Mapping[str, float] | None = None) -> str | None:
    """The figure analogue of a spec whose rows carry ``x`` (Figure 7: share of paired data;
    Figure 1: model size): per metric, the paper's series, reference methods without ``x`` as
    horizontal lines, and the reproduced means with their spread over seeds.

    At the world scales the reproduced numbers are analogues on another scale, so they get
    their own panel beside the paper's instead of sharing its axis. ``our_x`` replaces a row's
    ``x`` for the reproduced point (Figure 1 puts our own, measured, model size there).
    """
    spec = table.spec
    metrics = [c for c in table.columns if c.has_paper or c.has_ours]
    if not metrics or not table.has_x:
        return None
    world = is_world_scale(table.scale)
    x_label = spec.x_axis.get("label", "x")
    if spec.x_axis.get("unit"):
        x_label += f" ({spec.x_axis['unit']})"
    log = bool(spec.x_axis.get("log", False))
    n_panels = len(metrics) * (2 if world else 1)
    fig, axes = _panels(n_panels, max_cols=4 if not world else 4)
    our_x = dict(our_x or {})
    for i, col in enumerate(metrics):
        paper_ax = axes[i * 2] if world else axes[i]
        ours_ax = axes[i * 2 + 1] if world else axes[i]
        series: dict[str, list[tuple[float, float]]] = {}
        for r in table.rows:
            cell = r.cells[col.name]
            if cell.paper is None:
                continue
            if r.row.x is None:
                paper_ax.axhline(cell.paper, ls="--", lw=1.2, color="#555555")
                paper_ax.annotate(f"{r.name} (paper) {cell.paper:g}", xy=(0.02, cell.paper),
                                  xycoords=("axes fraction", "data"), fontsize=8,
                                  va="bottom", color="#333333")
            elif r.row.reference:
                paper_ax.scatter([r.row.x], [cell.paper], marker="s", color="#555555", zorder=3)
                paper_ax.annotate(r.name, (r.row.x, cell.paper), fontsize=8,
                                  xytext=(4, 4), textcoords="offset points")
            else:
                series.setdefault(r.row.series or spec.id, []).append((r.row.x, cell.paper))
        for j, (name, points) in enumerate(series.items()):
            points.sort()
            paper_ax.plot([p[0] for p in points], [p[1] for p in points], marker="o",
                          color=_PALETTE[j % len(_PALETTE)], label=f"{name} (paper)")
        ours: dict[str, list[tuple[float, float, float]]] = {}
        for r in table.rows:
            cell = r.cells[col.name]
            if r.row.reference or cell.mean is None:
                continue
            x = our_x.get(r.name, r.row.x)
            if x is None:
                continue
            ours.setdefault(r.row.series or spec.id, []).append((x, cell.mean, cell.spread or 0.0))
        for j, (name, points) in enumerate(ours.items()):
            points.sort()
            xs, ys, es = (np.array(v, dtype=float) for v in zip(*points))
            where = f"here, {table.scale}" + (" world analogue" if world else "")
            ours_ax.errorbar(xs, ys, yerr=es, marker="D", ls="-" if len(xs) > 1 else "none",
                             capsize=3, color=_PALETTE[(j + 3) % len(_PALETTE)],
                             label=f"{name} ({where})")
        unit = " (%)" if col.percent else ""
        paper_ax.set_title(f"{col.label}{unit} {col.arrow}: paper" if world else f"{col.label}{unit} {col.arrow}",
                           fontsize=10)
        if world:
            ours_ax.set_title(f"{col.label}{unit} {col.arrow}: here ({table.scale}, built-in world)",
                              fontsize=10)
        xs = [r.row.x for r in table.rows if r.row.x is not None]
        for ax in {id(paper_ax): paper_ax, id(ours_ax): ours_ax}.values():
            ax.set_xlabel(x_label)
            if log:
                ax.set_xscale("log")
            elif xs:  # the swept range, also where the paper prints no point (Figure 7)
                pad = 0.05 * ((max(xs) - min(xs)) or 1.0)
                ax.set_xlim(min(xs) - pad, max(xs) + pad)
            ax.grid(alpha=0.3)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=7)
    return to_data_uri(fig)


def tuning_figures(trials: pd.DataFrame, objective: str = "objective",
                   direction: str = "maximize") -> dict[str, str]:
    """Optimisation history and objective against each parameter of one study.

    ``trials`` is Optuna's ``trials_dataframe()`` layout: ``number``, ``value``, ``state`` and
    ``params_<name>`` columns. Unfinished trials are left out. Returns {} when nothing is left.
    """
    if trials is None or trials.empty or "value" not in trials.columns:
        return {}
    done = trials
    if "state" in done.columns:
        done = done[done["state"].astype(str).str.upper().isin(["COMPLETE", "TRIALSTATE.COMPLETE"])]
    done = done[pd.to_numeric(done["value"], errors="coerce").notna()]
    if done.empty:
        return {}
    values = pd.to_numeric(done["value"])
    numbers = done["number"] if "number" in done.columns else pd.Series(range(len(done)), index=done.index)
    out: dict[str, str] = {}
    fig = Figure(figsize=(5.5, 3.2))
    ax = fig.subplots()
    fig.subplots_adjust(left=0.14, right=0.97, top=0.9, bottom=0.16)
    ax.scatter(numbers, values, s=14, color=_PALETTE[0], label="trial")
    best = values.cummax() if direction.startswith("max") else values.cummin()
    ax.step(numbers, best, where="post", color=_PALETTE[1], label="best so far")
    ax.set_xlabel("trial")
    ax.set_ylabel(objective)
    ax.set_title("optimisation history", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    out["history"] = to_data_uri(fig)
    params = [c for c in done.columns if c.startswith("params_")]
    if params:
        fig, axes = _panels(len(params), width=3.6, height=2.8)
        for ax, column in zip(axes, params):
            x = done[column]
            numeric = pd.to_numeric(x, errors="coerce")
            if numeric.notna().all():
                ax.scatter(numeric, values, s=14, color=_PALETTE[2])
                positive = numeric[numeric > 0]
                if len(positive) == len(numeric) and positive.max() / positive.min() > 100:
                    ax.set_xscale("log")
            else:
                labels = sorted(x.astype(str).unique())
                positions = x.astype(str).map({v: i for i, v in enumerate(labels)})
                ax.scatter(positions, values, s=14, color=_PALETTE[2])
                ax.set_xticks(range(len(labels)), labels, rotation=30, fontsize=7)
            ax.set_xlabel(column.removeprefix("params_"))
            ax.set_ylabel(objective)
            ax.grid(alpha=0.3)
        out["params"] = to_data_uri(fig)
    return out
