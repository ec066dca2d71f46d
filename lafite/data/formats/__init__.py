"""The paper's datasets in their published formats, one module per format.

Each module reads one dataset as downloaded (``coco``: MS-COCO 2014 caption JSON; ``cub``:
AttnGAN's CUB text folder and split pickles; ``ln_coco``: Localized Narratives JSONL;
``mm_celeba_hq``: its text folder and split pickles; ``cc3m``: img2dataset webdataset shards;
``ffhq``: an image tree) into a :class:`~lafite.data.formats.base.Source`, and ``lafite_zip``
reads the official LAFITE zips of any of them. :func:`open_split` picks the module from what the
dataset folder holds; :class:`lafite.data.folder.ImageTextFolder` reads every Source, so training,
evaluation and the preflight checks have one code path whatever the format.

A dataset folder ``<data.data_root>/<dataset>/`` is read as, in this order: the prepared
layout (``train/`` and ``test/`` image + .txt folders, what earlier versions required), the
dataset's published layout, or official LAFITE zips. Anything else stops with one message naming
the folder, the layout expected and how to get it.
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

from lafite.data.formats import cc3m, coco, cub, ffhq, lafite_zip, ln_coco, mm_celeba_hq
from lafite.data.formats import folder as folder_format
from lafite.data.formats.base import Source
from lafite.errors import UserError

# dataset id -> the module reading its published layout
FORMATS: dict[str, ModuleType] = {
    module.NAME: module for module in (coco, cub, ln_coco, mm_celeba_hq, cc3m, ffhq)
}
SPLITS = ("train", "test")
PREPARED = "prepared"
PUBLISHED = "published"
ZIP = "lafite-zip"


def layout_help(dataset: str) -> str:
    """The layouts a folder of ``dataset`` may have, for messages."""
    module = FORMATS[dataset]
    how = getattr(module, "HOW", "") or getattr(module, "HOW_TEXT", "")
    return (f"{module.TITLE} as published ({module.LAYOUT}; to get it: {how}), or official LAFITE "
            f"zips ({lafite_zip.LAYOUT}), or the prepared layout train/ and test/ holding "
            f"{folder_format.LAYOUT}")


def detect(dataset: str, root: Path) -> str:
    """Which layout the dataset folder ``root`` has: PREPARED, PUBLISHED or ZIP. Raises a
    UserError naming the folder, what it holds and the layouts expected, for anything else."""
    if dataset not in FORMATS:
        raise UserError(f"unknown dataset {dataset!r}; valid: {', '.join(FORMATS)}")
    if not root.is_dir():
        raise UserError(f"dataset folder {root} does not exist; it should hold "
                        f"{layout_help(dataset)}")
    if any((root / s).is_dir() and folder_format.has_images(root / s) for s in SPLITS):
        return PREPARED
    if FORMATS[dataset].matches(root):
        return PUBLISHED
    if lafite_zip.matches(root):
        return ZIP
    entries = sorted(p.name + ("/" if p.is_dir() else "") for p in root.iterdir())
    found = ", ".join(entries[:8]) + (f" and {len(entries) - 8} more" if len(entries) > 8 else "")
    others = [name for name, module in FORMATS.items()
              if name not in (dataset, "ffhq") and module.matches(root)]
    hint = (f" It looks like {FORMATS[others[0]].TITLE}: if so, set data.dataset: {others[0]} "
            f"(or name {others[0]} in `data check`)." if others else "")
    raise UserError(
        f"dataset folder {root} does not hold {FORMATS[dataset].TITLE}: found "
        f"{found or 'nothing'}.{hint} Expected {layout_help(dataset)}"
    )


def dataset_folder(dataset: str, root: Path) -> Path:
    """The dataset folder a user named with ``root``: ``root`` itself, or ``root/<dataset>``
    when ``root`` is the folder of all datasets (``data.data_root``)."""
    root = Path(root).expanduser()
    nested = root / dataset
    if nested.is_dir() and not (FORMATS[dataset].matches(root) or lafite_zip.matches(root)
                                or any((root / s).is_dir() for s in SPLITS)):
        return nested
    return root


def open_split(dataset: str, root: Path, split: str, skip: bool = False) -> Source:
    """The Source of ``split`` of ``dataset`` in the dataset folder ``root`` (any layout)."""
    if split not in SPLITS:
        raise UserError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}")
    layout = detect(dataset, root)
    if layout == PREPARED:
        path = root / split
        if not path.is_dir():
            raise UserError(
                f"dataset {dataset!r} ({split} split) not found at {path}: {root} has the "
                f"prepared layout, so {path} must hold {folder_format.LAYOUT}")
        return folder_format.open_folder(path)
    if layout == ZIP:
        return lafite_zip.open_split(root, split, skip, dataset)
    return FORMATS[dataset].open_split(root, split, skip)


def describe(dataset: str, root: Path, split: str) -> str:
    """Where ``split`` is read from, without reading it (plans and dry runs)."""
    try:
        layout = detect(dataset, root)
    except UserError:
        return f"{root}/ (not found or not {FORMATS[dataset].TITLE}; see `lafite-repro data check`)"
    if layout == PREPARED:
        return str(root / split)
    if layout == ZIP:
        try:
            found = lafite_zip.find_zip(root, split)
        except UserError:
            found = None
        return f"{found or root} (official LAFITE zip)"
    return f"{root} ({FORMATS[dataset].TITLE} as published, {split} split)"


def missing(dataset: str, root: Path, split: str) -> list[str]:
    """What the published layout of ``dataset`` lacks in ``root`` for ``split``, each with
    how to get it."""
    return FORMATS[dataset].missing(root, split)


__all__ = ["FORMATS", "PREPARED", "PUBLISHED", "SPLITS", "ZIP", "dataset_folder", "describe",
           "detect", "layout_help", "missing", "open_split"]
