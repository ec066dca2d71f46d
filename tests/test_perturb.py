"""Pseudo text features: Eq. 1 (fixed perturbation), the official mix, Eq. 2 and ConditionMaker."""

import math

import pytest
import torch
import torch.nn.functional as F

from lafite.config import PerturbConfig
from lafite.errors import UserError
from lafite.perturb import (
    ConditionMaker,
    InferenceModel,
    gaussian,
    load_inference_model,
    official_mix,
    save_inference_model,
    train_inference_model,
)

DIM = 512


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _unit(n: int, dim: int = DIM, seed: int = 0) -> torch.Tensor:
    return F.normalize(torch.randn(n, dim, generator=torch.Generator().manual_seed(seed)), dim=1)


@pytest.mark.parametrize("xi", [0.25, 1.0, 3.0])
def test_eq1_unit_norm_and_cosine_matches_theory(xi):
    f = _unit(4000)
    eps = torch.randn(4000, DIM, generator=torch.Generator().manual_seed(1))
    h = gaussian(f, xi, eps)
    assert torch.allclose(h.norm(dim=1), torch.ones(4000), atol=1e-5)
    cos = (h * f).sum(dim=1)
    # eps^ is uniform on the sphere, nearly orthogonal to f: cos = 1/sqrt(1 + xi^2) up to
    # fluctuations of order xi / sqrt(d) per sample, which average out over 4000 samples.
    assert cos.mean().item() == pytest.approx(1 / math.sqrt(1 + xi * xi), abs=0.01)
    assert cos.std().item() < 2 * xi / math.sqrt(DIM)


def test_eq1_noise_is_adaptive_to_feature_norm():
    f = _unit(16)
    eps = torch.randn(16, DIM)
    # Eq. 1 rescales the noise to |f|: scaling f must not change h'.
    assert torch.allclose(gaussian(f, 1.0, eps), gaussian(7.5 * f, 1.0, eps), atol=1e-6)
    # and the scale of eps does not matter either (it is normalised).
    assert torch.allclose(gaussian(f, 1.0, eps), gaussian(f, 1.0, 0.01 * eps), atol=1e-6)


@pytest.mark.parametrize("mix", [0.1, 0.5, 0.75])
def test_official_mix_equals_eq1_with_xi_mix_over_one_minus_mix(mix):
    f = _unit(64)
    eps = torch.randn(64, DIM)
    assert torch.allclose(official_mix(f, mix, eps), gaussian(f, mix / (1 - mix), eps), atol=1e-6)


def test_official_mix_075_mean_cosine_is_one_over_sqrt10():
    f = _unit(2000)
    cos = (official_mix(f, 0.75, torch.randn(2000, DIM)) * f).sum(dim=1)
    assert cos.mean().item() == pytest.approx(1 / math.sqrt(10), abs=0.01)


