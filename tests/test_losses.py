"""Eqs. 5-9 against values computed by hand, the official variants, R1, path length and EMA."""

import math

import pytest
import torch

from lafite.config import LossConfig, ModelConfig
from lafite.errors import UserError
from lafite.losses import (
    contrastive,
    discriminator_loss,
    ema_beta,
    generator_loss,
    path_length_penalty,
    r1_penalty,
    update_ema,
)
from lafite.model import Generator

# A 3x3 case: image-side features A (f_s(x_i) or f_img(x'_i)) and their conditions B (h'_i).
A = [[1.0, 0.0, 0.0], [0.6, 0.8, 0.0], [0.0, 1.0, 2.0]]
B = [[0.9, 0.1, 0.0], [0.0, 1.0, 0.5], [-0.3, 0.2, 1.0]]
TAU = 0.5


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _cos(u, v):
    dot = sum(x * y for x, y in zip(u, v))
    return dot / (math.sqrt(sum(x * x for x in u)) * math.sqrt(sum(y * y for y in v)))


def _logit(c, form):
    return math.exp(c / TAU) if form == "exp" else c / TAU


def _log_softmax_over_images(i, form):
    """log p(image i | text i): for text i, the softmax runs over images j (Eqs. 6-7)."""
    num = _logit(_cos(A[i], B[i]), form)
    den = sum(math.exp(_logit(_cos(A[j], B[i]), form)) for j in range(3))
    return num - math.log(den)


def _log_softmax_over_texts(i, form):
    """log p(text i | image i): for image i, the softmax runs over texts j (official lam=1)."""
    num = _logit(_cos(A[i], B[i]), form)
    den = sum(math.exp(_logit(_cos(A[i], B[j]), form)) for j in range(3))
    return num - math.log(den)


def _by_hand(form="plain", reduction="sum", direction=0.0):
    items = [
        -(
            (1 - direction) * _log_softmax_over_images(i, form)
            + direction * _log_softmax_over_texts(i, form)
        )
        for i in range(3)
    ]
    return TAU * sum(items) if reduction == "sum" else sum(items) / 3


def _t(rows):
    return torch.tensor(rows, dtype=torch.float32)


def test_eq6_eq7_paper_form_by_hand():
    # Eq. 6: -tau sum_i log( exp(Sim(a_i, b_i)/tau) / sum_j exp(Sim(a_j, b_i)/tau) ).
    expected = -TAU * sum(
        math.log(
            math.exp(_cos(A[i], B[i]) / TAU)
            / sum(math.exp(_cos(A[j], B[i]) / TAU) for j in range(3))
        )
        for i in range(3)
    )
    got = contrastive(_t(A), _t(B), LossConfig(tau=TAU))
    assert got.item() == pytest.approx(expected, rel=1e-5)
    assert expected == pytest.approx(_by_hand(), rel=1e-12)


@pytest.mark.parametrize(
    "form,reduction,direction",
    [
        ("exp", "sum", 0.0),
        ("plain", "mean", 0.0),
        ("exp", "mean", 0.0),
        ("plain", "sum", 1.0),
        ("exp", "mean", 1.0),
        ("plain", "sum", 0.3),
        ("exp", "mean", 0.7),
    ],
)
def test_contrastive_official_variants_by_hand(form, reduction, direction):
    cfg = LossConfig(tau=TAU, logits=form, reduction=reduction, direction=direction)
    got = contrastive(_t(A), _t(B), cfg)
    assert got.item() == pytest.approx(_by_hand(form, reduction, direction), rel=1e-5)


def test_contrastive_official_value_differs_by_constant_log_tau():
    # The official contra_loss returns log(softmax * tau); its loss is -mean of that.
    official = (
        -sum(
            math.log(
                math.exp(_logit(_cos(A[j], B[j]), "exp"))
                / sum(math.exp(_logit(_cos(A[i], B[j]), "exp")) for i in range(3))
                * TAU
            )
            for j in range(3)
        )
        / 3
    )
    ours = contrastive(_t(A), _t(B), LossConfig(tau=TAU, logits="exp", reduction="mean"))
    assert ours.item() - math.log(TAU) == pytest.approx(official, rel=1e-5)


