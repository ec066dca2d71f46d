"""The fast paths of the training step compute what the plain computation computes.

Speed is measured by bench/bench_train.py; here only correctness: the resampling filter with its
own derivatives (used twice over by R1 and path length), the stacked real/fake discriminator
pass, the official fp16 switch's clamp, the data-loader workers and the allocator setting.
"""

import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from lafite import distributed as ddp
from lafite.config import ModelConfig
from lafite.model import Discriminator, Generator
from lafite.model import layers as L

sys.path.insert(0, str(Path(__file__).parent))
from _train_smoke import smoke_config, tiny_clip  # noqa: E402

torch.set_num_threads(1)


def _plain_fir(x, down, padding):
    """upfirdn2d (no upsampling) with autograd's own grouped convolutions."""
    c = x.shape[1]
    x = F.pad(x, list(padding))
    kx = L._fir_kernel(x, L.FIR_TAPS, 1.0, horizontal=True)
    ky = L._fir_kernel(x, L.FIR_TAPS, 1.0, horizontal=False)
    x = F.conv2d(x, kx, stride=(1, down), groups=c)
    return F.conv2d(x, ky, stride=(down, 1), groups=c)


@pytest.mark.parametrize("down", [1, 2])
@pytest.mark.parametrize("fmt", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("padding", [(2, 1, 2, 1), (1, 1, 1, 1), (1, 2, 0, 1)])
def test_fir_filter_and_its_first_and_second_derivatives_match_autograd(down, fmt, padding):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 9, 10, dtype=torch.float64).contiguous(memory_format=fmt)
    x.requires_grad_(True)

    def fast(t):
        return L.upfirdn2d(t, L.FIR_TAPS, down=down, padding=padding)

    assert torch.autograd.gradcheck(fast, (x,))
    assert torch.autograd.gradgradcheck(fast, (x,))
    y1, y2 = fast(x), _plain_fir(x, down, padding)
    torch.testing.assert_close(y1, y2, rtol=0, atol=1e-12)
    (g1,) = torch.autograd.grad(y1.square().sum(), x, create_graph=True)
    (g2,) = torch.autograd.grad(y2.square().sum(), x, create_graph=True)
    torch.testing.assert_close(g1, g2, rtol=0, atol=1e-12)
    assert g1.is_contiguous(memory_format=fmt)
    (h1,) = torch.autograd.grad(g1.square().sum(), x)
    (h2,) = torch.autograd.grad(g2.square().sum(), x)
    torch.testing.assert_close(h1, h2, rtol=0, atol=1e-12)


