"""Feature caches: what building them costs, and what reading them saves in a training step.

1. Build time per 1,000 images of :class:`lafite.clip.FeatureCache` (image features under the
   official crop protocol, text features of every caption), through the real path: a
   materialised world folder (PNG + .txt) read by ``ImageTextFolder``, chunked files, manifest.
   * ``world-32``: the world at 32 px (5 captions an image) with the world CLIP's architecture;
   * ``vit-b-32``: 256 px images (the paper's data size) cropped and resized to 224 for a
     randomly initialised ViT-B/32 (``open_clip.create_model("ViT-B-32")``, nothing downloaded),
     5 captions an image like MS-COCO.
   A second call reads the cache; its time is printed too.
2. One training step (D then G, no regulariser: the step every iteration has) with the
   condition read from the cache against computing it in the step (``encode_cropped`` of the
   batch's real images, plus ``encode_texts`` of one caption each when the mode uses captions),
   alternated in one process, at the paper configuration (Table 5's LAFITE_G row at paper scale:
   256 px, the official networks, random ViT-B/32; batch 4, as bench_train uses on a CPU) and at
   the mini configuration (32 px). Medians; the ratio is without / with.

    python bench/bench_cache.py                       # everything (about 15 min on a busy 2-core box)
    python bench/bench_cache.py --only build --images 512
    python bench/bench_cache.py --only step --configs mini --iters 5
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from lafite import distributed as ddp
from lafite import spec as spec_mod
from lafite.clip import ClipEncoder, CropProtocol, FeatureCache
from lafite.config import RunConfig
from lafite.workspace import Workspace

SPEC = Path(__file__).resolve().parent.parent / "experiments" / "table5.yaml"
ROW = "LAFITE_G +L_ConG +L_ConD"


def random_clip(name: str, resolution: int) -> ClipEncoder:
    """A random-weight CLIP: the world CLIP's architecture for ``world``, else open_clip's."""
    import open_clip
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

    from lafite.clip import world_clip_config

    torch.manual_seed(0)
    if name == "world":
        arch = world_clip_config(resolution)
        model = CLIP(embed_dim=arch["embed_dim"], vision_cfg=CLIPVisionCfg(**arch["vision_cfg"]),
                     text_cfg=CLIPTextCfg(**arch["text_cfg"]))
        tokenizer = open_clip.tokenizer.SimpleTokenizer(
            context_length=arch["text_cfg"]["context_length"])
    else:
        model = open_clip.create_model(name, pretrained=None)
        tokenizer = open_clip.get_tokenizer(name)
    return ClipEncoder(model, tokenizer, name=f"{name}-random")


def world_folder(root: Path, resolution: int, n: int):
    from lafite.data.folder import ImageTextFolder
    from lafite.data.world import World, materialise

    folder = materialise(World("scenes", "train", resolution=resolution, seed=0, size=n),
                         root / f"scenes-{resolution}-{n}")
    return ImageTextFolder(folder, resolution)


def bench_build(label: str, dataset, encoder: ClipEncoder, home: Path) -> None:
    n = len(dataset)
    captions = sum(len(dataset.captions(i)) for i in range(n))
    workspace = Workspace.resolve(home / label)
    cache = FeatureCache(workspace, progress=False)
    start = time.perf_counter()
    cache.image_features(dataset, encoder)
    images_s = time.perf_counter() - start
    start = time.perf_counter()
    cache.text_features(dataset, encoder)
    texts_s = time.perf_counter() - start
    start = time.perf_counter()
    cache.image_features(dataset, encoder)
    cache.text_features(dataset, encoder)
    read_s = time.perf_counter() - start
    per_k = 1000 / n
    print(f"{label:>9}: {n} images, {captions} captions | build per 1,000 images: "
          f"images {images_s * per_k:7.1f} s, captions {texts_s * per_k:7.1f} s, "
          f"total {(images_s + texts_s) * per_k:7.1f} s | a second call (cache hit) "
          f"{read_s * 1000:.1f} ms")


def paper_config(scale: str) -> RunConfig:
    spec = spec_mod.load(SPEC)
    cfg = spec.resolve(spec.row(ROW), scale)
    overrides = {"train.device": "cpu", "train.precision": "fp32", "train.channels_last": False}
    if scale == "paper":
        overrides["train.batch"] = 4
    return cfg.override(overrides)


def bench_step(scale: str, iters: int, home: Path, modes: list[str]) -> None:
    from lafite.model import Discriminator, Generator
    from lafite.perturb import ConditionMaker
    from lafite.train import StepRunner

    cfg = paper_config(scale)
    res, batch = cfg.data.resolution, cfg.train.batch
    clip = random_clip(cfg.clip.name, res)
    # Real training images and captions at the configuration's resolution, and their cache.
    dataset = world_folder(home, res, max(4 * batch, 16))
    cache = FeatureCache(Workspace.resolve(home / f"step-{scale}"), progress=False)
    image_features = cache.image_features(dataset, clip, cfg.clip.real_crop)
    text_features, offsets = cache.text_features(dataset, clip)
    protocol = CropProtocol(cfg.clip.real_crop, cache.seed)

    torch.manual_seed(0)
    G = Generator(cfg.model, res, clip.dim)
    D = Discriminator(cfg.model, res, clip.dim)
    ctx = ddp.DistContext(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    noise = torch.Generator().manual_seed(0)
    runner = StepRunner(cfg, G, D, clip, ctx, noise)
    maker = ConditionMaker(cfg.perturb, None, cfg.pseudo_text_probability)
    uint8 = torch.stack([torch.as_tensor(dataset[i]) for i in range(batch)])
    images = uint8.float() / 127.5 - 1
    indices = np.arange(batch)
    paired = torch.ones(batch, dtype=torch.bool)

    def cond_cached(texts: bool) -> torch.Tensor:
        img = torch.from_numpy(np.ascontiguousarray(image_features[indices]))
        txt = torch.from_numpy(np.ascontiguousarray(text_features[offsets[indices]])) if texts else None
        return maker(img, txt, noise, paired if texts else None).float()

    def cond_computed(texts: bool) -> torch.Tensor:
        img = clip.encode_cropped(uint8, protocol.boxes(indices, res, res)).cpu()
        txt = (clip.encode_texts([dataset.captions(int(i))[0] for i in indices]).cpu()
               if texts else None)
        return maker(img, txt, noise, paired if texts else None).float()

    def step(cond: torch.Tensor) -> None:
        runner.d_phase(images, cond, regularise=False)
        runner.g_phase(cond, regularise=False)

    def timed(fn) -> float:
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start

    for texts in [mode == "supervised" for mode in modes]:
        what = "image + caption features (supervised)" if texts else "image features (language-free)"
        step(cond_cached(texts))  # warm-up
        step(cond_computed(texts))
        cached_cond = [timed(lambda t=texts: cond_cached(t)) for _ in range(max(iters, 5))]
        computed_cond = [timed(lambda t=texts: cond_computed(t)) for _ in range(max(iters, 5))]
        with_cache, without = [], []
        for i in range(iters):  # alternated, so load changes hit both alike
            order = [(with_cache, cond_cached), (without, cond_computed)]
            for times, make in order if i % 2 == 0 else order[::-1]:
                times.append(timed(lambda make=make, t=texts: step(make(t))))
        a, b = statistics.median(with_cache), statistics.median(without)
        print(f"{scale:>5} ({res} px, batch {batch}, {clip.name}), {what}:")
        print(f"        condition: cached {statistics.median(cached_cond) * 1000:8.2f} ms, "
              f"computed in the step {statistics.median(computed_cond) * 1000:8.1f} ms")
        print(f"        step: with the cache {a:7.3f} s, without {b:7.3f} s, ratio without/with "
              f"{b / a:.3f} (component estimate "
              f"{(a - statistics.median(cached_cond) + statistics.median(computed_cond)) / a:.3f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=["build", "step"], default=None)
    parser.add_argument("--images", type=int, default=1000, help="world-32 images to cache")
    parser.add_argument("--vit-images", type=int, default=64, help="ViT-B/32 images to cache")
    parser.add_argument("--configs", nargs="+", choices=["mini", "paper"], default=["mini", "paper"])
    parser.add_argument("--modes", nargs="+", choices=["language-free", "supervised"],
                        default=["language-free", "supervised"])
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch threads {torch.get_num_threads()}, load average "
          f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        if args.only in (None, "build"):
            bench_build("world-32", world_folder(home, 32, args.images), random_clip("world", 32), home)
            bench_build("vit-b-32", world_folder(home, 256, args.vit_images),
                        random_clip("ViT-B-32", 224), home)
        if args.only in (None, "step"):
            for scale in args.configs:
                bench_step(scale, args.iters, home, args.modes)
    print(f"load average at the end {' '.join(f'{x:.1f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
