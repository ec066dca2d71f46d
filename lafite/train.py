"""One LAFITE training run: data, CLIP features, G and D steps (Algorithm 1), checkpoints, DDP.

:func:`train_run` trains one :class:`~lafite.config.RunConfig` in ``run_dir`` and can be killed at
any moment: running it again resumes from ``run_dir/checkpoint.pt`` and, on the CPU with the same
seed, ends with exactly the weights an uninterrupted run ends with. That works because every
source of randomness is either a dedicated generator whose state is checkpointed (latent codes,
perturbation noise, caption choice, CLIP crops), a global RNG whose state is checkpointed (the
generator's noise inputs and style mixing draw from it), or the data order, which is a pure
function of (seed, epoch) plus a saved position. Sample grids and evaluations run with the RNGs
forked, so they do not shift the training stream.

Multi-process runs (``torchrun``) see the same global batch as a single process: every rank draws
the whole batch's indices and noise from the same generators and keeps the rows ``rank::world``
(strided, so that minibatch-standard-deviation groups are the same as in one process), and
gradients are averaged over ranks. With ``loss.gather`` the contrastive losses see the global
batch (see :func:`_gathered`).

Order of updates per iteration: ``train.update_order = "d-first"`` follows Algorithm 1 (update D
with Eq. 8, then G with Eq. 9); ``"g-first"`` is the official phase order (Gmain, Greg, Dmain,
Dreg). Lazy regularisation follows StyleGAN2: R1 every ``loss.r1_interval`` steps with gain equal
to the interval, path length every ``loss.pl_interval``, and Adam's lr and betas rescaled by
``interval / (interval + 1)`` for the network that has a regularisation phase (official-lafite.md
section 4: G lr 0.002, D lr 0.0025*16/17 with the official settings).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import math
import random
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

import lafite.losses as losses
from lafite import distributed as ddp
from lafite.checkpoint import (
    CHECKPOINT_NAME,
    capture_rng_states,
    load_checkpoint,
    restore_rng_states,
    save_atomic,
)
from lafite.config import RunConfig
from lafite.errors import UserError
from lafite.workspace import Workspace

CHECKPOINT_FORMAT = 1
GRID_SIZE = 16
# Config keys that may change between an interrupted run and its resumption: they change how
# long and how often, not what is trained.
_RESUMABLE_CHANGES = ("train.kimg", "train.checkpoint_kimg", "train.eval_kimg",
                      "train.log_every", "train.device")


class TrainingDiverged(UserError):
    """A loss term became NaN or infinite; the last good checkpoint is left as it was."""

    def __init__(self, step: int, term: str, value: float, checkpoint: Path | None):
        self.step, self.term, self.value = step, term, value
        kept = (f"the last good checkpoint {checkpoint} is kept" if checkpoint is not None
                else "no checkpoint had been written yet")
        super().__init__(
            f"training diverged at step {step}: loss term '{term}' is {value}; {kept}. "
            "Lower train.lr_g/train.lr_d, raise loss.r1_gamma, or try train.precision=fp32"
        )


def read_pretrained(path: Path) -> dict[str, Any]:
    """A pre-trained checkpoint to start from (fine-tuning) or to evaluate (zero-shot)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(
            f"pre-trained checkpoint {path} does not exist (train.init_checkpoint): give the "
            "path of a finished run's checkpoint.pt, or name a generator job in train.init_job"
        )
    saved = load_checkpoint(path, map_location="cpu")
    missing = [k for k in ("G", "D", "G_ema") if k not in saved]
    if missing:
        raise UserError(f"pre-trained checkpoint {path} holds no {', '.join(missing)} network")
    return saved


def check_condition_dim(saved: dict[str, Any], cond_dim: int, source: Path,
                        encoder: str) -> None:
    """A checkpoint made in another condition space (another encoder's f_dim) cannot be used."""
    theirs = saved.get("cond_dim")
    if theirs is not None and int(theirs) != int(cond_dim):
        was = RunConfig.from_dict(saved["config"], where=str(source)).encoder.name \
            if "config" in saved else "?"
        raise UserError(
            f"checkpoint {source} was trained with condition dimension {int(theirs)} (encoder "
            f"{was!r}); this run's encoder {encoder!r} gives dimension {int(cond_dim)}. A model "
            "conditions on one encoder's features: use a checkpoint of the same encoder"
        )


def load_matching(module: nn.Module, saved: dict[str, Any], name: str, source: Path,
                  load: bool = True) -> None:
    """Load ``saved[name]`` into ``module``, requiring the same tensors with the same shapes
    (``load=False`` only checks, e.g. against a module built on the meta device)."""
    own = module.state_dict()
    theirs = saved[name]
    for key, tensor in own.items():
        if key not in theirs:
            problem = "is missing there"
        elif tuple(theirs[key].shape) != tuple(tensor.shape):
            problem = (f"has shape {tuple(theirs[key].shape)} there and {tuple(tensor.shape)} in "
                       "this run")
        else:
            continue
        raise UserError(
            f"pre-trained checkpoint {source} holds another architecture: {name}.{key} "
            f"{problem}. The run's model.* settings, data.resolution and condition dimension "
            "(the CLIP or text encoder) must equal those of the pre-trained model"
        )
    extra = sorted(set(theirs) - set(own))
    if extra:
        raise UserError(
            f"pre-trained checkpoint {source} holds another architecture: {name}.{extra[0]} "
            "is not a tensor of this run's network. The run's model.* settings, data.resolution "
            "and condition dimension must equal those of the pre-trained model"
        )
    if load:
        module.load_state_dict(theirs)


@dataclass
class TrainCallbacks:
    """What a caller (the runner, a notebook, a test) hears from a training run.

    ``evaluate(G_ema, kimg)`` computes metrics (metrics/ owns them) and its dict goes to
    ``on_evaluate``. ``on_step(step)`` is called after every finished step and exists for
    callers that want to stop a run from outside (a test, a time budget): it may raise.
    """

    on_metrics: Callable[[float, dict[str, float]], None] | None = None
    on_evaluate: Callable[[float, dict[str, Any]], None] | None = None
    on_artifact: Callable[[Path], None] | None = None
    on_checkpoint: Callable[[Path], None] | None = None
    evaluate: Callable[[nn.Module, float], dict[str, Any]] | None = None
    on_step: Callable[[int], None] | None = None
    # Tags for the run's record (MLflow), e.g. the precision ``train.precision: auto`` resolved
    # to on this machine and why; called once per (re)start, on the main process.
    on_tags: Callable[[dict[str, str]], None] | None = None


