"""One training run end to end at smoke size: schedule, checkpoints, resume, NaN stop, variants."""

import hashlib
import sys
import time
from pathlib import Path

import pytest
import torch

import lafite.losses
from lafite.errors import UserError
from lafite.train import (
    GlobalBatchSampler,
    TrainCallbacks,
    TrainingDiverged,
    load_generator,
    train_run,
)

sys.path.insert(0, str(Path(__file__).parent))
from _train_smoke import smoke_config, tiny_clip  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def clip():
    return tiny_clip()


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """One workspace for the module: the smoke world and its features are built once."""
    from lafite.workspace import Workspace

    return Workspace.resolve(tmp_path_factory.mktemp("train-ws"))


def _weights(path):
    saved = torch.load(path, map_location="cpu", weights_only=True)
    return {net: saved[net] for net in ("G", "D", "G_ema")}


def _assert_equal_weights(a, b):
    for net in a:
        for name in a[net]:
            assert torch.equal(a[net][name], b[net][name]), f"{net}.{name} differs"


def test_sampler_is_a_seeded_endless_shuffle():
    sampler = GlobalBatchSampler(10, seed=3)
    stream = sampler.take(0, 35)
    for epoch in range(3):
        assert sorted(stream[epoch * 10 : (epoch + 1) * 10].tolist()) == list(range(10))
    assert not torch.equal(stream[:10], stream[10:20])
    # The position alone reproduces the stream, whatever was read before.
    assert torch.equal(GlobalBatchSampler(10, seed=3).take(17, 9), stream[17:26])
    assert not torch.equal(GlobalBatchSampler(10, seed=4).take(0, 10), stream[:10])


def test_smoke_run_logs_checkpoints_and_a_finished_run_returns_at_once(workspace, tmp_path, clip):
    metrics, evaluations, artifacts, checkpoints = [], [], [], []

    def evaluate(G_ema, kimg):
        assert not G_ema.training
        return {"kimg_seen": kimg}

    callbacks = TrainCallbacks(
        on_metrics=lambda kimg, m: metrics.append((kimg, m)),
        on_evaluate=lambda kimg, r: evaluations.append((kimg, r)),
        on_artifact=artifacts.append,
        on_checkpoint=checkpoints.append,
        evaluate=evaluate,
    )
    run_dir = tmp_path / "run"
    result = train_run(smoke_config(), run_dir, workspace, callbacks, clip=clip)
    assert (result.steps, result.kimg, result.resumed_from) == (8, 0.032, None)
    # log_every=2 steps; every term of Eqs. 8 and 9 and R1 (every 4 steps) is logged.
    assert [k for k, _ in metrics] == pytest.approx([0.008, 0.016, 0.024, 0.032])
    for key in ("D/adv_real", "D/adv_fake", "D/con_d", "G/adv", "G/con_d", "G/con_g",
                "R1/total", "timing/img_per_s"):
        assert key in metrics[0][1]
    # Evaluated at the start, every eval_kimg (0.016) and at the end.
    assert [k for k, _ in evaluations] == pytest.approx([0.0, 0.016, 0.032])
    assert len(checkpoints) == 2 and all(p == result.final_checkpoint for p in checkpoints)
    assert len(artifacts) == 3 and all(Path(p).suffix == ".png" for p in artifacts)
    assert (run_dir / "samples" / "captions.txt").read_text().startswith("columns 0-1: ")

    saved = torch.load(result.final_checkpoint, weights_only=True)
    assert saved["step"] == 8 and saved["finished"] and saved["sampler"]["position"] == 32
    assert set(saved["rng"][0]) == {"torch", "numpy", "python", "cuda"}
    G_ema, cfg = load_generator(result.final_checkpoint)
    assert cfg == smoke_config()
    with torch.no_grad():
        images = G_ema(torch.randn(2, G_ema.z_dim), torch.nn.functional.normalize(
            torch.randn(2, clip.dim), dim=1), noise_mode="const")
    assert images.shape == (2, 3, 16, 16) and torch.isfinite(images).all()

    started = time.perf_counter()
    again = train_run(smoke_config(), run_dir, workspace, callbacks, clip=clip)
    assert time.perf_counter() - started < 2.0
    assert (again.steps, again.resumed_from) == (8, 8)
    assert len(checkpoints) == 2


