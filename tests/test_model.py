"""Generator and discriminator: shapes, conditioning, Eq. 4, cond forms, FIR ops, sizes."""

import pytest
import torch
import torch.nn.functional as F

from lafite.config import ModelConfig
from lafite.errors import UserError
from lafite.model import Discriminator, Generator, count_parameters
from lafite.model.discriminator import minibatch_stddev
from lafite.model.layers import FIR_TAPS, downsample2d, modulated_conv2d, upsample2d

COND = 16
FORMS = ["paper", "official", "scale-bias", "sum"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def small_cfg(**kw) -> ModelConfig:
    base = dict(
        z_dim=32, w_dim=32, mapping_layers=2, channel_base=1024, channel_max=32, cond_dim=24
    )
    base.update(kw)
    return ModelConfig(**base)


def _cond(n: int, seed: int = 0) -> torch.Tensor:
    return F.normalize(torch.randn(n, COND, generator=torch.Generator().manual_seed(seed)), dim=1)


@pytest.mark.parametrize("resolution", [16, 32, 64])
def test_shapes_at_each_resolution(resolution):
    torch.manual_seed(0)
    G = Generator(small_cfg(), resolution, COND)
    D = Discriminator(small_cfg(), resolution, COND)
    assert G.num_ws == 2 * resolution.bit_length() - 4  # 2 log2(res) - 2
    img = G(torch.randn(3, 32), _cond(3))
    assert img.shape == (3, 3, resolution, resolution) and img.dtype == torch.float32
    logit, semantic = D(img, _cond(3))
    assert logit.shape == (3,) and semantic.shape == (3, COND)


@pytest.mark.parametrize("form", FORMS)
def test_conditioning_changes_the_output_and_gets_gradients(form):
    torch.manual_seed(0)
    G = Generator(small_cfg(cond_form=form), 16, COND)
    z = torch.randn(2, 32)
    a = G(z, _cond(2, 1), noise_mode="const")
    b = G(z, _cond(2, 2), noise_mode="const")
    assert (a - b).abs().mean() > 1e-3 * a.abs().mean()
    assert torch.equal(a, G(z, _cond(2, 1), noise_mode="const"))
    a.square().mean().backward()
    # Every modulated layer, each ToRGB included, has its own condition network.
    layers = [m for m in G.modules() if type(m).__name__ == "ConditionalStyle"]
    assert len(layers) == 2 * 3 - 1 + 3  # convs (1 + 2 + 2) + one ToRGB per block (3)
    for layer in layers:
        grads = [p.grad for p in layer.parameters()]
        assert all(g is not None for g in grads)
        assert sum(float(g.abs().sum()) for g in grads) > 0


def test_noise_modes_truncation_and_style_mixing():
    torch.manual_seed(0)
    G = Generator(small_cfg(), 16, COND)
    for block in G.synthesis.blocks:
        for layer in (block.conv0, block.conv1):
            if layer is not None:
                layer.noise_strength.data.fill_(0.5)
    z, c = torch.randn(2, 32), _cond(2)
    assert not torch.equal(G(z, c), G(z, c))  # random noise
    assert torch.equal(G(z, c, noise_mode="const"), G(z, c, noise_mode="const"))
    assert not torch.equal(G(z, c, noise_mode="none"), G(z, c, noise_mode="const"))
    # psi = 0 collapses every z to w_avg.
    G.eval()
    z2 = torch.randn(2, 32)
    same = G(z, c, noise_mode="const", truncation_psi=0.0)
    assert torch.allclose(same, G(z2, c, noise_mode="const", truncation_psi=0.0), atol=1e-5)
    # w_avg tracks the mapping output only in training mode.
    G.train()
    before = G.mapping.w_avg.clone()
    G(z, c)
    assert not torch.equal(before, G.mapping.w_avg)
    torch.manual_seed(1)
    mixed = G(z, c, noise_mode="const", mixing_prob=1.0)
    assert mixed.shape == (2, 3, 16, 16)
    assert not torch.allclose(mixed, G(z, c, noise_mode="const"))


def test_modconv_implementations_agree():
    torch.manual_seed(0)
    x = torch.randn(3, 8, 8, 8)
    w = torch.randn(5, 8, 3, 3)
    s = torch.randn(3, 8)
    for up in (1, 2):
        for demod in (True, False):
            a = modulated_conv2d(x, w, s, demodulate=demod, up=up, impl="scale")
            b = modulated_conv2d(x, w, s, demodulate=demod, up=up, impl="grouped")
            assert a.shape == (3, 5, 8 * up, 8 * up)
            assert torch.allclose(a, b, atol=1e-4)
    # Demodulation: unit-variance input and weights give unit-variance output.
    out = modulated_conv2d(
        torch.randn(4, 64, 16, 16), torch.randn(32, 64, 3, 3), torch.randn(4, 64)
    )
    assert out.std().item() == pytest.approx(1.0, abs=0.1)
    G = Generator(small_cfg(), 16, COND)
    z, c = torch.randn(2, 32), _cond(2)
    ref = G(z, c, noise_mode="const")
    G.set_modconv("grouped")
    assert torch.allclose(ref, G(z, c, noise_mode="const"), atol=1e-4)


def _naive_upfirdn(x, up, down, pad, gain):
    n, c, h, w = x.shape
    y = torch.zeros(n, c, h * up, w * up)
    y[:, :, ::up, ::up] = x
    y = F.pad(y, list(pad))
    f = torch.tensor(FIR_TAPS)
    f2 = torch.outer(f, f) / f.sum() ** 2 * gain
    y = F.conv2d(y, f2.flip([0, 1]).expand(c, 1, 4, 4).contiguous(), groups=c)
    return y[:, :, ::down, ::down]


def test_fir_resampling_matches_direct_2d_filter():
    x = torch.randn(2, 3, 8, 8)
    assert torch.allclose(upsample2d(x), _naive_upfirdn(x, 2, 1, (2, 1, 2, 1), 4.0), atol=1e-5)
    assert torch.allclose(downsample2d(x), _naive_upfirdn(x, 1, 2, (1, 1, 1, 1), 1.0), atol=1e-5)
    # bfloat16 takes a different (dense conv + slicing) path for decimation.
    low = downsample2d(x.bfloat16()).float()
    assert torch.allclose(low, downsample2d(x), atol=0.05)
    flat = upsample2d(torch.ones(1, 1, 8, 8))
    assert torch.allclose(flat[..., 2:-2, 2:-2], torch.ones(1, 1, 12, 12))  # DC gain 1


def _direct_parts(D, img):
    h = D.features(img)
    return D.f_d(h).squeeze(1), D.f_s(h)


def test_eq4_per_sample_logit():
    torch.manual_seed(0)
    D = Discriminator(small_cfg(), 16, COND)
    img, cond = torch.randn(4, 3, 16, 16), _cond(4)
    logit, semantic = D(img, cond)
    f_d, f_s = _direct_parts(D, img)
    assert torch.allclose(semantic, f_s, atol=1e-6)
    expected = torch.stack([f_d[i] + torch.dot(cond[i], f_s[i]) for i in range(4)])
    assert torch.allclose(logit, expected, atol=1e-5)
    # Changing one sample's condition changes only that sample's logit.
    cond2 = cond.clone()
    cond2[1] = -cond2[1]
    shift = D(img, cond2)[0] - logit
    assert shift[1].abs() > 1e-4 and torch.allclose(shift[[0, 2, 3]], torch.zeros(3), atol=1e-5)


def test_eq4_batch_sum_and_normalised_and_headless_variants():
    torch.manual_seed(0)
    D = Discriminator(small_cfg(d_semantic="batch-sum"), 16, COND)
    img, cond = torch.randn(4, 3, 16, 16), _cond(4)
    logit, _ = D(img, cond)
    f_d, f_s = _direct_parts(D, img)
    assert torch.allclose(logit, f_d + (cond * f_s).sum(), atol=1e-5)
    # Official quirk: flipping one condition shifts every logit by the same amount.
    cond2 = cond.clone()
    cond2[1] = -cond2[1]
    shift = D(img, cond2)[0] - logit
    assert shift.abs().min() > 1e-4 and torch.allclose(shift, shift[0].expand(4), atol=1e-5)

    torch.manual_seed(0)
    Dn = Discriminator(small_cfg(d_normalize_fs=True), 16, COND)
    logit, semantic = Dn(img, cond)
    f_d, f_s = _direct_parts(Dn, img)
    assert torch.allclose(semantic.norm(dim=1), torch.ones(4), atol=1e-5)
    assert torch.allclose(logit, f_d + (cond * F.normalize(f_s, dim=1)).sum(1), atol=1e-5)

    Dh = Discriminator(small_cfg(d_semantic_head=False), 16, COND)
    assert Dh.f_s is None
    logit, semantic = Dh(img, cond)
    assert torch.equal(semantic, cond)
    assert torch.allclose(logit, Dh.f_d(Dh.features(img)).squeeze(1), atol=1e-6)


def test_minibatch_stddev_groups():
    x = torch.randn(8, 4, 4, 4)
    y = minibatch_stddev(x, 4)
    assert y.shape == (8, 5, 4, 4)
    # Group 0 holds samples 0, 2, 4, 6 (StyleGAN2's strided grouping).
    expected = x[0::2].std(dim=0, unbiased=False).mean()
    assert y[0, 4, 0, 0].item() == pytest.approx(expected.item(), rel=1e-4)
    assert minibatch_stddev(torch.randn(6, 4, 4, 4), 4).shape == (6, 5, 4, 4)  # group 2


def test_bf16_autocast_channels_last_matches_fp32():
    torch.manual_seed(0)
    G = Generator(small_cfg(), 32, COND)
    D = Discriminator(small_cfg(), 32, COND)
    z, c = torch.randn(4, 32), _cond(4)
    ref = G(z, c, noise_mode="const")
    ref_logit, _ = D(ref, c)
    G.set_channels_last(True)
    D.set_channels_last(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        img = G(z, c, noise_mode="const")
        logit, semantic = D(img, c)
    assert img.dtype == torch.float32 and logit.dtype == torch.float32
    assert (img - ref).abs().mean() < 0.05 * ref.abs().mean()
    assert torch.allclose(logit, ref_logit, atol=0.1 * ref_logit.abs().max().item() + 0.05)
    (logit.sum() + semantic.sum()).backward()
    assert G.synthesis.blocks[0].const.grad is not None


def test_bad_resolution_is_a_user_error():
    with pytest.raises(UserError, match="data.resolution"):
        Generator(small_cfg(), 48, COND)
    with pytest.raises(UserError, match="data.resolution"):
        Discriminator(small_cfg(), 8, COND)


def test_parameter_counts_at_256_official_form():
    # The official networks at 256x256, f_dim 512 (official-lafite.md 2.3).
    cfg = ModelConfig(cond_form="official")
    assert count_parameters(Generator(cfg, 256, 512)) == 44_997_026
    assert count_parameters(Discriminator(cfg, 256, 512)) == 29_126_785
    # RoBERTa-sized conditions (Table 6): the official counts as well.
    assert count_parameters(Generator(cfg, 256, 768)) == 50_897_826
    assert count_parameters(Discriminator(cfg, 256, 1024)) == 29_389_441


@pytest.mark.parametrize("form", FORMS)
def test_condition_mlp_learning_rate_multiplier(form):
    """model.cond_lr_mult sets the multiplier of every condition MLP, and nothing else: the same
    seed gives the same function, and a step moves the MLP's effective weights mult^2 as far
    (equalised learning rate)."""
    outputs, effective_steps = [], []
    for mult in (0.01, 1.0):
        torch.manual_seed(0)
        G = Generator(small_cfg(cond_form=form, cond_lr_mult=mult), 16, COND)
        mlps = [m for m in G.modules() if type(m).__name__ == "ConditionMLP"]
        assert mlps and all(fc.weight_gain == pytest.approx(mult / fc.in_features**0.5)
                            for mlp in mlps for fc in mlp)
        others = [m for m in G.modules() if type(m).__name__ == "FullyConnected"
                  and not any(m is fc for mlp in mlps for fc in mlp)]
        assert all(m.weight_gain * m.in_features**0.5 in (1.0, 0.01) for m in others)
        z = torch.randn(2, 32, generator=torch.Generator().manual_seed(3))
        out = G(z, _cond(2, 1), noise_mode="const")
        outputs.append(out)
        out.square().mean().backward()
        fc = mlps[0][0]
        # An SGD step of lr on the stored weight moves the effective weight by lr * gain * grad
        # (computed, not applied: the stored weights at mult 0.01 are ~100, too big for float32
        # to show the step).
        effective_steps.append(float((1e-3 * fc.weight.grad * fc.weight_gain).abs().sum()))
    assert torch.allclose(outputs[0], outputs[1], atol=1e-4)
    # Effective step scales with mult^2: 1.0 moves the condition MLP 10^4 times as far.
    assert effective_steps[1] == pytest.approx(effective_steps[0] * 1e4, rel=1e-3)
