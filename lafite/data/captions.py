"""Captions files: training captions that replace a dataset's own (Table 1's captioning baseline).

The paper's Cap-Base and Cap-Large rows train supervised on captions that an image captioner
(VinVL base / large) wrote for the MS-COCO training images. Such captions come as a *captions
file*; the test split keeps its ground-truth captions for evaluation, as in the paper.

Format: JSON Lines, UTF-8, one object per line::

    {"image": "COCO_train2014_000000000009.jpg", "caption": "a plate of food on a table"}
    {"image": "sub/folder/img_02.png", "caption": "a dog running on the grass"}

- ``image`` is the image's file name relative to the training split folder (the folder
  ``data.train_path`` or ``<data.data_root>/<data.dataset>/train`` names), with ``/`` between
  folders, exactly as it is on disk (a leading ``./`` is ignored);
- ``caption`` is a non-empty string;
- an image may have several lines (one caption each: training draws one per sample, as it does
  from a ``.txt`` with several lines); other keys (a captioner's score, say) are ignored, and so
  are blank lines;
- every training image needs at least one caption. Lines for images of the folder that a
  ``data.max_train_images`` subset leaves out are ignored; a name that is not an image of the
  folder at all is an error.

A relative ``data.captions_file`` is read from ``<data.data_root>/<data.dataset>/`` (beside the
``train`` and ``test`` folders), or from the folder holding ``data.train_path`` when that is
set; with neither (the built-in world), from the current directory.

Everything is checked before training (the runner's preflight), and each problem is one
:class:`~lafite.errors.UserError` naming the file and line. :class:`CaptionedFolder` wraps an
:class:`~lafite.data.folder.ImageTextFolder` with the file's captions; its fingerprint includes
the file's content, so CLIP feature caches never mix caption sets.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from lafite.atomic import atomic_write
from lafite.data.folder import ImageTextFolder
from lafite.errors import UserError

FORMAT_HINT = ('JSON Lines, one {"image": "<file name relative to the train split folder>", '
               '"caption": "<text>"} per line')


@dataclass(frozen=True)
class CaptionLine:
    """One caption of a captions file, with the line it came from (1-based)."""

    line: int
    image: str
    caption: str


@dataclass(frozen=True)
class CaptionsFile:
    """A parsed captions file: its lines in file order and a digest of its bytes."""

    path: Path
    lines: tuple[CaptionLine, ...]
    digest: str


def read_captions_file(path: str | os.PathLike) -> CaptionsFile:
    """Parse and check the syntax of a captions file (see the module docstring).

    Raises UserError naming the file and the line for invalid UTF-8, invalid JSON, a line that is
    not an object, a missing or non-string ``image``/``caption`` and an empty caption.
    """
    path = Path(path)
    try:
        blob = path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"captions file {path} not found; write it as {FORMAT_HINT}") from None
    except OSError as error:
        raise UserError(f"cannot read captions file {path}: {error}") from None
    lines: list[CaptionLine] = []
    for number, raw in enumerate(blob.split(b"\n"), start=1):
        where = f"{path}:{number}"
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as error:
            raise UserError(
                f"{where}: not valid UTF-8 (byte {error.start + 1} of the line); save the file "
                "as UTF-8"
            ) from None
        if number == 1:
            text = text.removeprefix("\ufeff")
        if not text.strip():
            continue
        try:
            record: Any = json.loads(text)
        except json.JSONDecodeError as error:
            raise UserError(
                f"{where}: invalid JSON ({error.msg} at column {error.colno}); expected "
                f"{FORMAT_HINT}"
            ) from None
        if not isinstance(record, dict):
            raise UserError(f"{where}: expected a JSON object, got {type(record).__name__}; "
                            f"expected {FORMAT_HINT}")
        for key in ("image", "caption"):
            if key not in record:
                raise UserError(f"{where}: missing key {key!r}; expected {FORMAT_HINT}")
            if not isinstance(record[key], str):
                raise UserError(f"{where}: {key!r} must be a string, got {record[key]!r}")
        caption = record["caption"].strip()
        if not caption:
            raise UserError(f"{where}: empty caption for image {record['image']!r}; give it text "
                            "or delete the line")
        image = record["image"].strip().removeprefix("./")
        if not image:
            raise UserError(f"{where}: empty image name; give the file name relative to the "
                            "train split folder")
        lines.append(CaptionLine(number, image, caption))
    return CaptionsFile(path, tuple(lines), hashlib.sha256(blob).hexdigest())


def write_captions_file(path: str | os.PathLike, captions: Iterable[tuple[str, str]]) -> Path:
    """Write ``(image name, caption)`` pairs as a captions file (atomically)."""
    text = "".join(json.dumps({"image": image, "caption": caption}, ensure_ascii=False) + "\n"
                   for image, caption in captions)
    return atomic_write(path, lambda handle: handle.write(text.encode("utf-8")))


def image_name(folder: ImageTextFolder, index: int) -> str:
    """How a captions file names image ``index`` of ``folder``."""
    return folder.files[index].relative_to(folder.root).as_posix()


class CaptionedFolder(Dataset):
    """An :class:`ImageTextFolder` whose captions come from a captions file.

    Images, resolution, ground truth and file list are the folder's; ``captions(i)`` are the
    file's lines for image i (in file order). ``fingerprint()`` adds the file's digest to the
    folder's, so features cached for one caption set are never taken for another's.
    """

    def __init__(self, folder: ImageTextFolder, captions_file: str | os.PathLike) -> None:
        self.folder = folder
        self.captions_file = Path(captions_file)
        parsed = read_captions_file(self.captions_file)
        self.digest = parsed.digest
        index = {image_name(folder, i): i for i in range(len(folder))}
        by_index: list[list[str]] = [[] for _ in range(len(folder))]
        for entry in parsed.lines:
            position = index.get(entry.image)
            if position is not None:
                by_index[position].append(entry.caption)
            elif not (folder.root / entry.image).is_file():
                # An image of the folder outside a max_train_images subset is skipped, not wrong.
                raise UserError(
                    f"{self.captions_file}:{entry.line}: image {entry.image!r} is not in the "
                    f"training images of {folder.root}; name images by their file name relative "
                    "to that folder, or delete the line"
                )
        missing = [i for i, caps in enumerate(by_index) if not caps]
        if missing:
            raise UserError(
                f"{self.captions_file}: {len(missing)} of {len(folder)} training images have no "
                f"caption (the first: {image_name(folder, missing[0])!r}); give every image of "
                f"{folder.root} at least one line"
            )
        self._captions = by_index

    @property
    def root(self) -> Path:
        return self.folder.root

    @property
    def files(self) -> list[Path]:
        return self.folder.files

    @property
    def resolution(self) -> int:
        return self.folder.resolution

    def __len__(self) -> int:
        return len(self.folder)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.folder.image(index)

    def __repr__(self) -> str:
        return f"CaptionedFolder({self.folder!r}, captions_file={str(self.captions_file)!r})"

    def image(self, index: int) -> torch.Tensor:
        return self.folder.image(index)

    def images(self, indices: Sequence[int]) -> torch.Tensor:
        return self.folder.images(indices)

    def captions(self, index: int) -> list[str]:
        return list(self._captions[index])

    def image_fingerprint(self) -> str:
        """The images' own fingerprint: their CLIP features do not depend on the captions."""
        return self.folder.fingerprint()

    def fingerprint(self) -> str:
        blob = f"{self.folder.fingerprint()}\ncaptions-file:{self.digest}"
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def truths(self) -> list | None:
        return self.folder.truths()


__all__ = [
    "FORMAT_HINT",
    "CaptionLine",
    "CaptionedFolder",
    "CaptionsFile",
    "image_name",
    "read_captions_file",
    "write_captions_file",
]
