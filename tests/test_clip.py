"""lafite.clip: the open_clip interface, the world's small CLIP and the feature cache.

Everything runs a TINY open_clip config (16 px, width 32, one or two layers) so the file stays
fast; the full-size pretraining measurement lives in bench/bench_clip.py.
"""

from __future__ import annotations

import json
import time
import warnings

import numpy as np
import open_clip
import pytest
import torch

from lafite import clip as lclip
from lafite.config import ClipConfig
from lafite.errors import UserError

TINY = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 16, "layers": 1, "width": 32, "head_width": 16, "patch_size": 4},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}
TINY_TRAINING = lclip.WorldClipTraining(
    n_train=1024, steps=100, batch=64, lr=2e-3, warmup_steps=5, eval_groups=1
)


@pytest.fixture(autouse=True)
def one_torch_thread():
    """One thread: on a loaded 2-core machine two OpenMP threads run several times slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _tiny_encoder(tmp_path, name="lafite-test-tiny", seed=0) -> lclip.ClipEncoder:
    config = tmp_path / f"{name}.json"
    config.write_text(json.dumps(TINY))
    open_clip.add_model_config(config)
    torch.manual_seed(seed)
    model = open_clip.create_model(name, pretrained=None)
    return lclip.ClipEncoder(model, open_clip.get_tokenizer(name), name=name)


class ToyDataset:
    """The ImageTextFolder contract, in memory: uint8 CHW items, captions, a fingerprint."""

    def __init__(self, n: int = 12, size: int = 16, seed: int = 0, tag: str = "a") -> None:
        rng = np.random.default_rng(seed)
        self.images = rng.integers(0, 256, (n, 3, size, size), dtype=np.uint8)
        self.caps = [[f"{tag} red circle {i}", f"{tag} blue square {i}"][: 1 + i % 2] for i in range(n)]
        self.tag = f"{tag}-{seed}-{n}-{size}"

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> torch.Tensor:
        return torch.from_numpy(self.images[index])

    def captions(self, index: int) -> list[str]:
        return self.caps[index]

    def fingerprint(self) -> str:
        return self.tag


# -- encoder -----------------------------------------------------------------------------------


def test_encoder_features_are_normalised(tmp_path):
    enc = _tiny_encoder(tmp_path)
    assert enc.dim == 32 and enc.image_size == 16
    images = torch.randint(0, 256, (5, 3, 16, 16), dtype=torch.uint8)
    feats = enc.encode_images(images)
    assert feats.shape == (5, 32) and feats.dtype == torch.float32
    assert torch.allclose(feats.norm(dim=1), torch.ones(5), atol=1e-5)
    # A different input size is resized to the model's own size, as open_clip's preprocessing does.
    assert enc.encode_images(torch.randint(0, 256, (2, 3, 24, 20), dtype=torch.uint8)).shape == (2, 32)
    texts = enc.encode_texts(["a red circle", "two blue squares on a grey background", "x"])
    assert texts.shape == (3, 32)
    assert torch.allclose(texts.norm(dim=1), torch.ones(3), atol=1e-5)
    with pytest.raises(ValueError):
        enc.encode_images(torch.rand(2, 3, 16, 16))


def test_encode_generated_is_differentiable(tmp_path):
    enc = _tiny_encoder(tmp_path)
    x = (torch.rand(4, 3, 32, 32) * 2 - 1).requires_grad_(True)
    gen = torch.Generator().manual_seed(0)
    feats = enc.encode_generated(x, crop_min=0.5, generator=gen)
    assert feats.shape == (4, 32)
    assert torch.allclose(feats.norm(dim=1), torch.ones(4), atol=1e-5)
    feats[:, 0].sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is None for p in enc.model.parameters())
    # Same generator seed, same crop; crop_min=1 is the uncropped image.
    again = enc.encode_generated(x.detach(), 0.5, torch.Generator().manual_seed(0))
    assert torch.allclose(again, feats.detach())
    full = enc.encode_generated(x.detach(), 1.0)
    direct = enc.encode_images(((x.detach() + 1) * 127.5).round().to(torch.uint8))
    assert (full * direct).sum(dim=1).min() > 0.99


# -- loading -----------------------------------------------------------------------------------


def test_unknown_model_name_lists_valid_ones(workspace):
    with pytest.raises(UserError) as err:
        lclip.load_clip(ClipConfig(name="ViT-Q-99"), workspace, 32)
    message = str(err.value)
    assert "ViT-Q-99" in message and "ViT-B-32" in message and "ViT-B-16" in message and "world" in message


def test_offline_missing_weights_is_one_clear_error(workspace, tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-hf-cache"))
    started = time.time()
    with pytest.raises(UserError) as err:
        lclip.load_clip(ClipConfig(name="ViT-B-32", pretrained="openai"), workspace, 256)
    assert time.time() - started < 10
    message = str(err.value)
    assert "ViT-B-32" in message and "openai" in message
    assert "open_clip_model.safetensors" in message and "clip.pretrained" in message
    with pytest.raises(UserError, match="neither a file nor a pretrained tag"):
        lclip.load_clip(ClipConfig(name="ViT-B-32", pretrained=str(tmp_path / "nope.safetensors")), workspace, 256)


class _Payload:
    """Unpickling this would create a file: the proof that a refused weights file ran nothing."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        from pathlib import Path

        return (Path.touch, (Path(self.marker),))


