"""One interface over open_clip: real CLIPs, the world's small CLIP, and the feature cache.

Everything LAFITE does with CLIP goes through :class:`ClipEncoder`: dataset image and caption
features (cached by :class:`FeatureCache`), and the differentiable image features of generated
images that L_ConG needs. Real CLIPs come from open_clip pretrained tags or a local weights file;
the world's small CLIP is an open_clip custom model config trained here on the world's ``web``
domain with open_clip's own ``ClipLoss`` and loaded back through exactly the same
``open_clip.create_model(name, pretrained=<weights file>)`` path as a real CLIP's local weights
file, so the mini scale exercises the code the paper scale runs.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import pickle
import re
import socket
import sys
import time
import uuid
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import save_file

from lafite.atomic import atomic_write
from lafite.config import ClipConfig
from lafite.errors import UserError
from lafite.helper_keys import (
    _WORLD_CLIP_DATA_SEED,
    WorldClipTraining,
    default_world_clip_training,
    world_clip_config,
    world_clip_dir,
    world_clip_key,
)
from lafite.workspace import Workspace

WORLD_CLIP_NAME = "world"
WORLD_CLIP_WEIGHTS = "open_clip_model.safetensors"
_HF_WEIGHT_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")

log = logging.getLogger(__name__)


# -- the encoder -------------------------------------------------------------------------------


class ClipEncoder:
    """A frozen open_clip model with the preprocessing LAFITE needs.

    ``id`` names the model and the exact weights (a hash of the state dict), so that cached
    features can never be served for a different CLIP. Features are always L2-normalised float32.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Any,
        name: str,
        device: str | torch.device = "cpu",
        batch_size: int = 256,
    ) -> None:
        self.model = model.to(device).eval()
        self.model.requires_grad_(False)
        self.tokenizer = tokenizer
        self.name = name
        self.device = torch.device(device)
        self.batch_size = batch_size
        visual = model.visual
        size = visual.image_size
        self.image_size = int(size[0] if isinstance(size, tuple | list) else size)
        cfg = getattr(visual, "preprocess_cfg", None) or {}
        mean = cfg.get("mean", open_clip.OPENAI_DATASET_MEAN)
        std = cfg.get("std", open_clip.OPENAI_DATASET_STD)
        self._mean = torch.tensor(mean, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        self._std = torch.tensor(std, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        # Probing beats reading a config key: CLIP, CustomTextCLIP and timm towers differ there.
        self.dim = 0
        self.dim = int(self.encode_texts(["a"]).shape[1])
        self.id = f"{name}-{_state_dict_hash(model)[:10]}"

    def __repr__(self) -> str:
        return f"ClipEncoder(id={self.id!r}, dim={self.dim}, image_size={self.image_size})"

    # -- images --------------------------------------------------------------------------------
    def _to_unit(self, x_uint8: torch.Tensor | np.ndarray) -> torch.Tensor:
        x = torch.as_tensor(x_uint8)
        if x.dtype != torch.uint8 or x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"expected uint8 NCHW images with 3 channels, got {x.dtype} {tuple(x.shape)}")
        return x.to(self.device).float().div_(255.0)

    def _normalise(self, x_unit: torch.Tensor) -> torch.Tensor:
        return (x_unit - self._mean) / self._std

    def _features(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(pixels, normalize=True).float()

    @torch.no_grad()
    def encode_images(self, x_uint8: torch.Tensor | np.ndarray) -> torch.Tensor:
        """(N, dim) features with open_clip's own eval preprocessing, on ``self.device``.

        open_clip's ``preprocess_val`` is resize-shortest-side (bicubic) + centre crop + CLIP
        mean/std; this is the same on uint8 tensors, batched, without a PIL round trip.
        """
        out = []
        for start in range(0, len(x_uint8), self.batch_size):
            x = self._to_unit(x_uint8[start : start + self.batch_size])
            h, w = x.shape[-2:]
            if h != w:
                side = min(h, w)
                top, left = (h - side) // 2, (w - side) // 2
                x = x[:, :, top : top + side, left : left + side]
            if x.shape[-1] != self.image_size:
                x = F.interpolate(
                    x, size=(self.image_size, self.image_size), mode="bicubic", align_corners=False,
                    antialias=True,
                ).clamp_(0.0, 1.0)
            out.append(self._features(self._normalise(x)))
        return torch.cat(out) if out else torch.empty(0, self.dim, device=self.device)

    @torch.no_grad()
    def encode_cropped(self, x_uint8: torch.Tensor | np.ndarray, boxes: np.ndarray) -> torch.Tensor:
        """(N, dim) features of one square crop per image, ``boxes[i] = (top, left, side)``.

        The official dataset tool's image feature (reference/official-lafite.md section 5.1):
        crop, bicubic resize to the CLIP size (no antialiasing), CLIP normalisation.
        """
        out = []
        for start in range(0, len(x_uint8), self.batch_size):
            x = self._to_unit(x_uint8[start : start + self.batch_size])
            chunk = boxes[start : start + len(x)]
            resized = torch.empty(len(x), 3, self.image_size, self.image_size, device=self.device)
            # Crops of one side length resize together; there are only a few distinct sides.
            for side in np.unique(chunk[:, 2]):
                rows = np.nonzero(chunk[:, 2] == side)[0]
                crops = torch.stack(
                    [x[r, :, chunk[r, 0] : chunk[r, 0] + side, chunk[r, 1] : chunk[r, 1] + side] for r in rows]
                )
                resized[torch.as_tensor(rows, device=self.device)] = _resize(crops, self.image_size)
            out.append(self._features(self._normalise(resized)))
        return torch.cat(out) if out else torch.empty(0, self.dim, device=self.device)

    def encode_generated(
        self, x: torch.Tensor, crop_min: float = 1.0, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Differentiable (N, dim) features of generated images in [-1, 1] (for L_ConG).

        The official preprocessing (reference/official-lafite.md section 3.6): ONE random square
        crop for the whole batch with side in [crop_min * S, S) and a random offset, bicubic
        resize to the CLIP size, [-1, 1] -> [0, 1], CLIP normalisation. ``crop_min >= 1`` skips
        the crop. Gradients flow to ``x``; the CLIP weights stay frozen.
        """
        size = x.shape[-1]
        if crop_min < 1.0:
            low = max(1, int(crop_min * size))
            where = generator.device if generator is not None else "cpu"

            def draw(lo: int, hi: int) -> int:
                return int(torch.randint(lo, hi, (1,), generator=generator, device=where).item())

            side = draw(low, size) if low < size else size
            if side < size:
                top, left = draw(0, size - side), draw(0, size - side)
                x = x[:, :, top : top + side, left : left + side]
        x = _resize(x.float(), self.image_size)
        x = (x + 1.0) * 0.5
        return self._features(self._normalise(x))

    # -- texts ---------------------------------------------------------------------------------
    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        """open_clip token ids (N, context_length); too-long captions are truncated."""
        return self.tokenizer(list(texts))

    @torch.no_grad()
    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """(N, dim) features of captions, tokenised with the model's own open_clip tokenizer."""
        texts = list(texts)
        out = []
        for start in range(0, len(texts), self.batch_size):
            tokens = self.tokenize(texts[start : start + self.batch_size]).to(self.device)
            out.append(self.model.encode_text(tokens, normalize=True).float())
        if not out:
            return torch.empty(0, self.dim, device=self.device)
        return torch.cat(out)


def _resize(x: torch.Tensor, size: int) -> torch.Tensor:
    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    return F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False)


def _state_dict_hash(model: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for key, tensor in sorted(model.state_dict().items()):
        digest.update(key.encode())
        data = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(str(data.dtype).encode())
        digest.update(data.view(torch.uint8).numpy().tobytes() if data.numel() else b"")
    return digest.hexdigest()


# -- loading -----------------------------------------------------------------------------------


def load_clip(
    clip_cfg: ClipConfig, workspace: Workspace, resolution: int, device: str | torch.device = "cpu"
) -> ClipEncoder:
    """The encoder named by ``clip_cfg``.

    ``clip_cfg.name == "world"`` loads the world's small CLIP trained for ``resolution`` (see
    :func:`pretrain_world_clip`); any other name is an open_clip model with ``clip_cfg.pretrained``
    an open_clip pretrained tag or a local weights file.
    """
    if clip_cfg.name == WORLD_CLIP_NAME:
        patch = clip_cfg.world_patch_size
        folder = world_clip_dir(workspace, resolution, seed=clip_cfg.world_seed,
                                model_cfg=world_clip_config(resolution, patch))
        if not (folder / WORLD_CLIP_WEIGHTS).is_file():
            raise UserError(
                f"The world's small CLIP for resolution {resolution} (seed {clip_cfg.world_seed}"
                f"{f', patch size {patch}' if patch else ''}) is not trained yet (expected "
                f"{folder / WORLD_CLIP_WEIGHTS}). Run `{_pretrain_command(resolution, patch)}` first."
            )
        return load_world_clip(folder, device)
    return load_open_clip(clip_cfg.name, clip_cfg.pretrained, device)


def _pretrain_command(resolution: int, patch_size: int) -> str:
    """The command that trains the world CLIP a message says is missing."""
    patch = f" --patch-size {patch_size}" if patch_size else ""
    return f"lafite-repro clip pretrain --resolution {resolution}{patch}"


def load_open_clip(name: str, pretrained: str, device: str | torch.device = "cpu") -> ClipEncoder:
    """An open_clip model with weights from a pretrained tag or a local weights file.

    Fails fast with a :class:`UserError` instead of waiting on Hugging Face retries when the
    weights are not on this machine and the Hub cannot be reached. OpenAI weights in a local file
    need the ``-quickgelu`` model name (``ViT-B-32-quickgelu``); with the ``openai`` tag the
    QuickGELU activation is chosen here from the tag.
    """
    valid = open_clip.list_models()
    if name not in valid:
        raise UserError(
            f"clip.name: unknown CLIP model '{name}'. Use 'world' (the built-in world's small "
            f"CLIP) or one of open_clip's models: {', '.join(valid)}"
        )
    if not pretrained:
        raise UserError(
            f"clip.pretrained is empty for '{name}': give an open_clip pretrained tag "
            f"({', '.join(open_clip.list_pretrained_tags_by_model(name)) or 'none known'}) "
            "or the path of a local weights file."
        )
    tag_cfg = open_clip.get_pretrained_cfg(name, pretrained)
    if not tag_cfg and not os.path.isfile(pretrained):
        tags = open_clip.list_pretrained_tags_by_model(name)
        raise UserError(
            f"clip.pretrained: '{pretrained}' is neither a file nor a pretrained tag of "
            f"'{name}'. Known tags: {', '.join(tags) or 'none'}; or give the path of a weights "
            "file (.safetensors, .bin, .pt)."
        )
    if tag_cfg:
        _check_tag_available(name, pretrained, tag_cfg)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            model = open_clip.create_model(
                name,
                pretrained=pretrained,
                device=device,
                force_quick_gelu=bool(tag_cfg.get("quick_gelu", False)) if tag_cfg else False,
            )
    except RuntimeError as err:
        if tag_cfg:
            raise UserError(_missing_weights_message(name, pretrained, tag_cfg, str(err))) from err
        raise UserError(_weights_file_message(name, pretrained, err)) from err
    except _WEIGHTS_FILE_ERRORS as err:
        if tag_cfg:
            raise
        raise UserError(_weights_file_message(name, pretrained, err)) from err
    return ClipEncoder(model, open_clip.get_tokenizer(name), name=_encoder_name(name, pretrained), device=device)


# What open_clip raises on a local weights file that is not a state dict: refused by torch's
# weights-only reader, not a torch or safetensors file, or another object than a dict of tensors.
_WEIGHTS_FILE_ERRORS = (pickle.UnpicklingError, SafetensorError, EOFError, KeyError,
                        AttributeError, TypeError, ValueError, IndexError, StopIteration)


def _weights_file_message(name: str, path: str, err: BaseException) -> str:
    """One message for a local clip.pretrained file open_clip could not load: what is wrong
    with it and what it should hold."""
    from lafite.checkpoint import read_cause, refused_message, weights_only_refusal

    should = (f"clip.pretrained should name an open_clip or OpenAI CLIP state dict of '{name}' "
              "(parameter names mapped to tensors) saved as .safetensors, .bin or .pt")
    refusal = weights_only_refusal(err, path)
    if refusal is not None:
        return f"clip.pretrained: {refused_message(repr(path), refusal)}. {should}"
    text = " ".join(str(err).split())
    if isinstance(err, RuntimeError) and "Error(s) in loading state_dict" in text:
        return (f"clip.pretrained: the state dict in '{path}' does not fit open_clip model "
                f"'{name}' ({_mismatch(text)}). {should}")
    if isinstance(err, AttributeError | TypeError | ValueError | IndexError | StopIteration):
        return f"clip.pretrained: '{path}' is not a state dict ({_held(path)}). {should}"
    return (f"clip.pretrained: '{path}' cannot be read as a weights file ({read_cause(err)}); "
            f"is it complete, and a safetensors or torch.save file? {should}")


def _mismatch(text: str) -> str:
    """torch's load_state_dict error (every key named) in a few words."""
    parts = []
    for label, pattern in (("missing", r"Missing key\(s\) in state_dict: (.*?)\. (?=Unexpected|size|$)"),
                           ("unexpected", r"Unexpected key\(s\) in state_dict: (.*?)\. (?=size|$)")):
        found = re.search(pattern, text + " ")
        if found:
            keys = re.findall(r'"([^"]+)"', found.group(1))
            parts.append(f"{len(keys)} {label} parameter(s), e.g. {keys[0]}" if keys else "")
    shapes = re.findall(r"size mismatch for ([^:]+):", text)
    if shapes:
        parts.append(f"{len(shapes)} of another shape, e.g. {shapes[0]}")
    return "; ".join(p for p in parts if p) or text[:300]


def _held(path: str) -> str:
    """What a torch file that is not a state dict holds, read safely (weights only)."""
    from lafite.checkpoint import read_weights_only

    try:
        held = read_weights_only(Path(path), "cpu")
    except Exception:  # noqa: BLE001 - only a description for a message
        return "its contents are not a dict of tensors"
    if isinstance(held, dict) and isinstance(held.get("state_dict"), dict | list):
        held = held["state_dict"]
    if isinstance(held, dict):
        return "it holds an empty dict" if not held else "it holds a dict of other values than tensors"
    return f"it holds a {type(held).__name__}"


def _encoder_name(name: str, pretrained: str) -> str:
    tag = Path(pretrained).stem if os.path.isfile(pretrained) else pretrained
    return f"{name}-{tag}"


def _hf_location(tag_cfg: dict) -> tuple[str, tuple[str, ...]]:
    """(Hub repo, candidate file names) of a pretrained tag, as open_clip resolves them."""
    hub = tag_cfg.get("hf_hub", "")
    if not hub or hub.endswith("/"):  # "org/repo/": open_clip's default file names
        return hub.rstrip("/"), _HF_WEIGHT_FILES
    repo, filename = os.path.split(hub)
    if filename.endswith((".bin", ".pth")):  # open_clip tries the safetensors twin first
        return repo, (filename[:-4] + ".safetensors", filename)
    return repo, (filename,)


def _tag_cached(tag_cfg: dict) -> bool:
    if "file" in tag_cfg:
        return os.path.isfile(tag_cfg["file"])
    repo, files = _hf_location(tag_cfg)
    if repo:
        try:
            from huggingface_hub import try_to_load_from_cache
        except ImportError:  # pragma: no cover - huggingface_hub ships with open_clip
            return False
        for filename in files:
            hit = try_to_load_from_cache(repo_id=repo, filename=filename)
            if isinstance(hit, str) and os.path.isfile(hit):
                return True
    url = tag_cfg.get("url", "")
    if url:
        return os.path.isfile(os.path.join(os.path.expanduser("~/.cache/clip"), os.path.basename(url)))
    return False


def _hub_reachable(host: str = "huggingface.co", timeout: float = 3.0) -> bool:
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def _check_tag_available(name: str, pretrained: str, tag_cfg: dict) -> None:
    """Raise at once when the tag's weights are neither cached nor downloadable.

    Without this, huggingface_hub retries with backoff for about 46 s before open_clip fails.
    """
    if _tag_cached(tag_cfg):
        return
    if _offline():
        raise UserError(_missing_weights_message(name, pretrained, tag_cfg, "HF_HUB_OFFLINE is set"))
    if not _hub_reachable():
        raise UserError(_missing_weights_message(name, pretrained, tag_cfg, "huggingface.co is unreachable"))


def _missing_weights_message(name: str, pretrained: str, tag_cfg: dict, why: str) -> str:
    repo, files = _hf_location(tag_cfg)
    from huggingface_hub.constants import HF_HUB_CACHE

    where = (
        f"download {files[0]} from https://huggingface.co/{repo} and set clip.pretrained to its "
        f"path (with clip.name '{name}-quickgelu' for OpenAI weights), or run once with internet "
        f"so that open_clip caches it under {HF_HUB_CACHE}"
        if repo
        else f"download {tag_cfg.get('url', '')} and set clip.pretrained to its path"
    )
    return (
        f"CLIP weights for model '{name}' (pretrained '{pretrained}') are not on this machine "
        f"({why}). To use them offline, {where}. At mini/smoke scale use clip.name 'world'."
    )


# -- the world's small CLIP --------------------------------------------------------------------


def _model_name(folder: Path) -> str:
    return f"lafite-world-clip-{folder.name}"


def load_world_clip(folder: Path, device: str | torch.device = "cpu") -> ClipEncoder:
    """Load a trained world CLIP through open_clip: registered config + local weights file."""
    folder = Path(folder)
    name = _model_name(folder)
    config_file = folder / f"{name}.json"
    weights = folder / WORLD_CLIP_WEIGHTS
    if not config_file.is_file() or not weights.is_file():
        raise UserError(f"World CLIP folder {folder} is incomplete (needs {config_file.name} and {weights.name}).")
    if name not in open_clip.list_models():
        open_clip.add_model_config(config_file)
    try:
        model = open_clip.create_model(name, pretrained=str(weights), device=device)
    except RuntimeError as err:
        raise UserError(f"World CLIP weights {weights} do not load ({err}); delete {folder} and retrain.") from err
    return ClipEncoder(model, open_clip.get_tokenizer(name), name=name, device=device)


def _world_images_nchw(world: Any, indices: Sequence[int]) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(world.images(indices).transpose(0, 3, 1, 2)))


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    # open_clip's recipe: no decay on gains, biases, embeddings' scale and the logit scale.
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if param.ndim < 2 or "bias" in name or "ln" in name or "logit_scale" in name:
            no_decay.append(param)
        else:
            decay.append(param)
    return [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": weight_decay}]


def _say(progress: bool, message: str) -> None:
    if progress:
        print(message, file=sys.stderr, flush=True)


def pretrain_world_clip(
    workspace: Workspace,
    resolution: int,
    seed: int = 0,
    progress: bool = True,
    model_cfg: dict[str, Any] | None = None,
    training: WorldClipTraining | None = None,
    device: str | torch.device = "cpu",
    patch_size: int = 0,
) -> Path:
    """Train the world's small CLIP on the ``web`` train split once; later calls return at once.

    The web split is the CC3M analogue: mostly object images, and faces (``WEB_FACE_SHARE``)
    with noisy face captions, so that the CLIP can also condition the face domains.

    Contrastive training with open_clip's ``ClipLoss``, AdamW and a warm-up + cosine schedule.
    The training images are generated in memory (the world renders thousands per second). The
    result is a folder with the open_clip config (its file stem is the model name), the weights
    as safetensors, and ``meta.json`` (training time, machine load, held-out retrieval numbers).
    Returns that folder.
    """
    from lafite.data.world import World

    training = training or default_world_clip_training(resolution)
    model_cfg = model_cfg if model_cfg is not None else world_clip_config(resolution, patch_size)
    folder = world_clip_dir(workspace, resolution, seed, model_cfg, training)
    if (folder / WORLD_CLIP_WEIGHTS).is_file() and (folder / "meta.json").is_file():
        return folder

    started, cpu_started = time.time(), time.process_time()
    torch.manual_seed(seed)
    name = _model_name(folder)
    staging = folder.parent / f".{folder.name}.tmp-{uuid.uuid4().hex[:8]}"
    staging.mkdir(parents=True)
    config_file = staging / f"{name}.json"
    config_file.write_text(json.dumps(model_cfg, indent=2))
    open_clip.add_model_config(config_file)
    _quiet_random_init_warning()
    model = open_clip.create_model(name, pretrained=None, device=device)
    tokenizer = open_clip.get_tokenizer(name)

    web = World("web", "train", resolution=resolution, seed=_WORLD_CLIP_DATA_SEED, size=training.n_train)
    n = len(web)
    _say(progress, f"world CLIP r{resolution}: rendering {n} web training images ...")
    images = _world_images_nchw(web, range(n))
    caption_lists = [web.captions(i) for i in range(n)]
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum([len(c) for c in caption_lists], out=offsets[1:])
    tokens = tokenizer([c for caps in caption_lists for c in caps])
    mean = torch.tensor(open_clip.OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(open_clip.OPENAI_DATASET_STD).view(1, 3, 1, 1)
    _say(progress, f"world CLIP r{resolution}: data ready in {time.time() - started:.1f}s; training {training.steps} steps")

    loss_fn = open_clip.loss.ClipLoss()
    optimiser = torch.optim.AdamW(_param_groups(model, training.weight_decay), lr=training.lr, betas=(0.9, 0.98), eps=1e-6)

    def lr_factor(step: int) -> float:
        if step < training.warmup_steps:
            return (step + 1) / training.warmup_steps
        done = (step - training.warmup_steps) / max(1, training.steps - training.warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, done)))

    schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, lr_factor)
    rng = np.random.default_rng(seed)
    order = rng.permutation(n)
    cursor = 0
    batch = min(training.batch, n)
    model.train()
    last_loss = float("nan")
    for step in range(training.steps):
        if cursor + batch > n:
            order, cursor = rng.permutation(n), 0
        idx = order[cursor : cursor + batch]
        cursor += batch
        pick = offsets[idx] + rng.integers(0, offsets[idx + 1] - offsets[idx])
        pixels = ((images[idx].float().div_(255.0) - mean) / std).to(device)
        image_features, text_features, logit_scale = model(pixels, tokens[pick].to(device))
        loss = loss_fn(image_features, text_features, logit_scale)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        schedule.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        last_loss = loss.detach().item()
        if not math.isfinite(last_loss):
            raise RuntimeError(f"world CLIP training diverged at step {step} (loss {last_loss})")
        if progress and (step % 100 == 0 or step == training.steps - 1):
            _say(progress, f"  step {step:5d}/{training.steps}  loss {last_loss:.3f}  {time.time() - started:.0f}s")
    train_seconds = time.time() - started
    train_cpu_seconds = time.process_time() - cpu_started

    save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(staging / WORLD_CLIP_WEIGHTS))
    if folder.exists():  # another process finished the same training first: keep theirs
        _remove_tree(staging)
        return folder
    os.replace(staging, folder)
    encoder = load_world_clip(folder, device)
    metrics = _evaluate_world_encoder(encoder, resolution, training.eval_groups)
    meta = {
        "model_name": _model_name(folder),
        "resolution": resolution,
        "seed": seed,
        "training": asdict(training),
        "model_cfg": model_cfg,
        "final_loss": last_loss,
        "train_seconds": round(train_seconds, 1),
        # CPU time next to wall time: on a shared machine it estimates the idle-machine time.
        "train_cpu_seconds": round(train_cpu_seconds, 1),
        "load_average": [round(v, 2) for v in os.getloadavg()],
        "torch_threads": torch.get_num_threads(),
        "metrics": metrics,
    }
    atomic_write(folder / "meta.json", lambda handle: handle.write(json.dumps(meta, indent=2).encode()))
    _say(progress, f"world CLIP r{resolution}: trained in {train_seconds:.0f}s -> {folder}")
    return folder