def test_contrastive_is_scale_invariant_and_rejects_bad_direction():
    cfg = LossConfig(tau=TAU)
    assert torch.allclose(contrastive(_t(A), _t(B), cfg), contrastive(3 * _t(A), 0.5 * _t(B), cfg))
    with pytest.raises(UserError, match="loss.direction"):
        contrastive(_t(A), _t(B), LossConfig(direction=1.5))


def test_gathered_negatives_give_the_single_process_gradient():
    torch.manual_seed(0)
    a_all, b_all = torch.randn(6, 5), torch.randn(6, 5)
    cfg = LossConfig(tau=TAU, logits="exp", reduction="mean")
    full = a_all.clone().requires_grad_(True)
    contrastive(full, b_all, cfg).backward()
    # Two "ranks": each sees all rows, only its own three alive (gather_keep_local).
    summed = torch.zeros_like(a_all)
    for rank in range(2):
        local = a_all[3 * rank : 3 * rank + 3].clone().requires_grad_(True)
        pieces = [a_all[0:3].detach(), a_all[3:6].detach()]
        pieces[rank] = local
        contrastive(torch.cat(pieces), b_all, cfg).backward()
        summed[3 * rank : 3 * rank + 3] = local.grad
    # Averaging over 2 ranks halves this; contrastive_scale = world size restores it.
    assert torch.allclose(summed, full.grad, atol=1e-6)


FAKE = [0.3, -1.2, 2.0]
REAL = [1.0, 0.5, -0.7]


def _sigmoid(x):
    return 1 / (1 + math.exp(-x))


def test_eq5_generator_and_discriminator_logistic_losses_by_hand():
    cfg = LossConfig(con_d=False, con_g=False)
    g = generator_loss(
        fake_logit=_t(FAKE), fake_semantic=None, clip_features=None, cond=_t(B), cfg=cfg
    )
    assert g["adv"].item() == pytest.approx(-sum(math.log(_sigmoid(x)) for x in FAKE), rel=1e-6)
    assert set(g) == {"adv", "total"}
    d = discriminator_loss(
        real_logit=_t(REAL), fake_logit=_t(FAKE), real_semantic=None, cond=_t(B), cfg=cfg
    )
    expected = -sum(math.log(_sigmoid(x)) for x in REAL) - sum(
        math.log(1 - _sigmoid(x)) for x in FAKE
    )
    assert d["total"].item() == pytest.approx(expected, rel=1e-6)
    mean = discriminator_loss(
        real_logit=_t(REAL),
        fake_logit=_t(FAKE),
        real_semantic=None,
        cond=_t(B),
        cfg=LossConfig(con_d=False, reduction="mean"),
    )
    assert mean["total"].item() == pytest.approx(expected / 3, rel=1e-6)


@pytest.mark.parametrize("gamma", [0.0, 5.0, 10.0])
def test_eq8_weight_of_con_d(gamma):
    cfg = LossConfig(tau=TAU, gamma=gamma)
    d = discriminator_loss(
        real_logit=_t(REAL), fake_logit=_t(FAKE), real_semantic=_t(A), cond=_t(B), cfg=cfg
    )
    adv = d["adv_real"] + d["adv_fake"]
    assert d["total"].item() == pytest.approx((adv + gamma * _by_hand()).item(), rel=1e-5)
    off = discriminator_loss(
        real_logit=_t(REAL),
        fake_logit=_t(FAKE),
        real_semantic=_t(A),
        cond=_t(B),
        cfg=LossConfig(tau=TAU, gamma=gamma, con_d=False),
    )
    assert "con_d" not in off and off["total"].item() == pytest.approx(adv.item())