@dataclass(frozen=True)
class TrainResult:
    final_checkpoint: Path
    kimg: float
    steps: int
    # The step the run resumed from (None: started fresh).
    resumed_from: int | None


# -- data order --------------------------------------------------------------------------------


class GlobalBatchSampler:
    """Endless seeded shuffle of ``n`` indices; its whole state is an integer position.

    Epoch ``e`` is the permutation drawn from ``seed`` and ``e``, so after a restart the order is
    rebuilt from the saved position without replaying anything.
    """

    def __init__(self, n: int, seed: int):
        if n <= 0:
            raise UserError("the training set is empty: check data.train_path / data.dataset")
        self.n, self.seed = n, seed
        self._epoch = -1
        self._perm = torch.empty(0, dtype=torch.long)

    def _permutation(self, epoch: int) -> torch.Tensor:
        if epoch != self._epoch:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perm, self._epoch = torch.randperm(self.n, generator=gen), epoch
        return self._perm

    def take(self, position: int, count: int) -> torch.Tensor:
        """Indices at positions ``[position, position + count)`` of the endless stream."""
        out = []
        while count > 0:
            epoch, offset = divmod(position, self.n)
            chunk = self._permutation(epoch)[offset : offset + count]
            out.append(chunk)
            position += len(chunk)
            count -= len(chunk)
        return torch.cat(out)


class TrainingImages:
    """Training images by index as uint8 NCHW, held in memory when small enough.

    ``mirror`` doubles the index space: index ``i >= n`` is image ``i - n`` flipped left-right
    (it shares the unflipped image's CLIP features, as in the official code).
    """

    IN_MEMORY_LIMIT = 2 << 30

    def __init__(self, dataset: Any, n: int, mirror: bool):
        self.dataset, self.n, self.mirror = dataset, n, mirror
        self._cache: torch.Tensor | None = None
        if n > 0:
            first = dataset.image(0)
            if n * first.numel() <= self.IN_MEMORY_LIMIT:
                self._cache = torch.stack([dataset.image(i) for i in range(n)])

    def __len__(self) -> int:
        return self.n * (2 if self.mirror else 1)

    def batch(self, indices: torch.Tensor) -> torch.Tensor:
        base = indices % self.n
        if self._cache is not None:
            images = self._cache[base]
        else:
            images = torch.stack([self.dataset.image(int(i)) for i in base])
        flip = indices >= self.n
        if bool(flip.any()):
            images = images.clone()
            images[flip] = images[flip].flip(-1)
        return images


class _StepImages(torch.utils.data.Dataset):
    """Item ``step``: this rank's uint8 real images of that step (what a DataLoader worker
    prepares ahead of the step; the order is the sampler's, a pure function of the step)."""

    def __init__(self, images: TrainingImages, sampler: GlobalBatchSampler, batch: int,
                 rank: int, world_size: int):
        self.images, self.sampler, self.batch = images, sampler, batch
        self.rank, self.world_size = rank, world_size

    def __getitem__(self, step: int) -> tuple[int, torch.Tensor]:
        indices = self.sampler.take(step * self.batch, self.batch)
        return step, self.images.batch(indices[self.rank :: self.world_size])


# -- the run state -----------------------------------------------------------------------------


@dataclass
class _State:
    step: int = 0
    cur_nimg: int = 0
    resumed_from: int | None = None
    finished: bool = False


def _total_steps(cfg: RunConfig) -> int:
    if cfg.mode == "zero-shot":
        return 0
    return max(1, math.ceil(cfg.train.kimg * 1000 / cfg.train.batch))


def _crossed(before_img: int, after_img: int, every_kimg: float) -> bool:
    """True when the interval boundary ``every_kimg`` was passed by this step."""
    if every_kimg <= 0:
        return False
    every = every_kimg * 1000
    return math.floor(after_img / every + 1e-9) > math.floor(before_img / every + 1e-9)


@contextlib.contextmanager
def _isolated_rng(device: torch.device) -> Iterator[None]:
    """Run a side task (sample grid, evaluation) without moving any training RNG stream."""
    saved = capture_rng_states()
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        try:
            yield
        finally:
            restore_rng_states(saved)


def _lazy_adam(params: Any, lr: float, interval: int, regularised: bool) -> torch.optim.Adam:
    """Adam with betas (0, 0.99), lr and betas rescaled for lazy regularisation (StyleGAN2)."""
    ratio = interval / (interval + 1) if regularised and interval > 0 else 1.0
    return torch.optim.Adam(params, lr=lr * ratio, betas=(0.0, 0.99**ratio), eps=1e-8)


def _config_differences(saved: dict[str, Any], cfg: RunConfig) -> list[str]:
    try:
        old = RunConfig.from_dict(saved, where="checkpoint config").flat()
    except UserError:
        return ["(the checkpoint's config no longer parses)"]
    new = cfg.flat()
    return sorted(k for k in set(old) | set(new)
                  if old.get(k) != new.get(k) and k not in _RESUMABLE_CHANGES
                  and not k.startswith("eval."))


