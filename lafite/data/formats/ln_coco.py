"""LN-COCO: COCO 2017 images with the Localized Narratives captions (google.github.io/
localized-narratives), as downloaded: ``train2017/``, ``val2017/`` and the JSON-lines files of
the COCO narratives (``coco_train_localized_narratives-0000N-of-00004.jsonl`` and
``coco_val_localized_narratives.jsonl``; the captions-only ``coco_{train,val}_captions.jsonl`` are
read the same way). Each line is one narrative with ``image_id`` and ``caption``; an image can
have several, each becomes one caption (as the official notebook writes them).

The training split is train2017, the test split val2017; the dataset is the images that have a
narrative, in file-name order (``<12-digit id>.jpg``).
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

from lafite.data.formats.base import FileSource, Problems, list_dir, require_complete
from lafite.errors import UserError

NAME = "ln-coco"
TITLE = "LN-COCO"
FOLDERS = {"train": "train2017", "test": "val2017"}
PREFIX = {"train": "coco_train_", "test": "coco_val_"}
LAYOUT = ("train2017/ and val2017/ (COCO 2017 images) and the Localized Narratives files "
          "coco_train_localized_narratives-0000N-of-00004.jsonl and "
          "coco_val_localized_narratives.jsonl (or coco_{train,val}_captions.jsonl), here or "
          "under annotations/")
HOW_IMAGES = ("download train2017.zip and val2017.zip from cocodataset.org/#download and unzip "
              "them into this folder")
HOW_TEXT = ("download the COCO train and validation narratives (.jsonl) from "
            "google.github.io/localized-narratives/download.html into this folder")


def narrative_files(root: Path, split: str) -> list[Path]:
    found: list[Path] = []
    for folder in (root, root / "annotations"):
        found += sorted(p for p in folder.glob(f"{PREFIX[split]}*.jsonl") if p.is_file())
    return found


def matches(root: Path) -> bool:
    return any((root / f).is_dir() for f in FOLDERS.values()) or any(
        narrative_files(root, s) for s in FOLDERS)


def missing(root: Path, split: str) -> list[str]:
    gone = []
    if not (root / FOLDERS[split]).is_dir():
        gone.append(f"{root / FOLDERS[split]}/ (the {split} images): {HOW_IMAGES}")
    if not narrative_files(root, split):
        gone.append(f"{root}/{PREFIX[split]}*.jsonl (the {split} narratives): {HOW_TEXT}")
    return gone


def read_narratives(paths: list[Path]) -> dict[int, list[tuple[Path, int, str]]]:
    """image id -> [(file, line, caption)] over JSON-lines files of Localized Narratives."""
    found: dict[int, list[tuple[Path, int, str]]] = defaultdict(list)
    for path in paths:
        with open(path, encoding="utf-8") as handle:
            for number, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                    image_id, caption = int(record["image_id"]), str(record["caption"]).strip()
                except (json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
                    raise UserError(
                        f"{path}:{number}: not a Localized Narrative (a JSON object with "
                        f"'image_id' and 'caption'): {error}; download the file again") from error
                if caption:
                    found[image_id].append((path, number, caption))
    return found


def open_split(root: Path, split: str, skip: bool) -> FileSource:
    require_complete(TITLE, split, root, missing(root, split))
    folder, files = root / FOLDERS[split], narrative_files(root, split)
    narratives = read_narratives(files)
    present = list_dir(folder)
    problems = Problems(f"{TITLE} {split} split ({', '.join(p.name for p in files)})", skip)
    kept = []
    for image_id, notes in narratives.items():
        name = f"{image_id:012d}.jpg"
        if name in present:
            kept.append((name, tuple(caption for _, _, caption in notes)))
        else:
            path, number, _ = notes[0]
            problems.add(f"{path}:{number}: image_id {image_id} names {folder / name}, which "
                         "does not exist")
    skipped = problems.finish(f"Re-download {FOLDERS[split]}.zip (cocodataset.org) into {root}, "
                              "or use the narratives file of the same COCO split")
    kept.sort()
    return FileSource(
        folder, [folder / name for name, _ in kept], kind=NAME, label=f"{TITLE} {FOLDERS[split]}",
        captions=[caps for _, caps in kept], extra_files=files,
        no_caption_hint="give it a narrative in the .jsonl files", skipped=skipped,
    )
