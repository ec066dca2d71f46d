"""What a world FID number means: FID of real world images under controlled corruptions.

At mini and smoke scale FID is computed on the inspector's features, not Inception's, so its
values have no outside scale. This module measures one, with the run's own evaluation settings
(extractor, reference split and size, number of images): real training images of the run's
world as they are (the floor a perfect generator would reach with that many images), the same
scenes with one thing changed (``lafite.data.world.corruptions(domain)``: every object a circle,
a main attribute redrawn, objects removed; for faces, a face attribute redrawn or the face
removed), the real images blurred by the FID-k Gaussian, and flat
images of the training set's mean colour. A generator's FID then reads against these, e.g.
"between blurred by 2 px and all objects drawn as circles".

FID cannot see conditioning: a corruption that redraws one attribute at random keeps that
attribute's distribution over images, so its FID stays near the floor (the caption-accuracy
metrics are what see it).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from lafite.config import RunConfig
from lafite.data.inspector import load_inspector
from lafite.data.world import World, corruptions
from lafite.errors import UserError
from lafite.metrics.extractors import module_extractor
from lafite.metrics.fidelity import (
    FidelityRequest,
    ReferenceSet,
    TensorImages,
    blur_uint8,
    compute_fidelity,
)
from lafite.workspace import Workspace

DEFAULT_BLUR_RADII = (1, 2, 3)


@dataclass(frozen=True)
class Anchor:
    """One row of the calibration: what was scored and its FID-0."""

    name: str
    description: str
    fid: float


def _nchw(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))


def anchor_images(
    cfg: RunConfig, n: int, blur_radii: tuple[int, ...] = DEFAULT_BLUR_RADII, seed: int = 0
) -> list[tuple[str, str, torch.Tensor]]:
    """(name, description, uint8 NCHW images) for every anchor, from the first ``n`` training
    images of the run's world."""
    if cfg.data.dataset != "world":
        raise UserError(
            f"FID anchors are made from the built-in world; data.dataset is {cfg.data.dataset!r} "
            "(use a mini or smoke scale)"
        )
    world = World(cfg.world.domain, "train", cfg.data.resolution, seed=cfg.world.seed,
                  size=max(n, cfg.world.n_train))
    out = []
    indices = range(n)
    real = None
    # The face domains have their own corruptions (an attribute of the face redrawn, no face).
    for name, description in corruptions(cfg.world.domain).items():
        _, images = world.corrupted(indices, name, seed=seed)
        tensor = _nchw(images)
        out.append((name if name != "none" else "real", description, tensor))
        if name == "none":
            real = tensor
    assert real is not None
    for radius in blur_radii:
        out.append((f"blur-{radius}", f"the real images blurred by the FID-{radius} Gaussian "
                    f"(sigma {radius} px)", blur_uint8(real, radius)))
    mean = real.float().mean(dim=(0, 2, 3)).round().to(torch.uint8)
    flat = mean.view(1, 3, 1, 1).expand_as(real).contiguous()
    out.append(("flat-mean", "every image one flat colour, the mean of the real images", flat))
    return out


def fid_anchors(
    cfg: RunConfig,
    workspace: Workspace,
    n: int | None = None,
    blur_radii: tuple[int, ...] = DEFAULT_BLUR_RADII,
    progress: Callable[[str], None] | None = None,
) -> list[Anchor]:
    """FID-0 of every anchor against the run's evaluation reference, with its extractor.

    ``n`` defaults to the run's ``eval.n_samples`` so the floor matches what its generator is
    scored with.
    """
    from lafite.data.datasets import open_dataset

    if cfg.eval.extractor != "inspector":
        raise UserError(
            f"FID anchors use the world's inspector; eval.extractor is {cfg.eval.extractor!r} "
            "(use a mini or smoke scale)"
        )
    n = int(n if n is not None else cfg.eval.n_samples)
    if n < 2:
        raise UserError(f"--n: FID needs at least 2 images, got {n}")
    judge = load_inspector(workspace, cfg.data.resolution)
    extractor = module_extractor(judge, "inspector")
    reference_images = open_dataset(cfg, cfg.eval.reference_split, workspace)
    reference = ReferenceSet(
        images=reference_images,
        fingerprint=reference_images.fingerprint(),
        split=cfg.eval.reference_split,
        resolution=cfg.data.resolution,
    )
    anchors = []
    for name, description, images in anchor_images(cfg, n, blur_radii, seed=cfg.eval.seed):
        if progress:
            progress(name)
        result = compute_fidelity(
            TensorImages(images),
            reference,
            FidelityRequest(fid_radii=(0,)),
            extractor,
            cache_root=workspace.cache_dir / "fidelity",
            batch_size=cfg.eval.batch,
            seed=cfg.eval.seed,
        )
        anchors.append(Anchor(name, description, result.fid[0]))
    return anchors


__all__ = ["DEFAULT_BLUR_RADII", "Anchor", "anchor_images", "fid_anchors"]
