"""CLIP R-precision and CLIP score, the evaluation entry point, and sample grids."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from lafite.config import RunConfig
from lafite.errors import UserError
from lafite.metrics import DIAGNOSTIC_LABEL, METRICS
from lafite.metrics.alignment import CandidatePool, clip_score, is_training_clip, r_precision
from lafite.metrics.evaluate import EvaluationResult, evaluate_generator, requested_metrics

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def unit(n: int, dim: int, seed: int) -> torch.Tensor:
    return F.normalize(torch.randn(n, dim, generator=torch.Generator().manual_seed(seed)), dim=1)


# -- the scores ----------------------------------------------------------------------------------


def test_r_precision_and_clip_score_known_answers():
    captions = unit(20, 32, 0)
    pool = CandidatePool(unit(200, 32, 1), np.arange(200) + 100)
    sources = list(range(20))
    assert r_precision(captions, captions, sources, pool, n_candidates=50) == 1.0
    assert r_precision(-captions, captions, sources, pool, n_candidates=50) == 0.0
    assert clip_score(captions, captions) == pytest.approx(1.0)
    assert clip_score(-captions, captions) == pytest.approx(-1.0)
    # Unrelated images: the true caption wins about 1 time in R.
    noise = unit(400, 32, 2)
    many = unit(400, 32, 3)
    chance = r_precision(noise, many, list(range(400)), pool, n_candidates=10)
    assert 0.03 < chance < 0.2


def test_negatives_never_come_from_the_same_image():
    caption = unit(1, 16, 0)
    # The pool holds the true caption's twin from the same image and 9 captions far away.
    pool_features = torch.cat([caption, -unit(9, 16, 1).abs()])
    pool = CandidatePool(pool_features, np.array([7] + [1] * 9))
    assert r_precision(caption, caption, [7], pool, n_candidates=10) == 1.0
    with pytest.raises(ValueError, match="negative captions"):
        r_precision(caption, caption, [7], pool, n_candidates=11)


def test_training_clip_is_detected():
    cfg = RunConfig().clip
    assert is_training_clip("", "openai", cfg)
    assert is_training_clip(cfg.name, cfg.pretrained, cfg)
    assert not is_training_clip("ViT-L-14", "openai", cfg)


# -- the evaluation entry point ------------------------------------------------------------------


class HashClip:
    """A stand-in ClipEncoder: captions hash to fixed unit vectors, images project linearly."""

    id = "hashclip"
    dim = 32

    def __init__(self) -> None:
        self.projection = torch.randn(
            3 * 16 * 16, self.dim, generator=torch.Generator().manual_seed(5)
        )

    def encode_texts(self, texts):
        rows = []
        for text in texts:
            seed = int(hashlib.sha256(text.encode()).hexdigest()[:8], 16)
            rows.append(torch.randn(self.dim, generator=torch.Generator().manual_seed(seed)))
        return F.normalize(torch.stack(rows), dim=1)

    def encode_images(self, x):
        x = F.interpolate(x.float() / 255, size=(16, 16), mode="area")
        return F.normalize(x.flatten(1) @ self.projection, dim=1)


class WorldSplit(torch.utils.data.Dataset):
    """The ImageTextFolder contract over a World, without materialising it."""

    def __init__(self, split: str, size: int) -> None:
        from lafite.data.world import World

        self.world = World("scenes", split, resolution=16, seed=0, size=size)
        self.pixels = torch.from_numpy(self.world.images(range(size))).permute(0, 3, 1, 2)

    def __len__(self):
        return len(self.world)

    def __getitem__(self, index):
        return self.pixels[index].contiguous()

    def captions(self, index):
        return self.world.captions(index)

    def fingerprint(self):
        return "worldsplit-" + self.world.key


EVERYTHING = [
    "IS",
    "FID-0",
    "FID-2",
    "KID",
    "SOA-C",
    "SOA-I",
    "caption-accuracy",
    "R-precision",
    "CLIP-score",
    "z-diversity",
]


def small_config(**overrides) -> RunConfig:
    base = {
        "data.dataset": "world",
        "data.resolution": 16,
        "world.n_test": 30,
        "eval.extractor": "inspector",
        "eval.metrics": EVERYTHING,
        "eval.batch": 16,
        "eval.isc_splits": 2,
        "eval.kid_subset_size": 10,
        "eval.kid_subsets": 5,
        "eval.r_precision_candidates": 10,
        "eval.soa_captions_per_class": 2,
        "eval.soa_images_per_caption": 1,
    }
    base.update(overrides)
    return RunConfig().override(base)


@pytest.fixture(scope="module")
def parts():
    from lafite.config import ModelConfig
    from lafite.data.inspector import Inspector
    from lafite.model.generator import Generator

    torch.manual_seed(0)
    tiny = ModelConfig(
        z_dim=8, w_dim=8, mapping_layers=1, channel_base=256, channel_max=16, cond_dim=8
    )
    return {
        "G": Generator(tiny, 16, cond_dim=HashClip.dim).eval(),
        "clip": HashClip(),
        "inspector": Inspector(16).eval(),
        "datasets": {"train": WorldSplit("train", 40), "test": WorldSplit("test", 30)},
    }


def run(cfg, parts, workspace, **kw):
    return evaluate_generator(
        cfg,
        parts["G"],
        workspace,
        clip=parts["clip"],
        inspector=parts["inspector"],
        datasets=parts["datasets"],
        n_samples=24,
        **kw,
    )


def test_evaluation_computes_every_metric_at_mini_scale(parts, workspace):
    state = torch.get_rng_state()
    result = run(small_config(), parts, workspace)
    assert torch.equal(torch.get_rng_state(), state)  # training's RNG stream is untouched
    assert result.not_computed == {}
    assert list(result.metrics)[: len(EVERYTHING)] == EVERYTHING
    for part in ("main-shape-accuracy", "main-colour-accuracy", "background-accuracy"):
        assert 0.0 <= result.metrics[part] <= 1.0  # reported with caption-accuracy
    assert 0.0 <= result.metrics["SOA-C"] <= 100.0
    assert result.metrics["FID-0"] > 0 and result.metrics["IS"] >= 1.0
    # The scoring CLIP is the training CLIP: a diagnostic, and shown as one.
    assert result.labels == {"R-precision": DIAGNOSTIC_LABEL, "CLIP-score": DIAGNOSTIC_LABEL}
    assert result.display_name("R-precision") == f"R-precision ({DIAGNOSTIC_LABEL})"
    tracked = result.for_tracking()
    assert f"CLIP-score - {DIAGNOSTIC_LABEL}" in tracked and "FID-2" in tracked
    assert all("(" not in key for key in tracked)  # MLflow forbids parentheses
    again = run(small_config(), parts, workspace)
    assert again.metrics == result.metrics  # seeded: evaluations are comparable


def test_metrics_that_cannot_be_computed_carry_reasons(parts, workspace):
    cfg = small_config(
        **{
            "data.dataset": "coco2014",
            "eval.metrics": ["SOA-C", "caption-accuracy", "CLIP-score", "R-precision"],
            "eval.r_precision_candidates": 500,
        }
    )
    result = run(cfg, parts, workspace)
    assert set(result.not_computed) == {"SOA-C", "caption-accuracy", "R-precision"}
    assert "eval.soa_detector" in result.not_computed["SOA-C"]
    assert "world" in result.not_computed["caption-accuracy"]
    assert "500" in result.not_computed["R-precision"]
    # feature-dim, the generator's condition size, is recorded with every evaluation.
    assert set(result.metrics) == {"CLIP-score", "feature-dim"}


def test_inspector_extractor_needs_the_world(parts, workspace):
    cfg = small_config(**{"data.dataset": "coco2014", "eval.metrics": ["FID-0"]})
    result = evaluate_generator(
        cfg, parts["G"], workspace, clip=parts["clip"], datasets=parts["datasets"], n_samples=20
    )
    assert "FID-0" not in result.metrics
    assert "only the built-in world" in result.not_computed["FID-0"]


def test_unknown_metric_name_lists_the_known_ones():
    with pytest.raises(UserError) as err:
        requested_metrics(RunConfig().override({"eval.metrics": ["IS", "FID-3"]}).eval)
    assert "FID-3" in str(err.value)
    for name in METRICS:
        assert name in str(err.value)
    cfg = RunConfig().override({"eval.metrics": ["IS"], "eval.fid_k": [0, 8, 0]}).eval
    assert requested_metrics(cfg) == ["IS", "FID-0", "FID-8"]


def test_result_round_trips_to_plain_data():
    result = EvaluationResult({"IS": 2.0}, {"SOA-C": "no detector"}, {}, {"n_samples": 4})
    assert result.to_dict()["not_computed"] == {"SOA-C": "no detector"}


# -- sampling -------------------------------------------------------------------------------------


def test_grid_with_captions_and_image_conditioning(parts, tmp_path):
    from lafite import sampling

    grid = sampling.make_grid(parts["G"], ["a red circle", "a blue star"], parts["clip"], 3, seed=1)
    assert isinstance(grid, Image.Image)
    assert grid.width >= 3 * sampling.MIN_CELL and grid.height > 2 * sampling.MIN_CELL

    picture = tmp_path / "cond.png"
    Image.fromarray(np.full((20, 30, 3), 200, dtype=np.uint8)).save(picture)
    pixels = sampling.load_image(picture)
    assert pixels.shape == (3, 20, 30) and sampling.centre_crop(pixels).shape == (3, 20, 20)
    h_img = sampling.image_conditions(parts["clip"], pixels, 4, seed=0)
    assert torch.allclose(h_img.norm(dim=1), torch.ones(4), atol=1e-5)
    assert not torch.allclose(h_img[0], h_img[1])  # one noise draw per sample
    h_txt = sampling.text_conditions(parts["clip"], ["a red circle"])
    only_text = sampling.multimodal_conditions(
        parts["clip"], pixels, "a red circle", 2, image_weight=0.0
    )
    assert torch.allclose(only_text, h_txt.expand(2, -1), atol=1e-6)
    both = sampling.generate_grid(
        parts["G"], parts["clip"], caption="a red circle", image=picture, n=4
    )
    assert isinstance(both, Image.Image)

    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    with pytest.raises(UserError, match="bad.png"):
        sampling.load_image(bad)
