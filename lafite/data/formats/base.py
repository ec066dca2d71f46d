"""What every dataset format yields: a :class:`Source`, the images and captions of one split.

A format module (``coco``, ``cub``, ...) reads a dataset as it is published (its folders, caption
JSON, split pickles, webdataset shards or the official zip) into a Source; the one dataset class
training, evaluation and the preflight checks read, :class:`lafite.data.folder.ImageTextFolder`,
then decodes images and hands out captions through it. So a format only says *where* each image
and its captions are; cropping, resizing, checking and fingerprinting are shared.

Problems found while indexing (a caption JSON naming an image that is not on disk, a truncated
shard, a split file naming a missing image) go to :class:`Problems`: one UserError naming the
files, unless the user allowed skipping corrupt items (``--skip-corrupt`` /
``data.skip_corrupt: true``); then the items are dropped and counted, never silently.
"""

from __future__ import annotations

import io
import os
import pickle
import warnings
import zipfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from lafite.errors import UserError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
# How many problems a message names before it only counts the rest.
SHOWN = 10
SKIP_HINT = ("or, to leave these items out and train on the rest, pass --skip-corrupt "
             "(data check) or set data.skip_corrupt: true (runs)")


class Problems:
    """Problems with single items of a split, found while indexing it."""

    def __init__(self, what: str, skip: bool) -> None:
        self.what, self.skip = what, skip
        self.found: list[str] = []

    def add(self, message: str) -> None:
        self.found.append(message)

    def __bool__(self) -> bool:
        return bool(self.found)

    def finish(self, fix: str) -> list[str]:
        """Raise one UserError naming the first problems, unless skipping is allowed: then warn
        with their count and return them (the items were already left out)."""
        if not self.found:
            return []
        listed = summarise(self.found)
        if not self.skip:
            raise UserError(f"{self.what}: {len(self.found)} items cannot be used:\n{listed}\n"
                            f"{fix}; {SKIP_HINT}")
        warnings.warn(f"{self.what}: skipped {len(self.found)} corrupt or missing items "
                      f"(data.skip_corrupt):\n{listed}", UserWarning, stacklevel=3)
        return list(self.found)


def summarise(problems: Sequence[str]) -> str:
    shown = "\n".join(f"  - {p}" for p in problems[:SHOWN])
    if len(problems) > SHOWN:
        shown += f"\n  ... and {len(problems) - SHOWN} more"
    return shown


def _stat_line(path: Path, base: Path) -> str:
    name = os.path.relpath(path, base)
    try:
        stat = path.stat()
    except FileNotFoundError:
        return f"{name}:missing\n"
    return f"{name}:{stat.st_size}:{stat.st_mtime_ns}\n"


def read_text_lines(path: Path) -> list[str] | None:
    """Non-empty stripped lines of a UTF-8 caption file, or None when it does not exist."""
    try:
        # utf-8-sig: a byte-order mark (Windows editors) is not part of the first caption.
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        return None
    except UnicodeDecodeError as error:
        raise UserError(
            f"caption file {path} is not valid UTF-8 (byte {error.start + 1}); save it as "
            "UTF-8, one caption per line"
        ) from error
    except OSError as error:
        raise UserError(f"cannot read captions {path}: {error}; fix or delete it") from error
    return [line.strip() for line in text.splitlines() if line.strip()]


