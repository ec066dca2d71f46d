"""Condition encoders: what turns a caption into the condition vector h (Table 6).

Every encoder offers ``id`` (a stable name for feature caches), ``dim`` (the condition
dimension f_dim, which sizes the generator's condition layers and the discriminator's semantic
head), ``has_images`` and ``encode_texts(list[str])`` -> (N, dim) L2-normalised float32. The
run's CLIP (``encoder.name: clip``, lafite/clip.py) also encodes images: it makes pseudo text
features and scores generated images for L_ConG. Text-only encoders (RoBERTa at paper scale,
the world's text encoders at mini and smoke scale) have no image side.
"""

from __future__ import annotations

from typing import Any

from lafite.config import RunConfig
from lafite.workspace import Workspace

# The condition dimension of each text-only encoder, known without loading it.
TEXT_ENCODER_DIMS = {"roberta-base": 768, "roberta-large": 1024}


def condition_dim(cfg: RunConfig, clip_dim: int | None = None) -> int | None:
    """f_dim of the run: the text encoder's width, else the CLIP's (``clip_dim``)."""
    name = cfg.encoder.name
    if cfg.model.cond_features:
        return cfg.model.cond_features
    if name in TEXT_ENCODER_DIMS:
        return TEXT_ENCODER_DIMS[name]
    if name.startswith("world-text"):
        from lafite.helper_keys import WORLD_TEXT_ENCODERS

        return WORLD_TEXT_ENCODERS[name].width
    return clip_dim


def load_text_encoder(cfg: RunConfig, workspace: Workspace, clip: Any = None,
                      device: str | Any = "cpu") -> Any:
    """The encoder of the run's conditions: ``clip`` (loaded if not given) for
    ``encoder.name: clip``, else the named text-only encoder."""
    name = cfg.encoder.name
    if name == "clip":
        if clip is not None:
            return clip
        from lafite.clip import load_clip

        return load_clip(cfg.clip, workspace, cfg.data.resolution, device=device)
    if name.startswith("world-text"):
        from lafite.encoders.world_text import load_world_text_encoder

        return load_world_text_encoder(workspace, name, cfg.encoder.pooling, device)
    from lafite.encoders.huggingface import load_huggingface_encoder

    return load_huggingface_encoder(name, cfg.encoder.path, cfg.encoder.pooling, device)


__all__ = ["TEXT_ENCODER_DIMS", "condition_dim", "load_text_encoder"]
