"""FID-k, KID and IS, computed by ``torch_fidelity.calculate_metrics`` and nothing else.

What this module adds to torch-fidelity is the paper's protocol around it:

* **FID-k** (DALL-E/CogView, used by the paper's Table 1): every image, generated and reference,
  is blurred by a Gaussian filter of *radius k* before the feature extractor. We read "radius" as
  the standard deviation, ``sigma = k`` pixels, which is also what PIL's ``GaussianBlur(radius)``
  means ("radius: standard deviation of the Gaussian kernel"). The kernel is truncated at
  3 sigma: ``2 * ceil(3 sigma) + 1`` taps, separable, normalised to sum 1, with edge-replicate
  padding (valid for any image size, unlike reflect padding at sigma 8 on 16-pixel images), and
  the result is rounded back to uint8 because that is what extractors receive. ``k = 0`` is the
  identity (plain FID).
* **Reference statistics** are cached by torch-fidelity under a name that encodes the dataset
  fingerprint, split, k, extractor id and resolution (:func:`reference_cache_name`): a
  torch-fidelity cache hit ignores the content of its input, so the name is the only guard.
  The files (``<name>-<extractor>-stat-fid-<layer>.pt`` for FID, ``...-features-<layer>.pt``
  for KID) live in ``<cache>/fidelity`` (the workspace's cache or ``$LAFITE_CACHE``), so the
  reference images go through the extractor once per dataset, radius and extractor, and every
  later evaluation of every row and table reads them. torch-fidelity writes them to a temporary
  file and renames it, so a killed evaluation leaves no partial file; one damaged anyway is
  removed with a warning and recomputed (:func:`drop_unreadable_cache`) instead of failing
  inside ``torch.load``.
* **Generated images stream** from a :class:`ImageStream` through a ``GenerativeModelBase`` with
  ``num_classes=0`` (the stream draws its own captions), so memory does not grow with the number
  of samples. When several blur radii are asked for, the first pass spools the unblurred uint8
  images to a raw file that later passes read back one image at a time, so every FID-k sees the
  same images and the generator runs once.
"""

from __future__ import annotations

import math
import os
import tempfile
import uuid
import warnings
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from lafite.metrics.extractors import ExtractorChoice

KEY_FID = "frechet_inception_distance"
KEY_ISC = "inception_score_mean"
KEY_KID = "kernel_inception_distance_mean"


# -- blur --------------------------------------------------------------------------------------


def blur_sigma(radius: float) -> float:
    """Standard deviation in pixels of the FID-k blur of radius ``radius`` (sigma = k)."""
    if radius < 0:
        raise ValueError(f"blur radius must be >= 0, got {radius}")
    return float(radius)


def blur_kernel_size(sigma: float) -> int:
    """Taps of the truncated Gaussian: ``2 * ceil(3 sigma) + 1`` (odd, covers +-3 sigma)."""
    return 2 * math.ceil(3 * sigma) + 1


def gaussian_kernel1d(sigma: float) -> torch.Tensor:
    """Normalised 1-D Gaussian taps for :func:`blur_uint8` (float64 for exact sums)."""
    half = blur_kernel_size(sigma) // 2
    offsets = torch.arange(-half, half + 1, dtype=torch.float64)
    taps = torch.exp(-0.5 * (offsets / sigma) ** 2)
    return taps / taps.sum()


def blur_float(x: torch.Tensor, radius: float) -> torch.Tensor:
    """Blur float NCHW (or CHW) images by the FID-k Gaussian of ``radius``; no rounding."""
    sigma = blur_sigma(radius)
    if sigma == 0:
        return x
    squeeze = x.dim() == 3
    if squeeze:
        x = x.unsqueeze(0)
    n, c, h, w = x.shape
    taps = gaussian_kernel1d(sigma).to(dtype=x.dtype, device=x.device)
    half = taps.numel() // 2
    flat = x.reshape(n * c, 1, h, w)
    flat = F.pad(flat, (half, half, 0, 0), mode="replicate")
    flat = F.conv2d(flat, taps.view(1, 1, 1, -1))
    flat = F.pad(flat, (0, 0, half, half), mode="replicate")
    flat = F.conv2d(flat, taps.view(1, 1, -1, 1))
    out = flat.reshape(n, c, h, w)
    return out.squeeze(0) if squeeze else out


