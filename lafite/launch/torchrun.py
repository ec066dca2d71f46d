"""One node, N processes: the CLI starts torchrun on a run ticket and waits for it.

``torchrun --standalone --nproc_per_node N -m lafite.launch.execute TICKET``: every rank trains
(gradients averaged by lafite.distributed), rank 0 writes checkpoints and talks to MLflow. On a
CUDA node each rank takes one GPU; on a CPU the ranks use gloo (a correctness check, not a
speed-up: they share the cores).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from lafite.errors import UserError


def check_gpus(processes: int, devices: list[str]) -> None:
    """Refuse a process count the node cannot give GPUs for (runs that train on CUDA)."""
    if processes < 1:
        raise UserError(f"--gpus must be at least 1, got {processes}")
    if not any(d in ("cuda", "auto") or d.startswith("cuda:") for d in devices):
        return  # CPU runs: N gloo processes share the cores
    import torch

    available = torch.cuda.device_count()
    if "auto" in devices and available == 0:
        return  # "auto" trains on the CPU here
    if available < processes:
        raise UserError(f"--gpus {processes}: this node has {available} CUDA device(s) "
                        f"(torch.cuda.device_count()); ask for at most {available}, or use "
                        "--launcher slurm to run on a node that has them")


def command(ticket: Path, processes: int) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1",
            f"--nproc_per_node={processes}", "-m", "lafite.launch.execute", str(ticket)]


_PROGRESS = re.compile(r": ([0-9.]+)/[0-9.e+]+ kimg$")


def launch(ticket: Path, processes: int, log: Path,
           on_progress: Callable[[float], None] | None = None) -> int:
    """Run the ticket on ``processes`` ranks; their output goes to ``log`` (its progress lines
    reach ``on_progress``). Returns the exit code (the run's own state is in MLflow)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "LAFITE_LAUNCHER": "torchrun"}
    with open(log, "a") as out, open(log) as follow:
        follow.seek(0, os.SEEK_END)
        process = subprocess.Popen(command(ticket, processes), stdout=out,
                                   stderr=subprocess.STDOUT, env=env)
        try:
            while True:
                try:
                    code = process.wait(timeout=1.0)
                except subprocess.TimeoutExpired:
                    code = None
                for line in follow.readlines():
                    match = _PROGRESS.search(line.strip())
                    if match and on_progress:
                        on_progress(float(match.group(1)))
                if code is not None:
                    return code
        except BaseException:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
            raise
