"""Which precision a run trains in on this machine (``train.precision``), and why.

``"auto"`` resolves to bf16 only where bf16 is fast, else fp32:

- a CUDA device that supports bf16 (compute capability 8.0 and later): bf16 autocast;
- a CPU: bf16 only with native bf16 instructions (``avx512_bf16`` or ``amx_bf16`` in the CPU
  flags; ARM ``bf16``) *and* when a short micro-benchmark of the step's own kernels (one of
  the model's residual discriminator blocks, forward and backward, at the run's batch, the
  channels of its costliest resolution and that resolution capped at 64) runs at least
  ``MIN_SPEEDUP`` times faster under bf16 autocast than in fp32 (measured on a native-bf16 EPYC:
  1.5x at mini scale, whose whole step ran 1.4x faster; 1.9x at paper scale, step 3x). Without native support bf16 is emulated and several times slower
  (measured 11 against 118 GFLOP/s for a 3x3 convolution on a Zen 3 CPU).

The benchmark's answer is cached per (processor, flags, torch version, threads, kernel shape) in
``$XDG_CACHE_HOME/lafite/precision.json`` (default ``~/.cache/lafite``), so a machine measures a
shape once. The run's hash keeps ``"auto"`` (the configuration, not the machine, names a run);
what it resolved to is written into the run's checkpoint and a resumed run keeps it, with a
warning when this machine would have chosen otherwise (lafite.train).
"""

from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

MIN_SPEEDUP = 1.15
BENCH_MAX_RES = 64
_NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")


@dataclass(frozen=True)
class Resolved:
    """A concrete precision (``fp32``, ``bf16`` or ``fp16``) and the reason it was chosen."""

    precision: str
    reason: str

    def describe(self, requested: str) -> str:
        if requested == "auto":
            return f"train.precision auto -> {self.precision} ({self.reason})"
        return f"train.precision {self.precision} ({self.reason})"


def cpu_flags() -> set[str]:
    """The CPU's feature flags (Linux /proc/cpuinfo; empty elsewhere)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return set(value.split())
    return set()


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_capabilities() -> dict[str, Any]:
    """What this CPU offers for training: model, vector extensions, native bf16 / fp16 / AMX,
    and the instruction set PyTorch's kernels were dispatched to."""
    flags = cpu_flags()
    wanted = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16",
              "amx_tile", "amx_bf16", "amx_fp16", "bf16", "asimd", "sve")
    try:
        dispatch = torch.backends.cpu.get_cpu_capability()
    except Exception:  # older torch
        dispatch = "?"
    return {"model": cpu_model(), "threads": torch.get_num_threads(),
            "flags": [f for f in wanted if f in flags], "torch_dispatch": dispatch,
            "native_bf16": native_bf16(flags)}


def native_bf16(flags: set[str] | None = None) -> bool:
    flags = cpu_flags() if flags is None else flags
    return any(f in flags for f in _NATIVE_BF16_FLAGS)


def cache_path() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(root) / "lafite" / "precision.json"


def bench_shape(cfg: Any) -> tuple[int, int, int]:
    """(batch, channels, resolution) of the micro-benchmark: the run's per-process batch, the
    channels of its costliest generator resolution, that resolution capped at BENCH_MAX_RES."""
    from lafite.model.generator import channels_at

    res_max = cfg.data.resolution
    best, best_res = -1.0, 4
    res = 4
    while res <= res_max:
        cost = channels_at(res, cfg.model) ** 2 * res * res
        if cost >= best:
            best, best_res = cost, res
        res *= 2
    return cfg.train.batch, channels_at(best_res, cfg.model), min(best_res, BENCH_MAX_RES)


def kernel_seconds(batch: int, channels: int, res: int, dtype: torch.dtype | None,
                   repeats: int = 3) -> float:
    """Best time of one residual discriminator block of the model (3x3 conv, FIR blur, strided
    3x3 conv, 1x1 skip, leaky ReLUs) forward and backward in channels_last, under bf16 autocast
    when ``dtype`` is bfloat16: the step's own kernels at the run's sizes."""
    from lafite.model.discriminator import DiscriminatorBlock

    def once() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype is torch.bfloat16):
            y = block(x)
        y.float().sum().backward()

    with torch.random.fork_rng():  # the training's RNG streams do not move
        torch.manual_seed(0)
        block = DiscriminatorBlock(channels, channels, channels)
        x = torch.randn(batch, channels, res, res)
        x = x.contiguous(memory_format=torch.channels_last).requires_grad_(True)
        return best_seconds(once, repeats)