def blur_uint8(x: torch.Tensor, radius: float) -> torch.Tensor:
    """The FID-k blur of uint8 NCHW or CHW images, rounded back to uint8."""
    if blur_sigma(radius) == 0:
        return x
    if x.dtype != torch.uint8:
        raise TypeError(f"blur_uint8 takes uint8 images, got {x.dtype}")
    out = blur_float(x.to(torch.float32), radius)
    return out.round_().clamp_(0, 255).to(torch.uint8)


class BlurredImages(Dataset):
    """A uint8 CHW image dataset seen through the FID-k blur of ``radius``.

    torch-fidelity reads items one at a time, in order; blurring one image per call spends most
    of its time in per-call overhead, so images are blurred a chunk at a time and the current
    chunk is kept (memory: one chunk, whatever the dataset size).
    """

    def __init__(self, images: Dataset, radius: float, chunk: int = 64) -> None:
        self.images = images
        self.radius = radius
        self.chunk = chunk
        self._start = -1
        self._blurred: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.images)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> torch.Tensor:
        if blur_sigma(self.radius) == 0:
            return _as_uint8_chw(self.images[index])
        start = index - index % self.chunk
        if start != self._start or self._blurred is None:
            stop = min(start + self.chunk, len(self))
            batch = torch.stack([_as_uint8_chw(self.images[i]) for i in range(start, stop)])
            self._blurred = blur_uint8(batch, self.radius)
            self._start = start
        return self._blurred[index - start]


class TensorImages(Dataset):
    """uint8 NCHW images held in one tensor, as a dataset of CHW items (what torch-fidelity reads)."""

    def __init__(self, images: torch.Tensor) -> None:
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.images[index]


def _as_uint8_chw(item: object) -> torch.Tensor:
    image = item[0] if isinstance(item, tuple | list) else item
    if not isinstance(image, torch.Tensor) or image.dtype != torch.uint8 or image.dim() != 3:
        raise TypeError("reference datasets must return uint8 CHW tensors")
    return image


# -- cache names -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReferenceSet:
    """The reference images of FID/KID and everything that names their cached statistics."""

    images: Dataset
    fingerprint: str
    split: str
    resolution: int

    def cache_name(self, radius: int, extractor: ExtractorChoice) -> str:
        return reference_cache_name(
            self.fingerprint, self.split, radius, extractor.id, self.resolution
        )


def reference_cache_name(
    fingerprint: str, split: str, radius: int, extractor_id: str, resolution: int
) -> str:
    """torch-fidelity cache name for reference features: every input that changes them is in it.

    torch-fidelity appends ``-<extractor name>-features-<layer>`` itself; the extractor *id* is
    repeated here because one registered extractor name can front several weight sets.
    """
    if not fingerprint:
        raise ValueError("a reference set needs a non-empty fingerprint to be cached")
    for part in (fingerprint, split, extractor_id):
        if os.sep in part or "/" in part:
            raise ValueError(f"cache name part {part!r} contains a path separator")
    return f"lafite-ref-{fingerprint}-{split}-r{resolution}-blur{radius}-{extractor_id}"


def drop_unreadable_cache(cache_root: Path, cache_name: str) -> list[Path]:
    """Remove cached torch-fidelity files of ``cache_name`` that cannot be complete.

    torch.save writes a zip archive whose directory is at the end, so a truncated or overwritten
    file fails ``zipfile.is_zipfile`` without being read in full. Returns the removed files.
    """
    removed = []
    for path in sorted(Path(cache_root).glob(f"{cache_name}-*.pt")):
        if not zipfile.is_zipfile(path):
            warnings.warn(f"Reference statistics {path} are corrupt; recomputing them.",
                          stacklevel=2)
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


# -- generated stream --------------------------------------------------------------------------


class ImageStream(Protocol):
    """A source of generated images that renders one batch per noise batch, in order.

    ``render`` receives the noise torch-fidelity draws and returns uint8 NCHW images; it also
    advances whatever else drives generation (the caption cursor). ``reset`` rewinds that.
    """

    z_size: int

    def reset(self) -> None: ...

    def render(self, z: torch.Tensor) -> torch.Tensor: ...


BatchObserver = Callable[[torch.Tensor], None]


