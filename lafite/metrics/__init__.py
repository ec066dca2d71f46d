"""Evaluation: FID-k/KID/IS through torch-fidelity, SOA, caption accuracy, CLIP alignment.

This package's ``__init__`` stays import-light (no torch-fidelity, which takes seconds to
import): it holds the registry of metric names, which the spec loader, the CLI and the report
read to validate names and to know which way is better.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from lafite.errors import UserError


@dataclass(frozen=True)
class MetricInfo:
    """One metric a spec may name."""

    name: str
    # None for a property of the trained model rather than a score (feature-dim): shown next to
    # the scores, never ranked.
    higher_is_better: bool | None
    description: str


FID_RADII = (0, 1, 2, 4, 8)

_INFOS = [
    MetricInfo("IS", True, "Inception Score of the generated images (torch-fidelity)"),
    MetricInfo("FID", False, "FID without blur (the same as FID-0), torch-fidelity"),
    *[
        MetricInfo(f"FID-{k}", False, f"FID after a Gaussian blur of radius (sigma) {k} px")
        for k in FID_RADII
    ],
    MetricInfo("KID", False, "Kernel Inception Distance (torch-fidelity)"),
    MetricInfo(
        "SOA-C", True, "Semantic Object Accuracy (%), mean over classes of per-class recall"
    ),
    MetricInfo("SOA-I", True, "Semantic Object Accuracy (%) over all images"),
    # Fractions in [0, 1] from here on.
    MetricInfo("caption-accuracy", True, "share of caption-named attributes found (world only)"),
    MetricInfo("main-shape-accuracy", True, "main object's shape as captioned (world only)"),
    MetricInfo("main-colour-accuracy", True, "main object's colour as captioned (world only)"),
    MetricInfo("main-position-accuracy", True, "main object's position as captioned (world only)"),
    MetricInfo("main-size-accuracy", True, "main object's size as captioned (world only)"),
    MetricInfo(
        "object-count-accuracy", True,
        "number of objects as captioned, over captions naming every object (world only)",
    ),
    MetricInfo("background-accuracy", True, "background as captioned (world only)"),
    MetricInfo("face-hair-accuracy", True, "hair colour as captioned (world faces only)"),
    MetricInfo("face-eyes-accuracy", True, "eye colour as captioned (world faces only)"),
    MetricInfo("face-expression-accuracy", True, "expression as captioned (world faces only)"),
    MetricInfo("face-accessory-accuracy", True, "accessory as captioned (world faces only)"),
    MetricInfo("R-precision", True, "CLIP R-precision: true caption ranked first of R"),
    MetricInfo("CLIP-score", True, "mean cosine between generated image and its condition"),
    MetricInfo(
        "z-diversity", True,
        "mean per-pixel std over noise draws z of images made for one caption ([-1, 1] units; "
        "0 = the generator ignores z); a diagnostic, not a paper metric",
    ),
    MetricInfo(
        "feature-dim", None,
        "f_dim, the size of the condition vector the generator and the discriminator's semantic "
        "head take (the text encoder's feature dimension, Table 6), read from the trained "
        "generator; a property, recorded with every evaluation",
    ),
]

# Recorded with every evaluation whatever eval.metrics asks for: it costs nothing.
FEATURE_DIM = "feature-dim"

METRICS: dict[str, MetricInfo] = {info.name: info for info in _INFOS}

# Metrics that a CLIP scores; labelled a training-signal diagnostic when it is the training CLIP.
CLIP_SCORED = ("R-precision", "CLIP-score")
DIAGNOSTIC_LABEL = "training-signal diagnostic"

_FID_NAME = re.compile(r"^FID(?:-(\d+))?$")


def metric_info(name: str, where: str = "eval.metrics") -> MetricInfo:
    """The registry entry of ``name``; an unknown name is a UserError listing the known ones."""
    if name in METRICS:
        return METRICS[name]
    raise UserError(f"{where}: unknown metric '{name}'. Known metrics: {', '.join(METRICS)}")


def fid_radius(name: str) -> int | None:
    """The blur radius of an FID metric name ("FID" and "FID-0" are 0), else None."""
    match = _FID_NAME.match(name)
    if not match:
        return None
    return int(match.group(1) or 0)


def higher_is_better(name: str) -> bool | None:
    return metric_info(name).higher_is_better


__all__ = [
    "CLIP_SCORED",
    "DIAGNOSTIC_LABEL",
    "FEATURE_DIM",
    "FID_RADII",
    "METRICS",
    "MetricInfo",
    "fid_radius",
    "higher_is_better",
    "metric_info",
]
