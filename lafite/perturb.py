"""Pseudo text features (paper section 3.1): the condition h' a language-free run trains on.

- :func:`gaussian`: Eq. 1, h~ = f + xi * eps * |f| / |eps|, h' = h~ / |h~| (LAFITE_G).
- :func:`official_mix`: the official code's convex mix normalize((1 - mix) f^ + mix eps^); for a
  unit f this is Eq. 1 with xi = mix / (1 - mix) (mix 0.75 -> xi 3), see official-lafite.md 3.1.
- :class:`InferenceModel`: Eq. 2, h~ = f + r1(f) + eps * exp(r2(f)) (LAFITE_NN), trained by
  :func:`train_inference_model` to maximise cos(h', h) on paired image/text features.
- :class:`ConditionMaker`: per training step, the condition of each sample: the pseudo text
  feature (always in language-free training, never in supervised training, for the images
  without captions in semi-supervised training), otherwise the (optionally perturbed) real text
  feature.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lafite.config import PerturbConfig
from lafite.errors import ConfigError, UserError


def gaussian(f: torch.Tensor, xi: float, eps: torch.Tensor) -> torch.Tensor:
    """Eq. 1: perturb f with noise of norm xi * |f| in a random direction, then normalise.

    The noise is rescaled to the feature's norm ("adaptive"), so xi alone sets the expected
    angle: for unit f in d dimensions cos(h', f) ~= 1 / sqrt(1 + xi^2) up to O(1/sqrt(d)).
    """
    f = f.float()
    eps = eps.float()
    noise = eps * (f.norm(dim=-1, keepdim=True) / eps.norm(dim=-1, keepdim=True).clamp_min(1e-12))
    return F.normalize(f + xi * noise, dim=-1)


def official_mix(f: torch.Tensor, mix: float, eps: torch.Tensor) -> torch.Tensor:
    """The official perturbation normalize((1 - mix) f^ + mix eps^) (== Eq. 1 with xi = mix/(1-mix))."""
    mixed = (1.0 - mix) * F.normalize(f.float(), dim=-1) + mix * F.normalize(eps.float(), dim=-1)
    return F.normalize(mixed, dim=-1)


def _branch(dim: int, hidden: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(dim, hidden),
        nn.LeakyReLU(0.01),
        nn.Linear(hidden, hidden),
        nn.LeakyReLU(0.01),
        nn.Linear(hidden, hidden),
        nn.LeakyReLU(0.01),
        nn.Linear(hidden, dim),
    )


class InferenceModel(nn.Module):
    """Eq. 2's r1 (noise mean) and r2 (log noise std), 4 FC layers each.

    Widths dim -> 2 dim -> 2 dim -> 2 dim -> dim (512 -> 1024 -> ... -> 512 for CLIP ViT-B/32,
    the official ``Model``). r2's output bias starts at log(1/sqrt(dim)) so the initial noise
    has about unit norm, like the feature, instead of sqrt(dim) times it.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim
        self.r1 = _branch(dim, 2 * dim)
        self.r2 = _branch(dim, 2 * dim)
        with torch.no_grad():
            self.r2[-1].bias.fill_(-0.5 * math.log(dim))

    def forward(self, f: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """h' = normalize(f + r1(f) + eps * exp(r2(f)))."""
        f = f.float()
        h = f + self.r1(f) + eps.float() * torch.exp(self.r2(f))
        return F.normalize(h, dim=-1)


def train_inference_model(
    image_feats: torch.Tensor,
    text_feats: torch.Tensor,
    *,
    steps: int = 2000,
    batch: int = 256,
    lr: float = 1e-3,
    seed: int = 0,
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> tuple[InferenceModel, dict[str, float]]:
    """Fit Eq. 2 on paired features by maximising the mean cos(h', h) (Adam).

    ``image_feats[i]`` and ``text_feats[i]`` are one pair (repeat an image's feature for each of
    its captions). Returns the model (eval mode, on CPU) and a summary with the mean cosine of
    the first and last 50 steps, so a caller can check it learned.
    """
    if image_feats.ndim != 2 or image_feats.shape != text_feats.shape:
        raise UserError(
            "train_inference_model: image and text features must be paired (M, dim) arrays, got "
            f"{tuple(image_feats.shape)} and {tuple(text_feats.shape)}"
        )
    gen = torch.Generator().manual_seed(seed)
    torch_device = torch.device(device)
    with torch.random.fork_rng(devices=[]):
        # Initialise from the seed without disturbing the caller's global RNG stream.
        torch.manual_seed(seed)
        model = InferenceModel(image_feats.shape[1])
    model.to(torch_device).train()
    img = F.normalize(image_feats.float(), dim=-1)
    txt = F.normalize(text_feats.float(), dim=-1)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    cosines: list[float] = []
    iterator: Any = range(steps)
    if progress:
        from rich.progress import track

        iterator = track(iterator, description="inference model")
    for _ in iterator:
        idx = torch.randint(0, img.shape[0], (min(batch, img.shape[0]),), generator=gen)
        eps = torch.randn((idx.numel(), img.shape[1]), generator=gen)
        h_fake = model(img[idx].to(torch_device), eps.to(torch_device))
        cos = (h_fake * txt[idx].to(torch_device)).sum(dim=-1).mean()
        opt.zero_grad(set_to_none=True)
        (-cos).backward()
        opt.step()
        cosines.append(float(cos.detach()))
    model.cpu().eval()
    window = max(1, min(50, len(cosines)))
    summary = {
        "cos_first": sum(cosines[:window]) / window if cosines else float("nan"),
        "cos_last": sum(cosines[-window:]) / window if cosines else float("nan"),
        "steps": float(steps),
    }
    return model, summary


def save_inference_model(model: InferenceModel, path: str | Path) -> Path:
    """Write the model atomically (temp file + rename); loadable with weights_only=True."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"dim": model.dim, "state_dict": model.state_dict()}, tmp)
    tmp.replace(path)
    return path


def load_inference_model(path: str | Path, device: str | torch.device = "cpu") -> InferenceModel:
    """Read a model written by :func:`save_inference_model` (``torch.load(weights_only=True)``)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(
            f"inference model file {path} does not exist: build its job first "
            "(the perturb.nn_job named in the spec)"
        )
    try:
        blob = torch.load(path, map_location=device, weights_only=True)
        model = InferenceModel(int(blob["dim"]))
        model.load_state_dict(blob["state_dict"])
    except Exception as exc:  # torch.load raises several unrelated types for bad files
        raise UserError(
            f"inference model file {path} is corrupt or not an inference model ({exc}); "
            "delete it and rebuild the job"
        ) from exc
    return model.to(device).eval()


class ConditionMaker:
    """Builds the per-sample condition h' of a training step from image and text features.

    ``__call__(img_feat, txt_feat, generator, paired)``: pseudo text features from ``img_feat``
    by ``cfg.kind``; each sample takes them with probability ``pseudo_probability`` (the
    official --mixing_prob, which the run's mode decides: 1 language-free, 0 supervised; one
    Bernoulli draw per sample in between), and every sample whose ``paired`` entry is False
    (semi-supervised: an image without its caption) takes them too; the others take their real
    text feature, perturbed by ``cfg.text_mix`` when non-zero (the official 0.1). With
    ``cfg.share_noise`` the text perturbation reuses the pseudo feature's noise draw (the
    official code). All randomness comes from ``generator`` so a step is reproducible.

    Unpaired images of a semi-supervised run get exactly the pseudo feature of language-free
    training, so that p = 0 is language-free training and p = 1 supervised training. (The
    official dataset stores normalize(0.25 f + 0.75 eps) as their "text" feature, which the loss
    then perturbs once more by text_mix; that second, small perturbation is not reproduced.)
    """

    def __init__(self, cfg: PerturbConfig, inference_model: InferenceModel | None = None,
                 pseudo_probability: float = 1.0) -> None:
        if cfg.kind == "nn" and inference_model is None:
            raise ConfigError(
                "perturb.kind is 'nn' but no inference model was given: set perturb.nn_job to an "
                "inference-model job, or use perturb.kind 'gaussian'"
            )
        if not 0.0 <= pseudo_probability <= 1.0:
            raise ConfigError(f"the pseudo-text probability must be in [0, 1], got {pseudo_probability}")
        if not 0.0 <= cfg.mix < 1.0 or not 0.0 <= cfg.text_mix < 1.0:
            raise ConfigError(
                f"'perturb.mix' and 'perturb.text_mix' must be in [0, 1), got {cfg.mix} and "
                f"{cfg.text_mix}"
            )
        if cfg.xi < 0:
            raise ConfigError(f"'perturb.xi' must be >= 0, got {cfg.xi}")
        self.cfg = cfg
        self.inference_model = inference_model
        self.pseudo_probability = pseudo_probability

    def pseudo(self, img_feat: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """Pseudo text features from image features and unit-Gaussian noise (Eq. 1 / Eq. 2)."""
        kind = self.cfg.kind
        if kind == "gaussian":
            return gaussian(img_feat, self.cfg.xi, eps)
        if kind == "official-mix":
            return official_mix(img_feat, self.cfg.mix, eps)
        if kind == "nn":
            assert self.inference_model is not None
            model = self.inference_model.to(img_feat.device)
            with torch.no_grad():
                return model(img_feat, eps)
        return F.normalize(img_feat.float(), dim=-1)

    def __call__(
        self,
        img_feat: torch.Tensor,
        txt_feat: torch.Tensor | None,
        generator: torch.Generator | None = None,
        paired: torch.Tensor | None = None,
    ) -> torch.Tensor:
        cfg = self.cfg
        n, dim = img_feat.shape
        eps = _randn((n, dim), generator, img_feat.device)
        probability = self.pseudo_probability
        if probability >= 1.0:
            return self.pseudo(img_feat, eps)
        if txt_feat is None:
            raise UserError(
                "this run trains on captions (mode supervised or semi-supervised) but has no "
                "caption features: give the dataset captions (a .txt per image), or use mode "
                "language-free"
            )
        text = F.normalize(txt_feat.float(), dim=-1)
        if cfg.text_mix > 0:
            eps_text = eps if cfg.share_noise else _randn((n, dim), generator, img_feat.device)
            text = official_mix(text, cfg.text_mix, eps_text)
        use_pseudo = torch.zeros(n, dtype=torch.bool, device=img_feat.device)
        if probability > 0.0:
            use_pseudo = _rand((n,), generator, img_feat.device) < probability
        if paired is not None:
            use_pseudo = use_pseudo | ~paired.to(img_feat.device)
        if not bool(use_pseudo.any()):
            return text
        return torch.where(use_pseudo.unsqueeze(1), self.pseudo(img_feat, eps), text)


def _randn(
    shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device
) -> torch.Tensor:
    gen_device = generator.device if generator is not None else device
    return torch.randn(shape, generator=generator, device=gen_device).to(device)


def _rand(
    shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device
) -> torch.Tensor:
    gen_device = generator.device if generator is not None else device
    return torch.rand(shape, generator=generator, device=gen_device).to(device)


__all__ = [
    "ConditionMaker",
    "InferenceModel",
    "gaussian",
    "load_inference_model",
    "official_mix",
    "save_inference_model",
    "train_inference_model",
]