class Source:
    """The images of one split of a dataset, in order, with their captions.

    ``names[i]`` names image i relative to ``root`` (what captions files and messages use).
    Subclasses say how to open an image and where its captions are.
    """

    kind = "source"
    # What a split of this kind is, for messages: "MS-COCO 2014 train2014".
    label = ""
    # Why an image has no caption where one is needed, and how to fix it.
    no_caption_hint = "give it at least one caption"

    root: Path
    names: list[str]
    skipped: list[str]

    def __len__(self) -> int:
        return len(self.names)

    def path(self, index: int) -> Path:
        """A path naming image ``index``: the file itself, or ``archive/member`` for archives."""
        return self.root / self.names[index]

    def location(self, index: int) -> str:
        return str(self.path(index))

    @contextmanager
    def open(self, index: int) -> Iterator[IO[bytes]]:
        raise NotImplementedError

    def captions(self, index: int) -> list[str]:
        return []

    def caption_problem(self, index: int) -> str | None:
        if self.captions(index):
            return None
        return f"image {self.location(index)} has no caption: {self.no_caption_hint}"

    def listing(self) -> Iterator[str]:
        raise NotImplementedError

    def select(self, indices: Sequence[int]) -> Source:
        raise NotImplementedError

    def stored_features(self) -> dict[str, Any] | None:
        """CLIP features stored with the data (the official zip), or None."""
        return None

    def describe(self) -> str:
        return f"{self.label or self.kind} at {self.root}"


class FileSource(Source):
    """Images that are files; captions in memory (caption JSON / JSONL), in one text file per
    image (``caption_paths``), or none (FFHQ)."""

    def __init__(
        self, root: Path, paths: list[Path], *, kind: str, label: str = "",
        captions: list[tuple[str, ...]] | None = None,
        caption_paths: list[Path] | None = None,
        extra_files: Sequence[Path] = (),
        no_caption_hint: str = "",
        skipped: list[str] | None = None,
        legacy: bool = False,
    ) -> None:
        self.root, self.paths, self.kind, self.label = Path(root), list(paths), kind, label
        self.names = [os.path.relpath(p, self.root).replace(os.sep, "/") for p in self.paths]
        self._captions, self._caption_paths = captions, caption_paths
        self.extra_files = tuple(extra_files)
        self.no_caption_hint = no_caption_hint or self.no_caption_hint
        self.skipped = list(skipped or [])
        self.legacy = legacy

    def path(self, index: int) -> Path:
        return self.paths[index]

    @contextmanager
    def open(self, index: int) -> Iterator[IO[bytes]]:
        with open(self.paths[index], "rb") as handle:
            yield handle

    def caption_path(self, index: int) -> Path | None:
        return None if self._caption_paths is None else self._caption_paths[index]

    def captions(self, index: int) -> list[str]:
        if self._captions is not None:
            return list(self._captions[index])
        if self._caption_paths is None:
            return []
        return read_text_lines(self._caption_paths[index]) or []

    def caption_problem(self, index: int) -> str | None:
        image = self.paths[index]
        if self._caption_paths is None:
            return None if self.captions(index) else (
                f"image {image} has no caption: {self.no_caption_hint}")
        path = self._caption_paths[index]
        try:
            captions = self.captions(index)
        except UserError as error:
            return f"{error} (image {image})"
        if captions:
            return None
        if not path.exists():
            if self.legacy:
                return (f"{image} has no caption file: write its captions to {path}, one per "
                        "line, or delete the image")
            return f"caption file {path} of image {image} is missing: {self.no_caption_hint}"
        if self.legacy:
            return (f"caption file {path} of {image} is empty: write at least one caption in "
                    "it, one per line, or delete both files")
        return f"caption file {path} of image {image} is empty: {self.no_caption_hint}"

    def listing(self) -> Iterator[str]:
        if self.legacy:  # the image + .txt folder: the lines it always had (caches stay valid)
            for image, text in zip(self.paths, self._caption_paths or [], strict=True):
                for path in (image, text):
                    try:
                        stat = path.stat()
                        yield f"{path.relative_to(self.root)}:{stat.st_size}:{stat.st_mtime_ns}\n"
                    except FileNotFoundError:
                        yield f"{path.relative_to(self.root)}:missing\n"
            return
        yield f"format:{self.kind}\n"
        for i, image in enumerate(self.paths):
            yield _stat_line(image, self.root)
            if self._caption_paths is not None:
                yield _stat_line(self._caption_paths[i], self.root)
        for extra in self.extra_files:  # caption JSON, split pickles: their captions and order
            yield "+" + _stat_line(extra, self.root)

    def select(self, indices: Sequence[int]) -> FileSource:
        pick = [int(i) for i in indices]
        return FileSource(
            self.root, [self.paths[i] for i in pick], kind=self.kind, label=self.label,
            captions=None if self._captions is None else [self._captions[i] for i in pick],
            caption_paths=(None if self._caption_paths is None
                           else [self._caption_paths[i] for i in pick]),
            extra_files=self.extra_files, no_caption_hint=self.no_caption_hint,
            skipped=self.skipped, legacy=self.legacy,
        )