def _remove_tree(path: Path) -> None:
    for child in path.iterdir():
        child.unlink()
    path.rmdir()


def _quiet_random_init_warning() -> None:
    # open_clip logs a WARNING for every model built with random weights, which is the point here.
    logging.getLogger().addFilter(_RandomInitFilter())


class _RandomInitFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "Model initialized randomly" not in record.getMessage()


# -- measurements ------------------------------------------------------------------------------


class _WorldLike(Protocol):
    def __len__(self) -> int: ...

    def images(self, indices: Sequence[int]) -> np.ndarray: ...

    def captions(self, index: int) -> list[str]: ...


class _LabelledWorld(_WorldLike, Protocol):
    def truth(self, index: int) -> Any: ...


def retrieval_accuracy(
    encoder: ClipEncoder, world: _WorldLike, n_candidates: int = 100, n_groups: int = 10
) -> dict[str, float]:
    """Held-out retrieval among ``n_candidates`` pairs, averaged over ``n_groups`` groups.

    Image i's query caption is caption ``i mod k`` of its k captions (so every template is
    used). Also reports the mean cosine between each image and its own captions against the
    mean to all other images' captions: pseudo text features only make sense when the first
    clearly exceeds the second.
    """
    n_groups = max(1, min(n_groups, len(world) // n_candidates))
    n = n_groups * n_candidates
    if n == 0:
        raise ValueError(f"the world has {len(world)} items, fewer than n_candidates={n_candidates}")
    indices = list(range(n))
    image_features = encoder.encode_images(_world_images_nchw(world, indices)).cpu()
    caption_lists = [world.captions(i) for i in indices]
    flat = [c for caps in caption_lists for c in caps]
    owner = torch.tensor([i for i, caps in enumerate(caption_lists) for _ in caps])
    text_features = encoder.encode_texts(flat).cpu()
    starts = np.concatenate([[0], np.cumsum([len(c) for c in caption_lists])[:-1]])
    query = torch.tensor([starts[i] + i % len(caption_lists[i]) for i in indices])

    i2t, t2i = [], []
    for g in range(n_groups):
        rows = slice(g * n_candidates, (g + 1) * n_candidates)
        sim = image_features[rows] @ text_features[query[rows]].T
        target = torch.arange(n_candidates)
        i2t.append((sim.argmax(dim=1) == target).float().mean().item())
        t2i.append((sim.argmax(dim=0) == target).float().mean().item())

    cos = image_features @ text_features.T  # (n images, all captions)
    own = owner.unsqueeze(0) == torch.arange(n).unsqueeze(1)
    return {
        "image_to_text_top1": float(np.mean(i2t)),
        "text_to_image_top1": float(np.mean(t2i)),
        "chance": 1.0 / n_candidates,
        "n_candidates": n_candidates,
        "n_groups": n_groups,
        "own_caption_cosine": float(cos[own].mean()),
        "other_caption_cosine": float(cos[~own].mean()),
    }


def linear_probe_accuracy(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    test_x: torch.Tensor,
    test_y: torch.Tensor,
    n_classes: int,
    steps: int = 300,
    seed: int = 0,
) -> float:
    """Test accuracy of a multinomial logistic regression fitted on (train_x, train_y).

    Full-batch Adam on L2-normalised features (CLIP compares directions), fixed steps and seed,
    so the number is reproducible; what it measures is whether a class is linearly readable.
    """
    probes = fit_linear_probes(train_x, {"y": (train_y, n_classes)}, steps, seed)
    return probes.accuracy(test_x, {"y": test_y})["y"]


@dataclass
class LinearProbes:
    """Several multinomial logistic regressions on the same features, one per label set."""

    weights: dict[str, torch.Tensor]
    biases: dict[str, torch.Tensor]

    def accuracy(self, test_x: torch.Tensor, test_labels: Mapping[str, torch.Tensor]) -> dict[str, float]:
        test_x = F.normalize(test_x.float(), dim=1)
        with torch.no_grad():
            return {key: float(((10.0 * test_x @ self.weights[key] + self.biases[key]).argmax(dim=1)
                                == y).float().mean())
                    for key, y in test_labels.items()}


def fit_linear_probes(
    train_x: torch.Tensor,
    labels: Mapping[str, tuple[torch.Tensor, int]],
    steps: int = 300,
    seed: int = 0,
) -> LinearProbes:
    """Fit one probe per label set (``labels[key] = (train_y, n_classes)``) on the same features.

    The probes train together, one matrix product per step, but each is what fitting it alone
    would give (up to float rounding): the summed loss's gradient for a probe's parameters is its
    own loss's gradient, Adam is element-wise, and each probe starts from the seeded draw a lone
    fit starts from.
    """
    train_x = F.normalize(train_x.float(), dim=1)
    keys = list(labels)
    inits = [torch.randn(train_x.shape[1], labels[k][1], generator=torch.Generator().manual_seed(seed)) * 0.01
             for k in keys]
    weight = torch.cat(inits, dim=1).requires_grad_()
    bias = torch.zeros(weight.shape[1], requires_grad=True)
    bounds = np.cumsum([0] + [labels[k][1] for k in keys])
    optimiser = torch.optim.Adam([weight, bias], lr=0.05)
    with torch.enable_grad():
        for _ in range(steps):
            optimiser.zero_grad()
            # A temperature of 10 lets unit-norm features reach confident logits.
            logits = 10.0 * train_x @ weight + bias
            loss = sum(F.cross_entropy(logits[:, bounds[i]:bounds[i + 1]], labels[k][0])
                       for i, k in enumerate(keys))
            loss.backward()  # type: ignore[union-attr]
            optimiser.step()
    weight, bias = weight.detach(), bias.detach()
    return LinearProbes({k: weight[:, bounds[i]:bounds[i + 1]] for i, k in enumerate(keys)},
                        {k: bias[bounds[i]:bounds[i + 1]] for i, k in enumerate(keys)})


def attribute_probe(
    encoder: ClipEncoder, train_world: _LabelledWorld, test_world: _LabelledWorld, n_train: int = 2000
) -> dict[str, float]:
    """What a CLIP's features say about a world image: linear-probe accuracies per attribute.

    For object images, the background and the main object's colour, shape, size and position
    (``main-colour``, ...); for face images (both worlds all faces, e.g. the ``faces`` domain),
    the background, hair, eyes, expression and accessory. For each: a probe fitted and tested
    on image features (``image.*``), one on features of each image's first caption
    (``text.*``), and the image probe applied to the test captions' features
    (``image-to-text.*``: the language-free question, whether what is read from h' transfers to
    text). ``chance.*`` is the majority class's share of the test set.
    """
    from lafite.data.inspector import (
        FACE_ATTRIBUTES,
        MAIN_ATTRIBUTES,
        face_attribute_labels,
        main_attribute_labels,
    )
    from lafite.data.world import FaceTruth

    def encode(world: _LabelledWorld, n: int) -> tuple[torch.Tensor, torch.Tensor, list[Any]]:
        indices = list(range(min(n, len(world))))
        images = encoder.encode_images(_world_images_nchw(world, indices)).cpu()
        texts = encoder.encode_texts([world.captions(i)[0] for i in indices]).cpu()
        return images, texts, [world.truth(i) for i in indices]

    train_images, train_texts, train_truths = encode(train_world, n_train)
    test_images, test_texts, test_truths = encode(test_world, len(test_world))
    if all(isinstance(t, FaceTruth) for t in train_truths + test_truths):
        attributes, labeller = FACE_ATTRIBUTES, face_attribute_labels
    else:
        attributes, labeller = MAIN_ATTRIBUTES, main_attribute_labels
    train_labels, test_labels = labeller(train_truths), labeller(test_truths)
    wanted = {key: (train_labels[key], len(values)) for key, values in attributes.items()}
    tests = {key: test_labels[key] for key in attributes}
    image_probes = fit_linear_probes(train_images, wanted)
    on_images = image_probes.accuracy(test_images, tests)
    on_texts = image_probes.accuracy(test_texts, tests)
    text_probes = fit_linear_probes(train_texts, wanted).accuracy(test_texts, tests)
    out: dict[str, float] = {}
    for key, values in attributes.items():
        name, k = key.replace("_", "-"), len(values)
        out[f"image.{name}"] = on_images[key]
        out[f"text.{name}"] = text_probes[key]
        out[f"image-to-text.{name}"] = on_texts[key]
        out[f"chance.{name}"] = float(torch.bincount(tests[key], minlength=k).max()) / len(tests[key])
    return out


# Held-out retrieval is measured on these domains' test splits (faces: the MM-CelebA-HQ analogue,
# which the CLIP only meets as the faces among its web images).
EVAL_DOMAINS = ("web", "scenes", "faces")


def _evaluate_world_encoder(encoder: ClipEncoder, resolution: int, n_groups: int) -> dict[str, dict[str, float]]:
    from lafite.data.world import World

    out = {}
    for domain in EVAL_DOMAINS:
        world = World(domain, "test", resolution=resolution, seed=_WORLD_CLIP_DATA_SEED)
        out[domain] = retrieval_accuracy(encoder, world, n_candidates=100, n_groups=n_groups)
    for domain in ("scenes", "faces"):
        out[f"{domain}-attributes"] = attribute_probe(
            encoder,
            World(domain, "train", resolution=resolution, seed=_WORLD_CLIP_DATA_SEED),
            World(domain, "test", resolution=resolution, seed=_WORLD_CLIP_DATA_SEED),
        )
    return out


def world_clip_report(
    workspace: Workspace,
    resolution: int,
    seed: int = 0,
    device: str | torch.device = "cpu",
    recompute: bool = False,
    *,
    model_cfg: dict[str, Any] | None = None,
    training: WorldClipTraining | None = None,
    patch_size: int = 0,
) -> dict[str, Any]:
    """The numbers `lafite-repro clip pretrain` / `clip eval` print for the cached world CLIP.

    Retrieval on held-out ``web``, ``scenes`` and ``faces`` test pairs (top-1 among 100, chance
    1%), the own vs other caption cosines, the attribute probes of scenes and faces, and the
    training time with the load average it was measured at.
    ``recompute`` re-measures retrieval from the saved weights instead of reading ``meta.json``.
    ``model_cfg`` and ``training`` name a CLIP trained with other than the default settings,
    ``patch_size`` one with other patches (clip.world_patch_size).
    """
    model_cfg = model_cfg if model_cfg is not None else world_clip_config(resolution, patch_size)
    folder = world_clip_dir(workspace, resolution, seed, model_cfg, training)
    meta_file = folder / "meta.json"
    if not meta_file.is_file():
        raise UserError(
            f"The world's small CLIP for resolution {resolution} is not trained yet ({folder}). "
            f"Run `{_pretrain_command(resolution, patch_size)}`."
        )
    meta = json.loads(meta_file.read_text())
    metrics = meta["metrics"]
    if recompute:
        encoder = load_world_clip(folder, device)
        metrics = _evaluate_world_encoder(encoder, resolution, meta["training"]["eval_groups"])
    return {
        "model": meta["model_name"],
        "path": str(folder),
        "resolution": resolution,
        "train_seconds": meta["train_seconds"],
        "train_cpu_seconds": meta.get("train_cpu_seconds"),
        "load_average": meta["load_average"],
        **{f"{domain}.{key}": value for domain, values in metrics.items() for key, value in values.items()},
    }


# -- the feature cache -------------------------------------------------------------------------


class ImageTextDataset(Protocol):
    """What the cache needs from a dataset (lafite.data.folder.ImageTextFolder fits)."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> torch.Tensor: ...

    def captions(self, index: int) -> list[str]: ...

    def fingerprint(self) -> str: ...


# Bumped whenever the way a cached feature is computed changes, so older caches are never read.
# v2: the crop of image i is drawn from a generator seeded by (seed, i) instead of one stream
# drawn batch by batch, so that it depends neither on the batch size nor on where a resumed
# build restarted.
IMAGE_PROTOCOL_VERSION = 2
# Captions go through the encoder's own encode_texts (open_clip: tokenised, truncated to the
# context length; the official tool instead averages the pieces of a too-long caption).
TEXT_PROTOCOL = "encode-texts-v1"
# Images (or images' captions) per chunk: a killed build loses at most one chunk of work.
DEFAULT_CHUNK = 2048


@dataclass(frozen=True)
class CropProtocol:
    """How a training image becomes its cached CLIP image feature.

    The official dataset tool's feature (reference/official-lafite.md section 5.1): ONE random
    square crop per image, side in ``[real_crop * S, S)`` and a random offset, bicubic resize to
    the CLIP size without antialiasing, CLIP normalisation. The crop of image ``i`` comes from a
    generator seeded by ``(seed, i)``. ``real_crop >= 1`` uses the whole (square) image.
    """

    real_crop: float = 0.99
    seed: int = 0

    @property
    def key(self) -> str:
        """Names the cache file: every setting that changes the features is in it."""
        return f"crop{self.real_crop:g}-seed{self.seed}-v{IMAGE_PROTOCOL_VERSION}"

    def box(self, index: int, height: int, width: int) -> tuple[int, int, int]:
        """(top, left, side) of image ``index``'s crop."""
        size = min(height, width)
        low = max(1, int(self.real_crop * size))
        rng = np.random.default_rng((self.seed, index))
        side = size if self.real_crop >= 1.0 or low >= size else int(rng.integers(low, size))
        return int(rng.integers(0, height - side + 1)), int(rng.integers(0, width - side + 1)), side

    def boxes(self, indices: Sequence[int], height: int, width: int) -> np.ndarray:
        return np.array([self.box(i, height, width) for i in indices], dtype=np.int64).reshape(-1, 3)


class FeatureCache:
    """CLIP features of a dataset, computed once and memory-mapped on read.

    What is cached: the image feature of every training image under the official crop protocol
    (:class:`CropProtocol`) and the text feature of every caption. Files live under
    ``<cache>/clip-features/<dataset fingerprint>/<encoder id>/``, the cache being
    ``<workspace>/cache`` or ``$LAFITE_CACHE`` (a folder shared by a cluster); the image file's
    name carries the crop protocol (``image-crop0.99-seed0-v2.npy``). So a changed dataset,
    other weights or another crop protocol are separate keys and never reuse stale features.

    Each cache file has a manifest (``<name>.json``: dataset, encoder, protocol, shape) written
    last; a cache is complete only when its manifest is there and agrees, so a build killed at any
    point is never read as complete. A build writes chunks of ``chunk`` images to
    ``<name>.parts/`` (each atomically) and a rerun resumes from the finished chunks. A manifest
    naming another CLIP or protocol than its key (a cache copied to the wrong place) is one
    :class:`UserError`; a file that is corrupt anyway (truncated, edited) is recomputed with a
    warning. Builds of one file are serialised by a file lock beside it, so processes sharing
    the cache build it once. ``store=False`` computes the same features in memory and writes
    nothing (the no-cache reference of the tests and benchmarks).
    """

    def __init__(self, workspace: Workspace, seed: int = 0, *, progress: bool = True,
                 chunk: int = DEFAULT_CHUNK, store: bool = True) -> None:
        if chunk < 1:
            raise ValueError(f"chunk must be positive, got {chunk}")
        self.workspace = workspace
        self.seed = seed
        # A bar on a terminal, else a line a minute (short builds and tests stay silent);
        # progress=False: nothing.
        self.progress = progress
        self.chunk = chunk
        self.store = store

    def folder(self, dataset: ImageTextDataset, encoder: ClipEncoder,
               images_only: bool = False) -> Path:
        path = self.workspace.cache_dir / "clip-features" / _dataset_key(dataset, images_only) / encoder.id
        path.mkdir(parents=True, exist_ok=True)
        return path

    # -- images --------------------------------------------------------------------------------
    def image_features(
        self, dataset: ImageTextDataset, encoder: ClipEncoder, real_crop: float = 0.99
    ) -> np.ndarray:
        """(N, dim) float32 (a read-only memmap when stored): image i's feature is row i.

        The feature of one seeded random crop covering ``real_crop`` of each image
        (:class:`CropProtocol`); ``real_crop >= 1`` uses the whole image.
        """
        protocol = CropProtocol(real_crop, self.seed)
        n, dim = len(dataset), int(encoder.dim)
        ranges = [(a, b, b - a) for a, b in _chunks(n, self.chunk)]
        identity = {"kind": "image", "dataset": _fingerprint(dataset, images_only=True),
                    "encoder": encoder.id, "protocol": protocol.key}

        def compute(a: int, b: int, advance: Callable[[int], None]) -> np.ndarray:
            return _encode_images(dataset, encoder, protocol, a, b, advance)

        if not self.store:
            return self._in_memory(ranges, dim, compute, "image", n)
        folder = self.folder(dataset, encoder, images_only=True)
        path = folder / f"image-{protocol.key}.npy"

        def read() -> np.ndarray | None:
            if not self._manifest_agrees(path, identity, {"rows": n, "dim": dim}):
                return None
            return _read_array(path, (n, dim))

        def build() -> np.ndarray:
            started = time.perf_counter()
            self._build(path, ranges, dim, compute, f"CLIP image features ({encoder.id})", n)
            self._finish(path, identity, {"rows": n, "dim": dim}, started)
            return np.load(path, mmap_mode="r")

        return self._get(path, read, build)

    # -- texts ---------------------------------------------------------------------------------
    def text_features(self, dataset: ImageTextDataset, encoder: Any) -> tuple[np.ndarray, np.ndarray]:
        """(float32 (M, dim) features of every caption, int64 offsets (N+1,)).

        Captions of image i are rows ``offsets[i]:offsets[i+1]``. ``encoder`` is anything with
        ``id``, ``dim`` and ``encode_texts`` (a CLIP or a text-only encoder).
        """
        n, dim = len(dataset), int(encoder.dim)
        identity = {"kind": "text", "dataset": _fingerprint(dataset, images_only=False),
                    "encoder": encoder.id, "protocol": TEXT_PROTOCOL}
        state: dict[str, Any] = {}

        def offsets() -> np.ndarray:
            if "offsets" not in state:
                counts = [len(dataset.captions(i)) for i in range(n)]
                state["offsets"] = np.zeros(n + 1, dtype=np.int64)
                np.cumsum(counts, out=state["offsets"][1:])
            return state["offsets"]

        def ranges() -> list[tuple[int, int, int]]:
            o = offsets()
            return [(a, b, int(o[b] - o[a])) for a, b in _chunks(n, self.chunk)]

        def compute(a: int, b: int, advance: Callable[[int], None]) -> np.ndarray:
            flat = [c for i in range(a, b) for c in dataset.captions(i)]
            features = _encode_texts(encoder, flat)
            advance(b - a)
            return features

        if not self.store:
            return self._in_memory(ranges(), dim, compute, "text", n), offsets()
        folder = self.folder(dataset, encoder)
        path, offsets_path = folder / "text.npy", folder / "text-offsets.npy"

        def read() -> tuple[np.ndarray, np.ndarray] | None:
            if not self._manifest_agrees(path, identity, {"rows": None, "dim": dim, "items": n}):
                return None
            stored = _read_array(offsets_path, (n + 1,), dtype=np.int64)
            if stored is None:
                return None
            if not _offsets_valid(stored):
                warnings.warn(f"Feature cache {offsets_path} is inconsistent; recomputing it.",
                              stacklevel=4)
                return None
            features = _read_array(path, (int(stored[-1]), dim))
            return None if features is None else (features, np.asarray(stored))

        def build() -> tuple[np.ndarray, np.ndarray]:
            started = time.perf_counter()
            self._build(path, ranges(), dim, compute, f"CLIP caption features ({encoder.id})", n)
            atomic_write(offsets_path, lambda handle: np.save(handle, offsets()))
            self._finish(path, identity, {"rows": int(offsets()[-1]), "dim": dim, "items": n},
                         started)
            return np.load(path, mmap_mode="r"), offsets()

        return self._get(path, read, build)

    # -- building ------------------------------------------------------------------------------
    def _get(self, path: Path, read: Callable[[], Any], build: Callable[[], Any]) -> Any:
        found = read()
        if found is not None:
            return found
        # One builder per file, across processes (and machines sharing the cache with flock).
        from lafite.locks import exclusive

        with exclusive(path.with_name(path.name + ".lock")):
            found = read()  # another process may have finished it while this one waited
            if found is not None:
                return found
            return build()

    def _manifest_agrees(self, path: Path, identity: dict[str, Any], shape: dict[str, Any]) -> bool:
        """Whether ``path`` is a complete cache of exactly this key.

        No manifest: never finished (or killed before the manifest): not complete. A manifest of
        another CLIP or protocol: one UserError. An unreadable one: corrupt, recomputed.
        """
        manifest_path = _manifest_path(path)
        if not manifest_path.exists():
            return False
        try:
            manifest = json.loads(manifest_path.read_text())
            if not isinstance(manifest, dict):
                raise ValueError("not a JSON object")
        except (OSError, ValueError) as err:
            warnings.warn(f"Feature cache {manifest_path} is corrupt ({err}); recomputing it.",
                          stacklevel=4)
            return False
        wrong = [f"{key} {manifest.get(key)!r} where this run needs {value!r}"
                 for key, value in identity.items() if manifest.get(key) != value]
        if wrong:
            raise UserError(
                f"Feature cache {path} was built for something else than its place says: "
                f"{'; '.join(wrong)}. It is never used for this run. Delete {path.parent} "
                "(it is rebuilt), or point LAFITE_CACHE at the cache it came from."
            )
        for key, value in shape.items():
            if value is not None and manifest.get(key) != value:
                warnings.warn(f"Feature cache {manifest_path} is corrupt ({key} "
                              f"{manifest.get(key)!r}, expected {value!r}); recomputing it.",
                              stacklevel=4)
                return False
        return True

    def _build(self, path: Path, ranges: list[tuple[int, int, int]], dim: int,
               compute: Callable[[int, int, Callable[[int], None]], np.ndarray], what: str,
               n_items: int) -> None:
        """Fill ``path`` chunk by chunk, resuming from the chunks a killed build finished."""
        _manifest_path(path).unlink(missing_ok=True)
        parts = path.with_name(path.stem + ".parts")
        parts.mkdir(parents=True, exist_ok=True)
        names = [parts / f"{a:012d}-{b:012d}.npy" for a, b, _ in ranges]
        done = [_read_array(name, (rows, dim), warn=False) is not None
                for name, (_, _, rows) in zip(names, ranges, strict=True)]
        resumed = sum(b - a for (a, b, _), ok in zip(ranges, done, strict=True) if ok)
        if resumed:
            log.info("%s: resuming at %d of %d items from %s", what, resumed, n_items, parts)
        with _Progress(self.progress, what, n_items) as advance:
            advance(resumed)
            for name, (a, b, rows), ok in zip(names, ranges, done, strict=True):
                if ok:
                    continue
                features = compute(a, b, advance)
                if features.shape != (rows, dim):
                    raise AssertionError(f"chunk {a}:{b} has shape {features.shape}, expected {(rows, dim)}")
                atomic_write(name, lambda handle, f=features: np.save(handle, f))
        total = sum(rows for _, _, rows in ranges)

        def assemble(handle: Any) -> None:
            # Streamed chunk by chunk: memory stays at one chunk whatever the dataset size.
            np.lib.format.write_array_header_1_0(handle, {
                "descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)),
                "fortran_order": False, "shape": (total, dim)})
            for name in names:
                handle.write(np.ascontiguousarray(np.load(name), dtype=np.float32).tobytes())

        atomic_write(path, assemble)

    def _finish(self, path: Path, identity: dict[str, Any], shape: dict[str, Any],
                started: float) -> None:
        """Mark ``path`` complete (its manifest, written last) and drop the chunks."""
        import shutil

        seconds = time.perf_counter() - started
        manifest = {**identity, **shape, "seconds": round(seconds, 3),
                    "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "host": socket.gethostname()}
        atomic_write(_manifest_path(path),
                     lambda handle: handle.write(json.dumps(manifest, indent=1).encode()))
        shutil.rmtree(path.with_name(path.stem + ".parts"), ignore_errors=True)
        log.info("cached %s in %.1f s", path, seconds)

    def _in_memory(self, ranges: list[tuple[int, int, int]], dim: int,
                   compute: Callable[[int, int, Callable[[int], None]], np.ndarray], kind: str,
                   n_items: int) -> np.ndarray:
        with _Progress(self.progress, f"CLIP {kind} features", n_items) as advance:
            parts = [compute(a, b, advance) for a, b, _ in ranges]
        return np.concatenate(parts) if parts else np.empty((0, dim), dtype=np.float32)


def _chunks(n: int, size: int) -> list[tuple[int, int]]:
    return [(a, min(n, a + size)) for a in range(0, n, size)]


def _fingerprint(dataset: Any, images_only: bool) -> str:
    # Image features depend on the pixels alone: a dataset whose captions were replaced
    # (a captioner's, Table 1) names its images by ``image_fingerprint`` and shares them.
    if images_only and hasattr(dataset, "image_fingerprint"):
        return str(dataset.image_fingerprint())
    return str(dataset.fingerprint())


def _dataset_key(dataset: Any, images_only: bool) -> str:
    return hashlib.sha256(_fingerprint(dataset, images_only).encode()).hexdigest()[:16]


def _manifest_path(path: Path) -> Path:
    return path.with_suffix(".json")


def _encode_images(dataset: Any, encoder: ClipEncoder, protocol: CropProtocol, start: int,
                   stop: int, advance: Callable[[int], None]) -> np.ndarray:
    out = np.empty((stop - start, encoder.dim), dtype=np.float32)
    step = max(1, int(encoder.batch_size))
    for a in range(start, stop, step):
        b = min(stop, a + step)
        batch = torch.stack([torch.as_tensor(dataset[i]) for i in range(a, b)])
        boxes = protocol.boxes(range(a, b), batch.shape[-2], batch.shape[-1])
        out[a - start : b - start] = encoder.encode_cropped(batch, boxes).cpu().numpy()
        advance(b - a)
    return out


def _encode_texts(encoder: Any, texts: list[str]) -> np.ndarray:
    if not texts:
        return np.empty((0, int(encoder.dim)), dtype=np.float32)
    return encoder.encode_texts(texts).cpu().numpy().astype(np.float32, copy=False)


class _Progress:
    """Progress over ``total`` items: a rich bar on a terminal, a plain line a minute in the
    log of a batch job (a long build is not silent there, a short one prints nothing), nothing
    when disabled. Inside another live display (the runner's bar) it falls back to the lines."""

    LINE_EVERY = 60.0

    def __init__(self, enabled: bool, description: str, total: int) -> None:
        self.enabled, self.description, self.total = enabled, description, total
        self._bar: Any = None

    def __enter__(self) -> Callable[[int], None]:
        if not self.enabled:
            return lambda n: None
        if sys.stderr.isatty():
            from rich.errors import LiveError
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeRemainingColumn,
            )

            bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                           TimeRemainingColumn(), transient=True)
            try:
                bar.__enter__()
            except LiveError:
                pass
            else:
                self._bar = bar
                task = bar.add_task(self.description, total=self.total)
                return lambda n: bar.advance(task, n)
        state = {"done": 0, "shown": time.monotonic()}

        def advance(n: int) -> None:
            state["done"] += n
            if time.monotonic() - state["shown"] >= self.LINE_EVERY:
                state["shown"] = time.monotonic()
                print(f"{self.description}: {state['done']}/{self.total}", file=sys.stderr,
                      flush=True)

        return advance

    def __exit__(self, *exc: Any) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)


