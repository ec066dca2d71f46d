"""Tracking overhead: the same mini-scale training loop with and without MLflow logging.

Runs Table 5's full LAFITE_G row at mini scale (32 px, mini widths), shortened to ``--kimg``,
``--repeats`` times with tracking off and on, interleaved (off, on, off, on, ...) so that load
from other processes hits both alike, and prints the median wall times and their ratio.
"With tracking" is exactly what ``lafite-repro run`` does during training: every loss window
goes to a :class:`lafite.tracking.RunLogger` (buffered, sent by ``log_batch`` from a background
thread) and every sample grid is queued as an artifact. Run creation (params, config artifact)
happens once per run before training starts and is timed separately.

The world's CLIP is used when the workspace has it; otherwise a randomly initialised model of the
same architecture stands in (the logging cost does not depend on what CLIP has learned).
Evaluation is off in both arms: it is the same work with or without tracking.

    python bench/bench_tracking.py [--kimg 2] [--repeats 3] [--log-every 20] [--n-train 1000]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from lafite import spec as spec_mod
from lafite.train import TrainCallbacks, train_run
from lafite.workspace import Workspace

REPO = Path(__file__).resolve().parent.parent


def _clip(workspace: Workspace, cfg):
    from lafite.clip import ClipEncoder, load_clip, world_clip_config
    from lafite.errors import UserError

    try:
        return load_clip(cfg.clip, workspace, cfg.data.resolution), "world CLIP (trained)"
    except UserError:
        pass
    import open_clip
    from open_clip.tokenizer import SimpleTokenizer

    model_cfg = world_clip_config(cfg.data.resolution)
    torch.manual_seed(0)
    model = open_clip.CLIP(**model_cfg)
    model.logit_scale = torch.nn.Parameter(model.logit_scale.detach().reshape(1))
    context = model_cfg["text_cfg"]["context_length"]
    encoder = ClipEncoder(model, SimpleTokenizer(context_length=context), name="bench-random-clip")
    return encoder, "world CLIP architecture, random weights"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kimg", type=float, default=2.0, help="training length per arm")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--log-every", type=int, default=None,
                        help="steps per logged loss window (default: the mini scale's)")
    parser.add_argument("--n-train", type=int, default=1000,
                        help="world training images (the mini scale's 4000 only lengthen set-up)")
    parser.add_argument("--home", default=None, help="workspace (default: a temporary one)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from lafite.tracking import FINISHED, Tracker

    spec = spec_mod.find(str(REPO / "experiments" / "table5.yaml"))
    overrides = {"train.kimg": args.kimg, "train.checkpoint_kimg": args.kimg / 2,
                 "world.n_train": args.n_train, "world.n_test": 100}
    if args.log_every:
        overrides["train.log_every"] = args.log_every
    cfg = spec.resolve(spec.row("LAFITE_G +L_ConG +L_ConD"), "mini").override(overrides)
    with tempfile.TemporaryDirectory() as scratch:
        workspace = Workspace.resolve(args.home or Path(scratch) / "ws")
        clip, clip_label = _clip(workspace, cfg)
        tracker = Tracker(workspace, f"sqlite:///{Path(scratch) / 'bench.db'}")
        parent = tracker.parent_run("bench-tracking", "mini")
        print(f"config: Table 5 full LAFITE_G at mini scale, {cfg.data.resolution}px, batch "
              f"{cfg.train.batch}, {args.kimg:g} kimg, log every {cfg.train.log_every} steps; "
              f"{clip_label}; torch threads {torch.get_num_threads()}")
        # Warm-up: materialise the world and the feature cache so neither arm pays for them.
        train_run(cfg.override({"train.kimg": cfg.train.batch / 1000}), Path(scratch) / "warm",
                  workspace, TrainCallbacks(), clip=clip)

        times: dict[str, list[float]] = {"off": [], "on": []}
        setup: list[float] = []
        logged = 0
        for repeat in range(args.repeats):
            for arm in ("off", "on"):
                run_dir = Path(scratch) / f"{arm}-{repeat}"
                if arm == "off":
                    callbacks = TrainCallbacks(on_metrics=lambda kimg, values: None,
                                               on_artifact=lambda path: None)
                    started = time.perf_counter()
                    train_run(cfg, run_dir, workspace, callbacks, clip=clip)
                    times[arm].append(time.perf_counter() - started)
                    continue
                begun = time.perf_counter()
                logger = tracker.start_child(
                    "bench-tracking", parent, row=f"repeat {repeat}", scale="mini", seed=0,
                    config_hash=f"bench-{repeat}-{os.getpid()}", config=cfg.to_dict(),
                    flat_params=cfg.flat(),
                )
                setup.append(time.perf_counter() - begun)
                callbacks = TrainCallbacks(
                    on_metrics=lambda kimg, values, lg=logger: lg.log_metrics(kimg, values),
                    on_artifact=lambda path, lg=logger: lg.log_artifact(path, "samples"),
                )
                started = time.perf_counter()
                train_run(cfg, run_dir, workspace, callbacks, clip=clip)
                times[arm].append(time.perf_counter() - started)
                logger.close(FINISHED)
                history = tracker.client.get_run(logger.run_id).data.metrics
                logged = len(history)
            print(f"repeat {repeat}: off {times['off'][-1]:.2f} s, on {times['on'][-1]:.2f} s")

        off, on = statistics.median(times["off"]), statistics.median(times["on"])
        load = os.getloadavg()
        print(f"median training time: tracking off {off:.2f} s, on {on:.2f} s "
              f"({logged} metric keys per run)")
        print(f"run creation (params, tags, config artifact), before training: "
              f"{statistics.median(setup):.2f} s per run")
        print(f"ratio on/off: {on / off:.4f} (overhead {100 * (on / off - 1):+.2f}%)")
        print(f"load average while measuring: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")


if __name__ == "__main__":
    main()
