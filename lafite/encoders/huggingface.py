"""RoBERTa through Hugging Face transformers: Table 6's text-only encoders at paper scale.

The machine may be offline: the model is read from ``encoder.path`` (a folder written by
``save_pretrained`` or ``huggingface-cli download --local-dir``) or from the local Hugging Face
cache; nothing is downloaded while ``HF_HUB_OFFLINE`` is set. A missing model stops with the
command that fetches it once on a connected machine.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch

from lafite.errors import UserError

HUB_IDS = {"roberta-base": "FacebookAI/roberta-base", "roberta-large": "FacebookAI/roberta-large"}
MAX_TOKENS = 128


class HuggingFaceTextEncoder:
    """A frozen transformers text model with pooled, L2-normalised caption features."""

    has_images = False

    def __init__(self, model: Any, tokenizer: Any, name: str, pooling: str = "mean",
                 device: str | torch.device = "cpu", batch_size: int = 128) -> None:
        from lafite.clip import _state_dict_hash
        from lafite.encoders.world_text import pool

        self._pool = pool
        self.model = model.to(device).eval().requires_grad_(False)
        self.tokenizer, self.name, self.pooling = tokenizer, name, pooling
        self.device, self.batch_size = torch.device(device), batch_size
        self.dim = int(model.config.hidden_size)
        self.id = f"{name}-{_state_dict_hash(model)[:10]}-{pooling}"

    def __repr__(self) -> str:
        return f"HuggingFaceTextEncoder(id={self.id!r}, dim={self.dim})"

    @torch.no_grad()
    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        out = []
        for start in range(0, len(texts), self.batch_size):
            batch = self.tokenizer(list(texts[start : start + self.batch_size]), padding=True,
                                   truncation=True, max_length=MAX_TOKENS, return_tensors="pt")
            batch = {k: v.to(self.device) for k, v in batch.items()}
            tokens = self.model(**batch).last_hidden_state
            out.append(self._pool(tokens, batch["attention_mask"].bool(), self.pooling))
        return torch.cat(out) if out else torch.empty(0, self.dim, device=self.device)


def load_huggingface_encoder(name: str, path: str = "", pooling: str = "mean",
                             device: str | torch.device = "cpu") -> HuggingFaceTextEncoder:
    """``name`` (roberta-base, roberta-large) from ``path`` or the local cache."""
    try:
        from transformers import AutoModel, AutoTokenizer
    except ImportError as exc:  # pragma: no cover - a dependency of the package
        raise UserError(f"encoder {name!r} needs Hugging Face transformers ({exc})") from exc
    source = path or HUB_IDS[name]
    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0", "false", "False")
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=offline)
        model = AutoModel.from_pretrained(source, local_files_only=offline)
    except (OSError, ValueError) as exc:
        hub = HUB_IDS[name]
        raise UserError(
            f"encoder {name!r}: no model at {source!r} ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0][:200]}). On a connected machine run "
            f"`huggingface-cli download {hub} --local-dir /weights/{name}` (or load it once with "
            f"transformers to fill the cache), copy the folder here and pass "
            f"--set encoder.path=/weights/{name}"
        ) from None
    return HuggingFaceTextEncoder(model, tokenizer, name, pooling, device)


__all__ = ["HUB_IDS", "HuggingFaceTextEncoder", "load_huggingface_encoder"]