def test_a_local_weights_file_that_is_no_state_dict_is_one_clear_error(tmp_path):
    """clip.pretrained=FILE holding an object, a pickled class instance or a list: one message
    naming the file and what it should hold; nothing in the file runs."""
    import pickle

    enc = _tiny_encoder(tmp_path, name="lafite-test-tiny-files")
    marker = tmp_path / "payload-ran"
    files = {"object.pt": None, "instance.pkl": None, "list.pt": "it holds a list",
             "empty.pt": "it holds an empty dict", "cut.pt": "cannot be read as a weights file"}
    torch.save(_Payload(marker), tmp_path / "object.pt")
    (tmp_path / "instance.pkl").write_bytes(pickle.dumps(_Payload(marker)))
    torch.save([1, 2], tmp_path / "list.pt")
    torch.save({}, tmp_path / "empty.pt")
    torch.save(enc.model.state_dict(), tmp_path / "good.pt")
    (tmp_path / "cut.pt").write_bytes((tmp_path / "good.pt").read_bytes()[:1000])
    for name, what in files.items():
        path = str(tmp_path / name)
        with pytest.raises(UserError) as err:
            lclip.load_clip(ClipConfig(name="lafite-test-tiny-files", pretrained=path), None, 16)
        message = str(err.value)
        assert path in message and "clip.pretrained" in message, message
        assert "state dict of 'lafite-test-tiny-files'" in message
        assert ".safetensors, .bin or .pt" in message
        if what is None:
            assert "holds objects other than weights" in message
            assert "stores the Python object" in message
            assert "weights_only" not in message
        else:
            assert what in message, message
    assert not marker.exists()
    loaded = lclip.load_clip(ClipConfig(name="lafite-test-tiny-files",
                                        pretrained=str(tmp_path / "good.pt")), None, 16)
    images = torch.randint(0, 256, (2, 3, 16, 16), dtype=torch.uint8)
    assert torch.equal(loaded.encode_images(images), enc.encode_images(images))


def test_world_clip_missing_says_how_to_train(workspace):
    with pytest.raises(UserError, match="lafite-repro clip pretrain"):
        lclip.load_clip(ClipConfig(name="world"), workspace, 32)


def test_a_coarser_patch_is_another_world_clip(workspace):
    shipped = lclip.world_clip_config(32)
    assert lclip.world_clip_config(32, 8)["vision_cfg"]["patch_size"] == 8
    assert lclip.world_clip_config(32, 8)["vision_cfg"]["width"] == shipped["vision_cfg"]["width"]
    # The shipped patch size named explicitly is the shipped CLIP; another one is another model.
    assert lclip.world_clip_key(32, model_cfg=lclip.world_clip_config(32, 4)) == lclip.world_clip_key(32)
    assert lclip.world_clip_key(32, model_cfg=lclip.world_clip_config(32, 8)) != lclip.world_clip_key(32)
    with pytest.raises(UserError, match="clip.world_patch_size: 5 px patches do not tile 32 px"):
        lclip.world_clip_config(32, 5)
    with pytest.raises(UserError, match="clip pretrain --resolution 32 --patch-size 8"):
        lclip.load_clip(ClipConfig(name="world", world_patch_size=8), workspace, 32)


def test_weights_round_trip_through_open_clip(tmp_path):
    """Saved as safetensors and loaded by open_clip's local-file path: identical features."""
    from safetensors.torch import save_file

    enc = _tiny_encoder(tmp_path, seed=3)
    folder = tmp_path / "r16-roundtrip"
    folder.mkdir()
    name = lclip._model_name(folder)
    (folder / f"{name}.json").write_text(json.dumps(TINY))
    save_file(enc.model.state_dict(), str(folder / lclip.WORLD_CLIP_WEIGHTS))
    loaded = lclip.load_world_clip(folder)
    images = torch.randint(0, 256, (6, 3, 16, 16), dtype=torch.uint8)
    texts = ["a small red star", "three green circles on white"]
    assert torch.equal(loaded.encode_images(images), enc.encode_images(images))
    assert torch.equal(loaded.encode_texts(texts), enc.encode_texts(texts))
    assert loaded.id.split("-")[-1] == enc.id.split("-")[-1]  # same weights hash


