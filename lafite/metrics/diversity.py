"""How much a generator's images depend on z for a fixed caption ("z-diversity").

For C captions of the evaluation split (the first C images, caption drawn as in
:class:`lafite.metrics.evaluate.EvalCaptions`) and K noise draws z_1..z_K shared by all captions,
the generator makes a C x K grid of images x[c, k] in [-1, 1]. Then

    z-diversity       = mean over c, pixels and channels of std_k x[c, k]
    caption-diversity = mean over k, pixels and channels of std_c x[c, k]

(population standard deviations). A conditional generator that ignores z scores 0 on the first
however well it follows captions; one that ignores the caption scores 0 on the second. Only the
first is a registered metric; the second is reported beside it in the evaluation's details.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class Diversity:
    z: float
    captions: float


@torch.no_grad()
def diversity(
    generator: nn.Module,
    conditions: torch.Tensor,
    *,
    draws: int = 8,
    seed: int = 0,
    truncation_psi: float = 1.0,
    noise_mode: str = "random",
) -> Diversity:
    """The two spreads of the module docstring for ``conditions`` (C, D), ``draws`` z each."""
    if draws < 2 or conditions.shape[0] < 2:
        raise ValueError("diversity needs at least 2 conditions and 2 noise draws")
    device = conditions.device
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(draws, int(generator.z_dim), generator=gen).to(device)
    rows = []
    for condition in conditions:
        images = generator(z, condition.expand(draws, -1), truncation_psi=truncation_psi,
                           noise_mode=noise_mode)
        rows.append(images.float().clamp(-1, 1))
    grid = torch.stack(rows)  # (C, K, 3, H, W)
    return Diversity(z=float(grid.std(dim=1, correction=0).mean()),
                     captions=float(grid.std(dim=0, correction=0).mean()))


__all__ = ["Diversity", "diversity"]
