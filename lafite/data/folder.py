"""Image + caption folders: the one loader for the built-in world and for real datasets.

The format is the official code's (``dataset_tool.py`` source folders): each image ``k.png`` (or
``.jpg``, ...) sits next to ``k.txt`` whose non-empty lines are its captions (UTF-8). Images are
centre-cropped to a square and resized with LANCZOS, as ``dataset_tool.py --transform=center-crop``
does, and RGBA, greyscale, CMYK and 16-bit images become 8-bit RGB, so the same folder gives the
same tensors whoever reads it. :meth:`ImageTextFolder.check` finds unreadable images and missing
captions without decoding pixels, so a run can refuse bad data before it starts.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from lafite.errors import UserError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
# How many problems a failed check names before it only counts the rest.
SHOWN_PROBLEMS = 10
# PIL modes of 16-bit greyscale images (Pillow 10+ opens 16-bit PNGs as I;16, older ones as I).
_WIDE_GREY_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")
# What PIL raises for a broken or truncated file.
_PIL_ERRORS = (OSError, ValueError, SyntaxError, EOFError)


def _to_8bit_grey(image):
    """A 16-bit greyscale PIL image as mode L, keeping the high byte (what Pillow does itself for
    16-bit RGB PNGs); ``convert("L")`` would clip every value above 255 to white."""
    from PIL import Image

    wide = np.asarray(image).astype(np.int64)
    return Image.fromarray((np.clip(wide, 0, 65535) >> 8).astype(np.uint8), "L")


def _load_rgb_square(path: Path, resolution: int) -> np.ndarray:
    """uint8 HxWx3: centre-crop to the shorter side, LANCZOS resize (official dataset tool)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as handle:
            handle.load()
            image = handle
            if image.mode in _WIDE_GREY_MODES:
                image = _to_8bit_grey(image)
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
    except (UnidentifiedImageError, Image.DecompressionBombError, *_PIL_ERRORS) as error:
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
            # utf-8-sig: a byte-order mark (Windows editors) is not part of the first caption.
            text = path.read_text(encoding="utf-8-sig")
        except FileNotFoundError:
            return []
        except UnicodeDecodeError as error:
            raise UserError(
                f"caption file {path} is not valid UTF-8 (byte {error.start + 1}); save it as "
                "UTF-8, one caption per line"
            ) from error
        except OSError as error:
            raise UserError(f"cannot read captions {path}: {error}; fix or delete it") from error
        return [line.strip() for line in text.splitlines() if line.strip()]

    def caption_problem(self, index: int) -> str | None:
        """What keeps image ``index`` from having a caption (naming its image and .txt files and
        how to fix it), or None when it has at least one."""
        image, path = self.files[index], self.caption_file(index)
        try:
            captions = self.captions(index)
        except UserError as error:
            return f"{error} (image {image})"
        if captions:
            return None
        if not path.exists():
            return (f"{image} has no caption file: write its captions to {path}, one per line, "
                    "or delete the image")
        return (f"caption file {path} of {image} is empty: write at least one caption in it, "
                "one per line, or delete both files")

    def image_problem(self, index: int) -> str | None:
        """Why image ``index`` cannot be read, or None. Reads the header and, where the format
        allows (PNG checksums), verifies the file without decoding its pixels."""
        from PIL import Image

        path = self.files[index]
        try:
            with Image.open(path) as handle:
                width, height = handle.size
                handle.verify()
        # Broad on purpose: PIL's plugins raise struct.error, IndexError and more on corrupt
        # files, and any of them means training would fail on this file.
        except Exception as error:  # noqa: BLE001
            reason = str(error) or type(error).__name__
            return (f"cannot read image {path}: {reason}. Replace or delete the file (re-run "
                    "the dataset preparation for this folder)")
        if width < 1 or height < 1:
            return f"image {path} is empty ({width}x{height} pixels); replace or delete it"
        return None

    def check(
        self,
        need_captions: bool,
        why: str = "",
        advance: Callable[[int], None] | None = None,
        workers: int = 0,
    ) -> None:
        """Raise one UserError naming the first problems (and counting the rest) if any image
        cannot be read or, with ``need_captions``, has no caption. ``why`` says who needs the
        captions; ``advance(n)`` is called as images are checked (progress)."""

        def problems(index: int) -> list[str]:
            found = [self.image_problem(index)]
            if need_captions:
                found.append(self.caption_problem(index))
            return [p for p in found if p]

        shown: list[str] = []
        count = bad_images = 0
        workers = workers or min(8, os.cpu_count() or 1)
        block = 512
        # Threads: checking is mostly waiting for the file system (network storage on clusters).
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for start in range(0, len(self), block):
                indices = range(start, min(start + block, len(self)))
                for found in pool.map(problems, indices):
                    if found:
                        bad_images += 1
                        count += len(found)
                        shown.extend(found[: max(0, SHOWN_PROBLEMS - len(shown))])
                if advance is not None:
                    advance(len(indices))
        if not count:
            return
        need = f" (captions are needed: {why})" if need_captions and why else ""
        listed = "\n".join(f"  - {p}" for p in shown)
        if count > len(shown):
            listed = (f"{count} problems, the first {len(shown)}:\n{listed}\n"
                      f"  ... and {count - len(shown)} more")
        raise UserError(
            f"dataset folder {self.root}: {bad_images} of {len(self)} images cannot be used"
            f"{need}:\n{listed}\n"
            "Fix or delete these files (each image needs a same-named UTF-8 .txt with one "
            "caption per line where captions are needed) and run the same command again"
        )

    def _listing(self) -> Iterator[str]:
        for image in self.files:
            for path in (image, image.with_suffix(".txt")):
                try:
                    stat = path.stat()
                    yield f"{path.relative_to(self.root)}:{stat.st_size}:{stat.st_mtime_ns}\n"
                except FileNotFoundError:
                    yield f"{path.relative_to(self.root)}:missing\n"

    def fingerprint(self) -> str:
        """Hash of file names, sizes and mtimes (images and captions) plus the resolution.

        Cheap (no pixel is read), and changes whenever a file is replaced, so caches keyed by it
        (CLIP features, reference statistics) are rebuilt when the data changes.
        """
        digest = hashlib.sha256(f"resolution={self.resolution}\n".encode())
        for entry in self._listing():
            digest.update(entry.encode())
        return digest.hexdigest()[:16]

    def files_fingerprint(self) -> str:
        """Like :meth:`fingerprint` but independent of the resolution: keys what depends on
        the files alone (the result of :meth:`check`)."""
        digest = hashlib.sha256(b"files\n")
        for entry in self._listing():
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


__all__ = ["IMAGE_SUFFIXES", "SHOWN_PROBLEMS", "ImageTextFolder"]
