"""``lafite-repro data check NAME --root DIR``: what a dataset folder holds, read the way training
reads it (the format's Source through ImageTextFolder), and what is missing with how to get it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from lafite.data import formats
from lafite.data.formats.base import SHOWN
from lafite.errors import UserError


@dataclass
class SplitReport:
    split: str
    where: str = ""
    images: int = 0
    captions: list[int] = field(default_factory=list)  # per image
    caption_problems: list[str] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # left out while indexing (skip_corrupt)
    missing: list[str] = field(default_factory=list)  # parts absent, each with how to get them
    error: str = ""  # why the split cannot be read at all
    note: str = ""
    stored_features: str = ""

    @property
    def without_captions(self) -> int:
        return sum(1 for c in self.captions if c == 0)


@dataclass
class DataReport:
    dataset: str
    root: Path
    layout: str = ""
    error: str = ""
    skip_corrupt: bool = False
    need_captions: bool = True
    splits: list[SplitReport] = field(default_factory=list)

    @property
    def problems(self) -> int:
        """How many things stop a run on this data (0 = ready)."""
        count = 1 if self.error else 0
        for split in self.splits:
            count += bool(split.error) + len(split.missing)
            if not self.skip_corrupt:
                count += len(split.unreadable)
            if self.need_captions:
                count += len(split.caption_problems)
        return count


def check_data(
    dataset: str, root: str | Path, *, splits: tuple[str, ...] = formats.SPLITS,
    skip_corrupt: bool = False, scan_images: bool = True, resolution: int = 256,
    advance: Callable[[int], None] | None = None,
) -> DataReport:
    """Read each split of ``dataset`` in ``root`` as training would and report what was found."""
    from lafite.data.folder import ImageTextFolder

    if dataset not in formats.FORMATS:
        raise UserError(f"unknown dataset {dataset!r}; valid: {', '.join(formats.FORMATS)}")
    folder = formats.dataset_folder(dataset, Path(root))
    report = DataReport(dataset, folder, skip_corrupt=skip_corrupt,
                        need_captions=dataset != "ffhq")
    try:
        report.layout = formats.detect(dataset, folder)
    except UserError as error:
        report.error = str(error)
        return report
    for split in splits:
        entry = SplitReport(split)
        report.splits.append(entry)
        if report.layout == formats.PUBLISHED:
            entry.missing = formats.missing(dataset, folder, split)
            if dataset == "ffhq" and split == "test":
                entry.missing, entry.note = [], "FFHQ has no test split (language-free pre-training only)"
                continue
        try:
            source = formats.open_split(dataset, folder, split, skip=skip_corrupt)
        except UserError as error:
            if not entry.missing:
                entry.error = str(error)
            continue
        data = ImageTextFolder.from_source(source, resolution)
        entry.where, entry.images, entry.skipped = source.describe(), len(data), data.skipped
        if source.kind == formats.ZIP:  # captions as features only: say so once
            entry.captions = [0] * len(data)
            entry.note = ("no caption text (the zip stores CLIP ViT-B/32 caption features "
                          "only): language-free training as is")
        for i in range(0 if source.kind == formats.ZIP else len(data)):
            try:
                entry.captions.append(len(data.captions(i)))
            except UserError as error:
                entry.captions.append(0)
                entry.caption_problems.append(str(error))
                continue
            if entry.captions[-1] == 0:
                entry.caption_problems.append(data.caption_problem(i) or "no caption")
        if scan_images:
            entry.unreadable = [p for _, p in data.unreadable(advance=advance)]
        if getattr(source, "_features_loader", None) is not None:
            entry.stored_features = ("dataset.json: CLIP ViT-B/32 image and caption features "
                                     "(no caption text)")
    return report


def _listed(problems: list[str], indent: str = "      ") -> list[str]:
    lines = [f"{indent}- {p}" for p in problems[:SHOWN]]
    if len(problems) > SHOWN:
        lines.append(f"{indent}  ... and {len(problems) - SHOWN} more")
    return lines


def render(report: DataReport) -> str:
    """The report as plain text lines."""
    title = formats.FORMATS[report.dataset].TITLE
    lines = [f"{title} ({report.dataset}) in {report.root}"]
    if report.error:
        lines += ["  layout: not recognised", f"  problem: {report.error}"]
        return "\n".join(lines)
    names = {formats.PREPARED: "prepared (train/ and test/ image + .txt folders)",
             formats.PUBLISHED: "as published", formats.ZIP: "official LAFITE zips"}
    lines.append(f"  layout: {names[report.layout]}")
    for split in report.splits:
        lines.append(f"  {split.split}:")
        if split.note and not split.where:
            lines.append(f"    {split.note}")
            continue
        if split.missing:
            lines.append("    missing:")
            lines += _listed(split.missing)
        if split.error:
            lines.append(f"    cannot be read: {split.error}")
        if split.missing or split.error:
            continue
        lines.append(f"    read from: {split.where}")
        lines.append(f"    images: {split.images}")
        if split.captions:
            counts = split.captions
            mean = sum(counts) / len(counts)
            lines.append(f"    captions per image: min {min(counts)}, mean {mean:.2f}, "
                         f"max {max(counts)}; images without a caption: {split.without_captions}")
        if split.stored_features:
            lines.append(f"    stored features: {split.stored_features}")
        if split.note:
            lines.append(f"    note: {split.note}")
        if split.caption_problems and report.need_captions:
            lines.append(f"    caption problems ({len(split.caption_problems)}):")
            lines += _listed(split.caption_problems)
        if split.skipped:
            lines.append(f"    skipped as corrupt or missing ({len(split.skipped)}, --skip-corrupt):")
            lines += _listed(split.skipped)
        verdict = "would be skipped with --skip-corrupt" if not report.skip_corrupt else "skipped"
        lines.append(f"    unreadable images: {len(split.unreadable)}"
                     + (f" ({verdict})" if split.unreadable else ""))
        lines += _listed(split.unreadable)
    lines.append("  result: " + ("ready" if not report.problems
                                 else f"{report.problems} problems (see above)"))
    return "\n".join(lines)


__all__ = ["DataReport", "SplitReport", "check_data", "render"]
