"""Training throughput of LAFITE on this machine, and how close it gets to the hardware.

For Table 5's full LAFITE_G row as its spec resolves it at mini scale (32 px) and at paper scale
(256x256, the official networks and losses, batch 4), in fp32 and in bf16 autocast with
channels_last, it times the training code itself (``StepRunner`` phases of
``lafite.train``: G and D updates, R1 every ``loss.r1_interval`` steps amortised), counts the
FLOPs of one iteration with ``torch.utils.flop_counter.FlopCounterMode`` and measures the
machine's fp32 and bf16 3x3-convolution rates in the same run, so the achieved fraction of peak
is printed next to the throughput. Timings are medians of a few iterations after a warm-up; the
machine load (``os.getloadavg``) is printed because other processes slow everything down.

The paper configuration uses the real 512-d CLIP ViT-B-32 architecture with random weights
(``open_clip.create_model("ViT-B-32")``, nothing downloaded): its cost is what matters here.

Reference (the authors' implementation measured on this machine, 256x256, batch 4, fp32,
lazy regularisation amortised, path length included as in the official code): about
4,970 GFLOP per iteration at about 92 GFLOP/s, 0.074 images/s.

    python bench/bench_train.py                  # both configurations
    python bench/bench_train.py --only mini --iters 5
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode, _FlopCounterMode

from lafite import distributed as ddp
from lafite import spec as spec_mod
from lafite.config import RunConfig
from lafite.model import Discriminator, Generator, count_parameters
from lafite.train import StepRunner

AUTHORS = {"gflop_per_iter": 4970.0, "gflops": 92.0, "img_per_s": 0.074}

# Both configurations are Table 5's full LAFITE_G row as its spec resolves it: the mini scale
# (the world at 32 px) and the paper scale at batch 4 (the official networks and losses).
SPEC = Path(__file__).resolve().parent.parent / "experiments" / "table5.yaml"
ROW = "LAFITE_G +L_ConG +L_ConD"


def spec_config(scale: str) -> RunConfig:
    spec = spec_mod.load(SPEC)
    cfg = spec.resolve(spec.row(ROW), scale)
    return cfg.override({"train.batch": 4}) if scale == "paper" else cfg


@dataclass
class Measured:
    name: str
    precision: str
    batch: int
    sec_main: float
    sec_r1_extra: float
    sec_pl_extra: float
    gflop_main: float
    gflop_r1_extra: float
    gflop_pl_extra: float
    r1_interval: int
    pl_interval: int

    def sec_per_iter(self, with_pl: bool) -> float:
        pl = self.sec_pl_extra / self.pl_interval if with_pl else 0.0
        return self.sec_main + self.sec_r1_extra / self.r1_interval + pl

    def gflop_per_iter(self, with_pl: bool) -> float:
        pl = self.gflop_pl_extra / self.pl_interval if with_pl else 0.0
        return self.gflop_main + self.gflop_r1_extra / self.r1_interval + pl


def conv_rate(dtype: torch.dtype, repeats: int = 5) -> float:
    """GFLOP/s of a 3x3 convolution in channels_last (256 -> 256 channels, 64x64, batch 4)."""
    x = torch.randn(4, 256, 64, 64).to(memory_format=torch.channels_last, dtype=dtype)
    w = torch.randn(256, 256, 3, 3).to(memory_format=torch.channels_last, dtype=dtype)
    flop = 2 * 4 * 256 * 256 * 9 * 64 * 64
    F.conv2d(x, w, padding=1)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        F.conv2d(x, w, padding=1)
        times.append(time.perf_counter() - start)
    return flop / min(times) / 1e9


def _clip_for(cfg: RunConfig):
    """A random-weight CLIP with the configuration's architecture, as a ClipEncoder."""
    import open_clip
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

    from lafite.clip import ClipEncoder, world_clip_config

    if cfg.clip.name == "world":
        arch = world_clip_config(cfg.data.resolution)
        model = CLIP(embed_dim=arch["embed_dim"], vision_cfg=CLIPVisionCfg(**arch["vision_cfg"]),
                     text_cfg=CLIPTextCfg(**arch["text_cfg"]))
        tokenizer = open_clip.tokenizer.SimpleTokenizer(
            context_length=arch["text_cfg"]["context_length"])
    else:
        model = open_clip.create_model(cfg.clip.name, pretrained=None)
        tokenizer = open_clip.get_tokenizer(cfg.clip.name)
    return ClipEncoder(model, tokenizer, name=f"{cfg.clip.name}-random")


def _timed(fn: Callable[[], object], iters: int) -> float:
    fn()  # warm-up (allocator, oneDNN primitive cache)
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


class _GlobalFlopCounter(FlopCounterMode):
    """FlopCounterMode without its per-module breakdown.

    The breakdown registers autograd hooks that ``torch.autograd.grad`` (R1, path length)
    refuses; the total is all this benchmark needs.
    """

    def __enter__(self):
        self.flop_counts.clear()
        self.mode = _FlopCounterMode(self)
        self.mode.__enter__()
        return self

    def __exit__(self, *args):
        result = self.mode.__exit__(*args)
        self.mode = None
        return result


