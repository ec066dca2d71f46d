"""Paper-versus-reproduced tables: the numbers of one spec at one scale, as plain data.

Everything here is pure pandas/arithmetic on a frame of finished runs, so that the HTML and the
Markdown renderings show the same numbers and the tests can check them without a browser.

Two things a reader must never be misled about are decided here, not in templates:

- at the world scales (smoke, mini) the numbers are the built-in world's inspector-based
  analogues of IS/FID/SOA, so no "difference to the paper" is computed for them (a difference
  between a COCO FID and a world FID means nothing); the comparison is the *ordering* of rows;
- metrics scored by the training CLIP are training-signal diagnostics, not judges, and their
  column says so.
"""

from __future__ import annotations

import math
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from lafite.metrics import DIAGNOSTIC_LABEL, METRICS
from lafite.spec import MetricSpec, RowSpec, Spec

WORLD_SCALES = ("smoke", "mini")

# Stored as fractions in [0, 1] by the metrics package; the paper prints them as percentages
# (SOA in Tables 3-5, R-precision). Shown in percent so that paper and reproduced columns share
# a unit. A stored value above 1 means the store already holds percent and is shown as is.
FRACTION_METRICS = frozenset(
    {
        "SOA-C",
        "SOA-I",
        "R-precision",
        "caption-accuracy",
        "main-shape-accuracy",
        "main-colour-accuracy",
        "main-position-accuracy",
        "main-size-accuracy",
        "object-count-accuracy",
        "background-accuracy",
        "face-hair-accuracy",
        "face-eyes-accuracy",
        "face-expression-accuracy",
        "face-accessory-accuracy",
    }
)


def is_world_scale(scale: str) -> bool:
    return scale in WORLD_SCALES


def tracking_names(metric: str) -> tuple[str, str]:
    """The two MLflow keys a metric may be stored under: plain, and labelled as a diagnostic
    (MLflow forbids parentheses, so the metrics package writes ``"<name> - <label>"``)."""
    return metric, f"{metric} - {DIAGNOSTIC_LABEL}"


def run_command(spec_id: str, scale: str, row: str | None = None) -> str:
    """The exact command that produces a missing row (or the whole table)."""
    parts = ["lafite-repro", "run", spec_id, "--scale", scale]
    if row is not None:
        parts += ["--rows", row]
    return " ".join(shlex.quote(p) for p in parts)


@dataclass
class Cell:
    """One metric of one row: the paper's number and the reproduced mean over seeds."""

    paper: float | None = None
    mean: float | None = None
    spread: float | None = None  # sample standard deviation over seeds (n >= 2)
    n: int = 0
    diff: float | None = None  # mean - paper, only where both measure the same thing
    paper_rank: int | None = None
    our_rank: int | None = None
    paper_best: bool = False
    our_best: bool = False
    not_computed: str = ""  # why the metric is missing from a finished run
    # Seeds whose measurement was made but came out NaN or infinite: failed, not missing, and
    # left out of the mean.
    failed: list[str] = field(default_factory=list)  # "NaN", "inf" or "-inf", one per seed

    @property
    def failed_value(self) -> str:
        """"NaN" (or "inf"), as the failed seeds logged it; "" when none failed."""
        return "NaN" if "NaN" in self.failed else (self.failed[0] if self.failed else "")

    @property
    def failed_text(self) -> str:
        """What a reader sees for the failed seeds: the whole cell when no seed succeeded."""
        if not self.failed:
            return ""
        if self.mean is None:
            return f"{self.failed_value}: measurement failed"
        seeds = "seed" if len(self.failed) == 1 else "seeds"
        return f"{len(self.failed)} {seeds} {self.failed_value}"


@dataclass
class FailedMeasurement:
    """A metric of a row that was measured and came out NaN (or infinite) for some seeds."""

    row: str
    metric: str  # the column's label
    value: str  # "NaN" or "inf"
    failed: int
    seeds: int  # seeds with a finished run that logged the metric, failed or not

    @property
    def text(self) -> str:
        seeds = "seed" if self.seeds == 1 else "seeds"
        return f"{self.row}: {self.metric} ({self.failed} of {self.seeds} {seeds} {self.value})"


