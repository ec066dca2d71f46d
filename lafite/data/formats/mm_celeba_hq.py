"""Multi-Modal-CelebA-HQ (github.com/IIGROUP/MM-CelebA-HQ-Dataset), as downloaded: the images
``CelebA-HQ-img/<n>.jpg`` (n = 0..29999), the text folder ``celeba-caption/<n>.txt`` (10
descriptions per image, one per line) and the split files ``train/filenames.pickle`` and
``test/filenames.pickle`` (24,000 / 6,000 names; the official LAFITE notebook calls them
``filenames_train.pickle`` and ``filenames_test.pickle``, which are read too). The release's
``image/`` + ``text/celeba-caption/`` arrangement is found as well.
"""

from __future__ import annotations

from pathlib import Path

from lafite.data.formats.base import (
    FileSource,
    Problems,
    list_dir,
    load_name_list,
    require_complete,
)

NAME = "mm-celeba-hq"
TITLE = "MM-CelebA-HQ"
LAYOUT = ("CelebA-HQ-img/<n>.jpg, celeba-caption/<n>.txt (10 descriptions each) and "
          "train/filenames.pickle, test/filenames.pickle (or filenames_train.pickle, "
          "filenames_test.pickle)")
HOW = ("download Multi-Modal-CelebA-HQ (the Google Drive or Baidu link of "
       "github.com/IIGROUP/MM-CelebA-HQ-Dataset): the images (CelebA-HQ-img), the text "
       "(celeba-caption) and the train/test filenames.pickle, and unpack them here")
_IMAGES = ("CelebA-HQ-img", "image/CelebA-HQ-img", "image/images", "image", "images")
_TEXT = ("celeba-caption", "text/celeba-caption", "text")


def _first_dir(root: Path, options: tuple[str, ...]) -> Path:
    for option in options:
        if (root / option).is_dir():
            return root / option
    return root / options[0]


def image_folder(root: Path) -> Path:
    return _first_dir(root, _IMAGES)


def text_folder(root: Path) -> Path:
    return _first_dir(root, _TEXT)


def split_file(root: Path, split: str) -> Path:
    for candidate in (root / split / "filenames.pickle", root / f"filenames_{split}.pickle",
                      root / "text" / split / "filenames.pickle"):
        if candidate.is_file():
            return candidate
    return root / split / "filenames.pickle"


def matches(root: Path) -> bool:
    return any((root / d).is_dir() for d in ("CelebA-HQ-img", "celeba-caption",
                                             "text/celeba-caption"))


def missing(root: Path, split: str) -> list[str]:
    gone = []
    if not image_folder(root).is_dir():
        gone.append(f"{image_folder(root)}/ (the images): {HOW}")
    if not text_folder(root).is_dir():
        gone.append(f"{text_folder(root)}/ (the descriptions): {HOW}")
    if not split_file(root, split).is_file():
        gone.append(f"{split_file(root, split)} (the {split} split): {HOW}")
    return gone


def open_split(root: Path, split: str, skip: bool) -> FileSource:
    require_complete(TITLE, split, root, missing(root, split))
    images, texts, names_file = image_folder(root), text_folder(root), split_file(root, split)
    present = list_dir(images)
    problems = Problems(f"{TITLE} {split} split ({names_file})", skip)
    kept = []
    for name in load_name_list(names_file, f"{TITLE} split file"):
        stem = Path(name).stem if name.lower().endswith((".jpg", ".png")) else name
        found = next((f"{stem}{s}" for s in (".jpg", ".png") if f"{stem}{s}" in present), None)
        if found is None:
            problems.add(f"{names_file} names {stem}, but {images / (stem + '.jpg')} does not exist")
        else:
            kept.append((found, stem))
    skipped = problems.finish(f"Unpack the images of MM-CelebA-HQ into {images} again")
    kept.sort()
    return FileSource(
        images, [images / f for f, _ in kept], kind=NAME, label=f"{TITLE} {split}",
        caption_paths=[texts / f"{s}.txt" for _, s in kept], extra_files=[names_file],
        no_caption_hint=HOW, skipped=skipped,
    )
