"""Two training processes (torchrun, gloo on the CPU) follow one process on the same global batch."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from _train_smoke import smoke_config, tiny_clip  # noqa: E402

# Both runs see the same images, latent codes, conditions and CLIP crops. The generator's
# per-pixel noise inputs are the one thing each rank draws from its own global RNG, so the test
# pins them to the layers' constant noise in both runs (NOISE_PATCH); what remains is float
# summation order (gathered rows come in rank order, gradients are all-reduced).
# Step 0 (the losses before any update) must agree to float precision. Later steps drift: Adam
# with beta1 = 0 moves every weight by about +-lr on its first step whatever the gradient's size,
# so the ~0.15% of G's weights whose gradient is within rounding of zero take opposite steps in
# the two runs (measured: D equal to 1e-6 after one step, 136 of 91,806 G weights differ by
# 2 lr), and the GAN amplifies that; over 8 steps the largest difference measured was 3.7%.
FIRST_STEP_TOLERANCE = 1e-5
TRAJECTORY_TOLERANCE = 0.08

NOISE_PATCH = """
import lafite.model.generator as _gen
_forward = _gen.SynthesisLayer.forward
def _const_noise(self, x, w, cond, noise_mode):
    return _forward(self, x, w, cond, "const" if noise_mode == "random" else noise_mode)
_gen.SynthesisLayer.forward = _const_noise
"""

OVERRIDES = {"loss.gather": True, "loss.style_mixing": 0.0, "train.log_every": 1}

CHILD = """
import json, sys
sys.path.insert(0, {tests!r})
import torch
torch.set_num_threads(1)
import torch.distributed as dist
from _train_smoke import smoke_config, tiny_clip
from lafite.train import TrainCallbacks, train_run
from lafite.workspace import Workspace
{noise_patch}
log = []
result = train_run(smoke_config(**{overrides!r}), {run_dir!r}, Workspace.resolve({ws!r}),
                   TrainCallbacks(on_metrics=lambda kimg, m: log.append(m)), clip=tiny_clip())
if dist.get_rank() == 0:
    json.dump({{"log": log, "world": dist.get_world_size(), "steps": result.steps}},
              open({out!r}, "w"))
"""


def _trajectory(log):
    """Term -> value per logged step (None where a lazy regulariser did not run)."""
    keys = {k for m in log for k in m if not k.startswith("timing/")}
    return {k: [m.get(k) for m in log] for k in keys}


def _single_process_log(workspace, run_dir):
    from lafite.train import TrainCallbacks, train_run

    log = []
    result = train_run(smoke_config(**OVERRIDES), run_dir, workspace,
                       TrainCallbacks(on_metrics=lambda kimg, m: log.append(m)), clip=tiny_clip())
    assert result.steps == 8
    return log


def _assert_same_trajectory(single_log, ddp_log):
    one, two = _trajectory(single_log), _trajectory(ddp_log)
    assert set(one) == set(two) and "G/con_g" in one and "D/con_d" in one
    worst = max(abs(b - a) / max(abs(a), 1e-3) for t in one for a, b in zip(one[t], two[t])
                if a is not None and b is not None)
    print(f"largest relative difference over the trajectory: {worst:.2e}")
    for term in one:
        for step, (a, b) in enumerate(zip(one[term], two[term])):
            if a is None or b is None:
                assert a is b, (term, step)
                continue
            tolerance = FIRST_STEP_TOLERANCE if step == 0 else TRAJECTORY_TOLERANCE
            assert b == pytest.approx(a, rel=tolerance, abs=tolerance), (term, step, a, b)


@pytest.fixture
def constant_noise(monkeypatch):
    import lafite.model.generator as generator_module

    torch.set_num_threads(1)
    monkeypatch.setattr(generator_module.SynthesisLayer, "forward",
                        generator_module.SynthesisLayer.forward)  # restored after the test
    exec(NOISE_PATCH, {})


def _forked_rank(rank, port, run_dir, ws_root, queue):
    """One rank in a forked child: env:// variables as torchrun sets them."""
    import torch.distributed as dist

    from lafite.train import TrainCallbacks, train_run
    from lafite.workspace import Workspace

    os.environ.update({"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2",
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    log = []
    try:
        train_run(smoke_config(**OVERRIDES), run_dir, Workspace.resolve(ws_root),
                  TrainCallbacks(on_metrics=lambda kimg, m: log.append(m)), clip=tiny_clip())
        if rank == 0:
            queue.put(("ok", log, dist.get_world_size()))
    except BaseException as exc:  # report to the parent instead of dying silently
        queue.put(("error", repr(exc), rank))
        raise
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _free_port():
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_forked_gloo_ranks_match_one_process(workspace, tmp_path, constant_noise):
    """The env:// gloo path of torchrun, with ranks forked from this process (fast)."""
    import torch.multiprocessing as mp

    single_log = _single_process_log(workspace, tmp_path / "single")
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_forked_rank,
                         args=(rank, port, str(tmp_path / "ddp"), str(workspace.root), queue))
             for rank in range(2)]
    for proc in procs:
        proc.start()
    try:
        status, payload, world = queue.get(timeout=240)
    finally:
        for proc in procs:
            proc.join(timeout=60)
            if proc.is_alive():
                proc.kill()
    assert status == "ok", payload
    assert world == 2 and all(proc.exitcode == 0 for proc in procs)
    _assert_same_trajectory(single_log, payload)
    saved = torch.load(tmp_path / "ddp" / "checkpoint.pt", weights_only=True)
    assert saved["world_size"] == 2 and len(saved["rng"]) == 2


@pytest.mark.slow
def test_torchrun_two_gloo_processes_match_one_process(workspace, tmp_path, constant_noise):
    """`torchrun --standalone --nproc_per_node=2` on the smoke config, gathered negatives."""
    single_log = _single_process_log(workspace, tmp_path / "single")
    out = tmp_path / "ddp.json"
    script = tmp_path / "child.py"
    script.write_text(CHILD.format(tests=str(Path(__file__).parent), overrides=OVERRIDES,
                                   run_dir=str(tmp_path / "ddp"), ws=str(workspace.root),
                                   out=str(out), noise_patch=NOISE_PATCH))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         str(script)], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ddp = json.loads(out.read_text())
    assert ddp["world"] == 2 and ddp["steps"] == 8
    _assert_same_trajectory(single_log, ddp["log"])
    # Rank 0 alone wrote the checkpoint, and it holds both ranks' RNG states.
    saved = torch.load(tmp_path / "ddp" / "checkpoint.pt", weights_only=True)
    assert saved["world_size"] == 2 and len(saved["rng"]) == 2