def test_world_clip_training_default_depends_on_resolution():
    # The 32-px (mini) CLIP trains longer than the 16-px (smoke) one, and that choice is part of
    # the cache key: a workspace holding the old 32-px CLIP trains the new one instead of reusing it.
    mini, smoke = lclip.default_world_clip_training(32), lclip.default_world_clip_training(16)
    assert (mini.steps, mini.warmup_steps) == (2400, 240)
    assert (smoke.steps, smoke.n_train) == (300, 8000)  # smoke proves the plumbing: seconds
    assert lclip.world_clip_key(16) == lclip.world_clip_key(16, training=smoke)
    assert lclip.world_clip_key(32) == lclip.world_clip_key(32, training=mini)
    assert lclip.world_clip_key(32) != lclip.world_clip_key(32, training=lclip.WorldClipTraining())


def test_tiny_world_clip_trains_beats_chance_and_is_cached(workspace):
    started = time.time()
    folder = lclip.pretrain_world_clip(workspace, 16, progress=False, model_cfg=TINY, training=TINY_TRAINING)
    first = time.time() - started
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["metrics"]["web"]["n_candidates"] == 100 and meta["metrics"]["web"]["n_groups"] == 1
    assert (folder / lclip.WORLD_CLIP_WEIGHTS).is_file()

    started = time.time()
    again = lclip.pretrain_world_clip(workspace, 16, progress=False, model_cfg=TINY, training=TINY_TRAINING)
    assert again == folder and time.time() - started < min(5.0, first / 2)

    from lafite.data.world import World

    encoder = lclip.load_world_clip(folder)
    # 10 candidates over 30 groups: chance is 10% (30 of 300 queries, standard deviation 5).
    measured = lclip.retrieval_accuracy(encoder, World("web", "test", resolution=16), n_candidates=10, n_groups=30)
    assert measured["n_groups"] == 30 and measured["chance"] == pytest.approx(0.1)
    assert measured["image_to_text_top1"] > 0.16 and measured["text_to_image_top1"] > 0.16
    scenes = lclip.retrieval_accuracy(encoder, World("scenes", "test", resolution=16), n_candidates=10, n_groups=10)
    assert scenes["own_caption_cosine"] > scenes["other_caption_cosine"] + 0.03
    # The attribute probe rides along in meta.json: every attribute, read three ways.
    probe = meta["metrics"]["scenes-attributes"]
    for attribute in ("background", "main-colour", "main-shape", "main-size", "main-position"):
        for read in ("image", "text", "image-to-text", "chance"):
            assert 0.0 <= probe[f"{read}.{attribute}"] <= 1.0
    # Even a briefly trained CLIP reads the background (4 flat colours) far above chance.
    assert probe["image.background"] > probe["chance.background"] + 0.3

    # Faces (the MM-CelebA-HQ analogue, met in training only among the web images) are evaluated
    # too: retrieval among 100 held-out pairs and a probe of the face attributes.
    faces = meta["metrics"]["faces"]
    assert faces["n_candidates"] == 100 and faces["n_groups"] == 1
    assert 0.0 <= faces["image_to_text_top1"] <= 1.0
    face_probe = meta["metrics"]["faces-attributes"]
    for attribute in ("background", "hair", "eyes", "expression", "accessory"):
        for read in ("image", "text", "image-to-text", "chance"):
            assert 0.0 <= face_probe[f"{read}.{attribute}"] <= 1.0
    assert face_probe["image.hair"] > face_probe["chance.hair"] + 0.2
    report = lclip.world_clip_report(workspace, 16, model_cfg=TINY, training=TINY_TRAINING)
    assert report["faces.image_to_text_top1"] == faces["image_to_text_top1"]
    assert report["faces-attributes.image.hair"] == face_probe["image.hair"]


def test_linear_probe_reads_what_the_features_hold_and_nothing_else():
    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 5, (600,), generator=generator)
    informative = torch.nn.functional.one_hot(labels, 16).float() + 0.15 * torch.randn(600, 16, generator=generator)
    assert lclip.linear_probe_accuracy(informative[:400], labels[:400], informative[400:], labels[400:], 5) > 0.95
    noise = torch.randn(600, 16, generator=generator)
    chance = torch.bincount(labels[400:], minlength=5).max().item() / 200
    assert lclip.linear_probe_accuracy(noise[:400], labels[:400], noise[400:], labels[400:], 5) < chance + 0.12