@dataclass
class RowResult:
    row: RowSpec
    cells: dict[str, Cell]
    run_ids: list[tuple[int, str]] = field(default_factory=list)  # (seed, run id)
    unfinished: dict[str, int] = field(default_factory=dict)  # status -> count
    command: str = ""  # how to run it, when it has no finished run

    @property
    def name(self) -> str:
        return self.row.name

    @property
    def n_runs(self) -> int:
        return len(self.run_ids)

    @property
    def status(self) -> str:
        """"paper only" (a method this suite does not train), "run" or "not run"."""
        if self.row.reference:
            return "paper only"
        return "run" if self.run_ids else "not run"


@dataclass
class MetricColumn:
    spec: MetricSpec
    label: str
    percent: bool
    diagnostic: bool
    has_paper: bool
    has_ours: bool

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def digits(self) -> int:
        """Decimals shown: none for a property such as a feature dimension."""
        return 2 if self.spec.ranked else 0

    @property
    def better(self) -> str:
        if not self.spec.ranked:
            return "a property of the run, not ranked"
        return "higher is better" if self.spec.higher_is_better else "lower is better"

    @property
    def arrow(self) -> str:
        return self.spec.arrow


@dataclass
class Agreement:
    """Does the paper's ordering of rows hold for one metric (within one group)?"""

    metric: str
    label: str
    group: str
    n_rows: int  # rows with both a paper number and a reproduced one
    paper_best: str
    our_best: str
    concordant: int
    discordant: int
    ties: int
    kendall_tau: float | None

    @property
    def pairs(self) -> int:
        return self.concordant + self.discordant + self.ties

    @property
    def best_agrees(self) -> bool:
        return bool(self.paper_best) and self.paper_best == self.our_best

    @property
    def verdict(self) -> str:
        """A reading of tau-b a reader can act on; thresholds are the usual rough bands."""
        if self.n_rows < 2 or self.kendall_tau is None:
            return "too few rows to compare"
        if self.discordant == 0 and self.ties == 0:
            return "paper's ordering holds"
        if self.kendall_tau >= 0.4:
            return "roughly holds"
        if self.kendall_tau <= -0.4:
            return "reversed"
        return "no clear agreement"

    @property
    def holds(self) -> bool:
        return self.verdict in ("paper's ordering holds", "roughly holds")


@dataclass
class TableResult:
    spec: Spec
    scale: str
    columns: list[MetricColumn]
    rows: list[RowResult]
    agreements: list[Agreement]
    has_groups: bool
    has_x: bool

    @property
    def world(self) -> bool:
        return is_world_scale(self.scale)

    @property
    def n_runs(self) -> int:
        return sum(r.n_runs for r in self.rows)

    @property
    def rows_run(self) -> int:
        return sum(1 for r in self.rows if r.status == "run")

    @property
    def trainable(self) -> int:
        return sum(1 for r in self.rows if not r.row.reference)

    @property
    def command(self) -> str:
        return run_command(self.spec.id, self.scale)

    @property
    def failed(self) -> list[FailedMeasurement]:
        """Every (row, metric) whose measurement came out NaN or infinite for some seed."""
        return [
            FailedMeasurement(r.name, col.label, c.failed_value, len(c.failed), c.n + len(c.failed))
            for r in self.rows for col in self.columns
            if (c := r.cells[col.name]).failed
        ]


def display_value(value: float, percent: bool) -> float:
    return value * 100.0 if percent else value


