"""StyleGAN2 building blocks in plain PyTorch (no custom CUDA or C++ ops).

Every layer uses the equalised learning rate of StyleGAN: weights are stored with unit variance
(divided by the learning-rate multiplier) and scaled at run time, so Adam's per-parameter step
size acts the same on every layer whatever its fan-in. The FIR resampling of StyleGAN2
(``upfirdn2d``) is written with depthwise ``F.conv2d`` calls, separable in x and y, so it runs
on any device, under autocast and in channels_last.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

Activation = Literal["linear", "lrelu"]
LRELU_SLOPE = 0.2
LRELU_GAIN = math.sqrt(2.0)

# StyleGAN2's resampling filter: the binomial [1, 3, 3, 1], normalised to sum 1 per dimension.
FIR_TAPS = (1.0, 3.0, 3.0, 1.0)


def activate(x: torch.Tensor, activation: Activation, gain: float = 1.0) -> torch.Tensor:
    """Apply the activation with StyleGAN's variance-preserving gain (sqrt 2 for leaky ReLU)."""
    if activation == "lrelu":
        return F.leaky_relu(x, LRELU_SLOPE) * (LRELU_GAIN * gain)
    if activation == "linear":
        return x * gain if gain != 1.0 else x
    raise ValueError(f"unknown activation {activation!r}")


def normalize_2nd_moment(x: torch.Tensor, dim: int = 1, eps: float = 1e-8) -> torch.Tensor:
    """Scale each vector to unit root-mean-square (the mapping network's input normalisation)."""
    return x * (x.square().mean(dim=dim, keepdim=True) + eps).rsqrt()


# -- FIR resampling -----------------------------------------------------------------------------


def _fir_kernel(
    x: torch.Tensor, taps: tuple[float, ...], gain: float, horizontal: bool
) -> torch.Tensor:
    """A depthwise (C, 1, 1, K) or (C, 1, K, 1) kernel holding the flipped, normalised taps."""
    f = torch.tensor(taps[::-1], dtype=torch.float32, device=x.device)
    f = f * (gain / f.sum())
    channels = x.shape[1]
    shape = (channels, 1, 1, len(taps)) if horizontal else (channels, 1, len(taps), 1)
    return f.to(x.dtype).reshape(shape[1:]).expand(shape).contiguous()


def upfirdn2d(
    x: torch.Tensor,
    taps: tuple[float, ...] = FIR_TAPS,
    up: int = 1,
    down: int = 1,
    padding: tuple[int, int, int, int] = (0, 0, 0, 0),
    gain: float = 1.0,
) -> torch.Tensor:
    """Upsample by zero insertion, pad, convolve with the separable FIR filter, then decimate.

    ``padding`` is (left, right, top, bottom) in the upsampled grid; negative values crop.
    ``gain`` multiplies the 2-D filter (4 for 2x upsampling keeps the signal's magnitude).
    """
    n, c, h, w = x.shape
    if up > 1:
        y = x.new_zeros((n, c, h * up, w * up)).contiguous(memory_format=_memory_format(x))
        y[:, :, ::up, ::up] = x
        x = y
    x = F.pad(x, list(padding))
    per_dim_gain = math.sqrt(gain)
    kernel_x = _fir_kernel(x, taps, per_dim_gain, horizontal=True)
    kernel_y = _fir_kernel(x, taps, per_dim_gain, horizontal=False)
    if down > 1 and x.dtype in (torch.bfloat16, torch.float16):
        # oneDNN's strided depthwise conv is several times slower in bfloat16 (its backward
        # above all) than a dense one followed by slicing, measured on this CPU.
        x = F.conv2d(x, kernel_x, groups=c)[:, :, :, ::down]
        return F.conv2d(x, kernel_y, groups=c)[:, :, ::down, :]
    x = F.conv2d(x, kernel_x, stride=(1, down), groups=c)
    return F.conv2d(x, kernel_y, stride=(down, 1), groups=c)


def _memory_format(x: torch.Tensor) -> torch.memory_format:
    """channels_last if ``x`` is stored that way (and not trivially both), else contiguous."""
    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format


