"""LAFITE's training objectives (Eqs. 5-9) and the StyleGAN2 machinery around them.

Everything here takes tensors (logits, features) and returns a dict of named scalar terms plus
``"total"``, the value to back-propagate, so training can log each term and name the one that
went NaN. Nothing here calls CLIP or the data.

Paper forms (defaults) and the official code's variants (official-lafite.md sections 3 and 8),
each a field of :class:`lafite.config.LossConfig`:

- ``logits``: ``"plain"`` softmax logits cos/tau (Eqs. 6-7) or ``"exp"`` exp(cos/tau), the
  official "exponential sharpening" that produced the printed numbers.
- ``reduction``: ``"sum"`` over the batch with the tau prefactor (Eqs. 5-7) or ``"mean"``
  without it (official). The official contrastive value also carries the constant ``-log tau``
  (it multiplies the softmax probability by tau inside the log); a constant has no gradient and
  is left out here, so official value = ours - log(tau).
- ``direction``: the official ``--lam``. 0 = for each text a softmax over the images (Eqs. 6-7),
  1 = for each image a softmax over the texts, in between ``lam * (image->text) + (1 - lam) *
  (text->image)``.
- ``gather``: negatives from the whole global batch. The caller passes all-gathered features whose
  own-rank slot is the live local tensor (``lafite.distributed.gather_keep_local``); the loss is
  then the global one and its gradient w.r.t. the local rows is exact. Averaging gradients over
  ranks divides that by the world size, which ``contrastive_scale = world_size`` undoes (the
  official code does not undo it).
- ``con_g`` / ``con_d``: switch L_ConG (lambda) and L_ConD (gamma) off.

In the generator loss L_ConD is computed on f_s of the generated images with their conditions
(the official reading of Eq. 9's "gamma L_ConD"); in the discriminator loss on real images' f_s.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from lafite.config import LossConfig
from lafite.errors import ConfigError

PL_DECAY = 0.01
PL_BATCH_SHRINK = 2


def _check_direction(direction: float) -> float:
    if not 0.0 <= direction <= 1.0:
        raise ConfigError(
            f"'loss.direction' must be in [0, 1] (0: softmax over images per text, the paper; "
            f"1: over texts per image), got {direction}"
        )
    return direction


def contrastive(a: torch.Tensor, b: torch.Tensor, cfg: LossConfig) -> torch.Tensor:
    """The contrastive loss of Eqs. 6-7 between image-side ``a`` and text-side ``b`` features.

    ``a[i]`` is f_s(x_i) (Eq. 6) or f_img(x'_i) (Eq. 7) and ``b[i]`` its condition h'_i. With the
    paper's settings: -tau * sum_i log( exp(cos(a_i, b_i)/tau) / sum_j exp(cos(a_j, b_i)/tau) ).
    See the module docstring for ``logits``, ``reduction``, ``direction``. Computed in float32.
    """
    direction = _check_direction(cfg.direction)
    tau = cfg.tau
    if tau <= 0:
        raise ConfigError(f"'loss.tau' must be > 0, got {tau}")
    cos = F.normalize(a.float(), dim=1) @ F.normalize(b.float(), dim=1).t()  # [image i, text j]
    logits = cos / tau
    if cfg.logits == "exp":
        logits = logits.exp()
    per_item = torch.zeros(cos.shape[0], device=cos.device)
    if direction < 1.0:
        # For each text j: softmax over the images i (column-wise), the paper's Eqs. 6-7.
        per_item = per_item - (1.0 - direction) * logits.log_softmax(dim=0).diagonal()
    if direction > 0.0:
        per_item = per_item - direction * logits.log_softmax(dim=1).diagonal()
    if cfg.reduction == "sum":
        return tau * per_item.sum()
    return per_item.mean()


def _reduce(values: torch.Tensor, reduction: str) -> torch.Tensor:
    return values.sum() if reduction == "sum" else values.mean()


def generator_loss(
    *,
    fake_logit: torch.Tensor,
    fake_semantic: torch.Tensor | None,
    clip_features: torch.Tensor | None,
    cond: torch.Tensor,
    cfg: LossConfig,
    contrastive_scale: float = 1.0,
) -> dict[str, torch.Tensor]:
    """Eq. 9: L_G + gamma * L_ConD(f_s(x'), h') + lambda * L_ConG(f_img(x'), h').

    L_G (Eq. 5) = sum_i -log sigmoid(D(x'_i, h'_i)) = sum_i softplus(-D). ``fake_semantic`` and
    ``clip_features`` may be None when their term is switched off (``con_d``/``con_g`` false or a
    zero weight). ``contrastive_scale`` multiplies both contrastive terms in the total (see
    ``gather``). Returned terms are unweighted; ``total`` is the weighted sum.
    """
    terms: dict[str, torch.Tensor] = {}
    terms["adv"] = _reduce(F.softplus(-fake_logit.float()), cfg.reduction)
    total = terms["adv"]
    if cfg.con_d and cfg.gamma != 0:
        if fake_semantic is None:
            raise ValueError("generator_loss: loss.con_d is on but fake_semantic is None")
        terms["con_d"] = contrastive(fake_semantic, cond, cfg)
        total = total + (contrastive_scale * cfg.gamma) * terms["con_d"]
    if cfg.con_g and cfg.lambda_ != 0:
        if clip_features is None:
            raise ValueError("generator_loss: loss.con_g is on but clip_features is None")
        terms["con_g"] = contrastive(clip_features, cond, cfg)
        total = total + (contrastive_scale * cfg.lambda_) * terms["con_g"]
    terms["total"] = total
    return terms


def discriminator_loss(
    *,
    real_logit: torch.Tensor,
    fake_logit: torch.Tensor,
    real_semantic: torch.Tensor | None,
    cond: torch.Tensor,
    cfg: LossConfig,
    contrastive_scale: float = 1.0,
) -> dict[str, torch.Tensor]:
    """Eq. 8: L_D + gamma * L_ConD(f_s(x), h') on real images.

    L_D (Eq. 5) = sum_i softplus(-D(x_i, h'_i)) + sum_i softplus(D(x'_i, h'_i)).
    """
    terms: dict[str, torch.Tensor] = {}
    terms["adv_real"] = _reduce(F.softplus(-real_logit.float()), cfg.reduction)
    terms["adv_fake"] = _reduce(F.softplus(fake_logit.float()), cfg.reduction)
    total = terms["adv_real"] + terms["adv_fake"]
    if cfg.con_d and cfg.gamma != 0:
        if real_semantic is None:
            raise ValueError("discriminator_loss: loss.con_d is on but real_semantic is None")
        terms["con_d"] = contrastive(real_semantic, cond, cfg)
        total = total + (contrastive_scale * cfg.gamma) * terms["con_d"]
    terms["total"] = total
    return terms


def r1_penalty(
    real_img: torch.Tensor,
    real_logit: torch.Tensor,
    r1_gamma: float,
    *,
    reduction: str = "mean",
    interval: int = 1,
) -> dict[str, torch.Tensor]:
    """R1: (r1_gamma / 2) * |d D(x, h') / d x|^2 on real images (``real_img`` requires grad).

    The gradient is taken of the logit (Eq. 4, semantic term included, as the official code).
    Reduced like the adversarial loss (``loss.reduction``) so the ratio of the two is the same
    in both forms; ``interval`` is the lazy-regularisation gain (pass ``loss.r1_interval`` when
    the penalty runs every that many steps, or multiply the total yourself).
    """
    (grad,) = torch.autograd.grad(
        outputs=real_logit.float().sum(), inputs=real_img, create_graph=True, only_inputs=True
    )
    grad_sq = grad.float().square().sum(dim=(1, 2, 3))
    penalty = _reduce(grad_sq, reduction) * (r1_gamma / 2)
    return {"r1_grad_sq": grad_sq.mean().detach(), "total": penalty * interval}


def path_length_penalty(
    G: nn.Module,
    z: torch.Tensor,
    cond: torch.Tensor,
    pl_mean: torch.Tensor | float,
    pl_weight: float,
    *,
    mixing_prob: float = 0.0,
    reduction: str = "mean",
    interval: int = 1,
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """StyleGAN2's path-length regulariser (not in the paper; off at ``pl_weight`` 0).

    Generates from ``z`` (give it the batch shrunk by ``PL_BATCH_SHRINK``) and penalises the
    deviation of |J_w^T y| (y ~ N(0, I) / sqrt(H W)) from its running mean, which decays by
    ``PL_DECAY``. Returns the terms and the updated running mean (a detached tensor).
    """
    ws = G.mapping(z)
    if mixing_prob > 0:
        ws = G.mix_styles(ws, z, mixing_prob)
    ws = ws.detach().requires_grad_(True) if not ws.requires_grad else ws
    img = G.synthesis(ws, cond)
    noise = torch.randn_like(img) / math.sqrt(img.shape[2] * img.shape[3])
    (grad,) = torch.autograd.grad(
        outputs=(img.float() * noise).sum(), inputs=ws, create_graph=True, only_inputs=True
    )
    lengths = grad.float().square().sum(dim=2).mean(dim=1).sqrt()
    mean = torch.as_tensor(pl_mean, dtype=torch.float32, device=lengths.device)
    new_mean = mean.lerp(lengths.mean().detach(), PL_DECAY)
    penalty = _reduce((lengths - new_mean).square(), reduction) * pl_weight
    return {"pl_length": lengths.mean().detach(), "total": penalty * interval}, new_mean


def ema_beta(batch: int, cur_nimg: int, ema_kimg: float, ema_rampup: float | None) -> float:
    """Decay of G's EMA this step: 0.5 ** (batch / ema_nimg), half-life ``ema_kimg`` thousand
    images, shortened to ``cur_nimg * ema_rampup`` early in training when the ramp-up is on."""
    ema_nimg = ema_kimg * 1000
    if ema_rampup is not None and ema_rampup > 0:
        ema_nimg = min(ema_nimg, cur_nimg * ema_rampup)
    return 0.5 ** (batch / max(ema_nimg, 1e-8))


@torch.no_grad()
def update_ema(G_ema: nn.Module, G: nn.Module, beta: float) -> None:
    """G_ema <- lerp(G, G_ema, beta) for parameters; buffers (w_avg, noise) are copied."""
    for p_ema, p in zip(G_ema.parameters(), G.parameters(), strict=True):
        p_ema.copy_(p.detach().lerp(p_ema, beta))
    for b_ema, b in zip(G_ema.buffers(), G.buffers(), strict=True):
        b_ema.copy_(b)


__all__ = [
    "PL_BATCH_SHRINK",
    "contrastive",
    "discriminator_loss",
    "ema_beta",
    "generator_loss",
    "path_length_penalty",
    "r1_penalty",
    "update_ema",
]