@pytest.mark.parametrize("gamma,lam", [(10.0, 10.0), (5.0, 10.0), (10.0, 0.0)])
def test_eq9_weights_of_con_d_and_con_g(gamma, lam):
    semantic, clip = _t(A), _t(A[::-1])
    cfg = LossConfig(tau=TAU, gamma=gamma, lambda_=lam)
    g = generator_loss(
        fake_logit=_t(FAKE), fake_semantic=semantic, clip_features=clip, cond=_t(B), cfg=cfg
    )
    con_d = contrastive(semantic, _t(B), cfg)
    con_g = contrastive(clip, _t(B), cfg)
    assert g["con_d"].item() == pytest.approx(_by_hand(), rel=1e-5)
    expected = g["adv"] + gamma * con_d + lam * con_g
    assert g["total"].item() == pytest.approx(expected.item(), rel=1e-5)
    scaled = generator_loss(
        fake_logit=_t(FAKE),
        fake_semantic=semantic,
        clip_features=clip,
        cond=_t(B),
        cfg=cfg,
        contrastive_scale=2.0,
    )
    assert scaled["total"].item() == pytest.approx(
        (g["adv"] + 2 * (gamma * con_d + lam * con_g)).item(), rel=1e-5
    )
    only_g = generator_loss(
        fake_logit=_t(FAKE),
        fake_semantic=None,
        clip_features=clip,
        cond=_t(B),
        cfg=LossConfig(tau=TAU, gamma=gamma, lambda_=lam, con_d=False),
    )
    assert "con_d" not in only_g
    assert only_g["total"].item() == pytest.approx((g["adv"] + lam * con_g).item(), rel=1e-5)


def test_r1_penalty_by_hand():
    x = torch.randn(4, 3, 2, 2, requires_grad=True)
    w = torch.randn(1, 3, 2, 2)
    logit = (w * x.square()).sum(dim=(1, 2, 3))  # d logit / dx = 2 w x
    per_sample = (2 * w * x.detach()).square().sum(dim=(1, 2, 3))
    r1 = r1_penalty(x, logit, 10.0)
    assert r1["total"].item() == pytest.approx(5.0 * per_sample.mean().item(), rel=1e-5)
    lazy = r1_penalty(x, logit, 10.0, reduction="sum", interval=16)
    assert lazy["total"].item() == pytest.approx(16 * 5.0 * per_sample.sum().item(), rel=1e-5)
    lazy["total"].backward()  # create_graph: the penalty itself is differentiable
    assert x.grad is not None


def _tiny_generator():
    cfg = ModelConfig(
        z_dim=16, w_dim=16, mapping_layers=2, channel_base=512, channel_max=32, cond_dim=16
    )
    return Generator(cfg, 16, 8)


def test_path_length_penalty_running_mean_and_grads():
    torch.manual_seed(0)
    G = _tiny_generator()
    z, cond = torch.randn(2, 16), torch.randn(2, 8)
    terms, pl_mean = path_length_penalty(G, z, cond, torch.tensor(0.0), 2.0)
    length = terms["pl_length"].item()
    assert pl_mean.item() == pytest.approx(0.01 * length, rel=1e-5)
    terms["total"].backward()
    assert G.mapping.layers[0].weight.grad is not None
    assert G.synthesis.blocks[-1].conv1.weight.grad.abs().sum() > 0
    terms2, pl_mean2 = path_length_penalty(G, z, cond, pl_mean, 2.0, interval=4)
    assert pl_mean2.item() == pytest.approx(
        pl_mean.item() * 0.99 + 0.01 * terms2["pl_length"].item(), rel=1e-4
    )


def test_ema_beta_and_update():
    # Half-life of ema_kimg thousand images: after ema_kimg*1000/batch steps the weight is 1/2.
    assert ema_beta(64, 10**9, 20.0, 0.05) ** (20_000 / 64) == pytest.approx(0.5)
    # Ramp-up: early on the half-life is cur_nimg * rampup.
    assert ema_beta(64, 1000, 20.0, 0.05) == pytest.approx(0.5 ** (64 / 50))
    assert ema_beta(64, 1000, 20.0, None) == pytest.approx(0.5 ** (64 / 20_000))
    G, G_ema = _tiny_generator(), _tiny_generator()
    G.mapping.w_avg.fill_(3.0)
    before = [p.detach().clone() for p in G_ema.parameters()]
    update_ema(G_ema, G, 0.9)
    for b, p_ema, p in zip(before, G_ema.parameters(), G.parameters()):
        assert torch.allclose(p_ema, 0.9 * b + 0.1 * p.detach(), rtol=1e-5, atol=1e-4)
    assert torch.equal(G_ema.mapping.w_avg, G.mapping.w_avg)