class _Slice(io.RawIOBase):
    """A read-only, seekable window ``[offset, offset + size)`` of a file (one tar member), so
    that PIL reads what it needs of an image without copying the member."""

    def __init__(self, path: Path, offset: int, size: int) -> None:
        super().__init__()
        self._file = open(path, "rb")  # noqa: SIM115 - closed by close()
        self._offset, self._size, self._pos = offset, size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, pos: int, whence: int = 0) -> int:
        base = {0: 0, 1: self._pos, 2: self._size}[whence]
        self._pos = max(0, base + pos)
        return self._pos

    def readinto(self, buffer) -> int:
        left = self._size - self._pos
        if left <= 0:
            return 0
        view = memoryview(buffer)[: min(len(buffer), left)]
        self._file.seek(self._offset + self._pos)
        count = self._file.readinto(view)
        self._pos += count
        return count

    def close(self) -> None:
        if not self.closed:
            self._file.close()
        super().close()


class TarSource(Source):
    """Samples of webdataset shards (img2dataset's output): ``key.jpg`` + ``key.txt`` per sample.

    ``entries[i]`` is (shard index, image member, image offset, image size, text offset, text
    size), offsets of the members' data in the shard file: an image is read with one seek,
    without parsing the tar again.
    """

    def __init__(self, root: Path, shards: list[Path], entries: list[tuple], *, kind: str,
                 label: str = "", no_caption_hint: str = "", skipped: list[str] | None = None):
        self.root, self.shards, self.entries = Path(root), list(shards), list(entries)
        self.kind, self.label = kind, label
        self.names = [f"{os.path.relpath(self.shards[e[0]], self.root)}/{e[1]}".replace(os.sep, "/")
                      for e in self.entries]
        self.no_caption_hint = no_caption_hint or self.no_caption_hint
        self.skipped = list(skipped or [])

    def location(self, index: int) -> str:
        entry = self.entries[index]
        return f"{self.shards[entry[0]]} (member {entry[1]})"

    @contextmanager
    def open(self, index: int) -> Iterator[IO[bytes]]:
        shard, _member, offset, size = self.entries[index][:4]
        handle = io.BufferedReader(_Slice(self.shards[shard], offset, size))
        try:
            yield handle
        finally:
            handle.close()

    def captions(self, index: int) -> list[str]:
        shard, member, _, _, offset, size = self.entries[index]
        if offset < 0:
            return []
        with open(self.shards[shard], "rb") as handle:
            handle.seek(offset)
            data = handle.read(size)
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError as error:
            raise UserError(
                f"the caption of {member} in shard {self.shards[shard]} is not valid UTF-8 "
                f"(byte {error.start + 1}); re-download the shard"
            ) from error
        return [line.strip() for line in text.splitlines() if line.strip()]

    def listing(self) -> Iterator[str]:
        yield f"format:{self.kind}\n"
        for shard in self.shards:
            yield _stat_line(shard, self.root)
        for name, entry in zip(self.names, self.entries, strict=True):
            yield f"{name}:{entry[3]}:{entry[5]}\n"

    def select(self, indices: Sequence[int]) -> TarSource:
        return TarSource(self.root, self.shards, [self.entries[int(i)] for i in indices],
                         kind=self.kind, label=self.label, no_caption_hint=self.no_caption_hint,
                         skipped=self.skipped)


