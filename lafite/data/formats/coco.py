"""MS-COCO 2014 as downloaded from cocodataset.org: ``train2014/``, ``val2014/`` and the caption
JSON files ``annotations/captions_{train,val}2014.json`` (about 5 captions per image).

The training split is train2014, the test split val2014 (the official LAFITE zips are made from
these two). The dataset is the images the caption JSON lists, in file-name order.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

from lafite.data.formats.base import FileSource, Problems, list_dir, require_complete
from lafite.errors import UserError

NAME = "coco2014"
TITLE = "MS-COCO 2014"
FOLDERS = {"train": "train2014", "test": "val2014"}
LAYOUT = ("train2014/ and val2014/ (the image folders) and annotations/captions_train2014.json, "
          "annotations/captions_val2014.json")
HOW = ("download train2014.zip, val2014.zip and annotations_trainval2014.zip from "
       "cocodataset.org/#download and unzip them into this folder")


def annotation_file(root: Path, split: str) -> Path:
    return root / "annotations" / f"captions_{FOLDERS[split]}.json"


def matches(root: Path) -> bool:
    return any((root / f).is_dir() for f in FOLDERS.values()) or any(
        annotation_file(root, s).is_file() for s in FOLDERS)


def missing(root: Path, split: str) -> list[str]:
    gone = []
    if not (root / FOLDERS[split]).is_dir():
        gone.append(f"{root / FOLDERS[split]}/ (the {split} images): {HOW}")
    if not annotation_file(root, split).is_file():
        gone.append(f"{annotation_file(root, split)} (the {split} captions): {HOW}")
    return gone


def read_captions_json(path: Path) -> tuple[dict[int, str], dict[int, list[str]]]:
    """(image id -> file name, image id -> captions) of a COCO caption JSON."""
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
        files = {int(image["id"]): str(image["file_name"]) for image in data["images"]}
        captions: dict[int, list[str]] = defaultdict(list)
        for note in data["annotations"]:
            captions[int(note["image_id"])].append(str(note["caption"]).strip())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise UserError(f"caption file {path} is not valid JSON ({error}); download "
                        "annotations_trainval2014.zip again") from error
    except (KeyError, TypeError, ValueError) as error:
        raise UserError(f"caption file {path} is not a COCO caption file: it needs 'images' "
                        f"(id, file_name) and 'annotations' (image_id, caption); missing "
                        f"{error}") from error
    return files, captions


def open_split(root: Path, split: str, skip: bool) -> FileSource:
    require_complete(TITLE, split, root, missing(root, split))
    folder, json_path = root / FOLDERS[split], annotation_file(root, split)
    files, captions = read_captions_json(json_path)
    present = list_dir(folder)
    problems = Problems(f"{TITLE} {split} split ({json_path})", skip)
    for image_id in sorted(set(captions) - set(files)):
        problems.add(f"{json_path}: captions of image id {image_id}, which its 'images' list "
                     "does not name")
    kept = []
    for image_id, name in files.items():
        if name not in present:
            problems.add(f"{json_path}: image id {image_id} names {folder / name}, which does "
                         "not exist")
        elif not captions.get(image_id):
            problems.add(f"{json_path}: image id {image_id} ({folder / name}) has no caption")
        else:
            kept.append((name, image_id))
    skipped = problems.finish(f"Re-download {FOLDERS[split]}.zip and annotations_trainval2014.zip "
                              f"(cocodataset.org) and unzip them into {root}")
    kept.sort()
    return FileSource(
        folder, [folder / name for name, _ in kept], kind=NAME, label=f"{TITLE} {FOLDERS[split]}",
        captions=[tuple(captions[i]) for _, i in kept], extra_files=[json_path],
        no_caption_hint=f"give it a caption in {json_path}", skipped=skipped,
    )
