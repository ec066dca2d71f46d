"""LAFITE's generator: StyleGAN2 (skip ToRGB) with the Conditional StyleSpace of Fig. 3.

The mapping network turns z into w; every modulated layer (each 3x3 conv and each ToRGB) turns
its w and the condition h' into its own channel-wise style u. How w and h' are combined is
``ModelConfig.cond_form`` (official-lafite.md section 2.1):

- ``"paper"``: s = A(w), c = MLP(h'), u = U([s, c]) (Fig. 3 as drawn);
- ``"official"``: u = U([MLP(h'), w]) with no separate A(w) (the official code's structure 2);
- ``"scale-bias"``: u = A(w) * S(h') + B(h') (official structure 1);
- ``"sum"``: u = A(w) + A'(MLP(h')) (official structure 0).

MLP is 2 FC layers (hidden (cond_in + cond_dim) // 2, output ``cond_dim``, leaky ReLU,
learning-rate multiplier 0.01), one per layer. The condition never enters the mapping network.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import torch
from torch import nn

from lafite.config import ModelConfig
from lafite.errors import ConfigError
from lafite.model.layers import (
    FullyConnected,
    ModConvImpl,
    activate,
    modulated_conv2d,
    normalize_2nd_moment,
    upsample2d,
)

NoiseMode = Literal["random", "const", "none"]
MAPPING_LR_MULT = 0.01
COND_LR_MULT = 0.01
W_AVG_BETA = 0.995
MIN_RESOLUTION = 16
MAX_RESOLUTION = 1024

# Per-sample modulation as one shared-weight conv ("scale") measured faster than the grouped
# conv on CPU at batch 4-32 (see the report of issue 3); both give the same result.
DEFAULT_MODCONV: ModConvImpl = "scale"


def channels_at(resolution: int, cfg: ModelConfig) -> int:
    """Feature maps at a resolution: min(channel_base / res, channel_max) (StyleGAN2)."""
    return min(cfg.channel_base // resolution, cfg.channel_max)


def check_resolution(resolution: int, what: str = "data.resolution") -> int:
    """Log2 of the resolution, or a ConfigError if it is not a power of two in range."""
    log2 = int(round(math.log2(resolution))) if resolution > 0 else 0
    if 2**log2 != resolution or not MIN_RESOLUTION <= resolution <= MAX_RESOLUTION:
        raise ConfigError(
            f"'{what}' must be a power of two between {MIN_RESOLUTION} and {MAX_RESOLUTION}, "
            f"got {resolution}"
        )
    return log2


class ConditionMLP(nn.Sequential):
    """The 2-layer FC network that maps the condition h' to a layer's condition code c."""

    def __init__(self, cond_in: int, cond_out: int, lr_mult: float = COND_LR_MULT) -> None:
        hidden = (cond_in + cond_out) // 2
        super().__init__(
            FullyConnected(cond_in, hidden, lr_mult=lr_mult, activation="lrelu"),
            FullyConnected(hidden, cond_out, lr_mult=lr_mult, activation="lrelu"),
        )


class ConditionalStyle(nn.Module):
    """One layer's conditional style u(w, h') in the chosen ``cond_form`` (module docstring)."""

    def __init__(
        self,
        w_dim: int,
        cond_in: int,
        cond_dim: int,
        channels: int,
        form: str,
        cond_lr_mult: float = COND_LR_MULT,
    ) -> None:
        super().__init__()
        self.form = form

        if form == "paper":
            self.style = FullyConnected(w_dim, channels, bias_init=1.0)
            self.cond = ConditionMLP(cond_in, cond_dim, cond_lr_mult)
            self.affine = FullyConnected(channels + cond_dim, channels, bias_init=1.0)
        elif form == "official":
            self.cond = ConditionMLP(cond_in, cond_dim, cond_lr_mult)
            self.affine = FullyConnected(cond_dim + w_dim, channels, bias_init=1.0)
        elif form == "scale-bias":
            self.style = FullyConnected(w_dim, channels, bias_init=1.0)
            self.scale = nn.Sequential(
                ConditionMLP(cond_in, cond_dim, cond_lr_mult), FullyConnected(cond_dim, channels, bias_init=1.0)
            )
            self.shift = nn.Sequential(
                ConditionMLP(cond_in, cond_dim, cond_lr_mult), FullyConnected(cond_dim, channels)
            )
        elif form == "sum":
            self.style = FullyConnected(w_dim, channels, bias_init=1.0)
            self.cond = ConditionMLP(cond_in, cond_dim, cond_lr_mult)
            self.affine = FullyConnected(cond_dim, channels, bias_init=1.0)
        else:
            raise ConfigError(
                f"'model.cond_form' must be one of 'paper', 'official', 'scale-bias', 'sum', "
                f"got {form!r}"
            )

    def forward(self, w: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        # Styles stay in float32 under autocast: they are tiny matmuls, and the lr-multiplied
        # weights and the demodulation they feed lose too much in bfloat16's 8-bit mantissa.
        with torch.autocast(w.device.type, enabled=False):
            return self._style(w.float(), cond.float())

    def _style(self, w: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        if self.form == "paper":
            return self.affine(torch.cat([self.style(w), self.cond(cond)], dim=1))
        if self.form == "official":
            return self.affine(torch.cat([self.cond(cond), w], dim=1))
        if self.form == "scale-bias":
            return self.style(w) * self.scale(cond) + self.shift(cond)
        return self.style(w) + self.affine(self.cond(cond))


class MappingNetwork(nn.Module):
    """z -> w: 2nd-moment normalisation, FC layers at lr multiplier 0.01, tracked average w."""

    def __init__(self, z_dim: int, w_dim: int, num_ws: int, num_layers: int) -> None:
        super().__init__()
        self.z_dim, self.w_dim, self.num_ws = z_dim, w_dim, num_ws
        dims = [z_dim] + [w_dim] * num_layers
        self.layers = nn.Sequential(
            *(
                FullyConnected(a, b, lr_mult=MAPPING_LR_MULT, activation="lrelu")
                for a, b in zip(dims[:-1], dims[1:])
            )
        )
        self.register_buffer("w_avg", torch.zeros(w_dim))

    def forward(
        self, z: torch.Tensor, truncation_psi: float = 1.0, update_w_avg: bool | None = None
    ) -> torch.Tensor:
        """Return ws of shape (N, num_ws, w_dim); w_avg is updated while training.

        Runs in float32 even under autocast (small, and w feeds every style).
        """
        with torch.autocast(z.device.type, enabled=False):
            w = self.layers(normalize_2nd_moment(z.to(torch.float32)))
        if update_w_avg if update_w_avg is not None else self.training:
            self.w_avg.copy_(w.detach().float().mean(dim=0).lerp(self.w_avg, W_AVG_BETA))
        ws = w.unsqueeze(1).expand(-1, self.num_ws, -1)
        if truncation_psi != 1.0:
            ws = self.w_avg.to(ws.dtype).lerp(ws, truncation_psi)
        return ws


class SynthesisLayer(nn.Module):
    """Modulated 3x3 conv (optionally 2x up), per-pixel noise with learned strength, bias, lrelu."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        resolution: int,
        *,
        up: int,
        w_dim: int,
        cond_in: int,
        cfg: ModelConfig,
    ) -> None:
        super().__init__()
        self.up = up
        self.resolution = resolution
        self.style = ConditionalStyle(
            w_dim, cond_in, cfg.cond_dim, in_channels, cfg.cond_form, cfg.cond_lr_mult
        )
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, 3, 3))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.noise_strength = nn.Parameter(torch.zeros([]))
        self.register_buffer("noise_const", torch.randn(resolution, resolution))
        self.modconv: ModConvImpl = DEFAULT_MODCONV
        self.conv_clamp: float | None = None

    def forward(
        self, x: torch.Tensor, w: torch.Tensor, cond: torch.Tensor, noise_mode: NoiseMode
    ) -> torch.Tensor:
        styles = self.style(w, cond)
        x = modulated_conv2d(x, self.weight, styles, demodulate=True, up=self.up, impl=self.modconv)
        if noise_mode == "random":
            noise = torch.randn(
                (x.shape[0], 1, self.resolution, self.resolution), device=x.device, dtype=x.dtype
            )
            x = x + noise * self.noise_strength.to(x.dtype)
        elif noise_mode == "const":
            x = x + (self.noise_const * self.noise_strength).to(x.dtype)
        x = x + self.bias.to(x.dtype).reshape(1, -1, 1, 1)
        return activate(x, "lrelu", clamp=self.conv_clamp)


