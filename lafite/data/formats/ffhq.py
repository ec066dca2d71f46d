"""FFHQ (github.com/NVlabs/ffhq-dataset): an image folder without captions, used for
language-free pre-training only. The images are ``images1024x1024/<thousands>/<n>.png`` as
downloaded (or any folder of images: the whole tree is read). FFHQ has no test split.
"""

from __future__ import annotations

from pathlib import Path

from lafite.data.formats.base import IMAGE_SUFFIXES, FileSource
from lafite.errors import UserError

NAME = "ffhq"
TITLE = "FFHQ"
LAYOUT = "images1024x1024/ (or any folder tree of .png/.jpg images); no captions, no test split"
HOW = ("download images1024x1024 with download_ffhq.py --images (github.com/NVlabs/ffhq-dataset) "
       "into this folder")
NO_CAPTIONS = ("FFHQ has no captions: it is for language-free training only (mode "
               "language-free); for captions use mm-celeba-hq")


def image_folder(root: Path) -> Path:
    for name in ("images1024x1024", "thumbnails128x128"):
        if (root / name).is_dir():
            return root / name
    return root


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES
                  and p.is_file() and not p.name.startswith("."))


def matches(root: Path) -> bool:
    if (root / "images1024x1024").is_dir() or (root / "ffhq-dataset-v2.json").is_file():
        return True
    # A plain image tree (a resized copy): images directly inside or one folder down.
    for pattern in ("*", "*/*"):
        for count, path in enumerate(root.glob(pattern)):
            if path.suffix.lower() in IMAGE_SUFFIXES:
                return True
            if count > 200:
                break
    return False


def missing(root: Path, split: str) -> list[str]:
    if split != "train":
        return ["a test split: FFHQ has none (it pre-trains language-free; evaluate on "
                "mm-celeba-hq)"]
    return [] if image_folder(root).is_dir() else [f"{root / 'images1024x1024'}/: {HOW}"]


def open_split(root: Path, split: str, skip: bool) -> FileSource:
    if split != "train":
        raise UserError(f"{TITLE} at {root} has no {split} split: FFHQ is used for language-free "
                        "pre-training only (jobs read its training split); evaluate on "
                        "mm-celeba-hq")
    folder = image_folder(root)
    paths = _images(folder)
    if not paths:
        raise UserError(f"{TITLE} at {root}: no images found under {folder}; {HOW}")
    return FileSource(folder, paths, kind=NAME, label=TITLE, no_caption_hint=NO_CAPTIONS)
