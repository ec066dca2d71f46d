"""Image + caption folders: the one loader for the built-in world and for real datasets.

The format is the official code's (``dataset_tool.py`` source folders): each image ``k.png`` (or
``.jpg``, ...) sits next to ``k.txt`` whose non-empty lines are its captions (UTF-8). Images are
centre-cropped to a square and resized with LANCZOS, as ``dataset_tool.py --transform=center-crop``
does, and RGBA, greyscale, CMYK and 16-bit images become 8-bit RGB, so the same folder gives the
same tensors whoever reads it. :meth:`ImageTextFolder.check` finds unreadable images and missing
captions without decoding pixels, so a run can refuse bad data before it starts.

The same class reads every published dataset format (lafite.data.formats): a format module
yields a :class:`~lafite.data.formats.base.Source` (where each image and its captions are: files,
caption JSON, shards, the official zip) and :meth:`ImageTextFolder.from_source` wraps it, so
training, evaluation and the checks decode, crop and verify images one way.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from lafite.data.formats.base import IMAGE_SUFFIXES, Source
from lafite.errors import UserError

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


def _load_rgb_square(path: Path, resolution: int, source: Source | None = None,
                     index: int = 0) -> np.ndarray:
    """uint8 HxWx3: centre-crop to the shorter side, LANCZOS resize (official dataset tool).
    ``source`` (with ``index``) reads the image from a dataset format, ``path`` names it."""
    from PIL import Image, UnidentifiedImageError

    try:
        if source is None:
            return _decode_rgb_square(Image.open(path), resolution)
        with source.open(index) as stream:
            return _decode_rgb_square(Image.open(stream), resolution)
    except (UnidentifiedImageError, Image.DecompressionBombError, *_PIL_ERRORS) as error:
        where = path if source is None else source.location(index)
        raise UserError(
            f"cannot read image {where}: {error}. Replace or delete the file (re-run the dataset "
            "preparation for this folder)"
        ) from error


def _decode_rgb_square(opened, resolution: int) -> np.ndarray:
    """The image PIL opened, as uint8 HxWx3 at ``resolution``."""
    from PIL import Image

    with opened as handle:
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


class ImageTextFolder(Dataset):
    """Sorted images of a folder (searched recursively) with their ``.txt`` captions, or the
    images and captions of a published dataset format (:meth:`from_source`).

    ``dataset[i]`` is a uint8 CHW tensor (what torch-fidelity takes). An image without a
    ``.txt`` has no captions (``captions(i) == []``), which language-free training allows.
    ``max_images`` keeps the first N files of the sorted list (the official ``--subset``).
    ``files[i]`` names image i: its file, or ``<archive>/<member>`` inside a shard or zip.
    """

    def __init__(self, path: str | os.PathLike, resolution: int, max_images: int = 0) -> None:
        from lafite.data.formats.folder import image_files, open_folder

        root = Path(path)
        if not root.is_dir():
            raise UserError(f"dataset folder {root} does not exist or is not a folder")
        self._set_resolution(resolution)
        files = image_files(root)
        if max_images and max_images > 0:
            files = files[:max_images]
        if not files:
            raise UserError(
                f"dataset folder {root} holds no images ({', '.join(IMAGE_SUFFIXES)}); "
                "each image needs a same-named .txt file of captions, one per line"
            )
        self._set_source(open_folder(root, files))

    @classmethod
    def from_source(cls, source: Source, resolution: int, max_images: int = 0) -> ImageTextFolder:
        """The dataset of a format's Source (lafite.data.formats): the first ``max_images``."""
        folder = cls.__new__(cls)
        folder._set_resolution(resolution)
        if max_images and 0 < max_images < len(source):
            source = source.select(range(max_images))
        if not len(source):
            raise UserError(f"{source.describe()} holds no images")
        folder._set_source(source)
        return folder

    def _set_resolution(self, resolution: int) -> None:
        if int(resolution) < 1:
            raise UserError(f"resolution must be positive, got {resolution}")
        self.resolution = int(resolution)

    def _set_source(self, source: Source) -> None:
        self.source = source
        self.root = source.root
        self.files = [source.path(i) for i in range(len(source))]
        self._truths = None
        self._legacy = getattr(source, "legacy", False)

    @property
    def skipped(self) -> list[str]:
        """What was left out of the dataset as corrupt or missing (data.skip_corrupt)."""
        return list(self.source.skipped)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.image(index)

    def __repr__(self) -> str:
        return f"ImageTextFolder({str(self.root)!r}, resolution={self.resolution}, n={len(self)})"

    def image(self, index: int) -> torch.Tensor:
        """uint8 CHW tensor at ``resolution``."""
        if self._legacy:
            pixels = _load_rgb_square(self.files[index], self.resolution)
        else:
            pixels = _load_rgb_square(self.files[index], self.resolution, self.source, index)
        return torch.from_numpy(pixels).permute(2, 0, 1).contiguous()

    def images(self, indices) -> torch.Tensor:
        """uint8 NCHW tensor."""
        return torch.stack([self.image(int(i)) for i in indices])

    def caption_file(self, index: int) -> Path:
        """Where image ``index``'s captions are: its .txt, or the format's caption file."""
        path = getattr(self.source, "caption_path", lambda i: None)(index)
        if path is not None:
            return path
        extra = getattr(self.source, "extra_files", ())
        return extra[0] if extra else self.files[index].with_suffix(".txt")

    def captions(self, index: int) -> list[str]:
        return self.source.captions(index)

    def caption_problem(self, index: int) -> str | None:
        """What keeps image ``index`` from having a caption (naming its image and caption files
        and how to fix it), or None when it has at least one."""
        return self.source.caption_problem(index)

    def image_problem(self, index: int) -> str | None:
        """Why image ``index`` cannot be read, or None. Reads the header and, where the format
        allows (PNG checksums), verifies the file without decoding its pixels."""
        from PIL import Image

        where = self.files[index] if self._legacy else self.source.location(index)
        try:
            with self.source.open(index) as stream, Image.open(stream) as handle:
                width, height = handle.size
                handle.verify()
        # Broad on purpose: PIL's plugins raise struct.error, IndexError and more on corrupt
        # files, and any of them means training would fail on this file.
        except Exception as error:  # noqa: BLE001
            reason = str(error) or type(error).__name__
            return (f"cannot read image {where}: {reason}. Replace or delete the file (re-run "
                    "the dataset preparation for this folder)")
        if width < 1 or height < 1:
            return f"image {where} is empty ({width}x{height} pixels); replace or delete it"
        return None

    def unreadable(self, workers: int = 0,
                   advance: Callable[[int], None] | None = None) -> list[tuple[int, str]]:
        """(index, problem) of every image that cannot be read, scanned with threads."""
        workers = workers or min(8, os.cpu_count() or 1)
        found: list[tuple[int, str]] = []
        block = 512
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for start in range(0, len(self), block):
                indices = range(start, min(start + block, len(self)))
                for index, problem in zip(indices, pool.map(self.image_problem, indices),
                                          strict=True):
                    if problem:
                        found.append((index, problem))
                if advance is not None:
                    advance(len(indices))
        return found

    def drop_unreadable(self, cache: Path | None = None, workers: int = 0) -> list[str]:
        """Leave out the images that cannot be read (data.skip_corrupt) and return their
        problems, with a warning that counts them. A scan is recorded in ``cache`` (keyed by
        :meth:`files_fingerprint`), so the next opening of unchanged data does not rescan."""
        record = cache / f"{self.files_fingerprint()}-unreadable.json" if cache else None
        bad: list[tuple[int, str]] | None = None
        if record is not None and record.is_file():
            try:
                bad = [(int(i), str(p)) for i, p in json.loads(record.read_text())]
            except (ValueError, TypeError):
                bad = None
        if bad is None:
            bad = self.unreadable(workers)
            if record is not None:
                from lafite.atomic import atomic_write

                record.parent.mkdir(parents=True, exist_ok=True)
                text = json.dumps(bad)
                atomic_write(record, lambda handle: handle.write(text.encode()))
        if not bad:
            return []
        dropped = {i for i, _ in bad}
        if len(dropped) >= len(self):
            raise UserError(f"{self.root}: none of the {len(self)} images can be read; the "
                            f"first: {bad[0][1]}")
        problems = [p for _, p in bad]
        warnings.warn(f"{self.root}: skipped {len(problems)} of {len(self)} images that cannot "
                      f"be read (data.skip_corrupt):\n" + "\n".join(
                          f"  - {p}" for p in problems[:SHOWN_PROBLEMS]), UserWarning, stacklevel=2)
        source = self.source.select([i for i in range(len(self)) if i not in dropped])
        source.skipped = list(self.source.skipped) + problems
        self._set_source(source)
        return problems

    def stored_features(self) -> dict | None:
        """CLIP features stored with the data (the official LAFITE zip: ``model``, ``image``
        (N, 512), ``text`` one (k, 512) array per image), or None."""
        return self.source.stored_features()

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
        if self._legacy:
            fix = ("Fix or delete these files (each image needs a same-named UTF-8 .txt with one "
                   "caption per line where captions are needed) and run the same command again")
        else:
            fix = ("Fix or download these files again and run the same command again; to leave "
                   "unreadable images out instead, set data.skip_corrupt: true")
        what = f"dataset folder {self.root}" if self._legacy else f"dataset {self.source.describe()}"
        raise UserError(
            f"{what}: {bad_images} of {len(self)} images cannot be used{need}:\n{listed}\n{fix}"
        )

    def _listing(self) -> Iterator[str]:
        return self.source.listing()

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
