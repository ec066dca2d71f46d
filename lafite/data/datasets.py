"""Which folder a run reads: the materialised world, or a real dataset under a data root.

Everything downstream gets an :class:`ImageTextFolder`, so the world and real data share one code
path. A real dataset is read from ``<data.data_root>/<dataset>/`` as it is published (COCO's
caption JSON, AttnGAN's CUB text and split pickles, Localized Narratives JSONL, MM-CelebA-HQ's
text folder and split pickles, CC3M webdataset shards, an FFHQ image tree), as the official
LAFITE zips, or in the prepared ``train/`` + ``test/`` image + .txt layout: lafite.data.formats
reads each into a Source that ImageTextFolder wraps. ``data.train_path``/``data.test_path`` name
an image + .txt folder or an official zip directly. Real datasets are never downloaded here
(they are large and licensed); a missing one stops with a message naming the path the suite
looked at and how to get it (``lafite-repro data check NAME --root DIR`` reports the same).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from lafite.config import RunConfig
from lafite.data.world import World, materialise
from lafite.errors import UserError
from lafite.workspace import Workspace

if TYPE_CHECKING:  # the folders need torch, which planning a table does not import
    from lafite.data.captions import CaptionedFolder
    from lafite.data.folder import ImageTextFolder

# Real datasets of the paper: id → how to obtain and prepare it (one line, for error messages).
REAL_DATASETS = {
    "coco2014": (
        "MS-COCO 2014 as downloaded from cocodataset.org: train2014/, val2014/ and "
        "annotations/captions_{train,val}2014.json (train2014 is the train split, val2014 test)"
    ),
    "cub": (
        "CUB-200-2011 images with the AttnGAN bird captions (10 per image): CUB_200_2011/images/, "
        "text/ and the AttnGAN train/test split (train/filenames.pickle, test/filenames.pickle)"
    ),
    "ln-coco": (
        "COCO 2017 images (train2017/, val2017/) with the Localized Narratives captions "
        "(google.github.io/localized-narratives: coco_{train,val}_*.jsonl)"
    ),
    "mm-celeba-hq": (
        "Multi-Modal-CelebA-HQ (github.com/IIGROUP/MM-CelebA-HQ-Dataset): CelebA-HQ-img/, the "
        "10 descriptions per image in celeba-caption/ and the 24,000 / 6,000 split files "
        "train/filenames.pickle, test/filenames.pickle"
    ),
    "cc3m": (
        "Conceptual Captions 3M (ai.google.com/research/ConceptualCaptions) downloaded with "
        "img2dataset as webdataset shards (NNNNN.tar of key.jpg + key.txt + key.json)"
    ),
    "ffhq": (
        "FFHQ (github.com/NVlabs/ffhq-dataset) images; no captions are needed (language-free "
        "training only)"
    ),
}
VALID_DATASETS = ("world", "folder", *REAL_DATASETS)
# The world domain standing in for each real dataset at mini and smoke scale.
WORLD_ANALOGUES = {
    "coco2014": "scenes",
    "cub": "objects",
    "ln-coco": "narratives",
    "mm-celeba-hq": "faces",
    "cc3m": "web",
    "ffhq": "portraits",
}
# How the paper names each dataset (table columns).
DATASET_NAMES = {
    "coco2014": "MS-COCO",
    "cub": "CUB",
    "ln-coco": "LN-COCO",
    "mm-celeba-hq": "MM-CelebA-HQ",
    "cc3m": "CC3M",
    "ffhq": "FFHQ",
}
SPLITS = ("train", "test")
_FOLDER_LAYOUT = (
    "an image + caption folder: k.png/k.jpg next to k.txt with one caption per line "
    "(the official LAFITE dataset_tool source format)"
)


def dataset_overrides(cfg: RunConfig, dataset: str) -> dict[str, str]:
    """The dotted overrides that make ``cfg`` read ``dataset`` (a real dataset id): the dataset
    itself where ``cfg`` reads real data, its world analogue where it reads the world (mini and
    smoke scale). Raises UserError for an unknown id or one the world has no analogue for."""
    if dataset not in REAL_DATASETS:
        raise UserError(
            f"unknown dataset {dataset!r}; valid: {', '.join(REAL_DATASETS)}"
        )
    if cfg.data.dataset != "world":
        return {"data.dataset": dataset}
    if dataset not in WORLD_ANALOGUES:
        raise UserError(
            f"the built-in world has no domain for dataset {dataset!r} (world analogues exist "
            f"for {', '.join(WORLD_ANALOGUES)}); run this row at paper scale only"
        )
    return {"world.domain": WORLD_ANALOGUES[dataset]}


def world_folder(cfg: RunConfig, split: str, workspace: Workspace) -> Path:
    """Where ``open_dataset`` materialises the world for this config and split."""
    return workspace.world_dir / _world(cfg, split).key


def _world(cfg: RunConfig, split: str) -> World:
    size = cfg.world.n_train if split == "train" else cfg.world.n_test
    return World(cfg.world.domain, split, cfg.data.resolution, seed=cfg.world.seed, size=size)


def open_dataset(
    cfg: RunConfig, split: str, workspace: Workspace, progress: bool = False,
    captions: str | os.PathLike | None = None,
) -> ImageTextFolder | CaptionedFolder:
    """The image + caption folder of ``split`` for ``cfg.data`` (world: materialised on demand).

    ``data.max_train_images`` (the official ``--subset``) limits the training split to the first
    N images of the sorted file list. ``captions`` (training split only) is a captions file
    (lafite.data.captions) whose captions replace the folder's: training passes
    :func:`training_captions`; everything else (evaluation, reference statistics) reads the
    folder's own, so it is not asked for here implicitly.
    """
    if split not in SPLITS:
        raise UserError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}")
    if captions is not None and split != "train":
        raise ValueError("a captions file replaces the training split's captions only")
    folder = _open_folder(cfg, split, workspace, progress)
    if captions is None:
        return folder
    from lafite.data.captions import CaptionedFolder

    return CaptionedFolder(folder, captions)


def _open_folder(cfg: RunConfig, split: str, workspace: Workspace, progress: bool) -> ImageTextFolder:
    from lafite.data.folder import ImageTextFolder

    data = cfg.data
    limit = data.max_train_images if split == "train" else 0
    if data.dataset == "world":
        world = _world(cfg, split)
        folder = materialise(world, workspace.world_dir / world.key, progress=progress)
        return ImageTextFolder(folder, data.resolution, max_images=limit)
    if data.dataset not in VALID_DATASETS:
        raise UserError(
            f"data.dataset: unknown dataset {data.dataset!r}; valid: {', '.join(VALID_DATASETS)}"
        )
    source = _real_source(cfg, split)
    if source is None:  # an image + caption folder (prepared layout, or data.{split}_path)
        path = _real_path(cfg, split)
        if not path.is_dir():
            how = REAL_DATASETS.get(data.dataset, _FOLDER_LAYOUT)
            raise UserError(
                f"dataset {data.dataset!r} ({split} split) not found at {path}. Provide {how}. "
                f"Expected layout: <data.data_root>/{data.dataset}/ as published, or "
                f"<data.data_root>/{data.dataset}/{{train,test}}/ holding "
                f"{_FOLDER_LAYOUT}; or set data.{split}_path to the folder"
            )
        folder = ImageTextFolder(path, data.resolution, max_images=limit)
    else:
        folder = ImageTextFolder.from_source(source, data.resolution, max_images=limit)
    if data.skip_corrupt:
        folder.drop_unreadable(workspace.cache_dir / "data-checks")
    return folder


def _real_source(cfg: RunConfig, split: str):
    """The format Source of a real dataset split (lafite.data.formats), or None where the split
    is an image + caption folder that ImageTextFolder lists itself."""
    from lafite.data import formats

    data = cfg.data
    explicit = data.train_path if split == "train" else data.test_path
    if explicit:
        path = Path(explicit).expanduser()
        if path.suffix.lower() == ".zip":
            if not path.is_file():
                raise UserError(f"data.{split}_path: {path} does not exist (an official LAFITE "
                                f"dataset zip was expected there)")
            return formats.lafite_zip.open_zip(path, split, data.dataset)
        return None
    if data.dataset == "folder" or not data.data_root:
        return None  # _real_path names what is missing
    root = Path(data.data_root).expanduser() / data.dataset
    if not root.is_dir() or formats.detect(data.dataset, root) == formats.PREPARED:
        return None
    return formats.open_split(data.dataset, root, split, skip=data.skip_corrupt)


def captions_path(cfg: RunConfig) -> Path:
    """Where ``data.captions_file`` points: an absolute path as given; a relative one from
    ``<data.data_root>/<data.dataset>/``, else from the folder holding ``data.train_path``, else
    (the world) from the current directory."""
    data = cfg.data
    path = Path(data.captions_file).expanduser()
    if path.is_absolute():
        return path
    if data.dataset == "world":
        return Path.cwd() / path
    if data.data_root and data.dataset != "folder":
        return Path(data.data_root).expanduser() / data.dataset / path
    if data.train_path:
        return Path(data.train_path).expanduser().parent / path
    raise UserError(
        f"data.captions_file {data.captions_file!r} is relative: it is read from "
        f"<data.data_root>/{data.dataset}/, so set data.data_root (or give an absolute path)"
    )


def training_captions(cfg: RunConfig, built: str | os.PathLike | None = None) -> Path | None:
    """The captions file a run trains on, or None for the dataset's own captions.

    ``built`` is the artifact of the run's ``data.captions_job`` (the runner builds the job and
    passes it); ``data.captions_file`` is resolved by :func:`captions_path`.
    """
    if cfg.data.captions_file:
        return captions_path(cfg)
    if cfg.data.captions_job:
        if built is None:
            raise UserError(
                f"data.captions_job={cfg.data.captions_job!r} needs the captions its captioner "
                "writes: run through `lafite-repro run`, which builds that job first, or give a "
                "captions file with data.captions_file"
            )
        return Path(built)
    return None


def check_captions_file(cfg: RunConfig, workspace: Workspace) -> None:
    """Read and check ``data.captions_file`` against the run's training images (UserError)."""
    from lafite.data.captions import FORMAT_HINT

    path = captions_path(cfg)
    if not path.is_file():
        relative = "" if Path(cfg.data.captions_file).expanduser().is_absolute() else (
            f", {cfg.data.captions_file!r} read relative to {path.parent}")
        raise UserError(
            f"captions file {path} not found (data.captions_file{relative}). Write the "
            f"captions of the training images there as {FORMAT_HINT}, or set "
            "data.captions_file to the file's path"
        )
    open_dataset(cfg, "train", workspace, captions=path)


