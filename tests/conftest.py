"""Shared test setup: offline, quiet, and every test in its own workspace."""

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TORCH_HOME", os.path.join(os.path.dirname(__file__), ".torch-home-unused"))


@pytest.fixture
def workspace(tmp_path, monkeypatch):
    """A fresh workspace folder, also exported as LAFITE_HOME for CLI subprocesses."""
    from lafite.workspace import Workspace

    home = tmp_path / "ws"
    monkeypatch.setenv("LAFITE_HOME", str(home))
    return Workspace.resolve(home)


@pytest.fixture
def one_torch_thread():
    """Tiny tensors: one torch thread avoids OpenMP spin contention on a loaded 2-core machine."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> Path:
    """A models folder holding a tiny world CLIP, a tiny inspector for 16 px and tiny world
    text encoders.

    The real ones take minutes to train and the training under test does not care how good
    they are, so tiny ones are trained here (seconds) and put where the suite looks for the
    real ones. Every test workspace gets a copy: the tests exercise the real runner, training,
    evaluation and MLflow code paths, only the helper models are small.
    """
    import shutil

    import torch

    from lafite.clip import (
        WORLD_CLIP_WEIGHTS,
        WorldClipTraining,
        pretrain_world_clip,
        world_clip_config,
        world_clip_dir,
    )
    from lafite.data.inspector import InspectorConfig, inspector_path, train_inspector
    from lafite.encoders.world_text import WorldTextConfig, pretrain_world_text, world_text_dir
    from lafite.workspace import Workspace

    torch.set_num_threads(1)
    scratch = Workspace.resolve(tmp_path_factory.mktemp("tiny") / "build")
    target = Workspace.resolve(tmp_path_factory.mktemp("tiny") / "ws")
    resolution = 16
    tiny_clip = {
        "embed_dim": 32,
        "vision_cfg": {"image_size": resolution, "layers": 1, "width": 32, "head_width": 16,
                       "patch_size": 4},
        "text_cfg": {"context_length": 40, "vocab_size": 49408, "width": 32, "heads": 2,
                     "layers": 1},
    }
    built = pretrain_world_clip(
        scratch, resolution, progress=False, model_cfg=tiny_clip,
        training=WorldClipTraining(n_train=128, steps=5, batch=32, warmup_steps=1, eval_groups=1),
    )
    # The shipped CLIP and Table 6's coarse-patch one (its ViT-B/32 analogue) alike.
    for patch_size in (0, 8):
        real_place = world_clip_dir(target, resolution,
                                    model_cfg=world_clip_config(resolution, patch_size))
        real_place.mkdir(parents=True)
        shutil.copy(built / WORLD_CLIP_WEIGHTS, real_place / WORLD_CLIP_WEIGHTS)
        shutil.copy(built / "meta.json", real_place / "meta.json")
        # open_clip registers the model config under its file stem, which names the folder.
        (config_file,) = [p for p in built.glob("*.json") if p.name != "meta.json"]
        shutil.copy(config_file, real_place / config_file.name.replace(built.name, real_place.name))
    # Table 6's text-only encoders, of two widths like the real ones.
    for name, width in (("world-text-small", 16), ("world-text-large", 24)):
        tiny_text = WorldTextConfig(width=width, layers=1, heads=2, captions_per_domain=100,
                                    steps=10, batch=32, probe_train=100, probe_test=50)
        text_built = pretrain_world_text(scratch, name, progress=False, config=tiny_text)
        shutil.copytree(text_built, world_text_dir(target, name))
    inspector = train_inspector(
        scratch, resolution, progress=False,
        config=InspectorConfig(width=8, feature_dim=32, steps=20, batch=32, eval_images=32),
    )
    shutil.copy(inspector, inspector_path(target, resolution))
    return target.models_dir
