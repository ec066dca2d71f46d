"""Text-image alignment scored by a CLIP: R-precision and CLIP score.

* **CLIP R-precision**: for each generated image, its condition's caption is ranked by cosine
  similarity among R candidates (the true caption and R - 1 captions of other images of the
  evaluation split, drawn at random); the score is the share of images whose true caption ranks
  first (R = 100 by default, AttnGAN's R-precision with CLIP as the encoder).
* **CLIP score**: the mean cosine between a generated image's CLIP image feature and its
  condition (for text conditions, the normalised caption feature).

When the scoring CLIP is the CLIP the generator was trained against (L_ConG), both numbers
measure how well the generator pleases its own training signal, which a generator can learn to
game (a feasibility run reached 98 % R-precision with striped colour blobs). Such results carry
the label :data:`lafite.metrics.DIAGNOSTIC_LABEL` so that MLflow and the report show them as a
training-signal diagnostic, never as an independent measurement.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch


@dataclass
class CandidatePool:
    """Text features of captions of the split that serve as R-precision negatives.

    ``sources[i]`` is the index of the image caption i belongs to, so a negative is never a
    caption of the same image as the true one.
    """

    features: torch.Tensor  # (M, D), L2-normalised
    sources: np.ndarray  # (M,)

    def __post_init__(self) -> None:
        if self.features.shape[0] != len(self.sources):
            raise ValueError("one source index per candidate feature")


@dataclass
class AlignmentScore:
    """Running R-precision and CLIP score over batches (memory independent of N)."""

    pool: CandidatePool | None
    n_candidates: int = 100
    seed: int = 0
    _hits: int = 0
    _ranked: int = 0
    _cosine_sum: float = 0.0
    _n: int = 0
    _rng: np.random.Generator = field(init=False)

    def __post_init__(self) -> None:
        self._rng = np.random.default_rng(self.seed)

    def update(
        self,
        image_features: torch.Tensor,
        condition_features: torch.Tensor,
        caption_features: torch.Tensor | None = None,
        sources: Sequence[int] | None = None,
    ) -> None:
        """Add a batch: CLIP image features, the conditions, and for R-precision the true
        captions' text features and their source image indices."""
        image_features = image_features.float().cpu()
        condition_features = condition_features.float().cpu()
        self._cosine_sum += float((image_features * condition_features).sum(dim=1).sum())
        self._n += image_features.shape[0]
        if self.pool is None or caption_features is None or sources is None:
            return
        caption_features = caption_features.float().cpu()
        negatives_needed = self.n_candidates - 1
        pool_features = self.pool.features.float().cpu()
        for row in range(image_features.shape[0]):
            allowed = np.flatnonzero(self.pool.sources != sources[row])
            if len(allowed) < negatives_needed:
                raise ValueError(
                    f"R-precision needs {negatives_needed} negative captions from other images, "
                    f"the pool has {len(allowed)}"
                )
            picks = self._rng.choice(allowed, size=negatives_needed, replace=False)
            candidates = torch.cat([caption_features[row : row + 1], pool_features[picks]])
            scores = candidates @ image_features[row]
            # Ties count against the true caption: it must beat every negative strictly.
            self._hits += int(bool((scores[1:] < scores[0]).all()))
            self._ranked += 1

    def clip_score(self) -> float | None:
        return self._cosine_sum / self._n if self._n else None

    def r_precision(self) -> float | None:
        return self._hits / self._ranked if self._ranked else None


def r_precision(
    image_features: torch.Tensor,
    caption_features: torch.Tensor,
    sources: Sequence[int],
    pool: CandidatePool,
    n_candidates: int = 100,
    seed: int = 0,
) -> float:
    """R-precision of a whole set at once (see :class:`AlignmentScore`)."""
    score = AlignmentScore(pool, n_candidates, seed)
    score.update(image_features, caption_features, caption_features, sources)
    value = score.r_precision()
    assert value is not None
    return value


def clip_score(image_features: torch.Tensor, condition_features: torch.Tensor) -> float:
    """Mean cosine between normalised image features and their normalised conditions."""
    if image_features.shape != condition_features.shape:
        raise ValueError("one condition per image is needed")
    return float((image_features.float() * condition_features.float()).sum(dim=1).mean())


def is_training_clip(eval_clip_name: str, eval_clip_pretrained: str, clip_cfg) -> bool:
    """Whether the scoring CLIP named by ``eval.alignment_clip`` is the training CLIP."""
    if not eval_clip_name:
        return True
    if eval_clip_name != clip_cfg.name:
        return False
    return clip_cfg.name == "world" or eval_clip_pretrained == clip_cfg.pretrained


__all__ = [
    "AlignmentScore",
    "CandidatePool",
    "clip_score",
    "is_training_clip",
    "r_precision",
]