def captions_location(cfg: RunConfig) -> str:
    """Where the training captions of ``cfg`` come from, for plans and dry runs."""
    if cfg.data.captions_file:
        try:
            return f"{captions_path(cfg)} (data.captions_file)"
        except UserError:
            return (f"<data.data_root>/{cfg.data.dataset}/{cfg.data.captions_file} "
                    "(data.captions_file; set data.data_root)")
    if cfg.data.captions_job:
        return f"written by job {cfg.data.captions_job} (data.captions_job)"
    return "the dataset's own captions"


def data_location(cfg: RunConfig, split: str) -> str:
    """Where ``open_dataset`` will read ``split`` of ``cfg``'s data, without reading it: the
    folder of a real dataset (or what is missing to know it), or the world domain."""
    if cfg.data.dataset == "world":
        size = cfg.world.n_train if split == "train" else cfg.world.n_test
        return (f"the built-in world: domain {cfg.world.domain}, {size} images at "
                f"{cfg.data.resolution} px (generated into the workspace)")
    try:
        path = _real_path(cfg, split)
    except UserError:
        root = "<data.data_root>"
        return f"{root}/{cfg.data.dataset}/{split} (set data.data_root or data.{split}_path)"
    explicit = cfg.data.train_path if split == "train" else cfg.data.test_path
    if explicit or cfg.data.dataset == "folder" or not path.parent.is_dir():
        return str(path)
    from lafite.data import formats

    return formats.describe(cfg.data.dataset, path.parent, split)


def _real_path(cfg: RunConfig, split: str) -> Path:
    data = cfg.data
    explicit = data.train_path if split == "train" else data.test_path
    if explicit:
        return Path(explicit).expanduser()
    if data.dataset == "folder":
        raise UserError(
            f"data.dataset is 'folder' but data.{split}_path is empty; set data.train_path and "
            f"data.test_path to {_FOLDER_LAYOUT}"
        )
    if not data.data_root:
        raise UserError(
            f"dataset {data.dataset!r} needs data.data_root (the folder holding "
            f"{data.dataset}/train and {data.dataset}/test) or data.{split}_path; "
            f"to get the data: {REAL_DATASETS[data.dataset]}"
        )
    return Path(data.data_root).expanduser() / data.dataset / split


__all__ = ["DATASET_NAMES", "REAL_DATASETS", "WORLD_ANALOGUES", "dataset_overrides", "VALID_DATASETS",
           "captions_location", "captions_path", "check_captions_file", "data_location",
           "open_dataset", "training_captions", "world_folder"]
