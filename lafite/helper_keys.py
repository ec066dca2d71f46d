"""What names each helper model (the world's CLIP, the inspector, the world's text encoders):
its settings, its defaults per resolution and its cache key, computed without torch.

Planning a table resolves every run's jobs and their keys; keeping the keys here, away from the
models, lets a finished table re-run in seconds without importing torch or open_clip.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from lafite.data.world import WORLD_VERSION
from lafite.errors import UserError
from lafite.workspace import Workspace

# -- the world's CLIP --------------------------------------------------------------------------

WORLD_CLIP_CONFIG_DIR = Path(__file__).parent / "clip_configs"
# The world's web split is generated with this world seed whatever the CLIP's training seed:
# the CLIP is a fixed instrument for all runs, and its held-out test pairs stay the same.
_WORLD_CLIP_DATA_SEED = 0


@dataclass(frozen=True)
class WorldClipTraining:
    """How the world's small CLIP is trained (part of its cache key)."""

    n_train: int = 40000
    steps: int = 800
    batch: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.1
    warmup_steps: int = 80
    # Evaluation after training: groups of 100 held-out pairs per domain.
    eval_groups: int = 10


# The 32-px CLIP (the condition space of every mini-scale run) trains three times longer. After
# 800 steps its loss is already met within a batch of 128 by colour, background and size, and
# linear probes fitted on its image features and applied to captions read the main object's
# position 24.4% and shape 18.3% (chance 21% and 17.6%); after 2400 steps, 47.5% and 30.1%, and
# the full LAFITE_G row at 30 kimg draws the captioned position 53.9% against 18.7% (FID-0 1966
# against 2465). 16 px serves the smoke scale only (the quickstart), which proves the plumbing:
# a narrower, shallower CLIP with 4-px patches (world-clip-16.json) trained 300 steps on 8,000
# images, about a minute on a loaded 2-core CPU with its held-out report, against 36 minutes for
# the 800-step 96-wide one it replaces on an AVX2 machine; it still retrieves the right scenes
# caption among 100 43% of the time (chance 1%).
_TRAINING_BY_RESOLUTION = {
    32: WorldClipTraining(steps=2400, warmup_steps=240),
    16: WorldClipTraining(n_train=8000, steps=300, warmup_steps=30, eval_groups=5),
}


def default_world_clip_training(resolution: int) -> WorldClipTraining:
    """How the world CLIP for ``resolution`` px is trained unless told otherwise."""
    return _TRAINING_BY_RESOLUTION.get(int(resolution), WorldClipTraining())


def world_clip_config(resolution: int, patch_size: int = 0) -> dict[str, Any]:
    """The open_clip model config shipped for world images of ``resolution`` px, with the vision
    transformer's patches of ``patch_size`` px instead of the shipped size when it is not 0."""
    path = WORLD_CLIP_CONFIG_DIR / f"world-clip-{resolution}.json"
    if not path.is_file():
        sizes = sorted(int(p.stem.rsplit("-", 1)[1]) for p in WORLD_CLIP_CONFIG_DIR.glob("world-clip-*.json"))
        raise UserError(
            f"No world CLIP config for resolution {resolution}; the world's small CLIP exists for "
            f"resolutions {', '.join(map(str, sizes))} (data.resolution)."
        )
    config = json.loads(path.read_text())
    if patch_size:
        if patch_size < 1 or resolution % patch_size or patch_size == resolution:
            raise UserError(
                f"clip.world_patch_size: {patch_size} px patches do not tile {resolution} px "
                f"images into several tokens; give a divisor of {resolution} below it, or 0 for "
                f"the shipped {config['vision_cfg']['patch_size']} px."
            )
        config["vision_cfg"]["patch_size"] = int(patch_size)
    return config


# Cached: every planned run, and every job resolved in its condition space, asks for the world
# CLIP's key, and the world's pixels and captions cannot change within a process.
@functools.cache
def _world_fingerprint(resolution: int) -> str:
    """A content hash of the web domain the CLIP trains on: any change to the world changes it."""
    from lafite.data import world as world_module

    web = world_module.World("web", "train", resolution=resolution, seed=_WORLD_CLIP_DATA_SEED, size=64)
    digest = hashlib.sha256(str(getattr(world_module, "WORLD_VERSION", "")).encode())
    digest.update(web.images(range(64)).tobytes())
    for i in range(64):
        digest.update("\n".join(web.captions(i)).encode())
    return digest.hexdigest()


def world_clip_key(
    resolution: int,
    seed: int = 0,
    model_cfg: dict[str, Any] | None = None,
    training: WorldClipTraining | None = None,
) -> str:
    """12 hex digits naming a trained world CLIP: world content, model config, training, seed."""
    payload = {
        "world": _world_fingerprint(resolution),
        "model": model_cfg if model_cfg is not None else world_clip_config(resolution),
        "training": asdict(training or default_world_clip_training(resolution)),
        "resolution": resolution,
        "seed": seed,
        "open_clip": importlib.metadata.version("open_clip_torch"),
    }
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def world_clip_dir(
    workspace: Workspace,
    resolution: int,
    seed: int = 0,
    model_cfg: dict[str, Any] | None = None,
    training: WorldClipTraining | None = None,
) -> Path:
    """Where the world CLIP with these settings lives (whether trained or not)."""
    key = world_clip_key(resolution, seed, model_cfg, training)
    return workspace.models_dir / "world-clip" / f"r{resolution}-{key}"


