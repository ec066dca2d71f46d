"""Small datasets written in each published layout, for tests and benchmarks.

:func:`write_sample` makes a few images (smooth colour fields, so JPEG and PNG sizes resemble
photos') and captions in the real structures of one format: caption JSON, AttnGAN pickles,
Localized Narratives JSONL, webdataset tar shards, the official zip with its ``dataset.json``.
Nothing here is read by training; it exists so that every format can be exercised without the
real downloads.
"""

from __future__ import annotations

import io
import json
import pickle
import tarfile
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

# Image sizes (width, height) typical of each dataset as downloaded.
SIZES = {"coco2014": (640, 480), "cub": (500, 375), "ln-coco": (640, 427),
         "mm-celeba-hq": (1024, 1024), "cc3m": (384, 256), "ffhq": (1024, 1024),
         "lafite-zip": (256, 256)}
WORDS = ("red", "small", "bird", "table", "dog", "green", "woman", "street", "large", "blue")


def picture(index: int, size: tuple[int, int]) -> np.ndarray:
    """A deterministic smooth RGB picture with a little noise (uint8 HxWx3)."""
    width, height = size
    rng = np.random.default_rng(index)
    y = np.linspace(0, 1, height, dtype=np.float32)[:, None]
    x = np.linspace(0, 1, width, dtype=np.float32)[None, :]
    channels = []
    for c in range(3):
        a, b, phase = rng.uniform(1, 4), rng.uniform(1, 4), rng.uniform(0, 6.3)
        channels.append(0.5 + 0.5 * np.sin(a * 3.1 * x + b * 3.1 * y + phase + c))
    image = np.stack(channels, axis=-1) * 230 + rng.normal(0, 6, (height, width, 3))
    return np.clip(image, 0, 255).astype(np.uint8)


def encode(index: int, size: tuple[int, int], fmt: str = "JPEG") -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    options = {"quality": 90} if fmt == "JPEG" else {"compress_level": 1}
    Image.fromarray(picture(index, size)).save(buffer, format=fmt, **options)
    return buffer.getvalue()


def caption(index: int, k: int = 0) -> str:
    rng = np.random.default_rng(1000 * index + k)
    return "a " + " ".join(rng.choice(WORDS, size=5)) + f" number {index}"


