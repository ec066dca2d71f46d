"""LAFITE's discriminator: a residual StyleGAN2 discriminator with two heads (Fig. 4).

A shared backbone encodes the image; f_d projects it to a realness scalar and f_s to a semantic
vector of the condition's dimension. Eq. 4: D(x, h') = f_d(x) + <h', f_s(x)>, per sample
(``d_semantic="per-sample"``, the paper) or with the inner products summed over the batch and
added to every sample's logit (``"batch-sum"``, the official code, official-lafite.md 2.2).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from lafite.config import ModelConfig
from lafite.model.generator import channels_at, check_resolution
from lafite.model.layers import Conv2dLayer, FullyConnected

SQRT_HALF = math.sqrt(0.5)


class DiscriminatorBlock(nn.Module):
    """Residual block: conv0 3x3, conv1 3x3 with 2x down, 1x1 skip; both paths scaled by sqrt .5."""

    def __init__(self, in_channels: int, tmp_channels: int, out_channels: int) -> None:
        super().__init__()
        self.fromrgb = (
            Conv2dLayer(3, tmp_channels, 1, activation="lrelu") if in_channels == 0 else None
        )
        self.conv0 = Conv2dLayer(tmp_channels, tmp_channels, 3, activation="lrelu")
        self.conv1 = Conv2dLayer(tmp_channels, out_channels, 3, activation="lrelu", down=2)
        self.skip = Conv2dLayer(tmp_channels, out_channels, 1, bias=False, down=2)
        # The official mixed precision (Discriminator.set_fp16): this block in fp16 on CUDA.
        self.fp16 = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fp16 and x.device.type == "cuda":
            with torch.autocast("cuda", dtype=torch.float16):
                return self._forward(x)
        if x.dtype == torch.float16:  # leaving the fp16 blocks
            x = x.float()
        return self._forward(x)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fromrgb is not None:
            x = self.fromrgb(x)
        y = self.skip(x, gain=SQRT_HALF)
        x = self.conv1(self.conv0(x), gain=SQRT_HALF)
        return y + x


def minibatch_stddev(x: torch.Tensor, group_size: int, chunks: int = 1) -> torch.Tensor:
    """Append one channel: the feature std across a group of samples (StyleGAN2, 1 channel).

    The group is the largest divisor of the batch not above ``group_size``, so any batch works.
    ``chunks`` > 1: the batch is that many batches stacked (real and fake images in one pass),
    each grouped on its own exactly as if it had been passed alone.
    """
    if chunks > 1:
        return torch.cat([minibatch_stddev(part, group_size) for part in x.chunk(chunks)])
    n, c, h, w = x.shape
    group = math.gcd(n, max(1, group_size))
    y = x.float().reshape(group, n // group, c, h, w)
    y = (y - y.mean(dim=0)).square().mean(dim=0)
    y = (y + 1e-8).sqrt().mean(dim=(1, 2, 3))  # (n // group,)
    y = y.reshape(1, -1, 1, 1, 1).expand(group, -1, 1, h, w).reshape(n, 1, h, w)
    return torch.cat([x, y.to(x.dtype)], dim=1)


class Discriminator(nn.Module):
    """D(x, h') of Eq. 4; ``forward(img, cond)`` -> (logit (N,), semantic f_s(x) (N, cond_dim)).

    ``cond_dim`` is the dimension of the condition h' (CLIP's feature size). With
    ``d_semantic_head=False`` there is no f_s: the logit is f_d alone and the returned
    "semantic" tensor is the condition itself (the official ``--d_use_fts=False``), which makes
    L_ConD constant.
    """

    def __init__(self, cfg: ModelConfig, resolution: int, cond_dim: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.resolution = resolution
        self.cond_dim = cond_dim
        log2 = check_resolution(resolution)
        blocks = []
        for res in (2**i for i in range(log2, 2, -1)):
            in_ch = 0 if res == resolution else channels_at(res, cfg)
            blocks.append(
                DiscriminatorBlock(in_ch, channels_at(res, cfg), channels_at(res // 2, cfg))
            )
        self.blocks = nn.Sequential(*blocks)
        ch4 = channels_at(4, cfg)
        self.mbstd_group = cfg.mbstd_group
        self.conv = Conv2dLayer(ch4 + 1, ch4, 3, activation="lrelu")
        self.fc = FullyConnected(ch4 * 16, ch4, activation="lrelu")
        self.f_d = FullyConnected(ch4, 1)
        self.f_s = FullyConnected(ch4, cond_dim) if cfg.d_semantic_head else None
        self.channels_last = False

    def set_fp16(self, blocks: int, conv_clamp: float | None) -> Discriminator:
        """The official mixed precision: the ``blocks`` highest-resolution blocks in fp16 on
        CUDA, and with ``blocks > 0`` every conv's activations clamped (see Generator)."""
        clamp = conv_clamp if blocks > 0 and conv_clamp else None
        for i, block in enumerate(self.blocks):
            block.fp16 = i < blocks
        for module in self.modules():
            if isinstance(module, Conv2dLayer):
                module.conv_clamp = clamp
        return self

    def set_channels_last(self, enabled: bool = True) -> Discriminator:
        """Run the backbone in channels_last (faster convs on CPU with oneDNN and on GPUs)."""
        self.channels_last = enabled
        return self

    def features(self, img: torch.Tensor, chunks: int = 1) -> torch.Tensor:
        """The shared 512-d (ch at 4x4) feature both heads read."""
        if self.channels_last:
            img = img.contiguous(memory_format=torch.channels_last)
        x = self.blocks(img).float() if any(b.fp16 for b in self.blocks) else self.blocks(img)
        if self.mbstd_group > 0:
            x = minibatch_stddev(x, self.mbstd_group, chunks)
        x = self.conv(x)
        return self.fc(x.flatten(1))

    def forward(
        self, img: torch.Tensor, cond: torch.Tensor, chunks: int = 1
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``chunks`` > 1: ``img`` is that many batches stacked (real and generated images in
        one pass, which runs faster than two); each gets the same logits as if passed alone
        (minibatch std and the batch-summed semantic term stay within a chunk)."""
        h = self.features(img, chunks)
        logit = self.f_d(h).squeeze(1).float()
        cond = cond.float()
        if self.f_s is None:
            return logit, cond
        semantic = self.f_s(h).float()
        if self.cfg.d_normalize_fs:
            semantic = F.normalize(semantic, dim=1)
        inner = (semantic * cond).sum(dim=1)
        if self.cfg.d_semantic == "batch-sum":
            per_chunk = inner.reshape(chunks, -1)
            inner = per_chunk.sum(dim=1, keepdim=True).expand_as(per_chunk).reshape(-1)
        return logit + inner, semantic


__all__ = ["Discriminator", "DiscriminatorBlock", "minibatch_stddev"]
