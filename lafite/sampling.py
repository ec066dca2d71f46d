"""Sample grids, and conditioning on an image or on an image and a caption together.

Conditions live in CLIP's joint space, so a generator trained on text (or pseudo text) features
can also be driven by an image:

* **Text**: the caption's normalised CLIP text feature (what evaluation uses).
* **Image** (paper Fig. 6; the author's recipe in issue #9 of the official repository): the CLIP
  image feature of the centre-cropped image, turned into a pseudo text feature exactly as in
  training, ``normalize(0.25 f^ + 0.75 eps^)`` with a fresh unit noise eps^ per sample (the
  official convex mix, ``mix = 0.75``). Use a language-free model (Gaussian perturbation);
  the noise is what gives the samples their diversity.
* **Image + caption** (multi-modal; the paper's own implementation is in an appendix that was
  not published): the normalised average ``normalize(w h_img + (1 - w) h_txt)`` of the image's
  pseudo text feature and the caption's text feature, ``w = 0.5`` by default. Averaging unit
  vectors keeps the condition on the sphere the generator was trained on and lets ``w`` slide
  between the two sources; with ``w = 0`` or ``1`` it reduces to the single-source cases.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont
from torch import nn

from lafite.errors import UserError

IMAGE_MIX = 0.75  # weight of the unit noise in the official image-conditioning recipe
MIN_CELL = 96  # small (world) images are enlarged to at least this many pixels in grids


def _device_of(module: nn.Module) -> torch.device:
    for tensor in list(module.parameters()) + list(module.buffers()):
        return tensor.device
    return torch.device("cpu")


def load_image(path: str | Path) -> torch.Tensor:
    """An RGB image file as uint8 CHW (a UserError names the file if it cannot be read)."""
    try:
        with Image.open(path) as image:
            array = np.asarray(image.convert("RGB"), dtype=np.uint8)
    except (OSError, ValueError) as err:
        raise UserError(f"--image: cannot read {path}: {err}") from None
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()


def centre_crop(image: torch.Tensor) -> torch.Tensor:
    """The largest centred square of a CHW image."""
    _, h, w = image.shape
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    return image[:, top : top + side, left : left + side]


def text_conditions(clip: Any, captions: Sequence[str]) -> torch.Tensor:
    """(N, D) normalised caption features."""
    return F.normalize(clip.encode_texts(list(captions)).float(), dim=-1)


def image_conditions(
    clip: Any, image: torch.Tensor, n: int, *, seed: int = 0, mix: float = IMAGE_MIX
) -> torch.Tensor:
    """(n, D) pseudo text features of one uint8 CHW image, one noise draw per sample."""
    from lafite.perturb import official_mix

    feature = F.normalize(clip.encode_images(centre_crop(image).unsqueeze(0)).float(), dim=-1)
    generator = torch.Generator().manual_seed(seed)
    eps = torch.randn(n, feature.shape[1], generator=generator).to(feature.device)
    return official_mix(feature.expand(n, -1), mix, eps)


def multimodal_conditions(
    clip: Any,
    image: torch.Tensor,
    caption: str,
    n: int,
    *,
    seed: int = 0,
    image_weight: float = 0.5,
    mix: float = IMAGE_MIX,
) -> torch.Tensor:
    """(n, D) ``normalize(w h_img + (1 - w) h_txt)`` (see the module docstring)."""
    if not 0.0 <= image_weight <= 1.0:
        raise UserError(f"--image-weight must be in [0, 1], got {image_weight}")
    h_img = image_conditions(clip, image, n, seed=seed, mix=mix)
    h_txt = text_conditions(clip, [caption]).to(h_img.device).expand(n, -1)
    return F.normalize(image_weight * h_img + (1.0 - image_weight) * h_txt, dim=-1)


@torch.no_grad()
def generate(
    G: nn.Module,
    conditions: torch.Tensor,
    *,
    seed: int = 0,
    truncation_psi: float = 1.0,
    noise_mode: str = "const",
) -> torch.Tensor:
    """uint8 NCHW images for each condition row, z ~ N(0, I) from ``seed``.

    ``noise_mode="const"`` by default, as the official notebook and SOA script sample.
    """
    device = _device_of(G)
    generator = torch.Generator().manual_seed(seed)
    z = torch.randn(conditions.shape[0], int(G.z_dim), generator=generator)
    was_training = G.training
    G.eval()
    try:
        images = G(
            z.to(device),
            conditions.to(device, torch.float32),
            truncation_psi=truncation_psi,
            noise_mode=noise_mode,
        )
    finally:
        G.train(was_training)
    return (images * 127.5 + 128).clamp(0, 255).to(torch.uint8).cpu()


def render_grid(
    rows: Sequence[tuple[str, torch.Tensor]], *, columns: int = 8, cell: int | None = None
) -> Image.Image:
    """A grid image: each block of images (uint8 NCHW) with its label written underneath.

    A block wraps after ``columns`` images; small images are enlarged (nearest neighbour) so
    that world samples stay visible next to their text.
    """
    if not rows:
        raise ValueError("nothing to draw")
    side = int(rows[0][1].shape[-1])
    cell = cell or max(side, MIN_CELL)
    font = ImageFont.load_default()
    pad = 4
    columns = max(1, min(columns, max(len(images) for _, images in rows)))
    width = columns * cell + (columns + 1) * pad
    chars_per_line = max(10, width // 7)
    blocks = []
    for label, images in rows:
        lines = textwrap.wrap(label, chars_per_line) or [""]
        n_rows = -(-len(images) // columns)
        blocks.append((lines, images, n_rows))
    line_height = 14
    height = sum(n * (cell + pad) + len(lines) * line_height + 2 * pad for lines, _, n in blocks)
    canvas = Image.new("RGB", (width, height + pad), "white")
    draw = ImageDraw.Draw(canvas)
    y = pad
    for lines, images, n_rows in blocks:
        for index, image in enumerate(images):
            r, c = divmod(index, columns)
            tile = Image.fromarray(image.permute(1, 2, 0).numpy())
            if tile.size != (cell, cell):
                tile = tile.resize((cell, cell), Image.NEAREST)
            canvas.paste(tile, (pad + c * (cell + pad), y + r * (cell + pad)))
        y += n_rows * (cell + pad)
        for line in lines:
            draw.text((pad, y), line, fill="black", font=font)
            y += line_height
        y += 2 * pad
    return canvas


def make_grid(
    G: nn.Module,
    captions: Sequence[str],
    clip: Any,
    n_per_caption: int = 4,
    seed: int = 0,
    *,
    truncation_psi: float = 1.0,
    noise_mode: str = "const",
    columns: int = 8,
) -> Image.Image:
    """``n_per_caption`` samples for each caption, each block captioned underneath."""
    if n_per_caption < 1:
        raise UserError(f"--n must be at least 1, got {n_per_caption}")
    rows = []
    for index, caption in enumerate(captions):
        cond = text_conditions(clip, [caption]).expand(n_per_caption, -1)
        images = generate(
            G, cond, seed=seed + index, truncation_psi=truncation_psi, noise_mode=noise_mode
        )
        rows.append((caption, images))
    return render_grid(rows, columns=columns)


def generate_grid(
    G: nn.Module,
    clip: Any,
    *,
    caption: str | None = None,
    image: str | Path | None = None,
    n: int = 16,
    seed: int = 0,
    image_weight: float = 0.5,
    truncation_psi: float = 1.0,
    noise_mode: str = "const",
    columns: int = 8,
) -> Image.Image:
    """What ``lafite-repro generate`` draws: text, image, or image + caption conditioning."""
    if n < 1:
        raise UserError(f"--n must be at least 1, got {n}")
    if caption is None and image is None:
        raise UserError("generate needs --caption, --image, or both")
    if image is None:
        assert caption is not None
        return make_grid(
            G,
            [caption],
            clip,
            n,
            seed,
            truncation_psi=truncation_psi,
            noise_mode=noise_mode,
            columns=columns,
        )
    pixels = load_image(image)
    if caption is None:
        cond = image_conditions(clip, pixels, n, seed=seed)
        label = f"image: {Path(image).name}"
    else:
        cond = multimodal_conditions(clip, pixels, caption, n, seed=seed, image_weight=image_weight)
        label = f"image: {Path(image).name} + {caption!r} (image weight {image_weight})"
    images = generate(G, cond, seed=seed, truncation_psi=truncation_psi, noise_mode=noise_mode)
    return render_grid([(label, images)], columns=columns)


__all__ = [
    "IMAGE_MIX",
    "centre_crop",
    "generate",
    "generate_grid",
    "image_conditions",
    "load_image",
    "make_grid",
    "multimodal_conditions",
    "render_grid",
    "text_conditions",
]