def summarise(
    spec: Spec,
    frame: pd.DataFrame,
    scale: str,
    unfinished: Mapping[str, Mapping[str, int]] | None = None,
) -> TableResult:
    """The table of ``spec`` at ``scale`` from ``frame`` (finished child runs, one per row).

    ``frame`` has the columns of :meth:`lafite.tracking.Tracker.runs_frame` (``row``, ``seed``,
    ``scale``, ``run_id``, ``metrics.<name>``) and optionally ``tags.lafite.not_computed.<m>``.
    ``unfinished`` maps row name -> status -> count of runs that did not finish.
    """
    runs = frame[frame["scale"] == scale] if "scale" in frame.columns and len(frame) else frame
    unfinished = unfinished or {}
    columns = _columns(spec, runs)
    by_row = {name: group for name, group in runs.groupby("row", sort=False)} if len(runs) else {}

    rows: list[RowResult] = []
    # A row that imports an authors' checkpoint is preceded by that checkpoint's row.
    for row in spec.report_rows(scale):
        group = by_row.get(row.name)
        cells: dict[str, Cell] = {}
        for col in columns:
            cell = Cell()
            if col.name in row.paper:
                cell.paper = row.paper[col.name]
            if group is not None and not row.reference:
                values, cell.failed = _values(group, col.name)
                if col.percent and len(values) and float(values.max()) <= 1.0:
                    values = values * 100.0
                cell.n = int(len(values))
                if cell.n:
                    cell.mean = float(values.mean())
                    cell.spread = float(values.std(ddof=1)) if cell.n >= 2 else None
                    if cell.paper is not None and not is_world_scale(scale):
                        cell.diff = cell.mean - cell.paper
                elif not cell.failed:
                    cell.not_computed = _not_computed(group, col.name)
            cells[col.name] = cell
        run_ids: list[tuple[int, str]] = []
        if group is not None and not row.reference:
            run_ids = sorted(zip(group["seed"].astype(int), group["run_id"].astype(str)))
        result = RowResult(row, cells, run_ids, dict(unfinished.get(row.name, {})))
        if not row.reference and not run_ids:
            result.command = run_command(spec.id, scale, row.authors_of or row.name)
        rows.append(result)

    has_groups = any(r.group for r in spec.rows)
    # The authors' checkpoints are a check of the evaluation, not rows of the paper's ranking.
    agreements = _rank(columns, [r for r in rows if not r.row.authors_of], has_groups)
    return TableResult(spec, scale, columns, rows, agreements, has_groups,
                       any(r.x is not None for r in spec.rows))


def _columns(spec: Spec, runs: pd.DataFrame) -> list[MetricColumn]:
    out = []
    for metric in spec.metrics:
        plain, labelled = tracking_names(metric.name)
        diagnostic = f"metrics.{labelled}" in runs.columns and runs[f"metrics.{labelled}"].notna().any()
        has_ours = diagnostic or (
            f"metrics.{plain}" in runs.columns and runs[f"metrics.{plain}"].notna().any()
        )
        label = metric.label or metric.name
        out.append(
            MetricColumn(
                spec=metric,
                label=label,
                percent=metric.name in FRACTION_METRICS,
                diagnostic=diagnostic,
                has_paper=any(metric.name in r.paper for r in spec.rows),
                has_ours=has_ours,
            )
        )
    return out


def _values(group: pd.DataFrame, metric: str) -> tuple[pd.Series, list[str]]:
    """The metric's finite values over the seeds of one row, whichever key it was stored under,
    and the seeds where it was logged but is NaN or infinite (a failed measurement)."""
    found, logged_nan = [], pd.Series(False, index=group.index)
    for key in tracking_names(metric):
        column = f"metrics.{key}"
        if column in group.columns:
            found.append(pd.to_numeric(group[column], errors="coerce"))
        # The frame's NaN also stands for "never logged"; the tracker flags a logged NaN.
        if f"nan.{key}" in group.columns:
            logged_nan |= group[f"nan.{key}"].eq(True)
    if not found:
        return pd.Series(dtype=float), []
    merged = found[0]
    for other in found[1:]:
        merged = merged.fillna(other)
    finite = merged.map(lambda v: not pd.isna(v) and math.isfinite(v))
    failed = ["NaN" if pd.isna(v) else f"{v}" for v in merged[~finite & (merged.notna() | logged_nan)]]
    return merged[finite], failed


def _not_computed(group: pd.DataFrame, metric: str) -> str:
    column = f"tags.lafite.not_computed.{metric}"
    if column in group.columns:
        reasons = group[column].dropna().astype(str).unique()
        if len(reasons):
            return "; ".join(reasons)
    return "no value logged"