# -- the inspector -----------------------------------------------------------------------------

# Bump when the network or the training procedure changes in a way the config does not capture
# (the network lives in lafite/data/inspector.py).
INSPECTOR_VERSION = "inspector-v2"  # v2: face heads, is-a-face head, faces in the mixture


@dataclass(frozen=True)
class InspectorConfig:
    """How the inspector is built and trained; every field enters the cache hash."""

    width: int = 32
    feature_dim: int = 256
    # 1500 before faces; 1750 gives the object images as many steps as before (a sixth of the
    # images are faces now): ~2.5 min on one idle core at 16 px.
    steps: int = 1750
    batch: int = 64
    lr: float = 3e-3
    weight_decay: float = 5e-4
    # Training mixture (narratives share the scenes layout, so they need no separate share;
    # portraits are drawn like faces). 18% of web images are faces too, so about 15% of the
    # images are faces: they are learnt to ~100% long before the objects, and a larger share
    # (0.2 here) cost the scenes' secondary-object readings at 16 px (shapes present, exact:
    # 0.75 -> 0.59).
    domains: tuple[str, ...] = ("scenes", "objects", "web", "faces")
    domain_weights: tuple[float, ...] = (0.5, 0.15, 0.25, 0.1)
    # Augmentation, in units of a 32-px image: max shift in pixels, blur sigma, noise std (in
    # [-1, 1] units), brightness and per-channel offset ranges.
    shift_px: float = 1.0
    blur_prob: float = 0.4
    blur_sigma: tuple[float, float] = (0.3, 0.9)
    noise_std: float = 0.04
    brightness: float = 0.06
    channel_offset: float = 0.03
    # Share of each batch that is object-free clutter (white noise, smooth random colour fields):
    # taught "no object anywhere", so that the presence readings (SOA, caption accuracy) do not
    # fire on the noise an untrained generator makes. Other readings ignore these images.
    negative_fraction: float = 0.125
    eval_images: int = 600


# The 16-px inspector judges smoke-scale runs only, which prove the plumbing: it trains a third
# of the steps so that the quickstart's helpers take seconds, not minutes.
_CONFIG_BY_RESOLUTION = {16: InspectorConfig(steps=600)}


def default_inspector_config(resolution: int) -> InspectorConfig:
    """How the inspector for ``resolution`` px is trained unless told otherwise."""
    return _CONFIG_BY_RESOLUTION.get(int(resolution), InspectorConfig())


def inspector_key(
    resolution: int, seed: int = 0, config: InspectorConfig | None = None
) -> str:
    """12 hex digits naming a trained inspector: world and code versions, settings, seed."""
    config = config or default_inspector_config(resolution)
    blob = json.dumps(
        {
            "world": WORLD_VERSION,
            "inspector": INSPECTOR_VERSION,
            "resolution": int(resolution),
            "seed": int(seed),
            "config": asdict(config),
        },
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def inspector_path(
    workspace: Workspace, resolution: int, seed: int = 0, config: InspectorConfig | None = None
) -> Path:
    config = config or default_inspector_config(resolution)
    key = inspector_key(resolution, seed, config)
    return workspace.models_dir / f"inspector-r{int(resolution)}-{key}.pt"


# -- the world's text-only encoders -------------------------------------------------------------

# The captioned domains whose training captions the encoder reads (never their images).
TEXT_DOMAINS = ("web", "scenes", "objects", "narratives", "faces")


@dataclass(frozen=True)
class WorldTextConfig:
    """Network and training of one world text encoder (part of its cache key)."""

    width: int = 64
    layers: int = 2
    heads: int = 4
    max_tokens: int = 96
    captions_per_domain: int = 4000
    steps: int = 1500
    batch: int = 128
    lr: float = 1e-3
    mask_rate: float = 0.15
    seed: int = 0
    # Linear probes after training: scenes train/test captions.
    probe_train: int = 2000
    probe_test: int = 500


# The two widths, as RoBERTa-Base and RoBERTa-Large differ in width (768 and 1024).
WORLD_TEXT_ENCODERS = {
    "world-text-small": WorldTextConfig(width=64),
    "world-text-large": WorldTextConfig(width=128, heads=4),
}


def world_text_key(name: str, config: WorldTextConfig | None = None) -> str:
    """12 hex digits naming a trained encoder: the world's version, network and training."""
    config = config or _config(name)
    blob = json.dumps({"name": name, "world": WORLD_VERSION, "domains": TEXT_DOMAINS,
                       "config": asdict(config)}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def _config(name: str) -> WorldTextConfig:
    if name not in WORLD_TEXT_ENCODERS:
        raise UserError(
            f"unknown world text encoder {name!r}; known: {', '.join(WORLD_TEXT_ENCODERS)}"
        )
    return WORLD_TEXT_ENCODERS[name]


def world_text_dir(workspace: Workspace, name: str, config: WorldTextConfig | None = None) -> Path:
    return workspace.models_dir / "world-text" / f"{name}-{world_text_key(name, config)}"