def _write(path: Path, data: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        path.write_text(data, encoding="utf-8")
    else:
        path.write_bytes(data)
    return path


def _coco(root: Path, counts: dict[str, int], size: tuple[int, int]) -> None:
    base = 0
    for split, folder in (("train", "train2014"), ("test", "val2014")):
        images, notes = [], []
        for i in range(counts[split]):
            image_id = 100 + base + i
            name = f"COCO_{folder}_{image_id:012d}.jpg"
            _write(root / folder / name, encode(image_id, size))
            images.append({"id": image_id, "file_name": name, "width": size[0], "height": size[1]})
            notes += [{"image_id": image_id, "id": 10 * image_id + k, "caption": caption(image_id, k)}
                      for k in range(5)]
        base += counts[split]
        data = {"info": {}, "licenses": [], "images": images, "annotations": notes}
        _write(root / "annotations" / f"captions_{folder}.json", json.dumps(data))


def _ln_coco(root: Path, counts: dict[str, int], size: tuple[int, int]) -> None:
    base = 0
    for split, folder, file in (("train", "train2017", "coco_train_localized_narratives-00000-of-00004.jsonl"),
                                ("test", "val2017", "coco_val_localized_narratives.jsonl")):
        lines = []
        for i in range(counts[split]):
            image_id = 500 + base + i
            _write(root / folder / f"{image_id:012d}.jpg", encode(image_id, size))
            for k in range(1 + i % 2):  # some images have two narratives
                lines.append(json.dumps({
                    "dataset_id": "mscoco_" + split, "image_id": str(image_id),
                    "annotator_id": k, "caption": "In this image we can see " + caption(image_id, k),
                    "timed_caption": [], "traces": [[{"x": 0.1, "y": 0.2, "t": 0.0}]],
                    "voice_recording": f"coco_{split}/{image_id}_{k}.ogg"}))
        base += counts[split]
        _write(root / file, "\n".join(lines) + "\n")


def _cub(root: Path, counts: dict[str, int], size: tuple[int, int]) -> None:
    classes = ("001.Black_footed_Albatross", "002.Laysan_Albatross")
    index = 0
    for split in ("train", "test"):
        names = []
        for i in range(counts[split]):
            cls = classes[i % 2]
            name = f"{cls}/{cls.split('.')[1]}_{index:04d}_{100 + index}"
            _write(root / "CUB_200_2011" / "images" / f"{name}.jpg", encode(index, size))
            _write(root / "text" / f"{name}.txt", "\n".join(caption(index, k) for k in range(10)) + "\n")
            names.append(name)
            index += 1
        _write(root / split / "filenames.pickle", pickle.dumps(names, protocol=2))


def _mm_celeba_hq(root: Path, counts: dict[str, int], size: tuple[int, int]) -> None:
    total = counts["train"] + counts["test"]
    for n in range(total):
        _write(root / "CelebA-HQ-img" / f"{n}.jpg", encode(n, size))
        _write(root / "celeba-caption" / f"{n}.txt", "\n".join(caption(n, k) for k in range(10)) + "\n")
    names = [str(n) for n in range(total)]
    _write(root / "train" / "filenames.pickle", pickle.dumps(names[: counts["train"]], protocol=2))
    _write(root / "test" / "filenames.pickle", pickle.dumps(names[counts["train"]:], protocol=2))


def _tar_member(archive: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    archive.addfile(info, io.BytesIO(data))


def _cc3m(root: Path, counts: dict[str, int], size: tuple[int, int], per_shard: int = 100) -> None:
    key = 0
    for split, folder in (("train", root), ("test", root / "validation")):
        folder.mkdir(parents=True, exist_ok=True)
        for shard in range(0, counts[split], per_shard):
            with tarfile.open(folder / f"{shard // per_shard:05d}.tar", "w") as archive:
                for _ in range(min(per_shard, counts[split] - shard)):
                    name = f"{key:09d}"
                    _tar_member(archive, f"{name}.jpg", encode(key, size))
                    _tar_member(archive, f"{name}.txt", caption(key).encode())
                    _tar_member(archive, f"{name}.json", json.dumps(
                        {"url": f"http://example.com/{key}.jpg", "key": name, "status": "success",
                         "caption": caption(key), "width": size[0], "height": size[1]}).encode())
                    key += 1
            _write(folder / f"{shard // per_shard:05d}_stats.json", json.dumps({"count": per_shard}))


def _ffhq(root: Path, counts: dict[str, int], size: tuple[int, int]) -> None:
    for n in range(counts["train"]):
        _write(root / "images1024x1024" / f"{n // 1000 * 1000:05d}" / f"{n:05d}.png",
               encode(n, size, "PNG"))


def _lafite_zip(root: Path, counts: dict[str, int], size: tuple[int, int], dataset: str = "COCO2014",
                dim: int = 512) -> None:
    rng = np.random.default_rng(0)
    index = 0
    for split, word in (("train", "train"), ("test", "val")):
        root.mkdir(parents=True, exist_ok=True)
        image_features, text_features = [], []
        with zipfile.ZipFile(root / f"{dataset}_{word}_CLIP_ViTB32.zip", "w",
                             compression=zipfile.ZIP_STORED) as archive:
            for i in range(counts[split]):
                name = f"{i // 1000:05d}/img{i:08d}.png"
                archive.writestr(name, encode(index, size, "PNG"))
                image_features.append([name, rng.normal(size=dim).round(4).tolist()])
                text_features.append([name, rng.normal(size=(1 + i % 3, dim)).round(4).tolist()])
                index += 1
            archive.writestr("dataset.json", json.dumps({
                "labels": None, "clip_img_features": image_features,
                "clip_txt_features": text_features}))


WRITERS: dict[str, Callable[..., None]] = {
    "coco2014": _coco, "cub": _cub, "ln-coco": _ln_coco, "mm-celeba-hq": _mm_celeba_hq,
    "cc3m": _cc3m, "ffhq": _ffhq, "lafite-zip": _lafite_zip,
}


def write_sample(name: str, root: str | Path, train: int = 4, test: int = 3,
                 size: tuple[int, int] | None = None) -> Path:
    """Write ``train`` + ``test`` images of format ``name`` (a dataset id or "lafite-zip") in its
    published layout under ``root``; returns ``root``."""
    root = Path(root)
    WRITERS[name](root, {"train": train, "test": test}, size or SIZES[name])
    return root


__all__ = ["SIZES", "WRITERS", "caption", "encode", "picture", "write_sample"]