def test_stopped_and_resumed_run_ends_with_the_uninterrupted_weights(workspace, tmp_path, clip):
    cfg = smoke_config()
    straight = train_run(cfg, tmp_path / "straight", workspace, clip=clip)

    class Stop(Exception):
        pass

    def stop_after_five(step):
        if step == 5:
            raise Stop

    with pytest.raises(Stop):
        train_run(cfg, tmp_path / "resumed", workspace, TrainCallbacks(on_step=stop_after_five),
                  clip=clip)
    resumed = train_run(cfg, tmp_path / "resumed", workspace, clip=clip)
    assert resumed.resumed_from == 4  # the last checkpoint before the stop
    _assert_equal_weights(_weights(straight.final_checkpoint), _weights(resumed.final_checkpoint))


def test_nan_loss_stops_naming_step_and_term_and_keeps_the_checkpoint(
    workspace, tmp_path, clip, monkeypatch
):
    real_generator_loss = lafite.losses.generator_loss
    calls = {"n": 0}

    def poisoned(**kwargs):
        terms = real_generator_loss(**kwargs)
        calls["n"] += 1
        if calls["n"] == 6:  # step index 5, after the checkpoint at step 4
            terms["con_g"] = terms["con_g"] * float("nan")
            terms["total"] = terms["total"] + terms["con_g"]
        return terms

    monkeypatch.setattr(lafite.losses, "generator_loss", poisoned)
    run_dir = tmp_path / "run"
    digests = []
    callbacks = TrainCallbacks(on_checkpoint=lambda p: digests.append(
        hashlib.sha256(Path(p).read_bytes()).hexdigest()))
    with pytest.raises(TrainingDiverged, match=r"step 5: loss term 'G/con_g' is nan") as info:
        train_run(smoke_config(), run_dir, workspace, callbacks, clip=clip)
    assert isinstance(info.value, UserError) and "checkpoint.pt is kept" in str(info.value)
    assert len(digests) == 1
    assert hashlib.sha256((run_dir / "checkpoint.pt").read_bytes()).hexdigest() == digests[0]


def test_variants_bf16_channels_last_g_first_supervised_semi_mirror(workspace, tmp_path, clip):
    seen = []
    cfg = smoke_config(**{
        "train.precision": "bf16", "train.channels_last": True, "train.update_order": "g-first",
        "train.kimg": 0.016, "mode": "semi-supervised",
        "perturb.text_mix": 0.1, "data.paired_fraction": 0.5, "data.mirror": True,
        "loss.pl_weight": 2.0, "loss.pl_interval": 2, "loss.logits": "exp",
        "loss.reduction": "mean",
    })
    result = train_run(cfg, tmp_path / "run", workspace,
                       TrainCallbacks(on_metrics=lambda k, m: seen.append(m)), clip=clip)
    assert result.steps == 4
    assert any("PL/pl_length" in m for m in seen)
    assert all(v == v for m in seen for v in m.values())  # finite (NaN would have stopped it)


def test_resuming_with_a_different_model_config_is_refused(workspace, tmp_path, clip):
    run_dir = tmp_path / "run"
    train_run(smoke_config(**{"train.kimg": 0.008}), run_dir, workspace, clip=clip)
    # A longer schedule continues the same run...
    longer = train_run(smoke_config(**{"train.kimg": 0.016}), run_dir, workspace, clip=clip)
    assert (longer.resumed_from, longer.steps) == (2, 4)
    # ...but other knobs would silently mix two experiments.
    with pytest.raises(UserError, match="loss.tau"):
        train_run(smoke_config(**{"train.kimg": 0.024, "loss.tau": 0.1}), run_dir, workspace,
                  clip=clip)