def _rank(columns: Sequence[MetricColumn], rows: Sequence[RowResult], has_groups: bool) -> list[Agreement]:
    """Rank rows per metric (within each group) in the paper and here; mark the best ones;
    count the pairs of rows the two orderings agree on (Kendall's tau-b over those rows)."""
    agreements: list[Agreement] = []
    groups: dict[str, list[RowResult]] = {}
    for r in rows:
        groups.setdefault(r.row.group if has_groups else "", []).append(r)
    for col in columns:
        if not col.spec.ranked:
            continue
        sign = 1.0 if col.spec.higher_is_better else -1.0
        for group_name, members in groups.items():
            papers = [(r, r.cells[col.name].paper) for r in members if r.cells[col.name].paper is not None]
            ours = [(r, r.cells[col.name].mean) for r in members if r.cells[col.name].mean is not None]
            for ranked, attr in ((papers, "paper"), (ours, "our")):
                if len(ranked) < 2:
                    continue  # a rank among one row says nothing
                ordered = sorted(ranked, key=lambda item: -sign * item[1])
                for r, value in ordered:
                    # Equal values share the better rank.
                    rank = 1 + sum(1 for _, v in ordered if sign * v > sign * value)
                    setattr(r.cells[col.name], f"{attr}_rank", rank)
                    if rank == 1:
                        setattr(r.cells[col.name], f"{attr}_best", True)
            both = [r for r in members
                    if r.cells[col.name].paper is not None and r.cells[col.name].mean is not None]
            if len(both) >= 2:
                agreements.append(_agreement(col, group_name, both))
    return agreements


def _agreement(col: MetricColumn, group: str, both: Sequence[RowResult]) -> Agreement:
    sign = 1.0 if col.spec.higher_is_better else -1.0
    concordant = discordant = ties = 0
    tied_paper = tied_ours = 0
    for i in range(len(both)):
        for j in range(i + 1, len(both)):
            a, b = both[i].cells[col.name], both[j].cells[col.name]
            dp = sign * (a.paper - b.paper)  # type: ignore[operator]
            do = sign * (a.mean - b.mean)  # type: ignore[operator]
            if dp == 0 or do == 0:
                ties += 1
                tied_paper += dp == 0
                tied_ours += do == 0
            elif (dp > 0) == (do > 0):
                concordant += 1
            else:
                discordant += 1
    n_pairs = concordant + discordant + ties
    denominator = math.sqrt((n_pairs - tied_paper) * (n_pairs - tied_ours))
    tau = (concordant - discordant) / denominator if denominator > 0 else None

    def best(values: list[tuple[str, float]]) -> str:
        if not values:
            return ""
        top = max(sign * v for _, v in values)
        return " = ".join(name for name, v in values if sign * v == top)

    return Agreement(
        metric=col.name,
        label=col.label,
        group=group,
        n_rows=len(both),
        paper_best=best([(r.name, r.cells[col.name].paper) for r in both]),  # type: ignore[misc]
        our_best=best([(r.name, r.cells[col.name].mean) for r in both]),  # type: ignore[misc]
        concordant=concordant,
        discordant=discordant,
        ties=ties,
        kendall_tau=tau,
    )


# -- the paper's layout: methods by dataset ---------------------------------------------------


@dataclass
class DatasetGroup:
    """One column group of a table laid out as the paper prints it (Tables 3 and 4)."""

    name: str
    columns: list[MetricColumn]


@dataclass
class MethodRow:
    name: str
    reference: bool
    # (group, metric) -> the cell of the spec row holding that method on that dataset.
    cells: dict[tuple[str, str], Cell]


@dataclass
class ByDataset:
    groups: list[DatasetGroup]
    rows: list[MethodRow]