def _flop(fn: Callable[[], object]) -> float:
    with _GlobalFlopCounter(display=False) as counter:
        fn()
    return counter.get_total_flops() / 1e9


def measure(name: str, base: RunConfig, precision: str, iters: int, clip, with_pl: bool
            ) -> tuple[Measured, dict[str, int]]:
    overrides = {"train.precision": precision, "train.channels_last": precision == "bf16",
                 "train.device": "cpu"}
    cfg = base.override(overrides)
    batch, res, dim = cfg.train.batch, cfg.data.resolution, clip.dim
    torch.manual_seed(0)
    G = Generator(cfg.model, res, dim)
    D = Discriminator(cfg.model, res, dim)
    if cfg.train.channels_last:
        G.set_channels_last(True)
        D.set_channels_last(True)
    ctx = ddp.DistContext(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    runner = StepRunner(cfg, G, D, clip, ctx, torch.Generator().manual_seed(0))
    images = torch.rand(batch, 3, res, res) * 2 - 1
    if cfg.train.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    cond = F.normalize(torch.randn(batch, dim), dim=1)

    def main() -> None:
        runner.d_phase(images, cond, regularise=False)
        runner.g_phase(cond, regularise=False)

    def d_r1() -> None:
        runner.d_phase(images, cond, regularise=True)

    def d_plain() -> None:
        runner.d_phase(images, cond, regularise=False)

    def g_pl() -> None:
        runner.g_phase(cond, regularise=True)

    def g_plain() -> None:
        runner.g_phase(cond, regularise=False)

    sec_main = _timed(main, iters)
    sec_r1 = max(0.0, _timed(d_r1, max(1, iters // 2)) - _timed(d_plain, max(1, iters // 2)))
    sec_pl = 0.0
    if with_pl:
        sec_pl = max(0.0, _timed(g_pl, max(1, iters // 2)) - _timed(g_plain, max(1, iters // 2)))
    gflop_main = _flop(main)
    gflop_r1 = _flop(d_r1) - _flop(d_plain)
    gflop_pl = _flop(g_pl) - _flop(g_plain) if with_pl else 0.0
    # Counted with requires_grad on: the phases leave both networks frozen when they end.
    sizes = {"G": count_parameters(G.requires_grad_(True)),
             "D": count_parameters(D.requires_grad_(True))}
    return Measured(name, precision, batch, sec_main, sec_r1, sec_pl, gflop_main, gflop_r1,
                    gflop_pl, cfg.loss.r1_interval, cfg.loss.pl_interval), sizes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=["mini", "paper"], default=None)
    parser.add_argument("--iters", type=int, default=3, help="timed iterations per phase")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"load average {os.getloadavg()[0]:.2f} at start")
    rates = {"fp32": conv_rate(torch.float32), "bf16": conv_rate(torch.bfloat16)}
    print(f"3x3 conv peak here (channels_last, 256ch 64x64 batch 4): fp32 {rates['fp32']:.0f} "
          f"GFLOP/s, bf16 {rates['bf16']:.0f} GFLOP/s")
    for name in [args.only] if args.only else ["mini", "paper"]:
        base = spec_config(name)
        clip = _clip_for(base)
        # Path length as the spec has it (Table 5: weight 2 every 4 steps, as the official code).
        with_pl = base.loss.pl_weight > 0
        for precision in ("fp32", "bf16"):
            m, sizes = measure(name, base, precision, args.iters, clip, with_pl)
            sec = m.sec_per_iter(with_pl)
            gflop = m.gflop_per_iter(with_pl)
            achieved = gflop / sec
            line = (f"{name:5s} {precision}: batch {m.batch}, G {sizes['G'] / 1e6:.1f}M "
                    f"D {sizes['D'] / 1e6:.1f}M params; {sec:.3f} s/iter "
                    f"(main {m.sec_main:.3f} + R1 {m.sec_r1_extra:.3f}/{m.r1_interval}"
                    + (f" + PL {m.sec_pl_extra:.3f}/{m.pl_interval}" if with_pl else "")
                    + f"), {m.batch / sec:.3f} img/s; {gflop:.0f} GFLOP/iter, "
                    f"{achieved:.0f} GFLOP/s = {achieved / rates[precision]:.0%} of the "
                    f"{precision} conv rate; load {os.getloadavg()[0]:.2f}")
            print(line, flush=True)
            if name == "paper":
                no_pl = m.sec_per_iter(False) if with_pl else sec
                print(f"        without path length (the paper default): {m.batch / no_pl:.3f} "
                      f"img/s, {m.gflop_per_iter(False):.0f} GFLOP/iter")
                print(f"        vs the authors' implementation (fp32, {AUTHORS['img_per_s']} "
                      f"img/s, {AUTHORS['gflop_per_iter']:.0f} GFLOP/iter at "
                      f"{AUTHORS['gflops']:.0f} GFLOP/s): {m.batch / sec / AUTHORS['img_per_s']:.1f}x "
                      "the throughput")


if __name__ == "__main__":
    main()
