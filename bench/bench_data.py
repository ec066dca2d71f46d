"""Data loading at 256 px from each published dataset format: images/s of one worker.

For every format (lafite.data.formats) a few hundred images are written in its published layout
(lafite.data.formats.samples: photo-like smooth images at the dataset's typical download size:
COCO 640x480 JPEG, CUB 500x375 JPEG, LN-COCO 640x427 JPEG, MM-CelebA-HQ 1024x1024 JPEG, CC3M
384x256 JPEG in webdataset shards, FFHQ 1024x1024 PNG, the official zip's 256x256 PNG) into a
temporary folder, then opened through ``open_dataset`` (what training reads) and every image is
decoded, centre-cropped and resized to 256 px in one process with one thread: the throughput of
one DataLoader worker. ``index s`` is the time ``open_dataset`` takes to index the split.
The prepared image + .txt folder with COCO-sized JPEGs is the baseline of the ratio column.

    python bench/bench_data.py                     # 200 images per format (about 2 min)
    python bench/bench_data.py --images 400 --formats coco2014 cc3m
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

from lafite.config import RunConfig  # noqa: E402
from lafite.data.datasets import open_dataset  # noqa: E402
from lafite.data.formats.samples import SIZES, caption, encode, write_sample  # noqa: E402
from lafite.workspace import Workspace  # noqa: E402

FORMATS = ("folder", "coco2014", "cub", "ln-coco", "mm-celeba-hq", "cc3m", "ffhq", "lafite-zip")


def write_folder(root: Path, count: int, size: tuple[int, int]) -> None:
    """The prepared layout: train/k.jpg + k.txt (the baseline)."""
    (root / "train").mkdir(parents=True)
    (root / "test").mkdir()
    for i in range(count):
        (root / "train" / f"{i:06d}.jpg").write_bytes(encode(i, size))
        (root / "train" / f"{i:06d}.txt").write_text("\n".join(caption(i, k) for k in range(5)))


def bench(name: str, data_root: Path, count: int, resolution: int, repeats: int) -> dict:
    dataset = "coco2014" if name in ("folder", "lafite-zip") else name
    folder = data_root / dataset
    started = time.perf_counter()
    if name == "folder":
        write_folder(folder, count, SIZES["coco2014"])
    else:
        write_sample(name, folder, train=count, test=1)
    written = time.perf_counter() - started
    cfg = RunConfig().override({"data.dataset": dataset, "data.data_root": str(data_root),
                                "data.resolution": resolution})
    workspace = Workspace.resolve(data_root / "ws")
    started = time.perf_counter()
    data = open_dataset(cfg, "train", workspace)
    index = time.perf_counter() - started
    for i in range(min(5, len(data))):  # warm the page cache and PIL's plugins
        data.image(i)
    rates = []
    for _ in range(repeats):
        started = time.perf_counter()
        for i in range(len(data)):
            data.image(i)
        rates.append(len(data) / (time.perf_counter() - started))
    size = SIZES["coco2014" if name == "folder" else name]
    shutil.rmtree(folder)
    return {"format": name, "images": len(data), "source": f"{size[0]}x{size[1]}",
            "index_s": index, "write_s": written, "rate": max(rates)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=2, help="passes; the best is reported")
    parser.add_argument("--formats", nargs="+", default=list(FORMATS), choices=FORMATS)
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-data-") as tmp:
        for name in args.formats:
            rows.append(bench(name, Path(tmp), args.images, args.resolution, args.repeats))
            row = rows[-1]
            print(f"  {row['format']}: {row['rate']:.1f} images/s", flush=True)
    base = next((r["rate"] for r in rows if r["format"] == "folder"), None)
    print(f"\ndata loading at {args.resolution} px, one worker (one process, one thread), "
          f"{os.cpu_count()} CPUs, best of {args.repeats} passes")
    print(f"{'format':<14}{'images':>7}{'source px':>11}{'index s':>9}{'images/s':>10}"
          f"{'ms/image':>10}{'vs folder':>10}")
    for r in rows:
        ratio = f"{r['rate'] / base:.2f}" if base else "-"
        print(f"{r['format']:<14}{r['images']:>7}{r['source']:>11}{r['index_s']:>9.3f}"
              f"{r['rate']:>10.1f}{1000 / r['rate']:>10.2f}{ratio:>10}")


if __name__ == "__main__":
    main()
