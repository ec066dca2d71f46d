"""Measure the world's small CLIP: pretraining time and held-out retrieval (issue 2 targets).

Trains the default world CLIP (or reuses it from the cache), then prints training wall time,
the CPU time the process used, the load average, and image->text / text->image top-1 among
100 held-out pairs on the ``web`` and ``scenes`` test splits, plus the own-vs-other caption
cosines on ``scenes``. A second run shows the cache: it returns at once.

    python bench/bench_clip.py --resolution 32 [--threads N] [--home DIR]

On a machine shared with other jobs, ``--threads 1`` avoids OpenMP oversubscription (two
threads on a saturated 2-core box are several times slower than one); the CPU seconds printed
then estimate the time on an idle machine.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch

from lafite.clip import load_world_clip, pretrain_world_clip, world_clip_dir, world_clip_report
from lafite.workspace import Workspace


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    parser.add_argument("--home", default=None, help="workspace (default: $LAFITE_HOME or ./lafite-workspace)")
    parser.add_argument("--recompute", action="store_true", help="re-measure retrieval from the saved weights")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    workspace = Workspace.resolve(args.home)

    cached = (world_clip_dir(workspace, args.resolution, args.seed) / "meta.json").is_file()
    wall, cpu = time.time(), time.process_time()
    folder = pretrain_world_clip(workspace, args.resolution, seed=args.seed, progress=True)
    wall, cpu = time.time() - wall, time.process_time() - cpu
    print(f"pretrain_world_clip: {wall:.1f}s wall, {cpu:.1f}s CPU ({'cached' if cached else 'trained'}), "
          f"load average now {os.getloadavg()}, torch threads {torch.get_num_threads()}")
    report = world_clip_report(workspace, args.resolution, args.seed, recompute=args.recompute)
    print(json.dumps(report, indent=2))

    again = time.time()
    pretrain_world_clip(workspace, args.resolution, seed=args.seed, progress=False)
    print(f"second pretrain_world_clip call: {time.time() - again:.2f}s (cache hit)")
    encoder = load_world_clip(folder)
    print(f"encoder {encoder.id}: dim {encoder.dim}, image size {encoder.image_size}, "
          f"{sum(p.numel() for p in encoder.model.parameters()) / 1e6:.2f}M parameters")


if __name__ == "__main__":
    main()