def upsample2d(x: torch.Tensor, taps: tuple[float, ...] = FIR_TAPS) -> torch.Tensor:
    """2x FIR upsampling that keeps the image size exact (H -> 2H), as in StyleGAN2's skip path."""
    k = len(taps)
    return upfirdn2d(
        x, taps, up=2, padding=((k + 1) // 2, (k - 2) // 2, (k + 1) // 2, (k - 2) // 2), gain=4.0
    )


def downsample2d(x: torch.Tensor, taps: tuple[float, ...] = FIR_TAPS) -> torch.Tensor:
    """2x FIR downsampling (H -> H/2) with StyleGAN2's padding."""
    k = len(taps)
    p0, p1 = (k - 1) // 2, (k - 2) // 2
    return upfirdn2d(x, taps, down=2, padding=(p0, p1, p0, p1))


# -- equalised-learning-rate layers ---------------------------------------------------------------


class FullyConnected(nn.Module):
    """Dense layer with equalised learning rate and a learning-rate multiplier.

    ``bias_init`` is the bias's effective initial value (the stored parameter is divided by
    ``lr_mult``), so an affine that must start at 1 does so whatever its multiplier.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        bias: bool = True,
        bias_init: float = 0.0,
        lr_mult: float = 1.0,
        activation: Activation = "linear",
    ) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.activation: Activation = activation
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / lr_mult)
        self.bias = nn.Parameter(torch.full((out_features,), bias_init / lr_mult)) if bias else None
        self.weight_gain = lr_mult / math.sqrt(in_features)
        self.bias_gain = lr_mult

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight * self.weight_gain
        b = self.bias * self.bias_gain if self.bias is not None else None
        return activate(F.linear(x, w, b), self.activation)

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, act={self.activation}"


class Conv2dLayer(nn.Module):
    """Equalised-learning-rate convolution with optional FIR 2x downsampling (discriminator)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        *,
        bias: bool = True,
        activation: Activation = "linear",
        down: int = 1,
    ) -> None:
        super().__init__()
        self.activation: Activation = activation
        self.down = down
        self.kernel_size = kernel_size
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self.weight_gain = 1.0 / math.sqrt(in_channels * kernel_size * kernel_size)

    def forward(self, x: torch.Tensor, gain: float = 1.0) -> torch.Tensor:
        w = self.weight * self.weight_gain
        k = self.kernel_size
        if self.down > 1 and k == 1:
            # 1x1 (the residual skip): decimate first, the convolution then runs on 1/4 the pixels.
            x = F.conv2d(downsample2d(x), w)
        elif self.down > 1:
            # Blur first, then a strided convolution: StyleGAN2's alias-reducing downsampling.
            taps = len(FIR_TAPS)
            pad0 = (k - 1) // 2 + (taps - self.down + 1) // 2
            pad1 = (k - 1) // 2 + (taps - self.down) // 2
            x = upfirdn2d(x, FIR_TAPS, padding=(pad0, pad1, pad0, pad1))
            x = F.conv2d(x, w, stride=self.down)
        else:
            x = F.conv2d(x, w, padding=k // 2)
        if self.bias is not None:
            x = x + self.bias.to(x.dtype).reshape(1, -1, 1, 1)
        return activate(x, self.activation, gain)


# -- modulated convolution -------------------------------------------------------------------------

ModConvImpl = Literal["scale", "grouped"]


def modulated_conv2d(
    x: torch.Tensor,
    weight: torch.Tensor,
    styles: torch.Tensor,
    *,
    demodulate: bool = True,
    up: int = 1,
    impl: ModConvImpl = "scale",
) -> torch.Tensor:
    """StyleGAN2's modulated (and optionally demodulated) convolution, per-sample styles.

    Two equal formulations: ``"scale"`` multiplies the input by the styles and the output by
    the demodulation coefficients around one shared-weight convolution (one large batched conv,
    what CPUs and GPUs run fastest); ``"grouped"`` folds the styles into per-sample weights and
    runs one grouped convolution (StyleGAN2's fused form). Both need no loop over samples.
    ``up=2`` is a transposed stride-2 convolution followed by the [1,3,3,1] FIR blur.
    """
    n = x.shape[0]
    out_ch, in_ch, kh, kw = weight.shape
    styles = styles.to(torch.float32)
    weight32 = weight.to(torch.float32)
    dcoefs = None
    if demodulate:
        # sum_{i,k} (W_oik s_i)^2 = (s^2) @ (sum_k W_oik^2)^T, without building per-sample weights.
        dcoefs = (styles.square() @ weight32.square().sum(dim=(2, 3)).t() + 1e-8).rsqrt()

    if impl == "grouped":
        w = weight32.unsqueeze(0) * styles.reshape(n, 1, in_ch, 1, 1)
        if dcoefs is not None:
            w = w * dcoefs.reshape(n, out_ch, 1, 1, 1)
        w = w.to(x.dtype)
        xg = x.reshape(1, n * in_ch, x.shape[2], x.shape[3])
        if up > 1:
            wt = w.transpose(1, 2).reshape(n * in_ch, out_ch, kh, kw)
            y = F.conv_transpose2d(xg, wt, stride=up, groups=n)
        else:
            wg = w.reshape(n * out_ch, in_ch, kh, kw)
            y = F.conv2d(xg, wg, padding=kh // 2, groups=n)
        y = y.reshape(n, out_ch, y.shape[2], y.shape[3])
        if up > 1:
            y = upsample_after_transposed_conv(y, up, kw)
        return y

    x = x * styles.to(x.dtype).reshape(n, in_ch, 1, 1)
    if up > 1:
        y = F.conv_transpose2d(x, weight.transpose(0, 1), stride=up)
        y = upsample_after_transposed_conv(y, up, kw)
    else:
        y = F.conv2d(x, weight, padding=kh // 2)
    if dcoefs is not None:
        y = y * dcoefs.to(y.dtype).reshape(n, out_ch, 1, 1)
    return y


def upsample_after_transposed_conv(y: torch.Tensor, up: int, kernel: int) -> torch.Tensor:
    """The FIR blur that follows a stride-``up`` transposed conv (output exactly ``up`` x input)."""
    taps = len(FIR_TAPS)
    pad0 = (taps + up - 1) // 2 + kernel // 2 - (kernel - 1)
    pad1 = (taps - up) // 2 + kernel // 2 - (kernel - up)
    return upfirdn2d(y, FIR_TAPS, padding=(pad0, pad1, pad0, pad1), gain=float(up * up))


__all__ = [
    "FIR_TAPS",
    "Conv2dLayer",
    "FullyConnected",
    "activate",
    "downsample2d",
    "modulated_conv2d",
    "normalize_2nd_moment",
    "upfirdn2d",
    "upsample2d",
]
