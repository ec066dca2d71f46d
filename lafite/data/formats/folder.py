"""The suite's own layout and the official dataset tool's source format: each image ``k.png``
(or ``.jpg``, ...) of a folder tree next to ``k.txt`` whose non-empty lines are its captions.
Real datasets prepared this way sit at ``<data.data_root>/<dataset>/{train,test}/``; the
``folder`` dataset and ``data.train_path``/``data.test_path`` name such folders directly."""

from __future__ import annotations

from pathlib import Path

from lafite.data.formats.base import IMAGE_SUFFIXES, FileSource

NAME = "folder"
LAYOUT = ("an image + caption folder: k.png/k.jpg next to k.txt with one caption per line "
          "(the official LAFITE dataset_tool source format)")


def image_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES
                  and p.is_file() and not p.name.startswith("."))


def has_images(root: Path, limit: int = 2000) -> bool:
    """Whether a folder tree holds an image (looking at up to ``limit`` entries)."""
    for count, path in enumerate(root.rglob("*")):
        if path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith("."):
            return True
        if count >= limit:
            break
    return False


def open_folder(root: Path, files: list[Path] | None = None) -> FileSource:
    files = image_files(root) if files is None else files
    return FileSource(root, files, kind=NAME, label="image + caption folder",
                      caption_paths=[p.with_suffix(".txt") for p in files], legacy=True)