def _stream_model(stream: ImageStream, radius: int, observers: Sequence[BatchObserver]):
    """Wrap ``stream`` as a torch-fidelity ``GenerativeModelBase`` that blurs its output."""
    from torch_fidelity.generative_model_base import GenerativeModelBase

    class StreamModel(GenerativeModelBase):
        def __init__(self) -> None:
            super().__init__()
            # Kept outside the module tree so torch-fidelity's .cuda() leaves the generator alone.
            object.__setattr__(self, "_stream", stream)

        @property
        def z_size(self) -> int:
            return stream.z_size

        @property
        def z_type(self) -> str:
            return "normal"

        @property
        def num_classes(self) -> int:
            # Captions are drawn inside render(): num_classes > 0 crashes torch-fidelity 0.4.0
            # under numpy 2 (np.int), and classes are not what conditions LAFITE anyway.
            return 0

        def forward(self, z: torch.Tensor) -> torch.Tensor:
            images = stream.render(z)
            for observe in observers:
                observe(images)
            return blur_uint8(images, radius)

    return StreamModel()


class _Spool(Dataset):
    """Generated uint8 images on disk, read back one at a time (no mmap, so RSS stays flat)."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / f"spool-{uuid.uuid4().hex}.u8"
        self._writer = open(self.path, "wb")
        self.shape: tuple[int, int, int] | None = None
        self.count = 0
        self._fd: int | None = None

    def append(self, images: torch.Tensor) -> None:
        batch = images.detach().cpu().contiguous()
        if self.shape is None:
            self.shape = tuple(batch.shape[1:])  # type: ignore[assignment]
        self._writer.write(batch.numpy().tobytes())
        self.count += batch.shape[0]

    def close_writer(self) -> None:
        self._writer.close()

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> torch.Tensor:
        if index < 0 or index >= self.count or self.shape is None:
            raise IndexError(index)
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDONLY)
        size = int(np.prod(self.shape))
        data = os.pread(self._fd, size, index * size)
        return torch.frombuffer(bytearray(data), dtype=torch.uint8).view(self.shape)

    def remove(self) -> None:
        if not self._writer.closed:
            self._writer.close()
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self.path.unlink(missing_ok=True)


# -- the metrics -------------------------------------------------------------------------------


@dataclass(frozen=True)
class FidelityRequest:
    """Which torch-fidelity metrics to compute: IS, KID (unblurred) and FID at each radius."""

    inception_score: bool = False
    kid: bool = False
    fid_radii: tuple[int, ...] = ()

    @property
    def empty(self) -> bool:
        return not (self.inception_score or self.kid or self.fid_radii)


@dataclass(frozen=True)
class FidelityResult:
    """Metric values: ``fid[k]`` for each radius, ``inception_score`` and ``kid`` if asked."""

    fid: dict[int, float]
    inception_score: float | None
    inception_score_std: float | None
    kid: float | None
    kid_std: float | None
    n_generated: int


def compute_fidelity(
    generated: Dataset | ImageStream,
    reference: ReferenceSet | None,
    request: FidelityRequest,
    extractor: ExtractorChoice,
    *,
    cache_root: Path,
    n_samples: int | None = None,
    batch_size: int = 64,
    cuda: bool = False,
    seed: int = 0,
    isc_splits: int = 10,
    kid_subset_size: int = 1000,
    kid_subsets: int = 100,
    observers: Sequence[BatchObserver] = (),
    spool_dir: Path | None = None,
    verbose: bool = False,
) -> FidelityResult:
    """Compute the requested metrics with ``torch_fidelity.calculate_metrics``.

    ``generated`` is a dataset of uint8 CHW images (every item used) or an :class:`ImageStream`
    drawn for ``n_samples`` images. ``observers`` see every generated unblurred uint8 batch
    exactly once (the evaluation uses them for SOA-free per-sample metrics), whatever the
    number of FID radii. Reference statistics go to ``cache_root`` under
    :func:`reference_cache_name`.
    """
    import torch_fidelity

    if request.empty:
        raise ValueError("nothing requested")
    if (request.kid or request.fid_radii) and reference is None:
        raise ValueError("FID and KID need a reference set")
    is_stream = not isinstance(generated, Dataset)
    if is_stream and (n_samples is None or n_samples <= 0):
        raise ValueError("a generated stream needs n_samples > 0")
    n_generated = n_samples if is_stream else len(generated)  # type: ignore[arg-type]
    assert n_generated is not None
    cache_root.mkdir(parents=True, exist_ok=True)

    radii = sorted(set(request.fid_radii))
    unblurred_metrics = request.inception_score or request.kid
    first_radius = 0 if (unblurred_metrics or not radii or 0 in radii) else radii[0]

    common: dict[str, object] = dict(
        cuda=cuda,
        batch_size=batch_size,
        verbose=verbose,
        save_cpu_ram=True,
        cache=True,
        cache_root=os.fspath(cache_root),
        rng_seed=seed,
        isc_splits=isc_splits,
        kid_subsets=kid_subsets,
        **extractor.calculate_metrics_kwargs(),
    )
    if request.kid:
        assert reference is not None
        common["kid_subset_size"] = max(2, min(kid_subset_size, n_generated, len(reference.images)))  # type: ignore[arg-type]

    def reference_kwargs(radius: int) -> dict[str, object]:
        assert reference is not None
        drop_unreadable_cache(cache_root, reference.cache_name(radius, extractor))
        return {
            "input2": BlurredImages(reference.images, radius),
            "input2_cache_name": reference.cache_name(radius, extractor),
        }

    spool: _Spool | None = None
    fid: dict[int, float] = {}
    try:
        # Pass 1: the generated images themselves (streamed once), at the first radius.
        first_kwargs: dict[str, object] = dict(common)
        first_kwargs.update(
            isc=request.inception_score,
            kid=request.kid,
            fid=first_radius in radii,
        )
        later_radii = [k for k in radii if k != first_radius]
        if is_stream:
            stream_observers = list(observers)
            if later_radii:
                spool = _Spool(spool_dir or Path(tempfile.gettempdir()))
                stream_observers.append(spool.append)
            generated.reset()  # type: ignore[union-attr]
            first_kwargs.update(
                input1=_stream_model(generated, first_radius, stream_observers),  # type: ignore[arg-type]
                input1_model_num_samples=n_samples,
            )
        else:
            if observers:
                raise ValueError("observers need a generated stream, not a dataset")
            first_kwargs["input1"] = BlurredImages(generated, first_radius)  # type: ignore[arg-type]
        if first_kwargs["fid"] or first_kwargs["kid"]:
            first_kwargs.update(reference_kwargs(first_radius if first_kwargs["fid"] else 0))
        if first_kwargs["kid"] and first_kwargs["fid"] and first_radius != 0:
            raise AssertionError("KID is computed on unblurred images")
        if not any(first_kwargs[m] for m in ("isc", "kid", "fid")):
            raise AssertionError("first pass has no metric")
        first = torch_fidelity.calculate_metrics(**first_kwargs)
        if first_kwargs["fid"]:
            fid[first_radius] = float(first[KEY_FID])

        # Later passes: the same generated images, blurred at each remaining radius.
        if later_radii:
            source: Dataset
            if spool is not None:
                spool.close_writer()
                source = spool
            else:
                source = generated  # type: ignore[assignment]
            for radius in later_radii:
                kwargs = dict(common)
                kwargs.update(
                    isc=False,
                    kid=False,
                    fid=True,
                    input1=BlurredImages(source, radius),
                    **reference_kwargs(radius),
                )
                fid[radius] = float(torch_fidelity.calculate_metrics(**kwargs)[KEY_FID])
    finally:
        if spool is not None:
            spool.remove()

    return FidelityResult(
        fid=fid,
        inception_score=float(first[KEY_ISC]) if request.inception_score else None,
        inception_score_std=float(first["inception_score_std"])
        if request.inception_score
        else None,
        kid=float(first[KEY_KID]) if request.kid else None,
        kid_std=float(first["kernel_inception_distance_std"]) if request.kid else None,
        n_generated=n_generated,
    )


__all__ = [
    "BatchObserver",
    "BlurredImages",
    "FidelityRequest",
    "FidelityResult",
    "ImageStream",
    "ReferenceSet",
    "TensorImages",
    "blur_float",
    "blur_kernel_size",
    "blur_sigma",
    "blur_uint8",
    "compute_fidelity",
    "drop_unreadable_cache",
    "gaussian_kernel1d",
    "reference_cache_name",
]