# -- modes: fine-tuning, zero-shot, semi-supervised ----------------------------------------------


@pytest.fixture(scope="module")
def pretrained(workspace, tmp_path_factory, clip):
    """A finished smoke run to start from."""
    run_dir = tmp_path_factory.mktemp("pretrained")
    return train_run(smoke_config(**{"train.kimg": 0.008}), run_dir, workspace,
                     clip=clip).final_checkpoint


def test_fine_tuning_starts_from_the_pretrained_networks(workspace, tmp_path, clip, pretrained):
    first_eval = {}

    def evaluate(g_ema, kimg):
        if not first_eval:
            first_eval.update({k: v.clone() for k, v in g_ema.state_dict().items()})
        return {}

    cfg = smoke_config(**{"train.kimg": 0.008, "mode": "supervised",
                          "train.init_checkpoint": str(pretrained)})
    result = train_run(cfg, tmp_path / "run", workspace, TrainCallbacks(evaluate=evaluate),
                       clip=clip)
    assert (result.steps, result.resumed_from) == (2, None)  # a fresh schedule
    before = _weights(pretrained)
    for name, tensor in before["G_ema"].items():
        assert torch.equal(first_eval[name], tensor), f"G_ema.{name} was not restored"
    after = _weights(result.final_checkpoint)
    assert not all(torch.equal(after["G"][k], v) for k, v in before["G"].items())  # it trained
    saved = torch.load(result.final_checkpoint, map_location="cpu", weights_only=True)
    assert saved["step"] == 2 and saved["ema_rampup"] is False


def test_init_checkpoint_missing_or_of_another_architecture(workspace, tmp_path, clip, pretrained):
    missing = smoke_config(**{"train.init_checkpoint": str(tmp_path / "nope.pt")})
    with pytest.raises(UserError, match=r"nope\.pt does not exist"):
        train_run(missing, tmp_path / "a", workspace, clip=clip)
    wider = smoke_config(**{"train.init_checkpoint": str(pretrained), "model.channel_max": 64})
    with pytest.raises(UserError) as info:
        train_run(wider, tmp_path / "b", workspace, clip=clip)
    message = str(info.value)
    assert str(pretrained) in message and "another architecture" in message
    assert "G." in message and "shape" in message


def test_zero_shot_evaluates_the_pretrained_generator_without_training(
        workspace, tmp_path, clip, pretrained):
    evaluated = []
    cfg = smoke_config(**{"mode": "zero-shot", "train.init_checkpoint": str(pretrained)})
    result = train_run(cfg, tmp_path / "run", workspace,
                       TrainCallbacks(evaluate=lambda g, kimg: evaluated.append(kimg) or {}),
                       clip=clip)
    assert (result.steps, result.kimg, evaluated) == (0, 0.0, [0.0])
    _assert_equal_weights(_weights(pretrained), _weights(result.final_checkpoint))
    g_ema, saved_cfg = load_generator(result.final_checkpoint)
    assert saved_cfg.mode == "zero-shot"
    # A second call finds it finished and does nothing.
    again = train_run(cfg, tmp_path / "run", workspace, clip=clip)
    assert again.steps == 0 and again.resumed_from == 0


@pytest.mark.parametrize("split", ["first", "random"])
def test_semi_supervised_pairs_a_fraction_of_the_images(workspace, tmp_path, clip, split):
    from lafite.train import _Trainer

    cfg = smoke_config(**{"mode": "semi-supervised", "data.paired_fraction": 0.25,
                          "data.paired_split": split})
    trainer = _Trainer(cfg, tmp_path / "run", workspace, TrainCallbacks(), clip, None, None)
    mask = trainer._paired_mask(48)
    assert int(mask.sum()) == 12
    if split == "first":
        assert mask[:12].all() and not mask[12:].any()  # the official --ratio
    else:
        assert not mask[:12].all()
    supervised = _Trainer(smoke_config(**{"mode": "supervised"}), tmp_path / "r2", workspace,
                          TrainCallbacks(), clip, None, None)
    assert supervised._paired_mask(48).all()
