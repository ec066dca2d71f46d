"""The official LAFITE dataset zip (``dataset_tool.py`` of github.com/drboog/Lafite, the zips its
README links, e.g. ``COCO2014_train_CLIP_ViTB32.zip``): images as PNG at
``NNNNN/imgNNNNNNNN.png`` (already centre-cropped to 256 px) and ``dataset.json`` with
``labels``, ``clip_img_features`` ([name, 512 floats] per image) and ``clip_txt_features``
([name, [512 floats per caption]] per image), computed with CLIP ViT-B/32 (reference section 5.1).

The zip stores no caption text, only the text features: it serves language-free training as
is, and its stored features are available through :meth:`Source.stored_features` for an
encoder that is exactly CLIP ViT-B/32.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from lafite.data.formats.base import IMAGE_SUFFIXES, ZipSource
from lafite.errors import UserError

NAME = "lafite-zip"
TITLE = "official LAFITE dataset zip"
LAYOUT = ("the official zips made by dataset_tool.py, one per split, named with 'train' and "
          "'val' or 'test' (e.g. COCO2014_train_CLIP_ViTB32.zip, COCO2014_val_CLIP_ViTB32.zip)")
HOW = ("download the zips linked from github.com/drboog/Lafite (README, 'Preparing datasets') "
       "into this folder, or give their paths as data.train_path and data.test_path")
CLIP_MODEL = "ViT-B/32"
NO_TEXT = ("the official LAFITE zip stores CLIP ViT-B/32 features of the captions but not their "
           "text, and this suite encodes caption text: train language-free on the zip, or give "
           "the dataset's published files (or the dataset_tool source folder of k.png + k.txt)")
_TEST_WORDS = ("val", "test")


def is_lafite_zip(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as archive:
            return "dataset.json" in archive.namelist()
    except (zipfile.BadZipFile, OSError):
        return False


def find_zip(root: Path, split: str) -> Path | None:
    candidates = []
    for path in sorted(root.glob("*.zip")):
        name = path.name.lower()
        is_test = any(word in name for word in _TEST_WORDS)
        if (split == "test") == is_test and (split == "test" or "train" in name):
            candidates.append(path)
    found = [p for p in candidates if is_lafite_zip(p)]
    if len(found) > 1:
        raise UserError(f"{root} holds {len(found)} LAFITE zips for the {split} split "
                        f"({', '.join(p.name for p in found)}); keep one, or name it with "
                        f"data.{split}_path")
    return found[0] if found else None


def matches(root: Path) -> bool:
    return any(find_zip(root, s) for s in ("train", "test"))


def missing(root: Path, split: str) -> list[str]:
    return [] if find_zip(root, split) else [f"{root}/*{split}*.zip: {HOW}"]


def _features(source: ZipSource) -> dict[str, Any]:
    """The CLIP features stored in the zip's dataset.json, in the order of the source's images:
    ``image`` (N, 512) float32 (unnormalised; NaN rows where an image has none), ``text`` one
    (k, 512) array per image, and ``model``."""
    try:
        with source.archive().open("dataset.json") as handle:
            data = json.load(handle)
    except (KeyError, json.JSONDecodeError, UnicodeDecodeError, zipfile.BadZipFile) as error:
        raise UserError(f"{source.root}: dataset.json is missing or not valid JSON ({error}); "
                        "download the zip again") from error
    images = dict(data.get("clip_img_features") or [])
    texts = dict(data.get("clip_txt_features") or [])
    width = len(next(iter(images.values()))) if images else 512
    image = np.full((len(source), width), np.nan, dtype=np.float32)
    text = []
    for i, name in enumerate(source.names):
        if name in images:
            image[i] = np.asarray(images[name], dtype=np.float32)
        text.append(np.asarray(texts.get(name, []), dtype=np.float32).reshape(-1, width))
    return {"model": CLIP_MODEL, "image": image, "text": text}


def open_zip(path: Path, split: str, dataset: str = "") -> ZipSource:
    """The images of one official zip (a split)."""
    try:
        with zipfile.ZipFile(path) as archive:
            infos = archive.infolist()
            members = sorted(i.filename for i in infos
                             if Path(i.filename).suffix.lower() in IMAGE_SUFFIXES)
            has_json = any(i.filename == "dataset.json" for i in infos)
    except (zipfile.BadZipFile, OSError) as error:
        raise UserError(f"{path} is not a readable zip file ({error}); download it again") from error
    if not members:
        raise UserError(f"{path} holds no images: it is not a LAFITE dataset zip; {HOW}")
    # Without dataset.json (not dataset_tool's output) the images alone are read.
    return ZipSource(path, members, kind=NAME, label=f"{TITLE} ({dataset or 'dataset'} {split})",
                     no_caption_hint=NO_TEXT, features=_features if has_json else None)


def open_split(root: Path, split: str, skip: bool, dataset: str = "") -> ZipSource:
    path = find_zip(root, split)
    if path is None:
        raise UserError(f"no {TITLE} for the {split} split in {root}: {HOW}")
    return open_zip(path, split, dataset)