class ZipSource(Source):
    """Images inside a zip file (the official LAFITE dataset zip made by dataset_tool)."""

    def __init__(self, archive: Path, members: list[str], *, kind: str, label: str = "",
                 no_caption_hint: str = "", skipped: list[str] | None = None,
                 features: Any = None) -> None:
        self.root, self.names, self.kind, self.label = Path(archive), list(members), kind, label
        self.no_caption_hint = no_caption_hint or self.no_caption_hint
        self.skipped = list(skipped or [])
        self._features_loader = features
        self._zip: zipfile.ZipFile | None = None
        self._pid = -1

    def __getstate__(self) -> dict:  # DataLoader workers open their own handle
        state = dict(self.__dict__)
        state["_zip"], state["_pid"] = None, -1
        return state

    def archive(self) -> zipfile.ZipFile:
        if self._zip is None or self._pid != os.getpid():
            self._zip, self._pid = zipfile.ZipFile(self.root), os.getpid()
        return self._zip

    def location(self, index: int) -> str:
        return f"{self.root} (member {self.names[index]})"

    @contextmanager
    def open(self, index: int) -> Iterator[IO[bytes]]:
        try:
            data = self.archive().read(self.names[index])
        except (zipfile.BadZipFile, KeyError, OSError, EOFError) as error:
            raise OSError(f"zip member unreadable: {error}") from error
        yield io.BytesIO(data)

    def listing(self) -> Iterator[str]:
        yield f"format:{self.kind}\n"
        yield _stat_line(self.root, self.root.parent)
        for name in self.names:
            yield name + "\n"

    def select(self, indices: Sequence[int]) -> ZipSource:
        return ZipSource(self.root, [self.names[int(i)] for i in indices], kind=self.kind,
                         label=self.label, no_caption_hint=self.no_caption_hint,
                         skipped=self.skipped, features=self._features_loader)

    def stored_features(self) -> dict[str, Any] | None:
        if self._features_loader is None:
            return None
        return self._features_loader(self)


# -- published pickles -------------------------------------------------------------------------


class _NamesOnly(pickle.Unpickler):
    """Unpickles plain lists, tuples and strings only: a split file names images, nothing in it
    may import or run code."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} (only names are expected)")


def require_complete(title: str, split: str, root: Path, gone: Sequence[str]) -> None:
    """Stop with one message listing every missing part of a split (each says how to get it)."""
    if gone:
        raise UserError(f"{title} {split} split at {root} is incomplete:\n  - " + "\n  - ".join(gone))


def load_name_list(path: Path, what: str) -> list[str]:
    """A split pickle (AttnGAN's ``filenames.pickle``): a list of names (Python 2 or 3)."""
    try:
        with open(path, "rb") as handle:
            data = _NamesOnly(handle, encoding="latin1").load()
    except FileNotFoundError:
        raise
    except Exception as error:  # noqa: BLE001 - any unpickling failure means a bad file
        raise UserError(f"{what} {path} is not a pickled list of file names ({error}); "
                        "download it again") from error
    if isinstance(data, dict):  # some re-releases store {split: [names]}
        raise UserError(f"{what} {path} holds a dict, not a list of file names; "
                        "use the split's own filenames.pickle")
    if not isinstance(data, list | tuple) or not all(isinstance(n, str | bytes | int) for n in data):
        raise UserError(f"{what} {path} is not a list of file names; download it again")
    return [n.decode("latin1") if isinstance(n, bytes) else str(n) for n in data]


def list_dir(path: Path) -> set[str]:
    """Names of the entries of a folder (one scandir: cheap even for 100,000 files)."""
    try:
        with os.scandir(path) as entries:
            return {entry.name for entry in entries}
    except (FileNotFoundError, NotADirectoryError):
        return set()


__all__ = ["IMAGE_SUFFIXES", "FileSource", "Problems", "Source", "TarSource", "ZipSource",
           "list_dir", "load_name_list", "read_text_lines", "summarise"]
