"""How long `lafite-repro report` takes over 100 finished runs (issue 7: at most 10 s).

Writes 100 child runs into a fresh sqlite store through the tracking API, the way the runner
does (Table 5 at smoke scale, 8 rows x 12 seeds, plus 4 rows at mini scale; each run with 20
logged loss points, its evaluation metrics and a sample grid), then times ``build_report`` in
HTML and in Markdown. Filling the store is not timed. The first build pays for imports (mlflow,
matplotlib, jinja2) and is printed separately; the budget applies to the warm build, as the CLI
process pays those imports once.

    python bench/bench_report.py [--runs 100] [--keep DIR]

Prints the load average beside the timings: on a shared machine they are pessimistic.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np


def fill(workspace, spec, n_runs: int) -> None:
    from PIL import Image

    from lafite import spec as spec_mod
    from lafite.tracking import Tracker

    tracker = Tracker(workspace)
    rng = np.random.default_rng(0)
    seeds = max(1, (n_runs - 4) // len(spec.trainable_rows))
    plans = spec_mod.plan(spec, "smoke", seeds=seeds)
    plans += spec_mod.plan(spec, "mini", seeds=1)[: max(0, n_runs - len(plans))]
    parents = {}
    for run in plans[:n_runs]:
        if run.scale not in parents:
            parents[run.scale] = tracker.parent_run(spec.id, run.scale)
        run_dir = workspace.runs_dir / run.hash
        logger = tracker.start_child(
            spec.id, parents[run.scale], row=run.row.name, scale=run.scale, seed=run.seed,
            config_hash=run.hash, config=run.config.to_dict(), flat_params=run.config.flat(),
            extra_tags={"lafite.run_dir": str(run_dir)},
        )
        for step in range(1, 21):
            logger.log_metrics(step * 0.004, {"G/total": 2 / step + rng.random() * 0.1,
                                              "D/total": 1 + rng.random() * 0.1,
                                              "G/con_g": 1 / step, "D/con_d": 1.5 / step})
        values = {m.name: float(rng.random() * 10) for m in spec.metrics}
        values["R-precision - training-signal diagnostic"] = values.pop("R-precision")
        logger.log_metrics(0.08, values)
        samples = run_dir / "samples"
        samples.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (32, 256, 3), dtype=np.uint8)).save(
            samples / "fakes_000000.080kimg.png")
        (samples / "captions.txt").write_text("columns 0-1: a small red circle on grass\n")
        logger.close()
    for parent in parents.values():
        tracker.finish_parent(parent, "FINISHED")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--keep", type=Path, default=None,
                        help="workspace folder to fill once and reuse on later calls")
    args = parser.parse_args()

    from lafite import spec as spec_mod
    from lafite.workspace import Workspace

    root = args.keep or Path(tempfile.mkdtemp(prefix="bench-report-"))
    workspace = Workspace.resolve(root)
    spec = spec_mod.find("table5")
    if not (workspace.root / "mlflow.db").exists():
        start = time.perf_counter()
        fill(workspace, spec, args.runs)
        print(f"filled the store with {args.runs} runs in {time.perf_counter() - start:.1f} s "
              f"(not part of the measurement)")

    from lafite.report import build_report

    out = Path(tempfile.mkdtemp(prefix="bench-report-out-"))
    timings = {}
    for label, fmt in (("html, first (with imports)", "html"), ("html", "html"),
                       ("markdown", "markdown")):
        start = time.perf_counter()
        written = build_report(workspace, out_dir=out, fmt=fmt, specs=[spec])
        timings[label] = time.perf_counter() - start
    size = sum(p.stat().st_size for p in written)
    load = os.getloadavg()
    for label, seconds in timings.items():
        print(f"build_report over {args.runs} runs, {label}: {seconds:.2f} s")
    print(f"pages: {out} ({size / 1e3:.0f} kB of markdown); load average "
          f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} CPUs")
    verdict = "within" if timings["html"] <= 10 else "OVER"
    print(f"warm HTML build {timings['html']:.2f} s: {verdict} the 10 s budget")


if __name__ == "__main__":
    main()
