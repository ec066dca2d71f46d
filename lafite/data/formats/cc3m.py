"""Conceptual Captions 3M as ``img2dataset`` writes it (``--output_format webdataset``): shards
``00000.tar``, ``00001.tar``, ... each holding per sample ``<key>.jpg``, ``<key>.txt`` (the
caption) and ``<key>.json`` (url, status, size), next to img2dataset's ``<shard>.parquet`` and
``<shard>_stats.json``. The shards are indexed once (tar headers only) and an image is read
with one seek into its shard.

The training split is the shards in this folder (or in ``train/`` / ``training/``); the test
split, when there is one, the shards in ``validation/`` (or ``val/``, ``test/``).
"""

from __future__ import annotations

import tarfile
from pathlib import Path

from lafite.data.formats.base import IMAGE_SUFFIXES, Problems, TarSource, require_complete
from lafite.errors import UserError

NAME = "cc3m"
TITLE = "CC3M (img2dataset webdataset shards)"
LAYOUT = ("webdataset shards NNNNN.tar (key.jpg + key.txt + key.json per sample) in this folder "
          "or in train/; the validation shards in validation/")
HOW = ("download the CC3M tsv files (ai.google.com/research/ConceptualCaptions/download) and run "
       "img2dataset --input_format tsv --url_col url --caption_col caption "
       "--output_format webdataset --output_folder <this folder>[/validation] on each")
SPLIT_FOLDERS = {"train": (".", "train", "training"), "test": ("validation", "val", "test")}


def shards(root: Path, split: str) -> tuple[Path, list[Path]]:
    """(the folder holding the split's shards, the shards in name order)."""
    for name in SPLIT_FOLDERS[split]:
        folder = root / name
        found = sorted(p for p in folder.glob("*.tar") if p.is_file())
        if found:
            return (root if name == "." else folder), found
    return root / SPLIT_FOLDERS[split][0 if split == "test" else 1], []


def matches(root: Path) -> bool:
    return any(shards(root, s)[1] for s in SPLIT_FOLDERS)


def missing(root: Path, split: str) -> list[str]:
    if shards(root, split)[1]:
        return []
    where = root if split == "train" else root / "validation"
    return [f"{where}/*.tar (the {split} shards): {HOW}"]


def _key(member: str) -> tuple[str, str]:
    """webdataset's sample key and extension: the name up to the first dot of its base name."""
    folder, _, base = member.rpartition("/")
    stem, _, ext = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), ext.lower()


def index_shard(path: Path, number: int, problems: Problems) -> list[tuple]:
    """(shard, image member, image offset, size, text offset, size) per sample of one shard."""
    size = path.stat().st_size
    images: dict[str, tuple[str, int, int]] = {}
    texts: dict[str, tuple[int, int]] = {}
    try:
        with tarfile.open(path, mode="r:") as archive:
            for member in archive:
                if member.offset_data + member.size > size:
                    problems.add(f"shard {path} is truncated: member {member.name} ends past the "
                                 "end of the file; download the shard again")
                    break
                if not member.isfile():
                    continue
                key, ext = _key(member.name)
                if f".{ext}" in IMAGE_SUFFIXES:
                    images[key] = (member.name, member.offset_data, member.size)
                elif ext == "txt":
                    texts[key] = (member.offset_data, member.size)
            else:
                # tarfile stops quietly at a short header: a complete tar ends in zero blocks.
                with open(path, "rb") as handle:
                    handle.seek(archive.offset)
                    tail = handle.read(1024)
                if len(tail) < 1024 or tail.strip(b"\0"):
                    problems.add(f"shard {path} is truncated after {len(images)} samples (no "
                                 "end-of-archive blocks); download the shard again")
    except (tarfile.TarError, EOFError, OSError) as error:
        where = f"after {len(images)} samples" if images else "from the start"
        problems.add(f"shard {path} is not a readable tar {where} ({error})")
    entries = []
    for key in sorted(images):
        name, offset, length = images[key]
        text = texts.get(key, (-1, 0))
        entries.append((number, name, offset, length, *text))
    for key in sorted(set(texts) - set(images)):
        problems.add(f"shard {path}: sample {key} has a caption ({key}.txt) but no image")
    return entries


def open_split(root: Path, split: str, skip: bool) -> TarSource:
    folder, found = shards(root, split)
    if not found:
        require_complete(TITLE, split, root, missing(root, split))
    problems = Problems(f"{TITLE} {split} split ({folder})", skip)
    entries = []
    for number, shard in enumerate(found):
        entries += index_shard(shard, number, problems)
    skipped = problems.finish("Download the damaged shards again (re-run img2dataset)")
    if not entries:
        raise UserError(f"{TITLE} {split} split at {folder}: the shards hold no images; {HOW}")
    return TarSource(folder, found, entries, kind=NAME, label=f"CC3M {split}",
                     no_caption_hint="its shard has no <key>.txt for it; re-run img2dataset",
                     skipped=skipped)
