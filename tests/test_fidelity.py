"""FID-k / KID / IS through torch-fidelity: blur definition, protocol, caching, streaming."""

from __future__ import annotations

import math
import urllib.error

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lafite.errors import UserError
from lafite.metrics.extractors import inception_extractor, module_extractor
from lafite.metrics.fidelity import (
    FidelityRequest,
    ReferenceSet,
    TensorImages,
    blur_float,
    blur_kernel_size,
    blur_uint8,
    compute_fidelity,
    reference_cache_name,
)


class PixelStats(nn.Module):
    """A deterministic stand-in for the inspector: pooled colours and edge energy."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("head", torch.randn(33, 6, generator=torch.Generator().manual_seed(1)))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float() / 255
        pooled = F.adaptive_avg_pool2d(x, 3).flatten(1)
        dx = (x[..., 1:] - x[..., :-1]).abs().mean((2, 3))
        dy = (x[..., 1:, :] - x[..., :-1, :]).abs().mean((2, 3))
        return torch.cat([pooled, dx, dy], 1)

    def class_logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x) @ self.head


class ColourClasses(nn.Module):
    """Confident logits over C classes read from the red level (class c has red = 40 c)."""

    def __init__(self, n_classes: int) -> None:
        super().__init__()
        self.n_classes = n_classes
        self.register_buffer("levels", torch.arange(n_classes).float() * 40)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return x.float().mean((2, 3))

    def class_logits(self, x: torch.Tensor) -> torch.Tensor:
        red = x[:, 0].float().mean((1, 2))
        cls = (red[:, None] - self.levels[None]).abs().argmin(1)
        return 30.0 * F.one_hot(cls, self.n_classes).float()


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def world_images(domain: str, split: str, n: int, start: int = 0, resolution: int = 16):
    from lafite.data.world import World

    world = World(domain, split, resolution=resolution, seed=0, size=start + n)
    return torch.from_numpy(world.images(range(start, start + n))).permute(0, 3, 1, 2).contiguous()


def fidelity(generated, reference_images, request, extractor, tmp_path, fingerprint="ref", **kw):
    reference = ReferenceSet(TensorImages(reference_images), fingerprint, "test", 16)
    return compute_fidelity(
        generated, reference, request, extractor, cache_root=tmp_path / "cache", **kw
    )


# -- blur ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("k", [1, 2, 4])
def test_blur_of_an_impulse_has_standard_deviation_k(k):
    side = 8 * k * 3 + 1
    impulse = torch.zeros(1, 1, side, side, dtype=torch.float64)
    impulse[..., side // 2, side // 2] = 1.0
    out = blur_float(impulse, k)[0, 0]
    assert out.sum().item() == pytest.approx(1.0, abs=1e-9)
    coords = torch.arange(side, dtype=torch.float64) - side // 2
    marginal = out.sum(0)
    std = math.sqrt(float((marginal * coords**2).sum()))
    # Truncation at 3 sigma lowers the std by 1.4 %; radius k means sigma k.
    assert std == pytest.approx(k, rel=0.02)
    assert blur_kernel_size(k) == 2 * math.ceil(3 * k) + 1


def test_blur_zero_is_identity_and_large_radius_works_on_small_images():
    x = torch.randint(0, 256, (2, 3, 16, 16), dtype=torch.uint8)
    assert torch.equal(blur_uint8(x, 0), x)
    y = blur_uint8(x, 8)  # kernel of 49 taps on 16 px images
    assert y.dtype == torch.uint8 and y.shape == x.shape
    assert y.float().std() < x.float().std() / 4


# -- metrics -------------------------------------------------------------------------------------


def test_fid_against_itself_is_zero_and_between_domains_clearly_positive(tmp_path):
    extractor = module_extractor(PixelStats(), "pixelstats")
    scenes = world_images("scenes", "test", 300)
    scenes_other = world_images("scenes", "train", 300)
    objects = world_images("objects", "test", 300)
    request = FidelityRequest(fid_radii=(0,))
    same = fidelity(TensorImages(scenes), scenes, request, extractor, tmp_path, "scenes").fid[0]
    within = fidelity(TensorImages(scenes_other), scenes, request, extractor, tmp_path, "scenes").fid[0]
    across = fidelity(TensorImages(objects), scenes, request, extractor, tmp_path, "scenes").fid[0]
    assert abs(same) < 1e-6
    # Two samples of one domain differ only by sampling noise; two domains by far more.
    assert across > 5 * within > 0


def test_blur_of_growing_radius_shrinks_fid_monotonically(tmp_path):
    extractor = module_extractor(PixelStats(), "pixelstats")
    sharp = world_images("scenes", "test", 150, resolution=32)
    # The pair differs only in sharpness: blurring both by k leaves blur sigmas k and
    # sqrt(9 + k^2), whose difference, and so the FID, shrinks as k grows.
    soft = blur_uint8(sharp, 3)
    request = FidelityRequest(fid_radii=(0, 1, 2, 4, 8))
    reference = ReferenceSet(TensorImages(sharp), "sharp", "test", 32)
    fid = compute_fidelity(
        TensorImages(soft), reference, request, extractor, cache_root=tmp_path / "cache"
    ).fid
    values = [fid[k] for k in (0, 1, 2, 4, 8)]
    assert all(a > b for a, b in zip(values, values[1:])), values
    assert values[-1] < values[0] / 4


def test_inception_score_of_evenly_spread_classes_is_close_to_the_class_count(tmp_path):
    n_classes = 5
    extractor = module_extractor(ColourClasses(n_classes), "colourclasses")
    labels = torch.arange(1000) % n_classes
    images = torch.zeros(1000, 3, 16, 16, dtype=torch.uint8)
    images[:, 0] = (labels * 40).to(torch.uint8)[:, None, None]
    result = compute_fidelity(
        TensorImages(images),
        None,
        FidelityRequest(inception_score=True),
        extractor,
        cache_root=tmp_path / "cache",
    )
    # Random splits of 100 images are never perfectly balanced, so IS sits a little below C.
    assert n_classes - 0.25 < result.inception_score <= n_classes + 1e-6


def test_reference_cache_is_keyed_by_every_input(tmp_path):
    extractor = module_extractor(PixelStats(), "pixelstats")
    base = dict(fingerprint="fp", split="train", radius=2, extractor_id=extractor.id, resolution=32)
    names = {reference_cache_name(**base)}
    for key, other in [
        ("fingerprint", "fp2"),
        ("split", "test"),
        ("radius", 4),
        ("extractor_id", "inception-abc"),
        ("resolution", 64),
    ]:
        names.add(reference_cache_name(**{**base, key: other}))
    assert len(names) == 6

    # torch-fidelity serves a cache hit whatever the content: only the name protects us.
    scenes = world_images("scenes", "test", 100)
    objects = world_images("objects", "test", 100)
    request = FidelityRequest(fid_radii=(0, 1))
    first = fidelity(TensorImages(scenes), scenes, request, extractor, tmp_path, "fpA").fid
    hit = fidelity(TensorImages(scenes), objects, request, extractor, tmp_path, "fpA").fid
    fresh = fidelity(TensorImages(scenes), objects, request, extractor, tmp_path, "fpB").fid
    assert hit == first
    assert fresh[0] > 0.1 and fresh[1] > 0.05
    cached = sorted(p.name for p in (tmp_path / "cache").iterdir())
    assert any("fpA-test-r16-blur0-" + extractor.id in name for name in cached)
    assert any("fpA-test-r16-blur1-" + extractor.id in name for name in cached)


class TensorStream:
    """An ImageStream replaying fixed images in order (a stand-in for the generator)."""

    def __init__(self, images: torch.Tensor, z_size: int = 8) -> None:
        self.images = images
        self.z_size = z_size
        self.position = 0
        self.rendered = 0

    def reset(self) -> None:
        self.position = 0

    def render(self, z: torch.Tensor) -> torch.Tensor:
        batch = self.images[self.position : self.position + z.shape[0]]
        self.position += z.shape[0]
        self.rendered += z.shape[0]
        return batch


def test_streamed_images_give_the_dataset_numbers_and_are_generated_once(tmp_path):
    extractor = module_extractor(PixelStats(), "pixelstats")
    generated = world_images("scenes", "train", 130)
    reference = world_images("scenes", "test", 120)
    request = FidelityRequest(inception_score=True, kid=True, fid_radii=(0, 2, 4))
    from_dataset = fidelity(TensorImages(generated), reference, request, extractor, tmp_path)
    stream = TensorStream(generated)
    seen = []
    spool_dir = tmp_path / "spool"
    from_stream = fidelity(
        stream,
        reference,
        request,
        extractor,
        tmp_path,
        n_samples=130,
        batch_size=32,
        observers=[lambda images: seen.append(len(images))],
        spool_dir=spool_dir,
        kid_subset_size=50,
    )
    assert stream.rendered == 130 and sum(seen) == 130
    assert from_stream.fid == pytest.approx(from_dataset.fid, rel=1e-6)
    assert from_stream.inception_score == pytest.approx(from_dataset.inception_score, rel=1e-6)
    assert from_stream.kid is not None
    assert list(spool_dir.iterdir()) == []  # the spool is removed


def test_inception_without_weights_offline_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    def offline(*args, **kwargs):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(UserError) as err:
        inception_extractor("")
    message = str(err.value)
    assert "weights-inception-2015-12-05-6726825d.pth" in message
    assert str(tmp_path / "torch" / "hub" / "checkpoints") in message
    assert "eval.inception_weights" in message

    with pytest.raises(UserError, match="eval.inception_weights: no file"):
        inception_extractor(str(tmp_path / "missing.pth"))


def test_inception_weights_file_is_found_in_the_hub_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    target = (
        tmp_path / "torch" / "hub" / "checkpoints" / "weights-inception-2015-12-05-6726825d.pth"
    )
    target.parent.mkdir(parents=True)
    target.write_bytes(np.arange(10, dtype=np.uint8).tobytes())
    choice = inception_extractor("")
    assert choice.weights_path == str(target)
    assert choice.tf_name == "inception-v3-compat" and choice.id.startswith("inception-")


@pytest.mark.slow
def test_inception_path_runs_offline_with_a_local_weights_file(tmp_path, monkeypatch):
    """The paper-scale extractor end to end, with random weights in the right format."""
    import torch_fidelity.feature_extractor_inceptionv3 as tf_inception

    monkeypatch.setattr(tf_inception, "load_state_dict_from_url", lambda *a, **k: {})
    monkeypatch.setattr(
        tf_inception.FeatureExtractorInceptionV3, "load_state_dict", lambda *a: None
    )
    skeleton = tf_inception.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    monkeypatch.undo()
    weights = tmp_path / "inception.pth"
    torch.save(skeleton.state_dict(), weights)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "no-hub"))

    def offline(*args, **kwargs):
        raise urllib.error.URLError("offline")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    extractor = inception_extractor(str(weights))
    images = world_images("scenes", "test", 12)
    result = fidelity(
        TensorImages(world_images("objects", "test", 12)),
        images,
        FidelityRequest(inception_score=True, fid_radii=(0, 1)),
        extractor,
        tmp_path,
        isc_splits=2,
    )
    assert result.inception_score >= 1.0 and result.fid[0] >= 0 and 1 in result.fid
