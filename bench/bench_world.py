"""Benchmark: how fast the built-in world renders (the brief: 10,000 images of 32x32 in seconds).

Usage: python bench/bench_world.py [--n 10000] [--resolution 32] [--domain scenes]
Prints the time split into scene sampling (per-image Python) and vectorised rendering, images
per second, and the ratio to a 10-second budget. Run it on an idle machine for absolute numbers;
the machine's load average is printed alongside.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

from lafite.data.world import World, materialise, render_scenes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument("--domain", default="scenes")
    parser.add_argument("--budget", type=float, default=10.0, help="seconds allowed for --n images")
    parser.add_argument("--materialise", type=int, default=1000, help="images to write as PNG+txt")
    args = parser.parse_args()

    world = World(args.domain, "train", args.resolution, size=args.n)
    cpu_start = time.process_time()
    start = time.perf_counter()
    scenes = [world._scene(i) for i in range(args.n)]
    sampled = time.perf_counter()
    pixels = render_scenes(scenes, args.resolution)
    rendered = time.perf_counter()
    cpu_seconds = time.process_time() - cpu_start
    captions = [world.captions(i) for i in range(args.n)]
    captioned = time.perf_counter()
    total = rendered - start
    print(f"load average: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    print(
        f"{args.n} images {pixels.shape[1]}x{pixels.shape[2]} ({args.domain}): "
        f"{total:.2f} s ({args.n / total:,.0f} img/s; sampling {sampled - start:.2f} s, "
        f"rendering {rendered - sampled:.2f} s; CPU time {cpu_seconds:.2f} s, which is what an "
        "idle machine's wall time would be)"
    )
    print(f"captions for {len(captions)} images: {captioned - rendered:.2f} s")
    print(
        f"budget {args.budget:.0f} s / measured {total:.2f} s = {args.budget / total:.1f}x headroom"
    )
    if args.materialise:
        small = World(args.domain, "train", args.resolution, size=args.materialise)
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            materialise(small, os.path.join(tmp, "w"))
            seconds = time.perf_counter() - start
        print(f"materialise {args.materialise} images (PNG + txt + truth): {seconds:.2f} s")


if __name__ == "__main__":
    main()