def test_eq2_shapes_norms_and_gradients_reach_r1_and_r2():
    dim = 64
    model = InferenceModel(dim)
    # 4 FC layers per branch, dim -> 2 dim -> 2 dim -> 2 dim -> dim.
    linears = [m for m in model.r1 if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [
        (dim, 2 * dim),
        (2 * dim, 2 * dim),
        (2 * dim, 2 * dim),
        (2 * dim, dim),
    ]
    assert len([m for m in model.r2 if isinstance(m, torch.nn.Linear)]) == 4
    f = _unit(8, dim)
    eps = torch.randn(8, dim)
    h = model(f, eps)
    assert h.shape == (8, dim)
    assert torch.allclose(h.norm(dim=1), torch.ones(8), atol=1e-5)
    # Direct computation of Eq. 2.
    expected = F.normalize(f + model.r1(f) + eps * torch.exp(model.r2(f)), dim=1)
    assert torch.allclose(h, expected, atol=1e-6)
    (h * _unit(8, dim, seed=3)).sum().backward()
    for branch in (model.r1, model.r2):
        grads = [p.grad for p in branch.parameters()]
        assert all(g is not None and g.abs().sum() > 0 for g in grads)


def test_eq2_official_width_at_512():
    model = InferenceModel(512)
    # The official mapper `Model` has 6,298,624 parameters (official-lafite.md 2.3).
    assert sum(p.numel() for p in model.parameters()) == 6_298_624


def test_train_inference_model_learns_and_round_trips(tmp_path):
    dim = 32
    img = _unit(512, dim)
    # Paired "text" features: a fixed rotation-like shift of the image feature plus noise.
    shift = _unit(1, dim, seed=5)
    txt = F.normalize(img + 0.8 * shift + 0.05 * torch.randn(512, dim), dim=1)
    model, summary = train_inference_model(img, txt, steps=150, batch=64, lr=2e-3, seed=0)
    assert summary["cos_last"] > summary["cos_first"] + 0.05
    assert summary["cos_last"] > 0.9
    path = save_inference_model(model, tmp_path / "nn" / "model.pt")
    loaded = load_inference_model(path)
    eps = torch.randn(4, dim)
    assert torch.equal(loaded(img[:4], eps), model(img[:4], eps))
    # Same seed, same model.
    again, _ = train_inference_model(img, txt, steps=5, batch=64, seed=0)
    again2, _ = train_inference_model(img, txt, steps=5, batch=64, seed=0)
    for p, q in zip(again.parameters(), again2.parameters()):
        assert torch.equal(p, q)


def test_load_inference_model_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_inference_model(tmp_path / "missing.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="corrupt"):
        load_inference_model(bad)


def _maker(mixing_prob: float = 1.0, **kw) -> ConditionMaker:
    return ConditionMaker(PerturbConfig(**kw), pseudo_probability=mixing_prob)


def test_condition_maker_language_free_is_eq1_with_generator_noise():
    img = _unit(16)
    h = _maker(kind="gaussian", xi=1.0, mixing_prob=1.0)(
        img, None, torch.Generator().manual_seed(7)
    )
    eps = torch.randn(16, DIM, generator=torch.Generator().manual_seed(7))
    assert torch.allclose(h, gaussian(img, 1.0, eps), atol=1e-6)


def test_condition_maker_supervised_and_mixed():
    img, txt = _unit(400, seed=1), _unit(400, seed=2)
    gen = torch.Generator().manual_seed(0)
    assert torch.allclose(_maker(mixing_prob=0.0)(img, txt, gen), txt, atol=1e-6)
    h = _maker(mixing_prob=0.5, kind="none")(img, txt, gen)
    from_img = torch.isclose(h, img, atol=1e-6).all(dim=1)
    from_txt = torch.isclose(h, txt, atol=1e-6).all(dim=1)
    assert bool((from_img ^ from_txt).all())
    assert 150 < int(from_img.sum()) < 250  # per-sample Bernoulli(0.5)


def test_condition_maker_semi_supervised_unpaired_images_get_pseudo_features():
    img, txt = _unit(6, seed=1), _unit(6, seed=2)
    paired = torch.tensor([True, False, True, False, False, True])
    h = _maker(mixing_prob=0.0, kind="gaussian", xi=1.0)(
        img, txt, torch.Generator().manual_seed(5), paired
    )
    eps = torch.randn(6, DIM, generator=torch.Generator().manual_seed(5))
    expected = torch.where(paired[:, None], txt, gaussian(img, 1.0, eps))
    assert torch.allclose(h, expected, atol=1e-6)
    # Every image unpaired is language-free training, step for step (same noise, same h').
    none_paired = _maker(mixing_prob=0.0, kind="gaussian", xi=1.0)(
        img, txt, torch.Generator().manual_seed(5), torch.zeros(6, dtype=torch.bool)
    )
    language_free = _maker(mixing_prob=1.0, kind="gaussian", xi=1.0)(
        img, None, torch.Generator().manual_seed(5)
    )
    assert torch.allclose(none_paired, language_free, atol=1e-6)


def test_condition_maker_text_mix_and_shared_noise():
    img, txt = _unit(8, seed=1), _unit(8, seed=2)
    h = _maker(mixing_prob=0.0, text_mix=0.1, share_noise=True)(
        img, txt, torch.Generator().manual_seed(3)
    )
    eps = torch.randn(8, DIM, generator=torch.Generator().manual_seed(3))
    assert torch.allclose(h, official_mix(txt, 0.1, eps), atol=1e-6)
    assert (h * txt).sum(dim=1).min() > 0.98  # text perturbation is mild (cos ~ 0.994)
    # Without sharing, the text noise is a second draw.
    h2 = _maker(mixing_prob=0.0, text_mix=0.1)(img, txt, torch.Generator().manual_seed(3))
    assert not torch.allclose(h, h2)


def test_condition_maker_nn_uses_inference_model():
    dim = 16
    model = InferenceModel(dim)
    img = _unit(4, dim)
    h = ConditionMaker(PerturbConfig(kind="nn"), model)(img, None, torch.Generator().manual_seed(0))
    eps = torch.randn(4, dim, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(h, model(img, eps), atol=1e-6)
    assert not h.requires_grad


def test_condition_maker_user_errors():
    with pytest.raises(UserError, match="perturb.nn_job"):
        ConditionMaker(PerturbConfig(kind="nn"))
    with pytest.raises(UserError, match="supervised"):
        _maker(mixing_prob=0.5)(_unit(2), None, torch.Generator())
    with pytest.raises(UserError, match="probability"):
        _maker(mixing_prob=1.5)
