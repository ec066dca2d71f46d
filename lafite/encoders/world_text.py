"""The world's text-only encoders: the RoBERTa analogues of Table 6 at mini and smoke scale.

RoBERTa never saw an image; its world analogue must not either. It is a small transformer
trained by masked-token prediction on world captions alone (every captioned domain's training
captions, no pixels), in two widths, as RoBERTa comes in base and large. Its caption features
are the conditions of the Table 6 rows that use it. When it is built, linear probes read the
main attributes from its features of scenes captions, so a reader can tell a weak encoder (it
carries colour and background but little else) from a broken one (chance everywhere).

Tokens are the world's words: the vocabulary is read off the training captions (the world's
language is small and closed), with [PAD], [UNK], [CLS] and [MASK] in front.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lafite.atomic import atomic_write
from lafite.errors import UserError
from lafite.helper_keys import (
    TEXT_DOMAINS,
    WORLD_TEXT_ENCODERS,
    WorldTextConfig,
    _config,
    world_text_dir,
    world_text_key,
)
from lafite.workspace import Workspace

PAD, UNK, CLS, MASK = 0, 1, 2, 3
SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[MASK]")
_WORD = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*|[^\sa-z0-9]")
_DATA_SEED = 0


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


class Vocabulary:
    def __init__(self, tokens: Sequence[str]) -> None:
        self.tokens = list(tokens)
        self.index = {t: i for i, t in enumerate(self.tokens)}

    @classmethod
    def from_captions(cls, captions: Sequence[str]) -> Vocabulary:
        seen = sorted({w for c in captions for w in words(c)})
        return cls([*SPECIALS, *seen])

    def __len__(self) -> int:
        return len(self.tokens)

    def encode(self, texts: Sequence[str], max_tokens: int) -> torch.Tensor:
        """(N, max_tokens) ids: [CLS] then the words, padded with [PAD], cut at max_tokens."""
        out = torch.full((len(texts), max_tokens), PAD, dtype=torch.long)
        for row, text in enumerate(texts):
            ids = [CLS] + [self.index.get(w, UNK) for w in words(text)]
            ids = ids[:max_tokens]
            out[row, : len(ids)] = torch.tensor(ids)
        return out


class WorldTextModel(nn.Module):
    """Token and position embeddings, a transformer encoder, and a masked-token head."""

    def __init__(self, vocab_size: int, config: WorldTextConfig) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, config.width, padding_idx=PAD)
        self.position = nn.Embedding(config.max_tokens, config.width)
        layer = nn.TransformerEncoderLayer(config.width, config.heads, 4 * config.width,
                                           dropout=0.0, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, config.layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(config.width)
        self.head = nn.Linear(config.width, vocab_size)

    def tokens(self, ids: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(ids.shape[1], device=ids.device)
        x = self.embed(ids) + self.position(positions)[None]
        return self.norm(self.encoder(x, src_key_padding_mask=ids == PAD))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.tokens(ids))


def pool(token_features: torch.Tensor, mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """One L2-normalised vector per text: the mean over its tokens, or its first token."""
    if pooling == "cls":
        pooled = token_features[:, 0]
    else:
        weights = mask.unsqueeze(-1).to(token_features.dtype)
        pooled = (token_features * weights).sum(1) / weights.sum(1).clamp(min=1.0)
    return F.normalize(pooled.float(), dim=-1)


class WorldTextEncoder:
    """A trained world text encoder behind the condition-encoder interface."""

    has_images = False

    def __init__(self, model: WorldTextModel, vocabulary: Vocabulary, config: WorldTextConfig,
                 name: str, key: str, pooling: str = "mean",
                 device: str | torch.device = "cpu") -> None:
        self.model = model.to(device).eval().requires_grad_(False)
        self.vocabulary, self.config, self.name = vocabulary, config, name
        self.pooling, self.device = pooling, torch.device(device)
        self.dim = config.width
        self.id = f"{name}-{key}-{pooling}"

    def __repr__(self) -> str:
        return f"WorldTextEncoder(id={self.id!r}, dim={self.dim})"

    @torch.no_grad()
    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        out = []
        for start in range(0, len(texts), 256):
            ids = self.vocabulary.encode(texts[start : start + 256], self.config.max_tokens)
            ids = ids.to(self.device)
            out.append(pool(self.model.tokens(ids), ids != PAD, self.pooling))
        return torch.cat(out) if out else torch.empty(0, self.dim, device=self.device)


# -- building and loading ------------------------------------------------------------------------


def _training_captions(config: WorldTextConfig) -> list[str]:
    from lafite.data.world import World

    captions: list[str] = []
    for domain in TEXT_DOMAINS:
        world = World(domain, "train", resolution=16, seed=_DATA_SEED,
                      size=config.captions_per_domain)
        for i in range(len(world)):
            captions.extend(world.captions(i))
    return captions


def pretrain_world_text(workspace: Workspace, name: str, progress: bool = True,
                        config: WorldTextConfig | None = None) -> Path:
    """Train ``name`` by masked-token prediction on world captions (once; cached by its key),
    probe what its features carry, and return its folder (``model.pt``, ``meta.json``)."""
    config = config or _config(name)
    folder = world_text_dir(workspace, name, config)
    if (folder / "model.pt").is_file() and (folder / "meta.json").is_file():
        return folder
    started = time.time()
    torch.manual_seed(config.seed)
    captions = _training_captions(config)
    vocabulary = Vocabulary.from_captions(captions)
    ids = vocabulary.encode(captions, config.max_tokens)
    model = WorldTextModel(len(vocabulary), config)
    optimiser = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=0.01)
    generator = torch.Generator().manual_seed(config.seed)
    losses = []
    for step in range(config.steps):
        batch = ids[torch.randint(len(ids), (config.batch,), generator=generator)]
        real = (batch != PAD) & (batch != CLS)
        masked = real & (torch.rand(batch.shape, generator=generator) < config.mask_rate)
        inputs = batch.masked_fill(masked, MASK)
        logits = model(inputs)
        loss = F.cross_entropy(logits[masked], batch[masked]) if bool(masked.any()) else \
            logits.sum() * 0.0
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        losses.append(float(loss.detach()))
        if progress and (step % 250 == 0 or step == config.steps - 1):
            print(f"{name}: step {step}/{config.steps} masked-token loss {loss:.3f} "
                  f"{time.time() - started:.0f}s", flush=True)
    key = world_text_key(name, config)
    encoder = WorldTextEncoder(model, vocabulary, config, name, key)
    probe = caption_probe(encoder, config)
    meta = {"name": name, "key": key, "config": asdict(config), "vocabulary": len(vocabulary),
            "parameters": sum(p.numel() for p in model.parameters()),
            "captions": len(captions), "first_loss": sum(losses[:10]) / len(losses[:10]),
            "final_loss": sum(losses[-50:]) / len(losses[-50:]),
            "seconds": round(time.time() - started, 1), "probe": probe}
    folder.mkdir(parents=True, exist_ok=True)
    state = {"state_dict": model.state_dict(), "vocabulary": vocabulary.tokens,
             "config": asdict(config)}
    atomic_write(folder / "model.pt", lambda handle: torch.save(state, handle))
    (folder / "meta.json").write_text(json.dumps(meta, indent=2))
    if progress:
        shown = ", ".join(f"{k} {v:.1%}" for k, v in probe.items())
        print(f"{name}: {meta['parameters']:,} parameters, {meta['seconds']} s; linear probes on "
              f"scenes caption features: {shown}", flush=True)
    return folder


def caption_probe(encoder: Any, config: WorldTextConfig) -> dict[str, float]:
    """Linear-probe accuracy of the background and the main object's attributes from the
    encoder's features of scenes captions (fitted on training captions, tested on test ones),
    with each attribute's majority share as ``chance.*``."""
    from lafite.clip import linear_probe_accuracy
    from lafite.data.inspector import MAIN_ATTRIBUTES, main_attribute_labels
    from lafite.data.world import World

    def read(split: str, n: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        world = World("scenes", split, resolution=16, seed=_DATA_SEED, size=n)
        texts = [world.captions(i)[0] for i in range(n)]
        truths = [world.truth(i) for i in range(n)]
        return encoder.encode_texts(texts).cpu(), main_attribute_labels(truths)

    train_x, train_y = read("train", config.probe_train)
    test_x, test_y = read("test", config.probe_test)
    out: dict[str, float] = {}
    for key, values in MAIN_ATTRIBUTES.items():
        name = key.replace("_", "-")
        out[name] = linear_probe_accuracy(train_x, train_y[key], test_x, test_y[key], len(values))
    for key in MAIN_ATTRIBUTES:
        counts = torch.bincount(test_y[key])
        out[f"chance.{key.replace('_', '-')}"] = float(counts.max()) / len(test_y[key])
    return out


def load_world_text_encoder(workspace: Workspace, name: str, pooling: str = "mean",
                            device: str | torch.device = "cpu") -> WorldTextEncoder:
    folder = world_text_dir(workspace, name)
    path = folder / "model.pt"
    if not path.is_file():
        raise UserError(
            f"the world text encoder {name!r} is not built ({path} is missing): run the table "
            "through `lafite-repro run`, which builds it as a job"
        )
    saved = torch.load(path, map_location="cpu", weights_only=True)
    config = WorldTextConfig(**saved["config"])
    vocabulary = Vocabulary(saved["vocabulary"])
    model = WorldTextModel(len(vocabulary), config)
    model.load_state_dict(saved["state_dict"])
    return WorldTextEncoder(model, vocabulary, config, name, world_text_key(name, config),
                            pooling, device)


__all__ = [
    "WORLD_TEXT_ENCODERS",
    "Vocabulary",
    "WorldTextConfig",
    "WorldTextEncoder",
    "caption_probe",
    "load_world_text_encoder",
    "pretrain_world_text",
    "world_text_dir",
    "world_text_key",
]