class ToRGBLayer(nn.Module):
    """Modulated 1x1 conv to RGB without demodulation; its style is scaled by 1/sqrt(in_ch)."""

    def __init__(self, in_channels: int, *, w_dim: int, cond_in: int, cfg: ModelConfig) -> None:
        super().__init__()
        self.style = ConditionalStyle(
            w_dim, cond_in, cfg.cond_dim, in_channels, cfg.cond_form, cfg.cond_lr_mult
        )
        self.weight = nn.Parameter(torch.randn(3, in_channels, 1, 1))
        self.bias = nn.Parameter(torch.zeros(3))
        self.weight_gain = 1.0 / math.sqrt(in_channels)
        self.modconv: ModConvImpl = DEFAULT_MODCONV
        self.conv_clamp: float | None = None

    def forward(self, x: torch.Tensor, w: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        styles = self.style(w, cond) * self.weight_gain
        x = modulated_conv2d(x, self.weight, styles, demodulate=False, impl=self.modconv)
        x = x + self.bias.to(x.dtype).reshape(1, -1, 1, 1)
        return x if self.conv_clamp is None else x.clamp(-self.conv_clamp, self.conv_clamp)


class SynthesisBlock(nn.Module):
    """One resolution: (const | 2x-up conv0) + conv1 + ToRGB, skip architecture."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        resolution: int,
        *,
        w_dim: int,
        cond_in: int,
        cfg: ModelConfig,
    ) -> None:
        super().__init__()
        self.resolution = resolution
        kw = dict(w_dim=w_dim, cond_in=cond_in, cfg=cfg)
        if resolution == 4:
            self.const = nn.Parameter(torch.randn(out_channels, 4, 4))
            self.conv0 = None
        else:
            self.const = None
            self.conv0 = SynthesisLayer(in_channels, out_channels, resolution, up=2, **kw)
        self.conv1 = SynthesisLayer(out_channels, out_channels, resolution, up=1, **kw)
        self.torgb = ToRGBLayer(out_channels, **kw)
        # ws consumed: conv layers, then ToRGB shares its w with the next block's first conv.
        self.num_conv = 1 if resolution == 4 else 2
        # The official mixed precision (Generator.set_fp16): this block's layers in fp16 on CUDA.
        self.fp16 = False

    def forward(
        self,
        x: torch.Tensor | None,
        img: torch.Tensor | None,
        ws: torch.Tensor,
        cond: torch.Tensor,
        noise_mode: NoiseMode,
        memory_format: torch.memory_format,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.fp16 and ws.device.type == "cuda":
            with torch.autocast("cuda", dtype=torch.float16):
                return self._forward(x, img, ws, cond, noise_mode, memory_format)
        return self._forward(x, img, ws, cond, noise_mode, memory_format)

    def _forward(
        self,
        x: torch.Tensor | None,
        img: torch.Tensor | None,
        ws: torch.Tensor,
        cond: torch.Tensor,
        noise_mode: NoiseMode,
        memory_format: torch.memory_format,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.const is not None:
            x = self.const.unsqueeze(0).expand(ws.shape[0], -1, -1, -1)
            x = x.contiguous(memory_format=memory_format)
            x = self.conv1(x, ws[:, 0], cond, noise_mode)
        else:
            assert x is not None
            x = self.conv0(x, ws[:, 0], cond, noise_mode)
            x = self.conv1(x, ws[:, 1], cond, noise_mode)
        rgb = self.torgb(x, ws[:, self.num_conv], cond)
        # The skip image is accumulated in float32: 3 channels cost nothing, and bfloat16 sums
        # over 7 resolutions would cost about one 8-bit grey level.
        if img is None:
            img = rgb.float()
        else:
            with torch.autocast(ws.device.type, enabled=False):  # as the official code: fp32
                img = upsample2d(img.float()) + rgb.float()
        return x, img


class SynthesisNetwork(nn.Module):
    """The conditional StyleGAN2 synthesis network from 4x4 to ``resolution``."""

    def __init__(self, cfg: ModelConfig, resolution: int, cond_in: int) -> None:
        super().__init__()
        log2 = check_resolution(resolution)
        self.resolution = resolution
        self.resolutions = [2**i for i in range(2, log2 + 1)]
        self.blocks = nn.ModuleList()
        self.num_ws = 0
        for res in self.resolutions:
            in_ch = channels_at(res // 2, cfg) if res > 4 else 0
            block = SynthesisBlock(
                in_ch, channels_at(res, cfg), res, w_dim=cfg.w_dim, cond_in=cond_in, cfg=cfg
            )
            self.blocks.append(block)
            self.num_ws += block.num_conv
        self.num_ws += 1  # the last ToRGB
        self.channels_last = False

    def forward(
        self, ws: torch.Tensor, cond: torch.Tensor, noise_mode: NoiseMode = "random"
    ) -> torch.Tensor:
        memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        x = img = None
        index = 0
        cond = cond.to(torch.float32)
        for block in self.blocks:
            x, img = block(
                x, img, ws[:, index : index + block.num_conv + 1], cond, noise_mode, memory_format
            )
            index += block.num_conv
        assert img is not None
        return img.float()


class Generator(nn.Module):
    """x' = G(h', z) (Eq. 3): mapping network + conditional synthesis network.

    ``resolution`` is the output side (16..1024, a power of two); ``cond_dim`` the size of the
    condition feature h' (CLIP's feature dimension), not ``cfg.cond_dim`` (the width of each
    layer's condition code).
    """

    def __init__(self, cfg: ModelConfig, resolution: int, cond_dim: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.z_dim = cfg.z_dim
        self.w_dim = cfg.w_dim
        self.cond_dim = cond_dim
        self.resolution = resolution
        self.synthesis = SynthesisNetwork(cfg, resolution, cond_dim)
        self.num_ws = self.synthesis.num_ws
        self.mapping = MappingNetwork(cfg.z_dim, cfg.w_dim, self.num_ws, cfg.mapping_layers)

    def set_modconv(self, impl: ModConvImpl) -> None:
        """Choose how modulated convs run ("scale" or "grouped"; same result, different speed)."""
        for module in self.modules():
            if isinstance(module, SynthesisLayer | ToRGBLayer):
                module.modconv = impl

    def set_fp16(self, blocks: int, conv_clamp: float | None) -> Generator:
        """The official mixed precision: the ``blocks`` highest-resolution synthesis blocks run
        in fp16 on CUDA (elsewhere in fp32), and with ``blocks > 0`` every layer's activations
        are clamped to +-``conv_clamp`` (num_fp16_res=4, conv_clamp=256 in the official code)."""
        resolutions = self.synthesis.resolutions
        fp16_from = resolutions[max(0, len(resolutions) - blocks)] if blocks > 0 else None
        clamp = conv_clamp if blocks > 0 and conv_clamp else None
        for block in self.synthesis.blocks:
            block.fp16 = fp16_from is not None and block.resolution >= fp16_from
        for module in self.modules():
            if isinstance(module, SynthesisLayer | ToRGBLayer):
                module.conv_clamp = clamp
        return self

    def set_channels_last(self, enabled: bool = True) -> Generator:
        """Run the synthesis in channels_last (faster convs on CPU with oneDNN and on GPUs)."""
        self.synthesis.channels_last = enabled
        return self

    def mix_styles(
        self, ws: torch.Tensor, z: torch.Tensor, mixing_prob: float, truncation_psi: float = 1.0
    ) -> torch.Tensor:
        """Style mixing regularisation: with probability ``mixing_prob`` the ws from a random
        cutoff in [1, num_ws) on come from a second z (one cutoff per batch, as StyleGAN2)."""
        if mixing_prob <= 0.0:
            return ws
        device = ws.device
        cutoff = int(torch.randint(1, self.num_ws, ()).item())
        if float(torch.rand(())) >= mixing_prob:
            cutoff = self.num_ws
        if cutoff >= self.num_ws:
            return ws
        ws2 = self.mapping(torch.randn_like(z), truncation_psi, update_w_avg=False)
        keep = torch.arange(self.num_ws, device=device) < cutoff
        return torch.where(keep.reshape(1, -1, 1), ws, ws2)

    def forward(
        self,
        z: torch.Tensor,
        cond: torch.Tensor,
        *,
        truncation_psi: float = 1.0,
        noise_mode: NoiseMode = "random",
        mixing_prob: float = 0.0,
    ) -> torch.Tensor:
        """Images (N, 3, R, R), float32 in about [-1, 1] (not clamped)."""
        ws = self.mapping(z, truncation_psi)
        ws = self.mix_styles(ws, z, mixing_prob, truncation_psi)
        return self.synthesis(ws, cond, noise_mode)


def count_parameters(module: nn.Module) -> int:
    """Trainable parameters (what the official code's parameter table counts)."""
    return int(sum(np.prod(p.shape) for p in module.parameters() if p.requires_grad))


__all__ = [
    "ConditionalStyle",
    "Generator",
    "MappingNetwork",
    "SynthesisNetwork",
    "channels_at",
    "check_resolution",
    "count_parameters",
]