def _save_grid(images: torch.Tensor, path: Path, columns: int) -> Path:
    """Save uint8 NCHW images as one PNG grid."""
    from PIL import Image

    n, c, h, w = images.shape
    rows = math.ceil(n / columns)
    canvas = torch.zeros(c, rows * h, columns * w, dtype=torch.uint8)
    for i in range(n):
        r, col = divmod(i, columns)
        canvas[:, r * h : (r + 1) * h, col * w : (col + 1) * w] = images[i]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.png")
    Image.fromarray(canvas.permute(1, 2, 0).numpy()).save(tmp)
    tmp.replace(path)
    return path


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Generator output in [-1, 1] → uint8 NCHW on the CPU."""
    return (images.detach().float() * 127.5 + 128).clamp(0, 255).to(torch.uint8).cpu()


# -- one iteration of Algorithm 1 ---------------------------------------------------------------


class StepRunner:
    """G, D, G_ema, their optimisers and one iteration of Algorithm 1 on a given batch.

    Separate from the data and checkpoint plumbing so that the benchmark times exactly the code
    that trains. Every draw it makes comes from ``noise`` (a CPU generator shared by all ranks,
    so ranks agree on the global batch's latent codes and crops) or from the global torch RNG
    (the generator's noise inputs and style mixing, which the networks draw themselves).
    """

    def __init__(self, cfg: RunConfig, G: nn.Module, D: nn.Module, clip: Any,
                 ctx: ddp.DistContext, noise: torch.Generator, precision: str | None = None):
        self.cfg, self.G, self.D, self.clip, self.ctx, self.noise = cfg, G, D, clip, ctx, noise
        self.device = ctx.device
        # The concrete precision (fp32, bf16, fp16); None: resolve train.precision here
        # (lafite.precision; the trainer passes the one pinned in the run's checkpoint).
        if precision is None:
            from lafite.precision import resolve

            precision = resolve(cfg, self.device).precision
        self.precision = precision
        self.autocast_dtype = torch.bfloat16 if precision == "bf16" else None
        if precision == "fp16":
            G.set_fp16(cfg.train.fp16_blocks, cfg.train.conv_clamp)
            D.set_fp16(cfg.train.fp16_blocks, cfg.train.conv_clamp)
        if self.device.type == "cpu":
            ddp.retain_freed_memory()
        self.G_ema = copy.deepcopy(G).eval().requires_grad_(False)
        # D sees real and generated images in one stacked pass (same logits, faster).
        self.stack_real_fake = True
        # The main passes may run compiled; R1 and path length differentiate twice, which
        # torch.compile does not support, so they always run the eager modules.
        self.G_main: nn.Module = G
        self.D_main: nn.Module = D
        if cfg.train.compile:
            self.G_main = torch.compile(G)
            self.D_main = torch.compile(D)
        loss = cfg.loss
        self.pl_on = loss.pl_weight > 0 and loss.pl_interval > 0
        self.r1_on = loss.r1_gamma > 0 and loss.r1_interval > 0
        self.opt_G = _lazy_adam(G.parameters(), cfg.train.lr_g, loss.pl_interval, self.pl_on)
        self.opt_D = _lazy_adam(D.parameters(), cfg.train.lr_d, loss.r1_interval, self.r1_on)
        self.pl_mean = torch.zeros([], device=self.device)
        self.ema_rampup = True
        # Gradients are summed over ranks for summed losses and averaged for averaged ones, so
        # that N processes follow one process on the same global batch.
        self.sum_gradients = loss.reduction == "sum"
        # A gathered contrastive loss is the global one on every rank; averaging divides its
        # exact gradient by the world size, which this gain undoes (lafite.losses docstring).
        gathered_mean = loss.gather and not self.sum_gradients
        self.contrastive_scale = float(ctx.world_size) if gathered_mean else 1.0

    # -- helpers -------------------------------------------------------------------------------
    def local(self, x: torch.Tensor) -> torch.Tensor:
        """This rank's rows of a global-batch tensor (strided: see the module docstring)."""
        return x[self.ctx.rank :: self.ctx.world_size]

    def _z(self, batch: int) -> torch.Tensor:
        z = torch.randn(batch, self.G.z_dim, generator=self.noise)
        return self.local(z).to(self.device)

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def _gathered(self, x: torch.Tensor | None) -> torch.Tensor | None:
        if x is None or not self.cfg.loss.gather:
            return x
        return ddp.gather_keep_local(x, self.ctx)

    def _sync(self, module: nn.Module) -> None:
        if not self.ctx.distributed:
            return
        ddp.average_gradients(module.parameters(), self.ctx)
        if self.sum_gradients:
            for p in module.parameters():
                if p.grad is not None:
                    p.grad.mul_(self.ctx.world_size)

    def _values(self, phase: str, terms: dict[str, torch.Tensor]) -> dict[str, float]:
        """Loss terms as one process on the global batch would report them.

        Summed terms add up over ranks, averaged ones average; a gathered contrastive term is
        already global. ``total`` is re-assembled from the terms in the same way.
        """
        world = self.ctx.world_size
        names = [n for n in terms if n != "total"]
        local = torch.stack([terms[n].detach().float().reshape(()) for n in [*names, "total"]])
        if self.ctx.distributed:
            summed = ddp.all_mean(local, self.ctx) * world
        else:
            summed = local
        values: dict[str, float] = {}
        global_per_rank = {"con_d", "con_g"} if self.cfg.loss.gather else set()
        diagnostic = {"r1_grad_sq", "pl_length"}
        for i, name in enumerate([*names, "total"]):
            value = float(summed[i])
            if name in global_per_rank or name in diagnostic or not self.sum_gradients:
                value /= world
            values[name] = value
        if self.ctx.distributed and phase in ("D", "G"):
            weights = {"adv": 1.0, "adv_real": 1.0, "adv_fake": 1.0,
                       "con_d": self.cfg.loss.gamma, "con_g": self.cfg.loss.lambda_}
            values["total"] = sum(weights.get(n, 0.0) * values[n] for n in names)
        return {f"{phase}/{n}": v for n, v in values.items()}

    # -- phases --------------------------------------------------------------------------------
    def d_phase(self, images: torch.Tensor, cond: torch.Tensor, regularise: bool) -> dict[str, Any]:
        """Eq. 8 on (local) real images and fakes; then R1 when ``regularise``. Returns terms."""
        out: dict[str, Any] = {"D": self.d_main(images, cond)}
        if regularise:
            out["R1"] = self.d_reg(images, cond)
        return out

    def d_main(self, images: torch.Tensor, cond: torch.Tensor) -> dict[str, torch.Tensor]:
        """D's update on Eq. 8 (real images and fakes of this phase's own z)."""
        cfg = self.cfg
        local_cond = self.local(cond)
        self.G.requires_grad_(False)
        self.D.requires_grad_(True)
        self.opt_D.zero_grad(set_to_none=True)
        z = self._z(len(cond))
        with self._autocast():
            with torch.no_grad():
                fake = self.G_main(z, local_cond, mixing_prob=cfg.loss.style_mixing)
            if self.stack_real_fake:
                n = len(images)
                both = torch.cat([images, fake.to(images.dtype)])
                logits, semantic = self.D_main(both, torch.cat([local_cond, local_cond]),
                                               chunks=2)
                real_logit, fake_logit, real_sem = logits[:n], logits[n:], semantic[:n]
            else:
                real_logit, real_sem = self.D_main(images, local_cond)
                fake_logit, _ = self.D_main(fake, local_cond)
        terms = losses.discriminator_loss(
            real_logit=real_logit.float(), fake_logit=fake_logit.float(),
            real_semantic=self._gathered(real_sem.float()), cond=self._gathered(local_cond),
            cfg=cfg.loss, contrastive_scale=self.contrastive_scale)
        terms["total"].backward()
        self._sync(self.D)
        self.opt_D.step()
        self.D.requires_grad_(False)
        return terms

    def d_reg(self, images: torch.Tensor, cond: torch.Tensor) -> dict[str, torch.Tensor]:
        """D's lazy R1 update (gain ``loss.r1_interval``) on the real images."""
        cfg = self.cfg
        local_cond = self.local(cond)
        self.G.requires_grad_(False)
        self.D.requires_grad_(True)
        self.opt_D.zero_grad(set_to_none=True)
        real = images.detach().requires_grad_(True)
        with self._autocast():
            logit, _ = self.D(real, local_cond)
        reg = losses.r1_penalty(real, logit.float(), cfg.loss.r1_gamma,
                                reduction=cfg.loss.reduction, interval=cfg.loss.r1_interval)
        reg["total"].backward()
        self._sync(self.D)
        self.opt_D.step()
        self.D.requires_grad_(False)
        return reg

    def g_phase(self, cond: torch.Tensor, regularise: bool) -> dict[str, Any]:
        """Eq. 9 on fakes (L_ConG on CLIP of a random crop); then path length when asked."""
        out: dict[str, Any] = {"G": self.g_main(cond)}
        if regularise:
            out["PL"] = self.g_reg(cond)
        return out

    def g_main(self, cond: torch.Tensor) -> dict[str, torch.Tensor]:
        """G's update on Eq. 9."""
        cfg = self.cfg
        local_cond = self.local(cond)
        self.G.requires_grad_(True)
        self.D.requires_grad_(False)
        self.opt_G.zero_grad(set_to_none=True)
        z = self._z(len(cond))
        with self._autocast():
            fake = self.G_main(z, local_cond, mixing_prob=cfg.loss.style_mixing)
            fake_logit, fake_sem = self.D_main(fake, local_cond)
            clip_feat = None
            if cfg.loss.con_g and cfg.loss.lambda_ != 0:
                clip_feat = self.clip.encode_generated(fake, cfg.clip.gen_crop_min,
                                                       generator=self.noise)
        terms = losses.generator_loss(
            fake_logit=fake_logit.float(), fake_semantic=self._gathered(fake_sem.float()),
            clip_features=self._gathered(None if clip_feat is None else clip_feat.float()),
            cond=self._gathered(local_cond), cfg=cfg.loss,
            contrastive_scale=self.contrastive_scale)
        terms["total"].backward()
        self._sync(self.G)
        self.opt_G.step()
        self.G.requires_grad_(False)
        return terms

    def g_reg(self, cond: torch.Tensor) -> dict[str, torch.Tensor]:
        """G's lazy path-length update (gain ``loss.pl_interval``) on half the batch."""
        cfg = self.cfg
        local_cond = self.local(cond)
        self.G.requires_grad_(True)
        self.D.requires_grad_(False)
        self.opt_G.zero_grad(set_to_none=True)
        global_half = max(self.ctx.world_size, len(cond) // losses.PL_BATCH_SHRINK)
        z = self._z(global_half)
        with self._autocast():
            reg, self.pl_mean = losses.path_length_penalty(
                self.G, z, local_cond[: len(z)], self.pl_mean, cfg.loss.pl_weight,
                mixing_prob=cfg.loss.style_mixing, reduction=cfg.loss.reduction,
                interval=cfg.loss.pl_interval)
        reg["total"].backward()
        self._sync(self.G)
        self.opt_G.step()
        self.G.requires_grad_(False)
        return reg

    def iteration(self, step: int, images: torch.Tensor, cond: torch.Tensor,
                  cur_nimg: int) -> dict[str, dict[str, torch.Tensor]]:
        """One iteration (both networks, lazy regularisation when due, EMA); returns terms."""
        cfg = self.cfg
        r1 = self.r1_on and step % cfg.loss.r1_interval == 0
        pl = self.pl_on and step % cfg.loss.pl_interval == 0
        out: dict[str, dict[str, torch.Tensor]] = {}
        if cfg.train.update_order == "d-first":
            out.update(self.d_phase(images, cond, r1))
            out.update(self.g_phase(cond, pl))
        else:
            out.update(self.g_phase(cond, pl))
            out.update(self.d_phase(images, cond, r1))
        beta = losses.ema_beta(cfg.train.batch, cur_nimg + cfg.train.batch, cfg.train.ema_kimg,
                               cfg.train.ema_rampup if self.ema_rampup else None)
        losses.update_ema(self.G_ema, self.G, beta)
        return out

    def check(self, step: int, out: dict[str, dict[str, torch.Tensor]],
              checkpoint: Path | None) -> dict[str, float]:
        """Global values of every term; :class:`TrainingDiverged` names a NaN/inf one."""
        values: dict[str, float] = {}
        for phase, terms in out.items():
            values.update(self._values(phase, terms))
        for name, value in values.items():
            if not math.isfinite(value):
                raise TrainingDiverged(step, name, value, checkpoint)
        return values


# -- the run -----------------------------------------------------------------------------------


@dataclass
class _Evaluated:
    """What the side tasks (sample grid, evaluation) read of a zero-shot run: its G_ema."""

    G_ema: nn.Module


class _Trainer:
    """Data, features, checkpoints and the schedule around a :class:`StepRunner`."""

    def __init__(self, cfg: RunConfig, run_dir: Path, workspace: Workspace,
                 callbacks: TrainCallbacks, clip: Any | None, init_checkpoint: Path | None,
                 inference_model: Any | None, captions: Path | None = None):
        self.cfg, self.run_dir, self.workspace = cfg, Path(run_dir), workspace
        self.callbacks = callbacks
        self.ctx = ddp.init_distributed(cfg.train.device)
        if cfg.train.batch % self.ctx.world_size:
            raise UserError(f"train.batch={cfg.train.batch} must be divisible by the number of "
                            f"processes ({self.ctx.world_size})")
        self.device = self.ctx.device
        self.checkpoint_path = self.run_dir / CHECKPOINT_NAME
        self.state = _State()
        self._clip_override, self._init_checkpoint = clip, init_checkpoint
        self._inference_model_override = inference_model
        self._captions = captions

    # -- setup ---------------------------------------------------------------------------------
    def _setup(self) -> None:
        from lafite.clip import FeatureCache, load_clip
        from lafite.data.datasets import open_dataset, training_captions
        from lafite.model import Discriminator, Generator
        from lafite.perturb import ConditionMaker

        cfg, device = self.cfg, self.device
        from lafite.encoders import load_text_encoder

        if self._clip_override is not None:
            self.clip = self._clip_override
        elif cfg.encoder.name == "clip":
            self.clip = load_clip(cfg.clip, self.workspace, cfg.data.resolution, device=device)
        else:  # a text-only encoder: no image side, hence supervised and without L_ConG
            self.clip = None
        # The encoder of the conditions: the CLIP, or the text-only encoder of encoder.name.
        self.text_encoder = load_text_encoder(cfg, self.workspace, clip=self.clip, device=device)
        self.use_text = cfg.uses_captions
        self.text_features = self.text_offsets = None

        def prepare_data() -> None:
            # data.captions_job / data.captions_file: the captioner's captions replace the
            # training split's own (Table 1's captioning baseline).
            captions = training_captions(cfg, self._captions)
            self.dataset = open_dataset(cfg, "train", self.workspace, captions=captions)
            cache = FeatureCache(self.workspace)
            self.image_features = None
            if self.clip is not None and cfg.encoder.name == "clip":
                self.image_features = cache.image_features(self.dataset, self.clip,
                                                           cfg.clip.real_crop)
            if self.use_text:
                self.text_features, self.text_offsets = cache.text_features(
                    self.dataset, self.text_encoder)

        # Rank 0 materialises the data and fills the feature cache; the others then read them.
        if self.ctx.is_main:
            prepare_data()
        ddp.barrier(self.ctx)
        if not self.ctx.is_main:
            prepare_data()
        if self.use_text and len(self.text_features) == 0:
            raise UserError(
                f"mode {cfg.mode!r} trains on captions, but the training images in "
                f"{self.dataset.root} have none (no .txt files): use mode language-free, or "
                "give each image a same-named .txt of captions"
            )
        self.n_images = len(self.dataset)
        self.images = TrainingImages(self.dataset, self.n_images, cfg.data.mirror)
        self.sampler = GlobalBatchSampler(len(self.images), cfg.train.seed)
        self.paired = self._paired_mask(self.n_images)

        if self.image_features is None and bool((np.diff(self.text_offsets) == 0).any()):
            raise UserError(
                f"encoder {cfg.encoder.name!r} conditions on captions only, but some training "
                f"images in {self.dataset.root} have none: give every image captions"
            )
        self.cond_dim = cfg.model.cond_features or int(self.text_encoder.dim)
        torch.manual_seed(cfg.train.seed)
        G = Generator(cfg.model, cfg.data.resolution, self.cond_dim).to(device)
        D = Discriminator(cfg.model, cfg.data.resolution, self.cond_dim).to(device)
        if cfg.train.channels_last:
            G.set_channels_last(True)
            D.set_channels_last(True)
        self.condition_maker = ConditionMaker(cfg.perturb, self._inference_model(),
                                              cfg.pseudo_text_probability)
        self.noise = torch.Generator()
        self.noise.manual_seed(cfg.train.seed)
        self.precision = self._resolve_precision()
        self.runner = StepRunner(cfg, G, D, self.clip, self.ctx, self.noise,
                                 precision=self.precision.precision)
        if self.ctx.is_main and self.callbacks.on_tags:
            self.callbacks.on_tags({"lafite.precision": self.precision.precision,
                                    "lafite.precision_reason": self.precision.reason[:500]})

    def _resolve_precision(self) -> Any:
        """The concrete precision of this run: the one pinned in its checkpoint when resuming
        (so that a run never changes precision halfway, whatever machine resumes it), else
        ``train.precision`` resolved here (lafite.precision); rank 0's answer for every rank."""
        from lafite.precision import Resolved, resolve

        pinned = None
        if self.checkpoint_path.exists():
            try:
                saved = torch.load(self.checkpoint_path, map_location="cpu", weights_only=True,
                                   mmap=True)
                if saved.get("precision"):
                    pinned = Resolved(str(saved["precision"]),
                                      str(saved.get("precision_reason", "")))
            except Exception:  # unreadable: _resume reports it
                pinned = None
        if pinned is None:
            resolved = resolve(self.cfg, self.device)
        else:
            resolved = pinned
            if self.cfg.train.precision == "auto":
                here = resolve(self.cfg, self.device)
                if here.precision != pinned.precision:
                    warnings.warn(
                        f"{self.checkpoint_path}: this run started in {pinned.precision} "
                        f"(train.precision auto on the machine it started on: {pinned.reason}) "
                        f"and resumes in {pinned.precision}; on this machine auto would choose "
                        f"{here.precision} ({here.reason})", stacklevel=2)
        return ddp.all_gather_objects(resolved, self.ctx)[0]

    def _inference_model(self) -> Any | None:
        if self.cfg.perturb.kind != "nn":
            return None
        if self._inference_model_override is not None:
            return self._inference_model_override.to(self.device)
        raise UserError(
            "perturb.kind='nn' needs the inference model of Eq. 2: name its job in "
            f"perturb.nn_job (now {self.cfg.perturb.nn_job!r}) and run through `lafite-repro run`, "
            "which builds it and passes it to training"
        )

    def _paired_mask(self, n: int) -> torch.Tensor:
        """Which images keep their captions: all of them, except in semi-supervised training,
        where a fraction ``data.paired_fraction`` does: the first of the sorted file list (the
        official --ratio) or a seeded random subset (``data.paired_split: random``)."""
        fraction = self.cfg.data.paired_fraction if self.cfg.mode == "semi-supervised" else 1.0
        if fraction >= 1.0:
            return torch.ones(n, dtype=torch.bool)
        count = int(round(fraction * n))
        mask = torch.zeros(n, dtype=torch.bool)
        if self.cfg.data.paired_split == "first":
            mask[:count] = True
        else:
            gen = torch.Generator().manual_seed(self.cfg.train.seed + 17)
            mask[torch.randperm(n, generator=gen)[:count]] = True
        return mask

    # -- checkpoints ---------------------------------------------------------------------------
    def _state_dict(self) -> dict[str, Any]:
        r = self.runner
        rng = ddp.all_gather_objects(capture_rng_states(), self.ctx)
        return {
            "format": CHECKPOINT_FORMAT,
            "config": self.cfg.to_dict(),
            "cond_dim": self.cond_dim,
            "resolution": self.cfg.data.resolution,
            "step": self.state.step,
            "cur_nimg": self.state.cur_nimg,
            "kimg": self.state.cur_nimg / 1000,
            "finished": self.state.finished,
            "G": r.G.state_dict(),
            "D": r.D.state_dict(),
            "G_ema": r.G_ema.state_dict(),
            "opt_G": r.opt_G.state_dict(),
            "opt_D": r.opt_D.state_dict(),
            "sampler": {"position": self.state.step * self.cfg.train.batch,
                        "n": len(self.images), "seed": self.cfg.train.seed},
            "noise_generator": self.noise.get_state(),
            "rng": rng,
            "world_size": self.ctx.world_size,
            "pl_mean": r.pl_mean.detach().cpu(),
            "ema_rampup": r.ema_rampup,
            # What train.precision resolved to when the run started (kept on resumption).
            "precision": self.precision.precision,
            "precision_reason": self.precision.reason,
        }

    def _write_checkpoint(self) -> None:
        state = self._state_dict()
        if self.ctx.is_main:
            save_atomic(state, self.checkpoint_path)
            if self.callbacks.on_checkpoint:
                self.callbacks.on_checkpoint(self.checkpoint_path)
        ddp.barrier(self.ctx)

    def _resume(self) -> bool:
        """Load ``run_dir/checkpoint.pt`` if present. Returns True when there was one."""
        if not self.checkpoint_path.exists():
            return False
        saved = load_checkpoint(self.checkpoint_path, map_location="cpu")
        check_condition_dim(saved, self.cond_dim, self.checkpoint_path, self.cfg.encoder.name)
        differences = _config_differences(saved["config"], self.cfg)
        if differences:
            raise UserError(
                f"{self.checkpoint_path} was written by a different configuration "
                f"(differs in: {', '.join(differences)}); use another run folder or delete it"
            )
        r = self.runner
        r.G.load_state_dict(saved["G"])
        r.D.load_state_dict(saved["D"])
        r.G_ema.load_state_dict(saved["G_ema"])
        r.opt_G.load_state_dict(saved["opt_G"])
        r.opt_D.load_state_dict(saved["opt_D"])
        r.pl_mean = saved["pl_mean"].to(self.device)
        r.ema_rampup = saved["ema_rampup"]
        self.noise.set_state(saved["noise_generator"])
        rng = saved["rng"]
        if len(rng) == self.ctx.world_size:
            restore_rng_states(rng[self.ctx.rank])
        else:
            warnings.warn(f"{self.checkpoint_path}: written by {len(rng)} processes, resumed by "
                          f"{self.ctx.world_size}; global RNG streams are reseeded", stacklevel=2)
            self._seed_global(saved["step"])
        self.state = _State(step=saved["step"], cur_nimg=saved["cur_nimg"],
                            resumed_from=saved["step"], finished=saved["finished"])
        return True

    def _init_source(self) -> Path | None:
        """The pre-trained checkpoint this run starts from, or None (from scratch)."""
        cfg = self.cfg
        if cfg.train.init_checkpoint:
            return Path(cfg.train.init_checkpoint)
        if not cfg.train.init_job:
            return None
        if self._init_checkpoint is None:
            raise UserError(
                f"train.init_job={cfg.train.init_job!r} needs the pre-trained checkpoint: "
                "run through `lafite-repro run`, which builds that job first"
            )
        return Path(self._init_checkpoint)

    def _load_init(self) -> None:
        """Fine-tuning (the official --resume): G, D and G_ema from a pre-trained checkpoint.

        As in the official loop, only the networks' weights are taken: the optimisers, the step
        count, the path-length mean and the sampler start fresh, and the EMA ramp-up is off so
        that G_ema starts as the pre-trained G_ema rather than being re-averaged from scratch.
        The architecture must match tensor for tensor; the first mismatch is named.
        """
        source = self._init_source()
        if source is None:
            return
        saved = read_pretrained(source)
        check_condition_dim(saved, self.cond_dim, source, self.cfg.encoder.name)
        r = self.runner
        for name, module in (("G", r.G), ("D", r.D), ("G_ema", r.G_ema)):
            load_matching(module, saved, name, source)
        r.ema_rampup = False

    def _seed_global(self, salt: int) -> None:
        seed = (self.cfg.train.seed * 7_919 + self.ctx.rank * 104_729 + salt) % (2**31)
        torch.manual_seed(seed)
        np.random.seed(seed)
        random.seed(seed)

    # -- data ----------------------------------------------------------------------------------
    def _draw_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Real images (this rank's rows, in [-1, 1]) and the global-batch condition h'."""
        cfg, device = self.cfg, self.device
        batch = cfg.train.batch
        indices = self.sampler.take(self.state.step * batch, batch)
        base = (indices % self.n_images).numpy()
        txt_feat = paired = None
        if self.use_text:
            txt_feat, paired = self._text_batch(base)
        if self.image_features is not None:
            img_feat = torch.from_numpy(np.ascontiguousarray(self.image_features[base]))
        else:  # text-only encoder: every sample is paired, no pseudo feature is ever drawn
            assert txt_feat is not None
            img_feat = torch.zeros_like(txt_feat)
        cond = self.condition_maker(img_feat, txt_feat, self.noise, paired).float().to(device)
        if cfg.train.workers > 0:
            step, images = next(self._image_stream())
            assert step == self.state.step, (step, self.state.step)
            images = images.to(device, non_blocking=True)
        else:
            images = self.images.batch(self.runner.local(indices)).to(device)
        images = images.float() / 127.5 - 1
        if cfg.train.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return images, cond

    def _image_stream(self) -> Iterator[tuple[int, torch.Tensor]]:
        """(step, this rank's uint8 images) from ``train.workers`` DataLoader workers, from the
        current step on, in pinned memory on CUDA so the copy to the device overlaps."""
        if getattr(self, "_images_from", None) is None:
            batches = _StepImages(self.images, self.sampler, self.cfg.train.batch,
                                  self.ctx.rank, self.ctx.world_size)
            loader = torch.utils.data.DataLoader(
                batches, sampler=range(self.state.step, _total_steps(self.cfg)), batch_size=None,
                num_workers=self.cfg.train.workers, pin_memory=self.device.type == "cuda",
                prefetch_factor=2)
            self._images_from = iter(loader)
        return self._images_from

    def _text_batch(self, base: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """One random caption feature per image, and which images are paired (keep their
        caption: semi-supervised ``data.paired_fraction``; an image without captions is not)."""
        offsets = self.text_offsets
        starts = torch.as_tensor(np.asarray(offsets[base]), dtype=torch.long)
        counts = torch.as_tensor(np.asarray(offsets[base + 1]), dtype=torch.long) - starts
        u = torch.rand(len(base), generator=self.noise)
        pick = (u * counts.clamp(min=1)).long().clamp(max=(counts - 1).clamp(min=0))
        rows = (starts + pick).clamp(max=max(len(self.text_features) - 1, 0))
        txt = torch.from_numpy(np.ascontiguousarray(self.text_features[rows.numpy()]))
        paired = self.paired[torch.as_tensor(base)] & (counts > 0)
        return txt, paired

    # -- side tasks ----------------------------------------------------------------------------
    def _grid_conditions(self) -> tuple[list[str], torch.Tensor]:
        """Fixed conditions for the sample grid: the first test captions (else training ones);
        for data without captions (the FFHQ analogue), the CLIP features of the first images
        (image-conditioned generation, as the authors describe it for language-free models)."""
        from lafite.data.datasets import open_dataset

        try:
            source = open_dataset(self.cfg, "test", self.workspace)
        except UserError:
            if self.dataset is None:
                raise
            source = self.dataset
        captions: list[str] = []
        for i in range(min(len(source), 64)):
            texts = source.captions(i)
            if texts:
                captions.append(texts[0])
            if len(captions) == GRID_SIZE // 2:
                break
        if not captions and self.clip is not None:
            count = min(len(source), GRID_SIZE // 2)
            feats = self.clip.encode_images(source.images(range(count)))
            return [f"the image features of {source.files[i].name}" for i in range(count)], \
                feats.to(self.device).float()
        feats = self.text_encoder.encode_texts(captions).to(self.device).float()
        return captions, feats

    def _sample_grid(self) -> None:
        if not self.ctx.is_main:
            return
        G_ema = self.runner.G_ema
        if not hasattr(self, "_grid"):
            captions, feats = self._grid_conditions()
            gen = torch.Generator().manual_seed(self.cfg.train.seed + 1)
            cond = feats.repeat_interleave(2, dim=0)
            z = torch.randn(len(cond), G_ema.z_dim, generator=gen).to(self.device)
            self._grid = (z, cond)
            (self.run_dir / "samples").mkdir(parents=True, exist_ok=True)
            (self.run_dir / "samples" / "captions.txt").write_text(
                "".join(f"columns {2 * i}-{2 * i + 1}: {c}\n" for i, c in enumerate(captions)))
        z, cond = self._grid
        with _isolated_rng(self.device), torch.no_grad():
            images = G_ema(z, cond, noise_mode="const")
        kimg = self.state.cur_nimg / 1000
        path = self.run_dir / "samples" / f"fakes_{kimg:09.3f}kimg.png"
        _save_grid(to_uint8(images), path, columns=len(cond))
        if self.callbacks.on_artifact:
            self.callbacks.on_artifact(path)

    def _evaluate(self) -> None:
        if self.callbacks.evaluate is None:
            return
        if self.ctx.is_main:
            kimg = self.state.cur_nimg / 1000
            with _isolated_rng(self.device):
                result = self.callbacks.evaluate(self.runner.G_ema, kimg)
            if self.callbacks.on_evaluate and result is not None:
                self.callbacks.on_evaluate(kimg, result)
        ddp.barrier(self.ctx)

    # -- the loop ------------------------------------------------------------------------------
    def _already_finished(self) -> TrainResult | None:
        """A finished run's result, read from its checkpoint without building anything."""
        if not self.checkpoint_path.exists():
            return None
        saved = torch.load(self.checkpoint_path, map_location="cpu", weights_only=True,
                           mmap=True)
        total = _total_steps(self.cfg)
        if (not saved.get("finished") or saved.get("step", 0) < total
                or _config_differences(saved.get("config", {}), self.cfg)):
            return None
        return TrainResult(final_checkpoint=self.checkpoint_path, kimg=saved["cur_nimg"] / 1000,
                           steps=saved["step"], resumed_from=saved["step"])

    def run(self) -> TrainResult:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        try:
            finished = self._already_finished()
        except Exception:  # unreadable: the full resume path reports it properly
            finished = None
        if finished is not None:
            return finished
        if self.cfg.mode == "zero-shot":
            return self._zero_shot()
        self._setup()
        resumed = self._resume()
        total = _total_steps(self.cfg)
        if resumed and self.state.step >= total:
            return self._result(resumed)
        if not resumed:
            self._load_init()
            for module in (self.runner.G, self.runner.D, self.runner.G_ema):
                ddp.broadcast_module(module, self.ctx)
            self._seed_global(0)
            self._sample_grid()
            self._evaluate()
        self.state.finished = False
        cfg = self.cfg
        sums: dict[str, float] = {}
        counts: dict[str, int] = {}
        count, t_window, window_img = 0, time.perf_counter(), 0
        while self.state.step < total:
            before = self.state.cur_nimg
            images, cond = self._draw_batch()
            out = self.runner.iteration(self.state.step, images, cond, before)
            values = self.runner.check(self.state.step, out,
                                       self.checkpoint_path if self.checkpoint_path.exists()
                                       else None)
            self.state.step += 1
            self.state.cur_nimg += cfg.train.batch
            for k, v in values.items():
                sums[k] = sums.get(k, 0.0) + v
                counts[k] = counts.get(k, 0) + 1
            count += 1
            window_img += cfg.train.batch
            after = self.state.cur_nimg
            last = self.state.step >= total
            if count >= cfg.train.log_every or last:
                elapsed = time.perf_counter() - t_window
                # Lazy-regularisation terms average over the steps that ran them.
                metrics = {k: v / counts[k] for k, v in sums.items()}
                metrics["timing/sec_per_step"] = elapsed / count
                metrics["timing/img_per_s"] = window_img / max(elapsed, 1e-9)
                if self.ctx.is_main and self.callbacks.on_metrics:
                    self.callbacks.on_metrics(after / 1000, metrics)
                sums, counts, count = {}, {}, 0
                t_window, window_img = time.perf_counter(), 0
            if last or _crossed(before, after, cfg.train.checkpoint_kimg):
                self.state.finished = last
                self._sample_grid()
                self._write_checkpoint()
            if not last and _crossed(before, after, cfg.train.eval_kimg):
                self._evaluate()
            if self.callbacks.on_step:
                self.callbacks.on_step(self.state.step)
        self._evaluate()
        return self._result(resumed)

    def _zero_shot(self) -> TrainResult:
        """Zero-shot (Table 2): no training; the pre-trained G_ema, evaluated on this run's data.

        The run's checkpoint is the pre-trained one under this run's configuration (step 0,
        finished), so that `evaluate` and `generate` treat it like any finished run.
        """
        from lafite.clip import load_clip
        from lafite.model import Generator

        cfg = self.cfg
        source = self._init_source()
        assert source is not None  # RunConfig.checked: zero-shot names a pre-trained model
        saved = read_pretrained(source)
        self.cond_dim = int(saved.get("cond_dim") or 0)
        G_ema = Generator(cfg.model, cfg.data.resolution, self.cond_dim)
        load_matching(G_ema, saved, "G_ema", source)
        G_ema = G_ema.to(self.device).eval().requires_grad_(False)
        if self.ctx.is_main:
            state = {**saved, "config": cfg.to_dict(), "resolution": cfg.data.resolution,
                     "step": 0, "cur_nimg": 0, "kimg": 0.0, "finished": True,
                     "pretrained_from": str(source)}
            save_atomic(state, self.checkpoint_path)
        ddp.barrier(self.ctx)
        from lafite.encoders import load_text_encoder

        self.clip = self._clip_override
        if self.clip is None and cfg.encoder.name == "clip":
            self.clip = load_clip(cfg.clip, self.workspace, cfg.data.resolution,
                                  device=self.device)
        self.text_encoder = load_text_encoder(cfg, self.workspace, clip=self.clip,
                                              device=self.device)
        check_condition_dim(saved, cfg.model.cond_features or self.text_encoder.dim, source,
                            cfg.encoder.name)
        self.dataset = None
        self.runner = _Evaluated(G_ema)
        self._sample_grid()
        self._evaluate()
        return TrainResult(final_checkpoint=self.checkpoint_path, kimg=0.0, steps=0,
                           resumed_from=None)

    def _result(self, resumed: bool) -> TrainResult:
        return TrainResult(final_checkpoint=self.checkpoint_path,
                           kimg=self.state.cur_nimg / 1000, steps=self.state.step,
                           resumed_from=self.state.resumed_from if resumed else None)


def train_run(cfg: RunConfig, run_dir: Path, workspace: Workspace,
              callbacks: TrainCallbacks | None = None, *, clip: Any | None = None,
              init_checkpoint: Path | None = None,
              inference_model: Any | None = None,
              captions: Path | None = None) -> TrainResult:
    """Train ``cfg`` in ``run_dir`` (resuming from ``run_dir/checkpoint.pt`` if present).

    ``clip`` is a ready ClipEncoder (tests and notebooks; by default ``cfg.clip`` is loaded),
    ``init_checkpoint`` the pre-trained run for ``train.init_job``, ``inference_model`` the
    trained Eq. 2 model for ``perturb.kind = "nn"``, ``captions`` the captions file written by
    the captioner job ``data.captions_job``; the runner resolves the last three from jobs.
    """
    trainer = _Trainer(cfg, Path(run_dir), workspace, callbacks or TrainCallbacks(), clip,
                       init_checkpoint, inference_model, captions)
    return trainer.run()


def load_generator(checkpoint_path: Path, device: str | torch.device = "cpu"
                   ) -> tuple[nn.Module, RunConfig]:
    """The EMA generator of a checkpoint (eval mode, no grad) and the run's configuration."""
    from lafite.model import Generator

    saved = load_checkpoint(Path(checkpoint_path), map_location="cpu")
    cfg = RunConfig.from_dict(saved["config"], where=str(checkpoint_path))
    G_ema = Generator(cfg.model, saved["resolution"], saved["cond_dim"])
    G_ema.load_state_dict(saved["G_ema"])
    return G_ema.to(device).eval().requires_grad_(False), cfg


def _main(argv: list[str] | None = None) -> int:
    """``python -m lafite.train`` / ``torchrun -m lafite.train``: train one config file."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, type=Path,
                        help="a JSON or YAML file holding a RunConfig dict")
    parser.add_argument("--run-dir", required=True, type=Path)
    parser.add_argument("--workspace", default=None, help="default: $LAFITE_HOME")
    args = parser.parse_args(argv)
    text = args.config.read_text()
    if args.config.suffix in (".yaml", ".yml"):
        import yaml

        data = yaml.safe_load(text)
    else:
        data = json.loads(text)
    cfg = RunConfig.from_dict(data, where=str(args.config))
    workspace = Workspace.resolve(args.workspace)

    def print_metrics(kimg: float, metrics: dict[str, float]) -> None:
        shown = " ".join(f"{k}={v:.4g}" for k, v in sorted(metrics.items()))
        print(f"kimg {kimg:.3f} {shown}", flush=True)

    try:
        result = train_run(cfg, args.run_dir, workspace, TrainCallbacks(on_metrics=print_metrics))
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({"final_checkpoint": str(result.final_checkpoint), "kimg": result.kimg,
                      "steps": result.steps, "resumed_from": result.resumed_from}))
    return 0


if __name__ == "__main__":
    sys.exit(_main())