def best_seconds(fn: Any, repeats: int) -> float:
    """The fastest of ``repeats`` timed calls of ``fn`` after one untimed warm-up call."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def measured_bf16_speedup(shape: tuple[int, int, int], cache: Path | None = None) -> float:
    """fp32 time / bf16 time of the step's kernels at ``shape``, cached (module docstring)."""
    cache = cache_path() if cache is None else cache
    key = "|".join(map(str, ("dblock-v1", cpu_model(), sorted(f for f in cpu_flags() if "bf16" in f or
                                                   "amx" in f or "avx512" in f),
                             torch.__version__, torch.get_num_threads(), *shape)))
    try:
        known = json.loads(cache.read_text())
    except (OSError, ValueError):
        known = {}
    if key in known:
        return float(known[key])
    # Interleaved, best of each: the machine's load slows both alike.
    fp32 = min(kernel_seconds(*shape, None, 2), kernel_seconds(*shape, None, 2))
    bf16 = min(kernel_seconds(*shape, torch.bfloat16, 2), kernel_seconds(*shape, torch.bfloat16, 2))
    speedup = fp32 / max(bf16, 1e-9)
    known[key] = round(speedup, 3)
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(known, indent=1, sort_keys=True))
        tmp.replace(cache)
    except OSError:
        pass  # a read-only home: measure again next time
    return speedup


def resolve(cfg: Any, device: torch.device | str, cache: Path | None = None) -> Resolved:
    """The precision ``cfg.train.precision`` means on ``device`` (see the module docstring)."""
    from lafite.errors import ConfigError

    device = torch.device(device)
    requested = cfg.train.precision
    if requested == "fp16":
        if device.type != "cuda":
            raise ConfigError(
                "train.precision fp16 (the official mixed precision) needs a CUDA device; on "
                f"{device.type} use auto, bf16 or fp32"
            )
        return Resolved("fp16", f"as configured: fp16 in the {cfg.train.fp16_blocks} "
                                f"highest-resolution blocks, conv clamp {cfg.train.conv_clamp:g}")
    if requested != "auto":
        return Resolved(requested, "as configured")
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        name = torch.cuda.get_device_name(index)
        if torch.cuda.is_bf16_supported():
            return Resolved("bf16", f"CUDA device {name} supports bf16")
        return Resolved("fp32", f"CUDA device {name} has no fast bf16")
    if device.type != "cpu":
        return Resolved("fp32", f"no bf16 rule for device {device.type}")
    if not native_bf16():
        return Resolved("fp32", "this CPU has no native bf16 instructions (no avx512_bf16 or "
                                "amx_bf16): bf16 would be emulated, several times slower")
    shape = bench_shape(cfg)
    speedup = measured_bf16_speedup(shape, cache)
    flags = ", ".join(f for f in sorted(cpu_flags()) if f in _NATIVE_BF16_FLAGS)
    where = (f"a discriminator block at batch {shape[0]}, {shape[1]} channels, {shape[2]} px "
             f"ran {speedup:.2f}x as fast in bf16")
    if speedup >= MIN_SPEEDUP:
        return Resolved("bf16", f"CPU with native bf16 ({flags}); {where}")
    return Resolved("fp32", f"CPU with native bf16 ({flags}), but {where} (below "
                            f"{MIN_SPEEDUP}x)")


def describe(cfg: Any, cache: Path | None = None) -> str:
    """One line for ``--dry-run``: what the run's precision resolves to on this machine."""
    device = cfg.train.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        resolved = resolve(cfg, device, cache)
    except Exception as exc:  # a dry run reports, never fails
        return f"train.precision {cfg.train.precision}: {exc}"
    return resolved.describe(cfg.train.precision)


__all__ = ["MIN_SPEEDUP", "Resolved", "bench_shape", "cpu_capabilities", "describe",
           "measured_bf16_speedup", "native_bf16", "resolve"]
