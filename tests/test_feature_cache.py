"""Feature caches: CLIP features of every training image and caption, and FID reference
statistics, computed once per (dataset, model, protocol), resumable, never half-read, and read
by training and evaluation with the same results as computing them afresh."""

from __future__ import annotations

import json
import shutil
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lafite.clip as lclip
from lafite.clip import CropProtocol, FeatureCache
from lafite.errors import UserError
from lafite.workspace import Workspace

sys.path.insert(0, str(Path(__file__).parent))
from _train_smoke import smoke_config, tiny_clip  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class Toy:
    """The ImageTextFolder contract in memory: uint8 CHW items, 1 to 3 captions, a fingerprint."""

    def __init__(self, n: int = 10, size: int = 16, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.images = rng.integers(0, 256, (n, 3, size, size), dtype=np.uint8)
        self.caps = [[f"a red circle {i}", f"a blue square {i}", f"two stars {i}"][: 1 + i % 3]
                     for i in range(n)]
        self.tag = f"toy-{seed}-{n}-{size}"

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> torch.Tensor:
        return torch.from_numpy(self.images[index])

    def captions(self, index: int) -> list[str]:
        return self.caps[index]

    def fingerprint(self) -> str:
        return self.tag


class Killed(Exception):
    """Stands in for SIGKILL / a pre-empted job in the middle of a cache build."""


@pytest.fixture(scope="module")
def encoder():
    return tiny_clip(seed=0)


def _count(monkeypatch, name: str) -> dict[str, int]:
    """Count the items the cache encodes through ``lafite.clip.<name>``."""
    calls = {"calls": 0, "items": 0}
    original = getattr(lclip, name)

    def counted(*args, **kwargs):
        calls["calls"] += 1
        out = original(*args, **kwargs)
        calls["items"] += len(out)
        return out

    monkeypatch.setattr(lclip, name, counted)
    return calls


def _kill_after(monkeypatch, name: str, chunks: int) -> None:
    """Make the ``chunks + 1``-th chunk computed through ``lafite.clip.<name>`` die."""
    original = getattr(lclip, name)
    done = {"n": 0}

    def dying(*args, **kwargs):
        if done["n"] == chunks:
            raise Killed
        done["n"] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(lclip, name, dying)


# -- the crop protocol ---------------------------------------------------------------------------


def test_crop_protocol_is_the_official_one_and_per_image():
    protocol = CropProtocol(0.99, seed=0)
    boxes = protocol.boxes(range(500), 256, 256)
    # Official dataset tool: side in [int(0.99 * 256), 256) = [253, 255], inside the image.
    assert set(boxes[:, 2]) == {253, 254, 255}
    assert (boxes[:, 0] >= 0).all() and (boxes[:, 0] + boxes[:, 2] <= 256).all()
    assert (boxes[:, 1] >= 0).all() and (boxes[:, 1] + boxes[:, 2] <= 256).all()
    # Image i's crop depends on (seed, i) alone, not on which images are drawn with it.
    assert np.array_equal(protocol.boxes([7, 3], 256, 256), boxes[[7, 3]])
    assert not np.array_equal(CropProtocol(0.99, seed=1).boxes(range(500), 256, 256), boxes)
    assert (CropProtocol(1.0).boxes(range(5), 32, 32) == [0, 0, 32]).all()
    assert CropProtocol(0.99).key != CropProtocol(1.0).key != CropProtocol(0.99, seed=1).key


def test_cached_features_are_the_encoders_and_do_not_depend_on_chunks(workspace, encoder):
    data = Toy(n=10)
    stored = FeatureCache(workspace, chunk=3).image_features(data, encoder)
    assert isinstance(stored, np.memmap) and stored.shape == (10, encoder.dim)
    other_ws = Workspace.resolve(workspace.root.parent / "other")
    # The same crops whatever the chunking (the last float bits follow the batch composition).
    assert np.allclose(FeatureCache(other_ws, chunk=4).image_features(data, encoder), stored,
                       atol=1e-6, rtol=0)
    assert np.array_equal(FeatureCache(workspace, store=False, chunk=3).image_features(data, encoder),
                          stored)
    # Row i is image i's crop through the encoder's official-crop path.
    box = CropProtocol(0.99).boxes([6], 16, 16)
    direct = encoder.encode_cropped(torch.from_numpy(data.images[6:7]), box).numpy()
    assert np.allclose(stored[6], direct[0], atol=1e-6)

    texts, offsets = FeatureCache(workspace, chunk=3).text_features(data, encoder)
    assert offsets.tolist() == [0, *np.cumsum([len(data.captions(i)) for i in range(10)])]
    assert np.allclose(texts[offsets[5] + 1], encoder.encode_texts([data.captions(5)[1]])[0].numpy(),
                       atol=1e-6)
    memory, memory_offsets = FeatureCache(workspace, store=False).text_features(data, encoder)
    assert np.allclose(memory, texts, atol=1e-6) and np.array_equal(memory_offsets, offsets)


# -- interruption and resume ---------------------------------------------------------------------


def test_an_interrupted_build_resumes_from_its_finished_chunks(workspace, encoder, monkeypatch):
    data = Toy(n=10)
    truth = FeatureCache(workspace, store=False, chunk=4).image_features(data, encoder)
    cache = FeatureCache(workspace, chunk=4)  # chunks: images 0-4, 4-8, 8-10
    path = cache.folder(data, encoder) / f"image-{CropProtocol().key}.npy"

    with monkeypatch.context() as patch:
        _kill_after(patch, "_encode_images", chunks=2)
        with pytest.raises(Killed):
            cache.image_features(data, encoder)
    parts = sorted(p.name for p in path.with_name(path.stem + ".parts").glob("*.npy"))
    assert parts == ["000000000000-000000000004.npy", "000000000004-000000000008.npy"]
    assert not path.exists() and not path.with_suffix(".json").exists()

    counted = _count(monkeypatch, "_encode_images")
    resumed = cache.image_features(data, encoder)
    assert counted == {"calls": 1, "items": 2}, "only the unfinished chunk is computed"
    assert np.array_equal(resumed, truth)
    assert not path.with_name(path.stem + ".parts").exists()
    assert json.loads(path.with_suffix(".json").read_text())["rows"] == 10
    again = cache.image_features(data, encoder)
    assert counted["calls"] == 1 and np.array_equal(again, truth)


def test_captions_resume_too(workspace, encoder, monkeypatch):
    data = Toy(n=9)
    truth, truth_offsets = FeatureCache(workspace, store=False, chunk=2).text_features(data, encoder)
    cache = FeatureCache(workspace, chunk=2)
    with monkeypatch.context() as patch:
        _kill_after(patch, "_encode_texts", chunks=3)
        with pytest.raises(Killed):
            cache.text_features(data, encoder)
    counted = _count(monkeypatch, "_encode_texts")
    texts, offsets = cache.text_features(data, encoder)
    assert counted["calls"] == 2  # chunks of images 6-8 and 8-9
    assert counted["items"] == truth_offsets[9] - truth_offsets[6]
    assert np.allclose(texts, truth, atol=1e-6) and np.array_equal(offsets, truth_offsets)


def test_a_half_written_cache_is_never_read_as_complete(workspace, encoder, monkeypatch):
    data = Toy(n=8)
    truth = FeatureCache(workspace, store=False).image_features(data, encoder)
    cache = FeatureCache(workspace, chunk=4)
    path = cache.folder(data, encoder) / f"image-{CropProtocol().key}.npy"

    # Killed after the features were assembled but before the manifest marked them complete.
    with monkeypatch.context() as patch:
        def killed(*args, **kwargs):
            raise Killed

        patch.setattr(FeatureCache, "_finish", killed)
        with pytest.raises(Killed):
            cache.image_features(data, encoder)
    assert path.exists() and not path.with_suffix(".json").exists()
    # Whatever the data file then holds (here: a well-formed file of zeros, as a writer that
    # died mid-way could leave), without its manifest it is not the cache.
    np.save(path, np.zeros((8, encoder.dim), dtype=np.float32))
    counted = _count(monkeypatch, "_encode_images")
    features = cache.image_features(data, encoder)
    assert np.array_equal(features, truth)
    assert counted["calls"] == 0, "rebuilt from the finished chunks, not re-encoded"

    # A stale manifest from an earlier build does not vouch for a rebuild that died.
    path.with_suffix(".json").unlink()
    path.unlink()
    with monkeypatch.context() as patch:
        _kill_after(patch, "_encode_images", chunks=1)
        with pytest.raises(Killed):
            cache.image_features(data, encoder)
    assert not path.exists()
    assert np.array_equal(cache.image_features(data, encoder), truth)


# -- another CLIP or crop protocol ---------------------------------------------------------------


def test_another_clip_or_crop_protocol_is_a_separate_key_and_a_misplaced_cache_one_message(
        workspace, encoder, monkeypatch):
    data = Toy(n=6)
    cache = FeatureCache(workspace)
    ours = np.array(cache.image_features(data, encoder))
    ours_texts = np.array(cache.text_features(data, encoder)[0])
    counted = _count(monkeypatch, "_encode_images")

    other_clip = tiny_clip(seed=1)
    assert other_clip.id != encoder.id
    theirs = cache.image_features(data, other_clip)
    assert counted["calls"] == 1 and not np.allclose(theirs, ours)
    whole = cache.image_features(data, encoder, real_crop=1.0)
    assert counted["calls"] == 2 and not np.allclose(whole, ours)
    assert np.array_equal(cache.image_features(data, encoder), ours) and counted["calls"] == 2

    # A cache copied under another CLIP's key: never used, one message naming file and cause.
    ours_dir = cache.folder(data, encoder)
    theirs_dir = cache.folder(data, other_clip)
    shutil.rmtree(theirs_dir)
    shutil.copytree(ours_dir, theirs_dir)
    with pytest.raises(UserError) as err:
        cache.image_features(data, other_clip)
    message = str(err.value)
    assert str(theirs_dir) in message and encoder.id in message and other_clip.id in message
    assert "never used" in message
    with pytest.raises(UserError, match="encoder"):
        cache.text_features(data, other_clip)

    # Features of the 0.99 crop put where the whole-image protocol's belong.
    name = f"image-{CropProtocol(0.99).key}"
    target = f"image-{CropProtocol(1.0).key}"
    for suffix in (".npy", ".json"):
        shutil.copy(ours_dir / f"{name}{suffix}", ours_dir / f"{target}{suffix}")
    with pytest.raises(UserError, match="protocol 'crop0.99-seed0-v2' where this run needs 'crop1"):
        cache.image_features(data, encoder, real_crop=1.0)
    assert np.array_equal(cache.text_features(data, encoder)[0], ours_texts)


def test_a_shared_cache_folder_serves_every_workspace(tmp_path, encoder, monkeypatch):
    shared = tmp_path / "cluster-cache"
    monkeypatch.setenv("LAFITE_CACHE", str(shared))
    first = Workspace.resolve(tmp_path / "alice")
    second = Workspace.resolve(tmp_path / "bob")
    assert first.cache_dir == second.cache_dir == shared.resolve()
    data = Toy(n=5)
    built = np.array(FeatureCache(first).image_features(data, encoder))
    counted = _count(monkeypatch, "_encode_images")
    assert np.array_equal(FeatureCache(second).image_features(data, encoder), built)
    assert counted["calls"] == 0
    assert (shared / "clip-features").is_dir() and not (tmp_path / "bob" / "cache").exists()

    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(UserError, match="LAFITE_CACHE"):
        _ = Workspace.resolve(tmp_path / "carol", cache=blocker).cache_dir


# -- training ------------------------------------------------------------------------------------


def test_training_with_the_cache_gives_the_same_losses_as_without(tmp_path, monkeypatch):
    from lafite.train import TrainCallbacks, train_run

    cfg = smoke_config(**{"train.kimg": 0.016, "train.log_every": 1, "train.eval_kimg": 0,
                          "train.checkpoint_kimg": 0.016})
    clip = tiny_clip()
    workspace = Workspace.resolve(tmp_path / "ws")

    def losses(run: str) -> list:
        logged = []
        callbacks = TrainCallbacks(on_metrics=lambda kimg, m: logged.append(
            (kimg, {k: v for k, v in m.items() if not k.startswith("timing/")})))
        train_run(cfg, tmp_path / run, workspace, callbacks, clip=clip)
        assert logged
        return logged

    # Without the cache: every feature computed in memory for this run, nothing written.
    with monkeypatch.context() as patch:
        patch.setattr(lclip, "FeatureCache",
                      lambda ws, *a, **k: FeatureCache(ws, *a, **{**k, "store": False}))
        without = losses("without")
    assert not (workspace.cache_dir / "clip-features").exists()

    built = losses("building")  # builds the cache
    images = _count(monkeypatch, "_encode_images")
    texts = _count(monkeypatch, "_encode_texts")
    cached = losses("cached")  # reads it
    assert images["calls"] == texts["calls"] == 0, "a second run reads every feature from the cache"
    assert cached == built == without


# -- FID reference statistics --------------------------------------------------------------------


class CountingStats(nn.Module):
    """A deterministic stand-in for the inspector that counts the images it extracts."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("head", torch.randn(33, 6, generator=torch.Generator().manual_seed(1)))
        self.seen = 0

    def features(self, x: torch.Tensor) -> torch.Tensor:
        self.seen += x.shape[0]
        x = x.float() / 255
        pooled = F.adaptive_avg_pool2d(x, 3).flatten(1)
        dx = (x[..., 1:] - x[..., :-1]).abs().mean((2, 3))
        dy = (x[..., 1:, :] - x[..., :-1, :]).abs().mean((2, 3))
        return torch.cat([pooled, dx, dy], 1)

    def class_logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x) @ self.head


class CountingText:
    """A condition encoder with an id (so its caption features are cached) that counts calls."""

    id = "counting-text"
    dim = 8
    batch_size = 64

    def __init__(self) -> None:
        self.encoded = 0

    def encode_texts(self, texts):
        self.encoded += len(texts)
        rows = [torch.randn(self.dim, generator=torch.Generator().manual_seed(sum(map(ord, t))))
                for t in texts]
        return F.normalize(torch.stack(rows), dim=1)


def test_a_second_evaluation_reads_the_reference_statistics_and_caption_features(workspace):
    from lafite.config import ModelConfig, RunConfig
    from lafite.metrics.evaluate import evaluate_generator
    from lafite.model.generator import Generator

    class Split(Toy):
        def __getitem__(self, index):
            return torch.from_numpy(self.images[index])

    torch.manual_seed(0)
    G = Generator(ModelConfig(z_dim=8, w_dim=8, mapping_layers=1, channel_base=256,
                              channel_max=16, cond_dim=8), 16, cond_dim=8).eval()
    cfg = RunConfig().override({"data.dataset": "world", "data.resolution": 16,
                                "eval.extractor": "inspector", "eval.metrics": ["FID-0", "FID-1", "KID"],
                                "eval.batch": 8, "eval.kid_subset_size": 10, "eval.kid_subsets": 5})
    judge, text = CountingStats(), CountingText()
    datasets = {"train": Split(n=30, seed=1), "test": Split(n=12, seed=2)}

    def evaluate():
        judge.seen = text.encoded = 0
        result = evaluate_generator(cfg, G, workspace, clip=text, encoder=text, inspector=judge,
                                    datasets=datasets, n_samples=16)
        return result, judge.seen, text.encoded

    first, seen, encoded = evaluate()
    # Generated 16 at radii 0 and 1, reference 30 at radii 0 and 1; every test caption once.
    assert seen == 2 * 16 + 2 * 30
    assert encoded == sum(len(datasets["test"].captions(i)) for i in range(12))
    cached = sorted(p.name for p in (workspace.cache_dir / "fidelity").glob("lafite-ref-*.pt"))
    assert any("blur0" in name and "stat-fid" in name for name in cached)
    assert any("blur1" in name and "stat-fid" in name for name in cached)
    assert any("blur0" in name and "features" in name for name in cached)  # for KID

    second, seen, encoded = evaluate()
    assert seen == 2 * 16, "the reference images are not extracted again"
    assert encoded == 0, "the test captions' features come from the feature cache"
    assert second.metrics == first.metrics

    # A damaged statistics file is recomputed with a warning, not a torch.load traceback.
    damaged = sorted((workspace.cache_dir / "fidelity").glob("lafite-ref-*blur1*.pt"))
    assert len(damaged) == 2  # statistics and features
    for path in damaged:
        path.write_bytes(path.read_bytes()[:100])
    with pytest.warns(UserWarning, match="corrupt"):
        third, seen, _ = evaluate()
    assert seen == 2 * 16 + 30 and third.metrics == first.metrics
    assert all(zipfile.is_zipfile(path) for path in damaged)
