"""StyleGAN2 building blocks in plain PyTorch (no custom CUDA or C++ ops).

Every layer uses the equalised learning rate of StyleGAN: weights are stored with unit variance
(divided by the learning-rate multiplier) and scaled at run time, so Adam's per-parameter step
size acts the same on every layer whatever its fan-in. The FIR resampling of StyleGAN2
(``upfirdn2d``) is written with depthwise ``F.conv2d`` calls, separable in x and y, so it runs
on any device, under autocast and in channels_last.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

Activation = Literal["linear", "lrelu"]
LRELU_SLOPE = 0.2
LRELU_GAIN = math.sqrt(2.0)

# StyleGAN2's resampling filter: the binomial [1, 3, 3, 1], normalised to sum 1 per dimension.
FIR_TAPS = (1.0, 3.0, 3.0, 1.0)


def activate(
    x: torch.Tensor, activation: Activation, gain: float = 1.0, clamp: float | None = None
) -> torch.Tensor:
    """Apply the activation with StyleGAN's variance-preserving gain (sqrt 2 for leaky ReLU).

    ``clamp`` bounds the result to [-clamp * gain, clamp * gain] (StyleGAN2-ADA's conv clamp,
    which keeps fp16 activations finite; None: no clamp).
    """
    if activation == "lrelu":
        x = F.leaky_relu(x, LRELU_SLOPE) * (LRELU_GAIN * gain)
    elif activation == "linear":
        x = x * gain if gain != 1.0 else x
    else:
        raise ValueError(f"unknown activation {activation!r}")
    if clamp is not None:
        x = x.clamp(-clamp * gain, clamp * gain)
    return x


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


class _DepthwiseFir(torch.autograd.Function):
    """A fixed depthwise convolution whose backward is :class:`_DepthwiseFirAdjoint`.

    The filter is a constant, so the operation is linear in ``x`` and every derivative of it is
    the same pair of kernels. Autograd's own double backward of a grouped convolution (R1 and
    the path-length penalty differentiate through every resampling filter twice) loops over
    the groups, one small convolution per channel: several times slower than this.
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, kernel: torch.Tensor, stride: tuple[int, int]
                ) -> torch.Tensor:
        ctx.save_for_backward(kernel)
        ctx.stride, ctx.in_shape = stride, tuple(x.shape)
        ctx.in_format = _memory_format(x)
        return F.conv2d(x, kernel, stride=stride, groups=x.shape[1])

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, None, None]:
        (kernel,) = ctx.saved_tensors
        if not ctx.needs_input_grad[0]:
            return None, None, None
        return (_DepthwiseFirAdjoint.apply(grad, kernel, ctx.stride, ctx.in_shape,
                                           ctx.in_format), None, None)


class _DepthwiseFirAdjoint(torch.autograd.Function):
    """The adjoint (transposed) of :class:`_DepthwiseFir`; its backward is that forward."""

    @staticmethod
    def forward(ctx: Any, grad: torch.Tensor, kernel: torch.Tensor, stride: tuple[int, int],
                in_shape: tuple[int, ...], in_format: torch.memory_format) -> torch.Tensor:
        ctx.save_for_backward(kernel)
        ctx.stride = stride
        # A transposed depthwise convolution, written as the forward one (zero insertion, full
        # padding, flipped taps): oneDNN's depthwise backward-data kernel ran about 20x slower
        # than its forward at 256 px (5.5 s of the 28 s D step).
        n, c, height, width = in_shape
        kh, kw = kernel.shape[2], kernel.shape[3]
        sh, sw = stride
        gh, gw = grad.shape[2], grad.shape[3]
        if sh > 1 or sw > 1:
            spread = grad.new_zeros((n, c, (gh - 1) * sh + 1, (gw - 1) * sw + 1))
            spread = spread.contiguous(memory_format=_memory_format(grad))
            spread[:, :, ::sh, ::sw] = grad
            grad = spread
        pad = (kw - 1, kw - 1 + width - ((gw - 1) * sw + kw),
               kh - 1, kh - 1 + height - ((gh - 1) * sh + kh))
        out = F.conv2d(F.pad(grad, pad), kernel.flip(2, 3), groups=c)
        return out.contiguous(memory_format=in_format)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, None, None, None,
                                                         None]:
        (kernel,) = ctx.saved_tensors
        if not ctx.needs_input_grad[0]:
            return None, None, None, None, None
        return _DepthwiseFir.apply(grad, kernel, ctx.stride), None, None, None, None