def by_dataset(table: TableResult) -> ByDataset | None:
    """The table with one row per method (a spec row's ``series``) and one column group per
    dataset (its ``group``), as Tables 3 and 4 print it; None for tables without both."""
    rows = table.rows
    if not table.has_groups or not all(r.row.series and r.row.group for r in rows):
        return None
    group_names: list[str] = []
    method_names: list[str] = []
    for r in rows:
        if r.row.group not in group_names:
            group_names.append(r.row.group)
        if r.row.series not in method_names:
            method_names.append(r.row.series)
    groups = []
    for name in group_names:
        members = [r for r in rows if r.row.group == name]
        columns = [c for c in table.columns
                   if any(m.cells[c.name].paper is not None or m.cells[c.name].mean is not None
                          for m in members)]
        groups.append(DatasetGroup(name, columns))
    methods = []
    for method in method_names:
        members = [r for r in rows if r.row.series == method]
        cells = {(r.row.group, name): cell for r in members for name, cell in r.cells.items()}
        methods.append(MethodRow(method, all(r.row.reference for r in members), cells))
    return ByDataset(groups, methods)


# -- formatting, shared by HTML and Markdown ---------------------------------------------------


def fmt(value: float | None, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if value != 0 and abs(value) < 0.01:
        return f"{value:.2e}"
    return f"{value:.{digits}f}"


def fmt_signed(value: float | None) -> str:
    return "–" if value is None else ("+" if value > 0 else "") + fmt(value)


def fmt_reproduced(cell: Cell, digits: int = 2) -> str:
    """``12.34 ± 0.56 (n=3)``; one seed shows no spread."""
    if cell.mean is None:
        return "–"
    text = fmt(cell.mean, digits)
    if cell.spread is not None:
        text += f" ± {fmt(cell.spread, digits)}"
    return f"{text} (n={cell.n})"


def metric_heading(col: MetricColumn, scale: str) -> str:
    """Column title: the metric, its direction, and what it is at this scale."""
    text = f"{col.label} {col.arrow}".rstrip()
    if col.percent:
        text += " (%)"
    return text


def caveat_label(col: MetricColumn, scale: str) -> str:
    """The short tag under a column title: what kind of number the column holds here."""
    if col.diagnostic:
        return DIAGNOSTIC_LABEL
    if not col.spec.ranked:
        return "world encoders" if is_world_scale(scale) else ""
    if is_world_scale(scale) and col.name in METRICS:
        return "built-in world only" if "world only" in METRICS[col.name].description else "world analogue"
    return ""


def metric_caveat(col: MetricColumn, scale: str) -> str:
    """The qualifier a metric needs at this scale ("" when it is the paper's metric)."""
    notes = []
    if col.diagnostic:
        notes.append(f"{DIAGNOSTIC_LABEL}: scored by the CLIP the generator was trained against, "
                     "so it measures the training signal, not image quality")
    elif not col.spec.ranked:
        if is_world_scale(scale):
            notes.append("the world's encoders are far smaller than the paper's; compare the "
                         "rows' dimensions with each other, not with the paper's")
    elif is_world_scale(scale) and col.name in METRICS:
        notes.append("built-in world analogue (inspector-based), not the paper's metric")
    return "; ".join(notes)


def to_markdown(table: TableResult) -> str:
    """The table as GitHub-flavoured Markdown, with the same numbers and labels as the page."""
    spec = table.spec
    lines = []
    header = ["row"]
    if table.has_groups:
        header.append("group")
    if table.has_x:
        header.append(_md_escape(spec.x_axis.get("label", "x")))
    for col in table.columns:
        heading = metric_heading(col, table.scale) + (" ‡" if col.diagnostic else "")
        if col.has_paper:
            header.append(f"{heading} paper")
        header.append(f"{heading} here" + (" †" if table.world else ""))
        if col.has_paper and not table.world:
            header.append(f"{heading} Δ")
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "|".join("---" if i == 0 else "--:" for i in range(len(header))) + "|")
    missing, others = [], []
    for r in table.rows:
        name = _md_escape(r.name)
        if r.status == "paper only":
            name += " (paper only)"
        cells = [name]
        if table.has_groups:
            cells.append(_md_escape(r.row.group))
        if table.has_x:
            cells.append(fmt(r.row.x) if r.row.x is not None else "")
        for col in table.columns:
            c = r.cells[col.name]
            if col.has_paper:
                cells.append(_mark(fmt(c.paper, col.digits), c.paper_best)
                             if c.paper is not None else "")
            if r.status == "not run":
                ours_text = "not run"
            elif r.status == "paper only":
                ours_text = ""
            elif c.mean is None:
                ours_text = c.failed_text or "not computed"
            else:
                ours_text = _mark(fmt_reproduced(c, col.digits), c.our_best)
                if c.failed:
                    ours_text += f"; {c.failed_text}"
            cells.append(ours_text)
            if col.has_paper and not table.world:
                cells.append(fmt_signed(c.diff) if c.diff is not None else "")
        lines.append("| " + " | ".join(cells) + " |")
        if r.status == "not run":
            missing.append(f"- {_md_escape(r.name)}: `{r.command}`")
        if r.unfinished:
            others.append(f"- {_md_escape(r.name)}: " + ", ".join(
                f"{count} run{'s' if count > 1 else ''} {status}"
                for status, count in r.unfinished.items()))
    pivot = by_dataset(table)
    if pivot is not None:
        lines += ["", "As the paper lays it out (methods by dataset; paper / here):", ""]
        head = ["method"] + [f"{g.name} {metric_heading(c, table.scale)}"
                             for g in pivot.groups for c in g.columns]
        lines.append("| " + " | ".join(_md_escape(h) for h in head) + " |")
        lines.append("|" + "|".join("---" if i == 0 else "--:" for i in range(len(head))) + "|")
        for m in pivot.rows:
            cells = [_md_escape(m.name) + (" (paper only)" if m.reference else "")]
            for g in pivot.groups:
                for c in g.columns:
                    cell = m.cells.get((g.name, c.name))
                    if cell is None:
                        cells.append("")
                        continue
                    paper = fmt(cell.paper, c.digits) if cell.paper is not None else "–"
                    ours = "" if m.reference else " / " + (
                        fmt(cell.mean, c.digits) if cell.mean is not None
                        else cell.failed_value or "–")
                    cells.append(paper + ours)
            lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("**Bold**: the best row per metric, in the paper's column and in ours. "
                 "Reproduced: mean ± standard deviation over seeds (n seeds).")
    if table.world:
        lines.append(f"† Measured at {table.scale} scale on the built-in world: inspector-based "
                     "analogues of the paper's metrics, comparable across rows, not with the "
                     "paper's values (hence no difference column).")
    if any(c.diagnostic for c in table.columns):
        lines.append(f"‡ {DIAGNOSTIC_LABEL}: scored by the CLIP the generator was trained against.")
    if missing:
        lines += ["", "Rows not run yet, and the command that runs each:", "", *missing]
    if others:
        lines += ["", "Runs not averaged into their row:", "", *others]
    if table.failed:
        lines += ["", "Measurements that failed: logged as NaN (or infinite) by a finished run and "
                  "left out of the means; \"not computed\" means never measured:", "",
                  *(f"- {_md_escape(f.text)}" for f in table.failed)]
    if table.agreements:
        lines += ["", "Does the paper's ordering hold?", "",
                  "| metric | best in paper | best here | pairs in paper's order | Kendall τ | verdict |",
                  "|---|---|---|--:|--:|---|"]
        for a in table.agreements:
            metric = a.label + (f" ({a.group})" if a.group else "")
            tau = fmt(a.kendall_tau) if a.kendall_tau is not None else "–"
            lines.append(
                f"| {_md_escape(metric)} | {_md_escape(a.paper_best)} | {_md_escape(a.our_best)} | "
                f"{a.concordant} of {a.pairs} | {tau} | {a.verdict} |"
            )
    return "\n".join(lines) + "\n"


def _mark(text: str, best: bool) -> str:
    return f"**{text}**" if best else text


def _md_escape(text: str) -> str:
    return (str(text).replace("\\", "\\\\").replace("|", "\\|").replace("<", "&lt;")
            .replace(">", "&gt;").replace("\n", " "))


def as_dict(table: TableResult) -> dict[str, Any]:
    """Plain numbers of a table (for tests and machine readers)."""
    return {
        r.name: {
            name: {"paper": c.paper, "mean": c.mean, "spread": c.spread, "n": c.n, "diff": c.diff,
                   "failed": len(c.failed)}
            for name, c in r.cells.items()
        }
        for r in table.rows
    }
