"""Shared by the training tests and their child processes: a smoke config and a tiny CLIP.

The world's real small CLIP takes minutes to pretrain; training tests need only *a* CLIP with the
ClipEncoder interface, so they build a tiny random open_clip model (same code path, tiny widths).
"""

from __future__ import annotations

import torch

from lafite.config import RunConfig

SMOKE = {
    "scale": "smoke",
    "data": {"dataset": "world", "resolution": 16},
    "world": {"domain": "scenes", "n_train": 48, "n_test": 16, "seed": 0},
    "clip": {"name": "world", "gen_crop_min": 0.5, "real_crop": 0.99},
    "model": {"z_dim": 32, "w_dim": 32, "mapping_layers": 2, "channel_base": 512,
              "channel_max": 32, "cond_dim": 32, "mbstd_group": 2},
    "loss": {"r1_gamma": 1.0, "r1_interval": 4, "style_mixing": 0.9},
    "train": {"batch": 4, "kimg": 0.032, "lr_g": 0.002, "lr_d": 0.002, "checkpoint_kimg": 0.016,
              "eval_kimg": 0.016, "log_every": 2, "device": "cpu", "channels_last": False,
              "ema_kimg": 0.01},
}


def smoke_config(**overrides) -> RunConfig:
    """The smoke RunConfig with dotted-key overrides."""
    return RunConfig.from_dict(SMOKE, where="smoke config").override(overrides)


def tiny_clip(seed: int = 0):
    """A random 32-d open_clip model for 16 px images, wrapped as a ClipEncoder."""
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg
    from open_clip.tokenizer import SimpleTokenizer

    from lafite.clip import ClipEncoder

    torch.manual_seed(seed)
    model = CLIP(
        embed_dim=32,
        vision_cfg=CLIPVisionCfg(layers=1, width=32, head_width=16, patch_size=4, image_size=16),
        text_cfg=CLIPTextCfg(context_length=16, vocab_size=49408, width=32, heads=2, layers=1),
    )
    return ClipEncoder(model, SimpleTokenizer(context_length=16), name="tiny-test-clip")