def _depthwise(x: torch.Tensor, kernel: torch.Tensor, stride: tuple[int, int]) -> torch.Tensor:
    if torch.is_grad_enabled() and x.requires_grad:
        return _DepthwiseFir.apply(x, kernel, stride)
    return F.conv2d(x, kernel, stride=stride, groups=x.shape[1])


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
    if torch.is_autocast_enabled(x.device.type):
        # The filters are convolutions, which autocast would cast to its dtype anyway; casting
        # here picks the kernels for that dtype below and keeps the derivatives in it.
        x = x.to(torch.get_autocast_dtype(x.device.type))
    n, c, h, w = x.shape
    if up > 1:
        y = x.new_zeros((n, c, h * up, w * up)).contiguous(memory_format=_memory_format(x))
        y[:, :, ::up, ::up] = x
        x = y
    x = F.pad(x, list(padding))
    per_dim_gain = math.sqrt(gain)
    kernel_x = _fir_kernel(x, taps, per_dim_gain, horizontal=True)
    kernel_y = _fir_kernel(x, taps, per_dim_gain, horizontal=False)
    if down > 1 and x.dtype in (torch.bfloat16, torch.float16) and x.device.type == "cpu":
        # oneDNN's strided depthwise conv is several times slower in bfloat16 (its backward
        # above all) than a dense one followed by slicing, measured on this CPU.
        x = _depthwise(x, kernel_x, (1, 1))[:, :, :, ::down]
        return _depthwise(x, kernel_y, (1, 1))[:, :, ::down, :]
    x = _depthwise(x, kernel_x, (1, down))
    return _depthwise(x, kernel_y, (down, 1))


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


class _StridedConv(torch.autograd.Function):
    """``F.conv2d(x, w, stride)`` (or ``F.conv_transpose2d`` with ``transposed``) whose weight
    gradient is computed from contiguous (NCHW) copies on the CPU: oneDNN's channels_last weight
    gradient of a strided convolution ran 3-8x slower than the NCHW one (2.8 s against 0.3 s
    forward for D's 256-px block; 3.4 s against 0.9 s for G's transposed one), far more than
    the copies cost. The input gradient stays in channels_last, where it is the faster one.
    Twice differentiable (R1, path length): the backward is built of differentiable ops."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, stride: int,
                transposed: bool) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.stride, ctx.transposed = stride, transposed
        if transposed:
            return F.conv_transpose2d(x, weight, stride=stride)
        return F.conv2d(x, weight, stride=stride)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None,
                                                         torch.Tensor | None, None, None]:
        x, weight = ctx.saved_tensors
        s, t = [ctx.stride, ctx.stride], ctx.transposed
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.ops.aten.convolution_backward(
                grad, x, weight, None, s, [0, 0], [1, 1], t, [0, 0], 1,
                [True, False, False])[0]
        if ctx.needs_input_grad[1]:
            grad_w = torch.ops.aten.convolution_backward(
                grad.contiguous(), x.contiguous(), weight.contiguous(), None, s, [0, 0], [1, 1],
                t, [0, 0], 1, [False, True, False])[1]
        return grad_x, grad_w, None, None


def _nchw_weight_grad_pays(x: torch.Tensor) -> bool:
    return (x.device.type == "cpu" and torch.is_grad_enabled() and x.dtype == torch.float32
            and not torch.is_autocast_enabled("cpu")
            and _memory_format(x) == torch.channels_last)


def _strided_conv(x: torch.Tensor, weight: torch.Tensor, stride: int) -> torch.Tensor:
    if _nchw_weight_grad_pays(x):
        return _StridedConv.apply(x, weight, stride, False)
    return F.conv2d(x, weight, stride=stride)


def _transposed_conv(x: torch.Tensor, weight: torch.Tensor, stride: int) -> torch.Tensor:
    if _nchw_weight_grad_pays(x):
        return _StridedConv.apply(x, weight, stride, True)
    return F.conv_transpose2d(x, weight, stride=stride)


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
        # Set by the official mixed precision (train.precision fp16): see activate().
        self.conv_clamp: float | None = None

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
            x = _strided_conv(x, w, self.down)
        else:
            x = F.conv2d(x, w, padding=k // 2)
        if self.bias is not None:
            x = x + self.bias.to(x.dtype).reshape(1, -1, 1, 1)
        return activate(x, self.activation, gain, self.conv_clamp)


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
    if demodulate and x.dtype == torch.float16:
        # StyleGAN2-ADA's pre-normalisation against fp16 overflow: demodulation makes the result
        # independent of the scales of the weight and of each sample's styles.
        weight32 = weight32 * (1 / math.sqrt(in_ch * kh * kw) / weight32.norm(float("inf")))
        styles = styles / styles.norm(float("inf"), dim=1, keepdim=True)
        weight = weight32
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
        y = _transposed_conv(x, weight.transpose(0, 1), up)
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
