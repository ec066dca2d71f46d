"""CUB-200-2011 with the AttnGAN bird captions, as downloaded: the CUB images
(``CUB_200_2011/images/<class>/<name>.jpg``, from the Caltech site) next to the contents of
AttnGAN's ``birds.zip``: ``text/<class>/<name>.txt`` (10 captions per image, one per line) and
the split files ``train/filenames.pickle`` and ``test/filenames.pickle`` (lists of
``<class>/<name>``; 8,855 train and 2,933 test images).

Images are read whole (centre crop), as the official dataset tool reads its folder; AttnGAN's
bounding-box crop is not applied.
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

NAME = "cub"
TITLE = "CUB-200-2011 (AttnGAN captions)"
LAYOUT = ("CUB_200_2011/images/<class>/<name>.jpg, text/<class>/<name>.txt (10 captions each) and "
          "train/filenames.pickle, test/filenames.pickle")
HOW_IMAGES = ("download CUB_200_2011.tgz (data.caltech.edu/records/65de6-vp158) and extract it "
              "here, so that CUB_200_2011/images/ exists")
HOW_TEXT = ("download AttnGAN's birds.zip (the 'preprocessed metadata for birds' linked from "
            "github.com/taoxugit/AttnGAN) and extract its text/, train/ and test/ here")


def image_folder(root: Path) -> Path:
    for candidate in (root / "CUB_200_2011" / "images", root / "images"):
        if candidate.is_dir():
            return candidate
    return root / "CUB_200_2011" / "images"


def split_file(root: Path, split: str) -> Path:
    return root / split / "filenames.pickle"


def text_folder(root: Path) -> Path:
    for name in ("text", "text_c10"):
        if (root / name).is_dir():
            return root / name
    return root / "text"


def matches(root: Path) -> bool:
    return (root / "CUB_200_2011").is_dir() or (
        text_folder(root).is_dir() and split_file(root, "train").is_file())


def missing(root: Path, split: str) -> list[str]:
    gone = []
    if not image_folder(root).is_dir():
        gone.append(f"{image_folder(root)}/ (the images): {HOW_IMAGES}")
    if not text_folder(root).is_dir():
        gone.append(f"{text_folder(root)}/ (the captions): {HOW_TEXT}")
    if not split_file(root, split).is_file():
        gone.append(f"{split_file(root, split)} (the {split} split): {HOW_TEXT}")
    return gone


def open_split(root: Path, split: str, skip: bool) -> FileSource:
    require_complete(TITLE, split, root, missing(root, split))
    images, texts, names_file = image_folder(root), text_folder(root), split_file(root, split)
    names = load_name_list(names_file, f"{TITLE} split file")
    listed: dict[str, set[str]] = {}
    problems = Problems(f"{TITLE} {split} split ({names_file})", skip)
    kept = []
    for name in names:
        stem = name[:-4] if name.lower().endswith(".jpg") else name
        folder, _, base = stem.rpartition("/")
        if folder not in listed:
            listed[folder] = list_dir(images / folder)
        if f"{base}.jpg" in listed[folder]:
            kept.append(stem)
        else:
            problems.add(f"{names_file} names {stem}, but {images / (stem + '.jpg')} does not exist")
    skipped = problems.finish(f"Extract CUB_200_2011.tgz into {root} again (its images/ folder "
                              "must hold every image the split file names)")
    kept.sort()
    return FileSource(
        images, [images / f"{s}.jpg" for s in kept], kind=NAME, label=f"{TITLE} {split}",
        caption_paths=[texts / f"{s}.txt" for s in kept], extra_files=[names_file],
        no_caption_hint=HOW_TEXT, skipped=skipped,
    )
