"""Image + caption folders: the one loader for the built-in world and for real datasets.

The format is the official code's (``dataset_tool.py`` source folders): each image ``k.png`` (or
``.jpg``, ...) sits next to ``k.txt`` whose non-empty lines are its captions. Images are
centre-cropped to a square and resized with LANCZOS, as ``dataset_tool.py --transform=center-crop``
does, and RGBA or greyscale images become RGB, so the same folder gives the same tensors whoever
reads it.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from lafite.errors import UserError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def _load_rgb_square(path: Path, resolution: int) -> np.ndarray:
    """uint8 HxWx3: centre-crop to the shorter side, LANCZOS resize (official dataset tool)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as handle:
            handle.load()
            image = handle
            if (
                image.mode == "RGBA"
                or image.mode == "LA"
                or (image.mode == "P" and "transparency" in image.info)
            ):
                # Drop alpha (the dataset tool keeps the colour channels), no compositing.
                image = image.convert("RGBA").convert("RGB")
            elif image.mode != "RGB":
                image = image.convert("RGB")
            width, height = image.size
            side = min(width, height)
            if width != height:
                left, top = (width - side) // 2, (height - side) // 2
                image = image.crop((left, top, left + side, top + side))
            if side != resolution:
                image = image.resize((resolution, resolution), Image.Resampling.LANCZOS)
            return np.asarray(image, dtype=np.uint8).copy()
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as error:
        raise UserError(
            f"cannot read image {path}: {error}. Replace or delete the file (re-run the dataset "
            "preparation for this folder)"
        ) from error


class ImageTextFolder(Dataset):
    """Sorted images of a folder (searched recursively) with their ``.txt`` captions.

    ``dataset[i]`` is a uint8 CHW tensor (what torch-fidelity takes). An image without a
    ``.txt`` has no captions (``captions(i) == []``), which language-free training allows.
    ``max_images`` keeps the first N files of the sorted list (the official ``--subset``).
    """

    def __init__(self, path: str | os.PathLike, resolution: int, max_images: int = 0) -> None:
        self.root = Path(path)
        if not self.root.is_dir():
            raise UserError(f"dataset folder {self.root} does not exist or is not a folder")
        if int(resolution) < 1:
            raise UserError(f"resolution must be positive, got {resolution}")
        self.resolution = int(resolution)
        files = sorted(
            p
            for p in self.root.rglob("*")
            if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file() and not p.name.startswith(".")
        )
        if max_images and max_images > 0:
            files = files[:max_images]
        if not files:
            raise UserError(
                f"dataset folder {self.root} holds no images ({', '.join(IMAGE_SUFFIXES)}); "
                "each image needs a same-named .txt file of captions, one per line"
            )
        self.files = files
        self._truths = None

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.image(index)

    def __repr__(self) -> str:
        return f"ImageTextFolder({str(self.root)!r}, resolution={self.resolution}, n={len(self)})"

    def image(self, index: int) -> torch.Tensor:
        """uint8 CHW tensor at ``resolution``."""
        pixels = _load_rgb_square(self.files[index], self.resolution)
        return torch.from_numpy(pixels).permute(2, 0, 1).contiguous()

    def images(self, indices) -> torch.Tensor:
        """uint8 NCHW tensor."""
        return torch.stack([self.image(int(i)) for i in indices])

    def caption_file(self, index: int) -> Path:
        return self.files[index].with_suffix(".txt")

    def captions(self, index: int) -> list[str]:
        path = self.caption_file(index)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        except (OSError, UnicodeDecodeError) as error:
            raise UserError(f"cannot read captions {path}: {error}; fix or delete it") from error
        return [line.strip() for line in text.splitlines() if line.strip()]

    def fingerprint(self) -> str:
        """Hash of file names, sizes and mtimes (images and captions) plus the resolution.

        Cheap (no pixel is read), and changes whenever a file is replaced, so caches keyed by it
        (CLIP features, reference statistics) are rebuilt when the data changes.
        """
        digest = hashlib.sha256(f"resolution={self.resolution}\n".encode())
        for image in self.files:
            for path in (image, image.with_suffix(".txt")):
                try:
                    stat = path.stat()
                    entry = f"{path.relative_to(self.root)}:{stat.st_size}:{stat.st_mtime_ns}\n"
                except FileNotFoundError:
                    entry = f"{path.relative_to(self.root)}:missing\n"
                digest.update(entry.encode())
        return digest.hexdigest()[:16]

    def truths(self) -> list | None:
        """Ground truth (:class:`lafite.data.world.SceneTruth`) per image for a materialised
        world folder (from ``truth.jsonl``), or None for real data, which has none."""
        if self._truths is None:
            from lafite.data.world import read_truths

            if not (self.root / "truth.jsonl").exists():
                return None
            by_name = read_truths(self.root)
            self._truths = [by_name.get(str(p.relative_to(self.root))) for p in self.files]
        return self._truths


__all__ = ["IMAGE_SUFFIXES", "ImageTextFolder"]