# -- feature cache -----------------------------------------------------------------------------


def test_feature_cache_reuses_and_invalidates(workspace, tmp_path, monkeypatch):
    enc = _tiny_encoder(tmp_path, seed=0)
    cache = lclip.FeatureCache(workspace)
    data = ToyDataset()
    calls = {"images": 0, "texts": 0}
    for method, key in (("encode_cropped", "images"), ("encode_texts", "texts")):
        original = getattr(lclip.ClipEncoder, method)

        def counted(self, *args, _original=original, _key=key, **kwargs):
            calls[_key] += 1
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(lclip.ClipEncoder, method, counted)

    feats = cache.image_features(data, enc)
    assert isinstance(feats, np.memmap) and feats.shape == (12, 32) and feats.dtype == np.float32
    assert np.allclose(np.linalg.norm(feats, axis=1), 1, atol=1e-5)
    texts, offsets = cache.text_features(data, enc)
    assert offsets.dtype == np.int64 and offsets.shape == (13,) and texts.shape == (offsets[-1], 32)
    assert offsets[-1] == sum(len(data.captions(i)) for i in range(len(data)))
    assert np.allclose(texts[offsets[1]], enc.encode_texts([data.captions(1)[0]]).numpy(), atol=1e-6)
    counts = dict(calls)

    assert np.array_equal(cache.image_features(data, enc), feats)
    assert np.array_equal(cache.text_features(data, enc)[0], texts)
    assert calls == counts, "a second read must come from the cache"

    # The crop is seeded: a fresh cache elsewhere gives the same features.
    other = lclip.FeatureCache(type(workspace).resolve(tmp_path / "other-ws"))
    assert np.allclose(other.image_features(data, enc), feats)

    changed = ToyDataset(seed=1)
    cache.image_features(changed, enc)
    assert calls["images"] > counts["images"], "a changed dataset must be recomputed"
    counts = dict(calls)

    enc2 = _tiny_encoder(tmp_path, seed=1)
    assert enc2.id != enc.id
    cache.text_features(data, enc2)
    assert calls["texts"] > counts["texts"], "a different encoder must be recomputed"


def test_corrupt_cache_is_recomputed_with_warning(workspace, tmp_path):
    enc = _tiny_encoder(tmp_path)
    cache = lclip.FeatureCache(workspace)
    data = ToyDataset(n=9)
    good = np.array(cache.image_features(data, enc))
    good_texts = np.array(cache.text_features(data, enc)[0])
    folder = cache.folder(data, enc)
    image_file = next(folder.glob("image-*.npy"))

    raw = image_file.read_bytes()
    image_file.write_bytes(raw[: len(raw) // 2])  # truncated
    with pytest.warns(UserWarning, match="corrupt"):
        again = cache.image_features(data, enc)
    assert np.allclose(again, good)

    image_file.write_bytes(b"not a numpy file at all")
    with pytest.warns(UserWarning, match="corrupt"):
        assert np.allclose(cache.image_features(data, enc), good)

    (folder / "text.npy").write_bytes(b"\x93NUMPY garbage")
    with pytest.warns(UserWarning, match="corrupt"):
        texts, _ = cache.text_features(data, enc)
    assert np.allclose(texts, good_texts)

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cache.image_features(data, enc)
        cache.text_features(data, enc)
    assert not list(folder.glob("*.tmp"))


def test_feature_cache_on_a_materialised_world_folder(workspace, tmp_path):
    """The real dataset path: world -> PNG + .txt folder -> ImageTextFolder -> cached features."""
    from lafite.data.folder import ImageTextFolder
    from lafite.data.world import World, materialise

    folder = materialise(World("scenes", "test", resolution=16, size=6), tmp_path / "scenes")
    dataset = ImageTextFolder(folder, 16)
    enc = _tiny_encoder(tmp_path)
    cache = lclip.FeatureCache(workspace)
    feats = np.array(cache.image_features(dataset, enc))
    texts, offsets = cache.text_features(dataset, enc)
    assert feats.shape == (6, 32) and offsets[-1] == texts.shape[0] == 6 * 5
    before = dataset.fingerprint()

    caption_file = sorted(folder.glob("*.txt"))[0]
    caption_file.write_text("a single large red circle\n")
    changed = ImageTextFolder(folder, 16)
    assert changed.fingerprint() != before
    texts2, offsets2 = cache.text_features(changed, enc)
    assert offsets2[1] == 1 and texts2.shape[0] == 26
    assert np.allclose(texts2[0], enc.encode_texts(["a single large red circle"])[0].numpy(), atol=1e-6)