def _offsets_valid(offsets: np.ndarray) -> bool:
    return bool(offsets[0] == 0 and np.all(np.diff(offsets) >= 0))


def _read_array(path: Path, shape: tuple[int, ...], dtype: Any = np.float32,
                warn: bool = True) -> np.ndarray | None:
    """The cached array if it is intact, else None (with a warning when a file was there)."""
    if not path.exists():
        return None
    try:
        array = np.load(path, mmap_mode="r")
        if array.shape != shape or array.dtype != np.dtype(dtype):
            raise ValueError(f"shape {array.shape} {array.dtype}, expected {shape} {np.dtype(dtype)}")
        if array.size and not np.isfinite(array[-1]).all():
            raise ValueError("non-finite values")
        return array
    except Exception as err:  # noqa: BLE001 - any unreadable cache file is recomputed
        if warn:
            warnings.warn(f"Feature cache {path} is corrupt ({err}); recomputing it.", stacklevel=4)
        return None


__all__ = [
    "EVAL_DOMAINS",
    "ClipEncoder",
    "CropProtocol",
    "FeatureCache",
    "WorldClipTraining",
    "attribute_probe",
    "default_world_clip_training",
    "load_clip",
    "load_open_clip",
    "load_world_clip",
    "pretrain_world_clip",
    "retrieval_accuracy",
    "world_clip_config",
    "world_clip_dir",
    "world_clip_key",
    "world_clip_report",
]
