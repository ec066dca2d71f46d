"""Benchmark: evaluation overhead over torch-fidelity, and flat memory in the sample count.

Usage: python bench/bench_eval.py [--n 2000] [--repeats 3] [--threads 1] [--memory-n 1000 4000]

1. Time. The same ``--n`` mini-scale images (32 px world scenes standing in for generated
   samples) are scored for IS, FID-0 and KID with the same extractor (the world inspector's
   architecture) two ways, alternating, ``--repeats`` times each:
   * ours: ``lafite.metrics.evaluate.evaluate_generator`` end to end, with a generator that
     replays the images (so generation costs nothing and only the evaluation path is timed:
     caption cursor, streaming wrapper, uint8 conversion, our torch-fidelity calls);
   * torch-fidelity's own ``calculate_metrics`` on a Dataset of the same images.
   Both use warm reference statistics (the steady state during training). The brief asks for a
   ratio of at most 1.2 (medians).
2. Memory. Child processes evaluate ``--memory-n`` samples (IS, FID-0, FID-2, KID: the
   multi-radius path with its on-disk spool) from a small real ``lafite.model.Generator``;
   each polls its RSS every 10 ms during the evaluation (psutil) and prints the peak, and also
   its ``ru_maxrss``. The brief asks for the largest peak within 10% of the smallest.

Timings on a shared machine are pessimistic; the load average is printed with them.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

RESOLUTION = 32


def world_split(split: str, size: int):
    from lafite.data.world import World

    class Split(torch.utils.data.Dataset):
        def __init__(self) -> None:
            self.world = World("scenes", split, resolution=RESOLUTION, seed=0, size=size)
            pixels = self.world.images(range(size))
            self.pixels = torch.from_numpy(pixels).permute(0, 3, 1, 2).contiguous()

        def __len__(self) -> int:
            return size

        def __getitem__(self, index: int) -> torch.Tensor:
            return self.pixels[index]

        def captions(self, index: int) -> list[str]:
            return self.world.captions(index)

        def fingerprint(self) -> str:
            return "bench-" + self.world.key

    return Split()


class NullClip:
    """Conditions do not matter to a replaying generator; keep text encoding out of the timing."""

    id = "null"

    def encode_texts(self, texts):
        return torch.zeros(len(texts), 8)


class Replay(torch.nn.Module):
    """A "generator" that returns the stored images in order (float [-1, 1], exact in uint8)."""

    z_dim = 8

    def __init__(self, images: torch.Tensor) -> None:
        super().__init__()
        self.images = images
        self.position = 0

    def forward(self, z, cond, *, truncation_psi=1.0, noise_mode="random", mixing_prob=0.0):
        n = z.shape[0]
        batch = self.images[self.position : self.position + n]
        self.position = (self.position + n) % len(self.images)
        # +0.5 so that to_uint8's truncation gives back the stored value exactly.
        return (batch.float() + 0.5 - 128.0) / 127.5


def config(n_test: int, metrics: list[str], batch: int):
    from lafite.config import RunConfig

    return RunConfig().override(
        {
            "data.dataset": "world",
            "data.resolution": RESOLUTION,
            "world.n_test": n_test,
            "eval.extractor": "inspector",
            "eval.metrics": metrics,
            "eval.batch": batch,
        }
    )


def time_comparison(args) -> None:
    import torch_fidelity

    from lafite.data.inspector import Inspector
    from lafite.metrics.evaluate import evaluate_generator
    from lafite.metrics.extractors import module_extractor
    from lafite.workspace import Workspace

    torch.manual_seed(0)
    inspector = Inspector(RESOLUTION).eval()
    generated = world_split("test", args.n)
    reference = world_split("train", args.n)
    extractor = module_extractor(inspector, "inspector")
    cfg = config(args.n, ["IS", "FID-0", "KID"], args.batch)
    with tempfile.TemporaryDirectory() as tmp:
        workspace = Workspace.resolve(Path(tmp) / "ws")
        tf_cache = Path(tmp) / "tf-cache"

        def ours() -> dict:
            replay = Replay(generated.pixels)
            result = evaluate_generator(
                cfg,
                replay,
                workspace,
                clip=NullClip(),
                inspector=inspector,
                datasets={"train": reference, "test": generated},
                n_samples=args.n,
            )
            return result.metrics

        def theirs() -> dict:
            out = torch_fidelity.calculate_metrics(
                input1=generated,
                input2=reference,
                input2_cache_name="bench-reference",
                isc=True,
                fid=True,
                kid=True,
                cuda=False,
                verbose=False,
                save_cpu_ram=True,
                cache_root=str(tf_cache),
                batch_size=args.batch,
                rng_seed=cfg.eval.seed,
                kid_subset_size=min(cfg.eval.kid_subset_size, args.n),
                **extractor.calculate_metrics_kwargs(),
            )
            return {
                "IS": out["inception_score_mean"],
                "FID-0": out["frechet_inception_distance"],
                "KID": out["kernel_inception_distance_mean"],
            }

        # Warm-up: reference statistics cached for both, imports and first-call costs paid.
        ours_values, their_values = ours(), theirs()
        ours_times, their_times = [], []
        for _ in range(args.repeats):
            for fn, times in ((ours, ours_times), (theirs, their_times)):
                start = time.perf_counter()
                fn()
                times.append(time.perf_counter() - start)
    load = os.getloadavg()
    print(
        f"load average (1, 5, 15 min): {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}, {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}"
    )
    print(f"same numbers: ours {_fmt(ours_values)} | torch-fidelity {_fmt(their_values)}")
    ours_median, their_median = statistics.median(ours_times), statistics.median(their_times)
    print(
        f"{args.n} images, IS+FID-0+KID, inspector extractor, warm reference: "
        f"ours {ours_median:.2f} s (runs {_secs(ours_times)}), torch-fidelity "
        f"{their_median:.2f} s (runs {_secs(their_times)})"
    )
    print(f"ratio ours / torch-fidelity = {ours_median / their_median:.3f} (target <= 1.2)")


def _fmt(values: dict) -> str:
    return ", ".join(f"{k} {v:.6g}" for k, v in values.items())


def _secs(times: list[float]) -> str:
    return " ".join(f"{t:.2f}" for t in times)


def memory_child(n: int, batch: int, home: str) -> None:
    """Evaluate n samples from a small real generator; print peak RSS in MiB as JSON."""
    from lafite.config import ModelConfig
    from lafite.data.inspector import Inspector
    from lafite.metrics.evaluate import evaluate_generator
    from lafite.model.generator import Generator
    from lafite.workspace import Workspace

    torch.manual_seed(0)
    model_cfg = ModelConfig(
        z_dim=32, w_dim=32, mapping_layers=2, channel_base=1024, channel_max=32, cond_dim=16
    )
    G = Generator(model_cfg, RESOLUTION, cond_dim=8).eval()

    class RandomClip(NullClip):
        def encode_texts(self, texts):
            return torch.nn.functional.normalize(torch.randn(len(texts), 8), dim=1)

    cfg = config(500, ["IS", "FID-0", "FID-2", "KID"], batch)
    datasets = {"train": world_split("train", 2000), "test": world_split("test", 500)}
    import gc
    import threading

    import psutil

    gc.collect()
    process = psutil.Process()
    before = process.memory_info().rss / 2**20
    during = [before]
    done = threading.Event()

    def poll() -> None:
        # ru_maxrss alone would also count start-up peaks (imports, rendering the world).
        while not done.wait(0.01):
            during.append(process.memory_info().rss / 2**20)

    watcher = threading.Thread(target=poll, daemon=True)
    watcher.start()
    start = time.perf_counter()
    result = evaluate_generator(
        cfg,
        G,
        Workspace.resolve(home),
        clip=RandomClip(),
        inspector=Inspector(RESOLUTION).eval(),
        datasets=datasets,
        n_samples=n,
    )
    seconds = time.perf_counter() - start
    done.set()
    watcher.join()
    during.append(process.memory_info().rss / 2**20)
    print(
        json.dumps(
            {
                "n": n,
                "peak_rss_mib": max(during),
                "process_max_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                "rss_before_eval_mib": before,
                "seconds": seconds,
                "metrics": result.metrics,
            }
        )
    )


def memory_comparison(args) -> None:
    with tempfile.TemporaryDirectory() as home:

        def child(n: int) -> dict:
            command = [
                sys.executable,
                __file__,
                "--memory-child",
                str(n),
                "--batch",
                str(args.batch),
                "--threads",
                str(args.threads),
                "--home",
                home,
            ]
            out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
            return json.loads(out.strip().splitlines()[-1])

        child(min(args.memory_n))  # warm the reference cache, so every run does the same work
        rows = [child(n) for n in args.memory_n]
    for row in rows:
        print(
            f"n={row['n']:>6}: peak RSS during evaluation {row['peak_rss_mib']:.1f} MiB "
            f"(RSS before evaluation {row['rss_before_eval_mib']:.1f} MiB, process ru_maxrss "
            f"{row['process_max_rss_mib']:.1f} MiB), {row['seconds']:.1f} s"
        )
    low, high = rows[0]["peak_rss_mib"], rows[-1]["peak_rss_mib"]
    print(
        f"peak RSS at n={rows[-1]['n']} / at n={rows[0]['n']} = {high / low:.3f} (target <= 1.10)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--memory-n", type=int, nargs="+", default=[1000, 4000])
    parser.add_argument("--skip-time", action="store_true")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--memory-child", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--home", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.memory_child:
        memory_child(args.memory_child, args.batch, args.home)
        return
    if not args.skip_time:
        time_comparison(args)
    if not args.skip_memory:
        memory_comparison(args)


if __name__ == "__main__":
    main()