def test_r1_gradient_through_the_discriminator_matches_the_plain_filter(monkeypatch):
    cfg = ModelConfig(channel_base=256, channel_max=16, mbstd_group=2)
    torch.manual_seed(0)
    D = Discriminator(cfg, 16, 8).double()
    x = torch.randn(4, 3, 16, 16, dtype=torch.float64, requires_grad=True)
    cond = F.normalize(torch.randn(4, 8, dtype=torch.float64), dim=1)

    def r1_grads():
        D.zero_grad(set_to_none=True)
        logit, _ = D(x, cond)
        (g,) = torch.autograd.grad(logit.sum(), x, create_graph=True)
        g.square().sum().backward()
        return [p.grad.clone() for p in D.parameters() if p.grad is not None]

    fast = r1_grads()
    monkeypatch.setattr(L, "_depthwise", lambda t, k, s: F.conv2d(t, k, stride=s, groups=t.shape[1]))
    plain = r1_grads()
    for a, b in zip(fast, plain, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("semantic", ["per-sample", "batch-sum"])
def test_stacked_real_and_fake_pass_gives_the_separate_passes_logits(semantic):
    cfg = ModelConfig(channel_base=256, channel_max=16, mbstd_group=2, d_semantic=semantic)
    torch.manual_seed(0)
    D = Discriminator(cfg, 16, 8).double()
    real, fake = torch.randn(2, 4, 3, 16, 16, dtype=torch.float64)
    cond = F.normalize(torch.randn(4, 8, dtype=torch.float64), dim=1)
    logits, sem = D(torch.cat([real, fake]), torch.cat([cond, cond]), chunks=2)
    real_logit, real_sem = D(real, cond)
    fake_logit, fake_sem = D(fake, cond)
    torch.testing.assert_close(logits, torch.cat([real_logit, fake_logit]), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(sem, torch.cat([real_sem, fake_sem]), rtol=1e-12, atol=1e-12)


def _runner(cfg, clip, seed=0):
    from lafite.train import StepRunner

    torch.manual_seed(seed)
    G = Generator(cfg.model, cfg.data.resolution, clip.dim)
    D = Discriminator(cfg.model, cfg.data.resolution, clip.dim)
    ctx = ddp.DistContext(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    return StepRunner(cfg, G, D, clip, ctx, torch.Generator().manual_seed(seed))


def test_step_with_stacked_discriminator_pass_matches_the_two_pass_step():
    cfg = smoke_config(**{"loss.pl_weight": 2.0, "loss.pl_interval": 2})
    clip = tiny_clip()
    torch.manual_seed(1)
    images = torch.rand(4, 3, 16, 16) * 2 - 1
    cond = F.normalize(torch.randn(4, clip.dim), dim=1)
    results = []
    for stacked in (True, False):
        runner = _runner(cfg, clip)
        runner.stack_real_fake = stacked
        torch.manual_seed(2)
        terms = [runner.iteration(step, images, cond, step * 4) for step in range(2)]
        results.append((terms, runner.D.state_dict(), runner.G.state_dict()))
    (t1, d1, g1), (t2, d2, g2) = results
    for a, b in zip(t1, t2, strict=True):
        for phase in a:
            for name in a[phase]:
                torch.testing.assert_close(a[phase][name], b[phase][name], rtol=1e-4, atol=1e-5)
    for k in d1:
        torch.testing.assert_close(d1[k], d2[k], rtol=1e-4, atol=1e-5)
    for k in g1:
        torch.testing.assert_close(g1[k], g2[k], rtol=1e-4, atol=1e-5)


def test_official_fp16_switch_marks_the_highest_blocks_and_clamps():
    cfg = ModelConfig(channel_base=256, channel_max=16)
    G = Generator(cfg, 64, 8).set_fp16(4, 256.0)
    assert [b.fp16 for b in G.synthesis.blocks] == [False, True, True, True, True]
    D = Discriminator(cfg, 64, 8).set_fp16(4, 256.0)
    assert [b.fp16 for b in D.blocks] == [True, True, True, True]
    assert all(m.conv_clamp == 256.0 for m in D.modules() if isinstance(m, L.Conv2dLayer))
    G.set_fp16(0, 256.0)
    assert not any(b.fp16 for b in G.synthesis.blocks)
    # On the CPU the fp16 blocks run in fp32; a clamp far above the activations changes nothing.
    torch.manual_seed(0)
    z, c = torch.randn(2, cfg.z_dim), torch.randn(2, 8)
    ref = G(z, c, noise_mode="const")
    G.set_fp16(2, 1e6)
    torch.testing.assert_close(G(z, c, noise_mode="const"), ref)
    G.set_fp16(2, 1e-3)
    x = torch.randn(2, 16, 8, 8) * 10
    layer = G.synthesis.blocks[1].conv1
    out = layer(x, torch.randn(2, cfg.w_dim), c, "none")
    assert out.abs().max() <= 1e-3 + 1e-9


def test_fp16_prenormalisation_leaves_the_demodulated_result_unchanged():
    torch.manual_seed(0)
    x = torch.randn(2, 8, 6, 6)
    w = torch.randn(4, 8, 3, 3) * 30
    s = torch.randn(2, 8) * 50
    ref = L.modulated_conv2d(x.double(), w.double(), s.double())
    try:
        half = L.modulated_conv2d(x.half(), w, s)
    except RuntimeError:  # no fp16 convolution on this CPU build
        pytest.skip("fp16 convolution not available on this CPU")
    torch.testing.assert_close(half.double(), ref, rtol=2e-2, atol=2e-2)


def test_data_loader_workers_give_the_in_process_images(tmp_path):
    from lafite.train import GlobalBatchSampler, TrainingImages, _StepImages

    class Tiny:
        def image(self, i):
            return torch.full((3, 4, 4), i, dtype=torch.uint8)

    images = TrainingImages(Tiny(), 10, mirror=True)
    sampler = GlobalBatchSampler(len(images), seed=3)
    steps = _StepImages(images, sampler, 4, rank=1, world_size=2)
    loader = torch.utils.data.DataLoader(steps, sampler=range(3, 7), batch_size=None,
                                         num_workers=1)
    for step, batch in loader:
        expected = images.batch(sampler.take(step * 4, 4)[1::2])
        assert torch.equal(batch, expected)


def test_retaining_freed_memory_is_idempotent():
    first = ddp.retain_freed_memory()
    assert ddp.retain_freed_memory() == first
    if sys.platform.startswith("linux"):
        import ctypes

        try:
            ctypes.CDLL("libc.so.6").mallopt  # noqa: B018
        except (OSError, AttributeError):
            return
        assert first


def test_strided_conv_with_nchw_weight_gradient_is_twice_differentiable():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 9, 9, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)
    w = torch.randn(3, 3, 3, 3, dtype=torch.float64, requires_grad=True)

    def fast(a, b):
        return L._StridedConv.apply(a, b, 2, False)

    def fast_t(a, b):
        return L._StridedConv.apply(a, b.transpose(0, 1), 2, True)

    for fn in (fast, fast_t):
        assert torch.autograd.gradcheck(fn, (x, w))
        assert torch.autograd.gradgradcheck(fn, (x, w))
    torch.testing.assert_close(fast(x, w), F.conv2d(x, w, stride=2))
    torch.testing.assert_close(fast_t(x, w),
                               F.conv_transpose2d(x, w.transpose(0, 1), stride=2))


def test_channels_last_discriminator_r1_matches_the_plain_layers(monkeypatch):
    cfg = ModelConfig(channel_base=512, channel_max=32, mbstd_group=2)
    torch.manual_seed(0)
    D = Discriminator(cfg, 16, 8).set_channels_last(True)
    x = torch.randn(4, 3, 16, 16).contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)
    cond = F.normalize(torch.randn(4, 8), dim=1)

    def grads():
        D.zero_grad(set_to_none=True)
        logit, _ = D(x, cond)
        (g,) = torch.autograd.grad(logit.sum(), x, create_graph=True)
        (g.square().sum() + logit.sum()).backward()
        return [p.grad.clone() for p in D.parameters() if p.grad is not None]

    calls = []
    real = L._StridedConv.apply
    monkeypatch.setattr(L._StridedConv, "apply", lambda *a: calls.append(1) or real(*a))
    fast = grads()
    assert calls, "the strided convolutions took the plain path"
    monkeypatch.setattr(L, "_strided_conv", lambda t, w, s: F.conv2d(t, w, stride=s))
    monkeypatch.setattr(L, "_depthwise", lambda t, k, s: F.conv2d(t, k, stride=s, groups=t.shape[1]))
    plain = grads()
    for a, b in zip(fast, plain, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_channels_last_generator_path_length_matches_the_plain_layers(monkeypatch):
    from lafite import losses

    cfg = ModelConfig(z_dim=8, w_dim=8, channel_base=256, channel_max=16, cond_dim=8)
    torch.manual_seed(0)
    G = Generator(cfg, 16, 8).set_channels_last(True)
    z, cond = torch.randn(2, 8), F.normalize(torch.randn(2, 8), dim=1)

    def grads():
        G.zero_grad(set_to_none=True)
        torch.manual_seed(1)
        reg, _ = losses.path_length_penalty(G, z, cond, 0.0, 2.0)
        reg["total"].backward()
        return [p.grad.clone() for p in G.parameters() if p.grad is not None]

    calls = []
    real = L._StridedConv.apply
    monkeypatch.setattr(L._StridedConv, "apply", lambda *a: calls.append(1) or real(*a))
    fast = grads()
    assert calls, "the transposed convolutions took the plain path"
    monkeypatch.setattr(L, "_transposed_conv", lambda t, w, s: F.conv_transpose2d(t, w, stride=s))
    monkeypatch.setattr(L, "_depthwise", lambda t, k, s: F.conv2d(t, k, stride=s, groups=t.shape[1]))
    plain = grads()
    for a, b in zip(fast, plain, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
