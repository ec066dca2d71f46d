"""Training throughput of LAFITE on this machine, and how close it gets to the hardware.

For Table 5's full LAFITE_G row as its spec resolves it at mini scale (32 px) and at paper scale
(256x256, the official networks and losses, batch 4), it times the training code itself: each
phase of ``lafite.train.StepRunner`` on its own (D main, G main, R1, path length), so the lazy
regularisation is amortised from measured phases (every ``loss.r1_interval`` and
``loss.pl_interval`` steps) rather than from a difference of two noisy samples. It counts the
FLOPs of each phase with ``torch.utils.flop_counter`` and measures the machine's peaks in the
same run (fp32 and bf16 matmul and 3x3 convolution), so every phase's achieved fraction of peak
is printed next to it. It prints the processor's capabilities first (native bf16 or not).

``--plain`` also times, interleaved in the same process, the step without this suite's fast
paths (two discriminator passes instead of one stacked pass, autograd's own derivatives of the
resampling filters, oneDNN's channels_last weight gradient of the strided and transposed
convolutions, glibc's
default allocator): the printed ratio is what they bring here.

The authors' implementation is not part of this repository. To compare with it, measure it on
the same machine (README, "Speed") and pass its images/s with ``--authors IMG_PER_S``; the
bench prints ours divided by theirs.

``--gpu`` runs the GPU section instead (for a CUDA machine): kimg/s at 256 px, batch 16 per
GPU, in the precision asked (bf16, or the official fp16 mixed precision), channels_last and,
with ``--compile``, torch.compile; then the time of a 30,000-image FID (generation plus an
Inception-v3 of the real architecture with random weights, nothing downloaded, plus the
statistics): the cost of the paper's evaluation.

    python bench/bench_train.py                               # mini and paper, fp32 (+bf16
                                                              #   where this CPU has it natively)
    python bench/bench_train.py --only paper --precision fp32 --plain --authors 0.045
    python bench/bench_train.py --gpu --precision bf16 --compile
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode, _FlopCounterMode

from lafite import distributed as ddp
from lafite import precision as precision_mod
from lafite import spec as spec_mod
from lafite.config import RunConfig
from lafite.model import Discriminator, Generator, count_parameters
from lafite.model import layers as layers_mod
from lafite.train import StepRunner

# Both configurations are Table 5's full LAFITE_G row as its spec resolves it: the mini scale
# (the world at 32 px) and the paper scale at batch 4 (the official networks and losses).
SPEC = Path(__file__).resolve().parent.parent / "experiments" / "table5.yaml"
ROW = "LAFITE_G +L_ConG +L_ConD"
PHASES = ("D", "G", "R1", "PL")


def spec_config(scale: str, batch: int | None = None) -> RunConfig:
    spec = spec_mod.load(SPEC)
    cfg = spec.resolve(spec.row(ROW), scale)
    if batch is None and scale == "paper":
        batch = 4
    return cfg.override({"train.batch": batch}) if batch else cfg


# -- peaks -----------------------------------------------------------------------------------


def conv_rate(dtype: torch.dtype, device: str = "cpu", repeats: int = 3) -> float:
    """GFLOP/s of a 3x3 convolution in channels_last (256 -> 256 channels, 64x64, batch 4)."""
    x = torch.randn(4, 256, 64, 64, device=device)
    x = x.to(memory_format=torch.channels_last, dtype=dtype)
    w = torch.randn(256, 256, 3, 3, device=device).to(memory_format=torch.channels_last,
                                                      dtype=dtype)
    flop = 2 * 4 * 256 * 256 * 9 * 64 * 64

    def run() -> None:
        F.conv2d(x, w, padding=1)
        if device != "cpu":
            torch.cuda.synchronize()

    return flop / precision_mod.best_seconds(run, repeats) / 1e9


def matmul_rate(dtype: torch.dtype, device: str = "cpu", repeats: int = 3) -> float:
    """GFLOP/s of a square matmul (2048 on the CPU, 8192 on a GPU)."""
    n = 2048 if device == "cpu" else 8192
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)

    def run() -> None:
        a @ b
        if device != "cpu":
            torch.cuda.synchronize()

    return 2 * n**3 / precision_mod.best_seconds(run, repeats) / 1e9


def peaks(device: str = "cpu") -> dict[str, dict[str, float]]:
    """Interleaved, best of each: fp32 and bf16 matmul and 3x3 conv."""
    out: dict[str, dict[str, float]] = {"fp32": {}, "bf16": {}}
    for _ in range(2):
        for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
            out[name]["matmul"] = max(out[name].get("matmul", 0.0), matmul_rate(dtype, device, 2))
            out[name]["conv"] = max(out[name].get("conv", 0.0), conv_rate(dtype, device, 2))
    out["fp16"] = out["bf16"]  # same tensor-core class; only used for the GPU section's fraction
    return out


# -- the step --------------------------------------------------------------------------------


def _clip_for(cfg: RunConfig, device: str = "cpu"):
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
    return ClipEncoder(model.to(device), tokenizer, name=f"{cfg.clip.name}-random")


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


@dataclass
class Measured:
    name: str
    precision: str
    batch: int
    r1_interval: int
    pl_interval: int
    sec: dict[str, float] = field(default_factory=dict)
    gflop: dict[str, float] = field(default_factory=dict)

    def weight(self, phase: str) -> float:
        return {"R1": 1 / self.r1_interval, "PL": 1 / self.pl_interval}.get(phase, 1.0)

    def sec_per_iter(self, phases: tuple[str, ...] = PHASES) -> float:
        return sum(self.sec[p] * self.weight(p) for p in phases if p in self.sec)

    def gflop_per_iter(self, phases: tuple[str, ...] = PHASES) -> float:
        return sum(self.gflop[p] * self.weight(p) for p in phases if p in self.gflop)


@dataclass
class Setup:
    runner: StepRunner
    images: torch.Tensor
    cond: torch.Tensor
    sizes: dict[str, int]
    cfg: RunConfig

    def phase(self, name: str) -> Callable[[], object]:
        r, images, cond = self.runner, self.images, self.cond
        sync = torch.cuda.synchronize if r.device.type == "cuda" else (lambda: None)
        fn = {"D": lambda: r.d_main(images, cond), "G": lambda: r.g_main(cond),
              "R1": lambda: r.d_reg(images, cond), "PL": lambda: r.g_reg(cond)}[name]

        def run() -> None:
            fn()
            sync()

        return run


def build(base: RunConfig, precision: str, clip, device: str = "cpu",
          compile_: bool = False) -> Setup:
    channels_last = precision != "fp32" or device != "cpu" or base.train.channels_last
    cfg = base.override({"train.precision": precision, "train.channels_last": channels_last,
                         "train.device": device, "train.compile": compile_})
    batch, res, dim = cfg.train.batch, cfg.data.resolution, clip.dim
    torch.manual_seed(0)
    G = Generator(cfg.model, res, dim)
    D = Discriminator(cfg.model, res, dim)
    sizes = {"G": count_parameters(G), "D": count_parameters(D)}
    G, D = G.to(device), D.to(device)
    if cfg.train.channels_last:
        G.set_channels_last(True)
        D.set_channels_last(True)
    ctx = ddp.DistContext(rank=0, world_size=1, local_rank=0, device=torch.device(device))
    runner = StepRunner(cfg, G, D, clip, ctx, torch.Generator().manual_seed(0),
                        precision=precision)
    images = torch.rand(batch, 3, res, res, device=device) * 2 - 1
    if cfg.train.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    cond = F.normalize(torch.randn(batch, dim, device=device), dim=1)
    return Setup(runner, images, cond, sizes, cfg)


class _Plain:
    """The step without the fast paths: two D passes, autograd's own (grouped) derivatives of
    the resampling filters, channels_last weight gradients of the strided and transposed convolutions, glibc's
    default allocator (restored for the duration)."""

    def __init__(self, setup: Setup):
        self.setup = setup

    def __enter__(self):
        self.saved = layers_mod._depthwise, layers_mod._strided_conv, layers_mod._transposed_conv
        layers_mod._depthwise = lambda x, k, s: F.conv2d(x, k, stride=s, groups=x.shape[1])
        layers_mod._strided_conv = lambda x, w, s: F.conv2d(x, w, stride=s)
        layers_mod._transposed_conv = lambda x, w, s: F.conv_transpose2d(x, w, stride=s)
        self.setup.runner.stack_real_fake = False
        ddp.retain_freed_memory(False)

    def __exit__(self, *exc):
        (layers_mod._depthwise, layers_mod._strided_conv,
         layers_mod._transposed_conv) = self.saved
        self.setup.runner.stack_real_fake = True
        ddp.retain_freed_memory(True)


def measure(name: str, base: RunConfig, precision: str, iters: int, clip, with_pl: bool,
            plain: bool) -> tuple[Measured, Measured | None, dict[str, int]]:
    setup = build(base, precision, clip)
    cfg = setup.cfg
    phases = [p for p in PHASES if p != "PL" or with_pl]
    ours = Measured(name, precision, cfg.train.batch, cfg.loss.r1_interval, cfg.loss.pl_interval)
    theirs = Measured(name, precision, cfg.train.batch, cfg.loss.r1_interval,
                      cfg.loss.pl_interval) if plain else None
    samples: dict[str, list[float]] = {}
    for phase in phases:
        fn = setup.phase(phase)
        fn()  # warm-up (allocator, oneDNN primitive cache; the plain step shares them)
        # Interleaved: ours and the plain step alternate, so the load slows both alike.
        for _ in range(iters):
            start = time.perf_counter()
            fn()
            samples.setdefault(phase, []).append(time.perf_counter() - start)
            if plain:
                with _Plain(setup):
                    start = time.perf_counter()
                    fn()
                    samples.setdefault("plain " + phase, []).append(time.perf_counter() - start)
        ours.sec[phase] = statistics.median(samples[phase])
        ours.gflop[phase] = _flop(fn)
        if theirs is not None:
            theirs.sec[phase] = statistics.median(samples["plain " + phase])
            theirs.gflop[phase] = ours.gflop[phase]
    return ours, theirs, setup.sizes


def report(m: Measured, sizes: dict[str, int], rates: dict[str, dict[str, float]],
           plain: Measured | None, authors: float | None) -> None:
    peak = rates[m.precision]["conv"]
    sec, gflop = m.sec_per_iter(), m.gflop_per_iter()
    print(f"{m.name:5s} {m.precision}: batch {m.batch}, G {sizes['G'] / 1e6:.1f}M "
          f"D {sizes['D'] / 1e6:.1f}M params; {sec:.3f} s/iter, {m.batch / sec:.4f} img/s; "
          f"{gflop:.0f} GFLOP/iter, {gflop / sec:.0f} GFLOP/s = {gflop / sec / peak:.0%} of "
          f"the {m.precision} conv peak; load {os.getloadavg()[0]:.2f}", flush=True)
    for phase in m.sec:
        every = round(1 / m.weight(phase))
        rate = m.gflop[phase] / m.sec[phase]
        line = (f"    {phase:2s} {m.sec[phase]:8.3f} s {m.gflop[phase]:8.1f} GFLOP "
                f"{rate:6.0f} GFLOP/s = {rate / peak:4.0%} of peak"
                + (f", every {every} steps" if every > 1 else ""))
        if plain is not None:
            line += f"; plain step {plain.sec[phase]:.3f} s ({plain.sec[phase] / m.sec[phase]:.2f}x)"
        print(line, flush=True)
    if "PL" in m.sec:
        no_pl = m.sec_per_iter(("D", "G", "R1"))
        print(f"    without path length (the paper's text has none): {m.batch / no_pl:.4f} img/s")
    if plain is not None:
        print(f"    vs the plain step, same run: {plain.sec_per_iter() / sec:.2f}x the images/s")
    if authors:
        print(f"    vs the authors' code on this machine ({authors} img/s, --authors): "
              f"{m.batch / sec / authors:.2f}x the images/s")


# -- the GPU section ---------------------------------------------------------------------------


def gpu_section(args: argparse.Namespace) -> None:
    device = args.device
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--gpu needs a CUDA device (or --device cpu to try the code path)")
    if device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
        print(f"GPU: {torch.cuda.get_device_name()}, torch {torch.__version__}")
    rates = peaks(device)
    print("peaks: " + ", ".join(f"{p} matmul {rates[p]['matmul']:.0f} conv {rates[p]['conv']:.0f}"
                                for p in ("fp32", "bf16")) + " GFLOP/s")
    base = spec_config("paper", batch=args.gpu_batch)
    if args.gpu_resolution:
        base = base.override({"data.resolution": args.gpu_resolution})
    clip = _clip_for(base, device)
    precision = "bf16" if args.precision in ("auto", "both") else args.precision
    setup = build(base, precision, clip, device, compile_=args.compile)
    m = Measured("gpu", precision, setup.cfg.train.batch, setup.cfg.loss.r1_interval,
                 setup.cfg.loss.pl_interval)
    for phase in PHASES:
        fn = setup.phase(phase)
        for _ in range(2):  # warm-up (cudnn autotune, compilation)
            fn()
        m.sec[phase] = statistics.median(_timed_list(fn, args.iters))
        m.gflop[phase] = _flop(fn) if device == "cpu" or not args.compile else float("nan")
    sec = m.sec_per_iter()
    print(f"{base.data.resolution} px, batch {m.batch} per GPU, {precision}"
          f"{', compiled' if args.compile else ''}: {sec:.3f} s/iter, "
          f"{m.batch / sec / 1000 * 3600:.1f} kimg/h = {m.batch / sec / 1000:.4f} kimg/s "
          "(R1 and path length amortised)")
    for phase in PHASES:
        print(f"    {phase:2s} {m.sec[phase] * 1000:8.1f} ms")
    if device == "cuda":
        print(f"    peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")
    fid_seconds(setup.runner.G_ema, base, args.fid_images, device, precision)


def _timed_list(fn: Callable[[], object], iters: int) -> list[float]:
    out = []
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def fid_seconds(G: torch.nn.Module, cfg: RunConfig, n: int, device: str, precision: str) -> None:
    """Time of an n-image FID: generation with G_ema, Inception-v3 pool features at 299 px
    (torchvision's architecture, random weights) and the Frechet distance to stored stats."""
    import numpy as np
    import scipy.linalg
    from torchvision.models import inception_v3

    net = inception_v3(weights=None, aux_logits=False, init_weights=False).eval().to(device)
    net.fc = torch.nn.Identity()
    batch = 64
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    use_amp = device == "cuda" and precision != "fp32"
    feats = []
    start = time.perf_counter()
    with torch.no_grad():
        for i in range(0, n, batch):
            b = min(batch, n - i)
            z = torch.randn(b, G.z_dim, device=device)
            c = F.normalize(torch.randn(b, G.cond_dim, device=device), dim=1)
            with torch.autocast(device, dtype=dtype, enabled=use_amp):
                img = G(z, c)
                img = (img.float() * 127.5 + 128).clamp(0, 255).to(torch.uint8).float() / 255
                img = F.interpolate(img, size=(299, 299), mode="bilinear", align_corners=False)
                feats.append(net(img).float().cpu())
    if device == "cuda":
        torch.cuda.synchronize()
    gen = time.perf_counter() - start
    f = torch.cat(feats).double().numpy()
    mu, sigma = f.mean(0), np.cov(f, rowvar=False)
    ref_mu, ref_sigma = np.zeros_like(mu), np.eye(len(mu))
    with warnings.catch_warnings():  # random weights: a near-singular covariance
        warnings.simplefilter("ignore")
        covmean = scipy.linalg.sqrtm(sigma @ ref_sigma).real
    _ = ((mu - ref_mu) ** 2).sum() + np.trace(sigma + ref_sigma - 2 * covmean)
    total = time.perf_counter() - start
    print(f"FID of {n} images: {total:.1f} s ({gen:.1f} s generating and Inception, "
          f"{total - gen:.1f} s statistics)", flush=True)


# -- main ------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=["mini", "paper"], default=None)
    parser.add_argument("--iters", type=int, default=3, help="timed samples per phase")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--precision", choices=["auto", "fp32", "bf16", "both", "fp16"],
                        default="auto",
                        help="auto: fp32, and bf16 too where this CPU has native bf16 (bf16 is "
                             "emulated elsewhere: hours at 256 px); both: fp32 and bf16; fp16: "
                             "the official mixed precision (--gpu only)")
    parser.add_argument("--plain", action="store_true",
                        help="also time the step without the fast paths, interleaved")
    parser.add_argument("--authors", type=float, default=None, metavar="IMG_PER_S",
                        help="the authors' code's fp32 images/s at 256 px, batch 4, measured on "
                             "this machine (README: Speed)")
    parser.add_argument("--no-pl", action="store_true", help="leave the path length out")
    parser.add_argument("--gpu", action="store_true", help="the GPU section (module docstring)")
    parser.add_argument("--device", default="cuda", help="--gpu: the device (cpu: a dry run)")
    parser.add_argument("--gpu-batch", type=int, default=16)
    parser.add_argument("--gpu-resolution", type=int, default=0, help="0: 256 (the paper)")
    parser.add_argument("--compile", action="store_true", help="--gpu: torch.compile")
    parser.add_argument("--fid-images", type=int, default=30000)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    caps = precision_mod.cpu_capabilities()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average "
          f"{os.getloadavg()[0]:.2f} at start")
    print(f"CPU: {caps['model']}; flags {' '.join(caps['flags']) or '-'}; kernels dispatched "
          f"for {caps['torch_dispatch']}; native bf16: {'yes' if caps['native_bf16'] else 'no'}")
    if args.gpu:
        gpu_section(args)
        return
    if args.precision == "fp16":
        raise SystemExit("--precision fp16 is the official CUDA mixed precision: use it with --gpu")
    precisions = {"fp32": ["fp32"], "bf16": ["bf16"], "both": ["fp32", "bf16"],
                  "auto": ["fp32", "bf16"] if caps["native_bf16"] else ["fp32"]}[args.precision]
    rates = peaks()
    for p in ("fp32", "bf16"):
        print(f"peak here: {p} matmul {rates[p]['matmul']:.0f} GFLOP/s, 3x3 conv (channels_last, "
              f"256 ch, 64x64, batch 4) {rates[p]['conv']:.0f} GFLOP/s")
    for name in [args.only] if args.only else ["mini", "paper"]:
        base = spec_config(name)
        clip = _clip_for(base)
        with_pl = base.loss.pl_weight > 0 and not args.no_pl
        for precision in precisions:
            m, plain, sizes = measure(name, base, precision, args.iters, clip, with_pl,
                                      args.plain)
            report(m, sizes, rates, plain, args.authors if name == "paper" else None)


if __name__ == "__main__":
    main()
