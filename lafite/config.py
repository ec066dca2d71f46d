"""RunConfig: every knob of one training run, with the paper's defaults.

A run is described completely by one frozen :class:`RunConfig`. Everything downstream (training,
evaluation, tracking) receives it and reads nothing else: no globals, no environment variables,
no second look at the spec file. Its :meth:`RunConfig.hash` names the run, so a finished run can
be found again and an interrupted one resumed.

Defaults follow the paper's equations. Where the authors' official code differs, the official
form is a named value of a field (see ``reference/official-lafite.md`` section 8), and the
experiment specs choose it where the authors say it produced the printed numbers.

Naming: ``loss.tau`` is tau of Eqs. 6-7, ``loss.lambda`` the weight of L_ConG (Eq. 9; the official
code's ``--itc``), ``loss.gamma`` the weight of L_ConD (Eqs. 8-9; the official ``--itd``), and
``loss.r1_gamma`` the R1 weight (the official code's ``--gamma``). In Python ``lambda`` is a
keyword, so the attribute is ``lambda_``; everywhere a user sees it (YAML, MLflow params, CLI) it
is ``lambda``.

Sections are owned by concerns: ``data`` and ``world`` by the data layer, ``clip`` by clip.py,
``encoder`` by encoders/, ``perturb`` by perturb.py, ``model`` by model/, ``loss`` by losses.py, ``train`` by train.py and
``eval`` by metrics/. Add a knob to the section whose module reads it.
"""

from __future__ import annotations

import hashlib
import json
import math
import types
import typing
from dataclasses import dataclass, field, fields, is_dataclass, replace
from functools import cache
from typing import Any, Literal, get_args, get_origin, get_type_hints

from lafite.errors import ConfigError

# How captions reach training (the paper's settings, section 4):
# - "language-free": every condition is a pseudo text feature made from the image (Eqs. 1-2);
# - "supervised": every condition is the CLIP text feature of a ground-truth caption (the
#   official --mixing_prob=0);
# - "semi-supervised": a fraction data.paired_fraction of the training images keep their
#   captions, the others are trained language-free (Figure 7; official --ratio);
# - "zero-shot": no training at all: the pre-trained generator named by train.init_job or
#   train.init_checkpoint is evaluated on this run's data (Table 2).
# Fine-tuning is not a mode: any training mode starts from a pre-trained model when
# train.init_job or train.init_checkpoint is set (the official --resume).
Mode = Literal["language-free", "supervised", "semi-supervised", "zero-shot"]
MODES: tuple[str, ...] = typing.get_args(Mode)


@dataclass(frozen=True)
class DataConfig:
    """Which images and captions a run trains and evaluates on."""

    # "world" for the built-in synthetic world, else a real dataset id (coco2014, cub, ln-coco,
    # mm-celeba-hq, cc3m, ffhq) or "folder" for any PNG/JPG + .txt folder.
    dataset: str = "world"
    # Real data: the folder holding <dataset>/train and <dataset>/test (or explicit paths below).
    data_root: str = ""
    train_path: str = ""
    test_path: str = ""
    resolution: int = 256
    # x-flip doubling of the training set (official README commands use --mirror=1).
    mirror: bool = False
    # Use only the first N training images (0 = all); the official --subset.
    max_train_images: int = 0
    # mode semi-supervised: the fraction p of training images that keep their real captions
    # (0 = language-free, 1 = supervised; the official --ratio).
    paired_fraction: float = 1.0
    # "first": the first fraction of the sorted file list (official); "random": a seeded draw.
    paired_split: Literal["first", "random"] = "first"
    # Where the training captions come from, instead of the dataset's own (Table 1's captioning
    # baseline): a captioner job of experiments/jobs.yaml, or a captions file (paper scale: the
    # VinVL captions of the training images). At most one; empty = the dataset's captions.
    captions_job: str = ""
    captions_file: str = ""
    # Real data: leave out images that cannot be read and items a dataset's files name but do
    # not hold (a caption JSON naming a missing image, a damaged shard), counting them in a
    # warning, instead of stopping with a message naming them (`data check --skip-corrupt`).
    skip_corrupt: bool = False


@dataclass(frozen=True)
class WorldConfig:
    """The built-in synthetic world (mini and smoke scales only)."""

    domain: Literal["scenes", "objects", "narratives", "web", "faces", "portraits"] = "scenes"
    n_train: int = 4000
    n_test: int = 1000
    seed: int = 0


@dataclass(frozen=True)
class ClipConfig:
    """The frozen image-text encoder that defines the condition space."""

    # open_clip model name ("ViT-B-32", "ViT-B-16") or "world" for the world's small CLIP.
    name: str = "ViT-B-32"
    # open_clip pretrained tag ("openai") or a local weights file; ignored for "world".
    pretrained: str = "openai"
    # Random square crop of generated images before CLIP for L_ConG (official: side in
    # [crop_min, 1) of the image, one crop per batch). 1.0 disables cropping.
    gen_crop_min: float = 0.5
    # Dataset image features from one random crop covering this fraction (official 0.99).
    real_crop: float = 0.99
    # Training seed of the world's small CLIP (name "world"); each seed is a separate model.
    world_seed: int = 0
    # Patch size in pixels of the world CLIP's vision transformer; 0 = the shipped config's
    # (4 px, 64 tokens at 32 px). 8 px makes the second world CLIP of Table 6, which trained
    # alike is measurably the stronger one at 32 px, so it plays ViT-B/16 there.
    world_patch_size: int = 0


@dataclass(frozen=True)
class EncoderConfig:
    """The encoder that turns captions into condition vectors (Table 6).

    ``name``: "clip" is the run's CLIP (``clip.*``), whose text features are the conditions and
    whose image features make the pseudo text features; a text-only encoder has no image side,
    so it trains supervised only and without L_ConG: "roberta-base" and "roberta-large" (paper
    scale, Hugging Face transformers) or the world's text-only encoders "world-text-small" and
    "world-text-large" (mini and smoke scale, trained on world captions alone).
    """

    name: Literal["clip", "roberta-base", "roberta-large", "world-text-small",
                  "world-text-large"] = "clip"
    # A Hugging Face model folder or hub id for the RoBERTa encoders ("" = the model's hub id,
    # from the local cache when offline).
    path: str = ""
    # How token features become one vector (the paper does not say): "mean" over the caption's
    # tokens, or "cls", the first token's feature (RoBERTa's <s>).
    pooling: Literal["mean", "cls"] = "mean"


@dataclass(frozen=True)
class PerturbConfig:
    """How the condition h' is made (Eqs. 1 and 2)."""

    # "gaussian": Eq. 1, h = f + xi * eps * |f| / |eps|.
    # "official-mix": normalize(alpha f^ + (1-alpha) eps^), alpha = 1 - mix (official code).
    # "nn": the trainable inference model of Eq. 2 (needs an inference-model job).
    # "none": the image feature itself.
    kind: Literal["gaussian", "official-mix", "nn", "none"] = "gaussian"
    xi: float = 1.0
    # Weight of the unit noise in the official convex mix (0.75 == xi 3).
    mix: float = 0.75
    # Perturbation of real text features (official: mix 0.1; not in the paper; 0 disables).
    text_mix: float = 0.0
    # Share one noise draw between the text and the image perturbation (official).
    share_noise: bool = False
    # The inference model to use when kind == "nn": the name of a job in experiments/jobs.yaml.
    nn_job: str = ""


@dataclass(frozen=True)
class ModelConfig:
    """Generator and discriminator architecture."""

    z_dim: int = 512
    w_dim: int = 512
    mapping_layers: int = 8
    channel_base: int = 32768
    channel_max: int = 512
    # Conditional StyleSpace form (Fig. 3): "paper" = affine(concat[A(w), MLP(h)]);
    # "official" = affine(concat[MLP(h), w]); "scale-bias" = A(w) * S(h) + B(h);
    # "sum" = A(w) + A'(MLP(h)).
    cond_form: Literal["paper", "official", "scale-bias", "sum"] = "paper"
    # Width of the 2-layer condition MLP output (official 512).
    cond_dim: int = 512
    # Learning-rate multiplier of the condition MLPs (official 0.01, as the mapping network; the
    # paper does not say). Short runs need 1.0: at 0.01 the condition hardly reaches the images
    # in the first thousands of steps.
    cond_lr_mult: float = 0.01
    # Eq. 4 semantic term: "per-sample" <h_i, f_s(x_i)> (paper) or "batch-sum" (official).
    d_semantic: Literal["per-sample", "batch-sum"] = "per-sample"
    d_normalize_fs: bool = False
    d_semantic_head: bool = True
    mbstd_group: int = 4
    # Condition dimension; 0 = take it from the CLIP model.
    cond_features: int = 0


@dataclass(frozen=True)
class LossConfig:
    """Eqs. 5-9 and the StyleGAN2 regularisers."""

    tau: float = 0.5
    lambda_: float = 10.0
    gamma: float = 10.0
    con_g: bool = True
    con_d: bool = True
    # Contrastive logits: "plain" cos/tau (paper) or "exp" exp(cos/tau) (official).
    logits: Literal["plain", "exp"] = "plain"
    # "sum" with the tau prefactor (paper) or "mean" without it (official).
    reduction: Literal["sum", "mean"] = "sum"
    # Official --lam: 0 = softmax over images for each text (paper), 1 = over texts, else a mix.
    direction: float = 0.0
    # All-gather the negatives across ranks (official --gather).
    gather: bool = False
    r1_gamma: float = 10.0
    r1_interval: int = 16
    pl_weight: float = 0.0
    pl_interval: int = 4
    style_mixing: float = 0.9


@dataclass(frozen=True)
class TrainConfig:
    """The optimisation schedule."""

    batch: int = 64
    kimg: float = 25000.0
    lr_g: float = 0.0025
    lr_d: float = 0.0025
    ema_kimg: float = 20.0
    ema_rampup: float = 0.05
    seed: int = 0
    # "fp32"; "bf16" autocast (CPU or CUDA); "fp16": the official mixed precision, CUDA only
    # (fp16 in the ``fp16_blocks`` highest-resolution blocks of G and D, activations clamped to
    # +-``conv_clamp``); "auto": bf16 where this machine runs it fast (a CUDA device with bf16,
    # or a CPU with native bf16 whose measured step kernels are faster in it), else fp32. What
    # "auto" resolved to is pinned in the run's checkpoint, so a resumed run keeps it
    # (lafite.precision). The spec's mini and smoke scales say "auto".
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "fp32"
    fp16_blocks: int = 4
    conv_clamp: float = 256.0
    channels_last: bool = True
    # torch.compile the networks' main passes (not the R1 / path-length passes, whose double
    # backward it does not support). Pays on CUDA; on a CPU its compile time rarely comes back.
    compile: bool = False
    # DataLoader worker processes that prepare each step's real images ahead of the step (0: in
    # the training process); on CUDA their batches come in pinned memory.
    workers: int = 0
    # "d-first" (Algorithm 1) or "g-first" (official phase order).
    update_order: Literal["d-first", "g-first"] = "d-first"
    checkpoint_kimg: float = 200.0
    eval_kimg: float = 1000.0
    log_every: int = 50
    device: str = "auto"
    # Fine-tuning (the official --resume): start G, D and G_ema from a pre-trained model, either
    # a generator job of experiments/jobs.yaml or a checkpoint file; optimiser states, the step
    # count and the path-length mean start fresh, and the EMA ramp-up is off (as in the official
    # code). At most one of the two.
    init_job: str = ""
    init_checkpoint: str = ""


@dataclass(frozen=True)
class EvalConfig:
    """How a run is scored."""

    # Paper protocol: 30,000 generated images (6,000 for MM-CelebA-HQ) from test captions.
    n_samples: int = 30000
    # Reference statistics from the training split (official default) or the test split.
    reference_split: Literal["train", "test"] = "train"
    # Extra blur radii: FID-k for each k here, on top of the FID-k names listed in `metrics`.
    fid_k: tuple[int, ...] = ()
    # Metric names (lafite.metrics.METRICS): IS, FID, FID-0..FID-8, KID, SOA-C, SOA-I,
    # caption-accuracy (+ main-*/background-accuracy), R-precision, CLIP-score.
    metrics: tuple[str, ...] = ("IS", "FID-0")
    # "inception" at paper scale; "inspector" (the world's inspector) at mini and smoke scale.
    extractor: Literal["inception", "inspector"] = "inception"
    # Local copy of weights-inception-2015-12-05-6726825d.pth (else $TORCH_HOME/hub/checkpoints).
    inception_weights: str = ""
    batch: int = 64
    # Seed of the evaluation's noise and caption draws (fixed, so evaluations are comparable).
    seed: int = 0
    truncation_psi: float = 1.0
    # Official evaluation uses G_ema's default noise_mode "random".
    noise_mode: Literal["random", "const"] = "random"
    isc_splits: int = 10
    kid_subset_size: int = 1000
    kid_subsets: int = 100
    # SOA (Hinz et al.): images per caption of each class subset (3; the person class uses 1)
    # and a cap on captions per class (0 = every caption of the split that names the class;
    # for the world, 0 = enough captions for about eval.n_samples SOA images).
    soa_images_per_caption: int = 3
    soa_captions_per_class: int = 0
    # Paper scale: "module:factory" returning a lafite.metrics.soa.Detector (the YOLOv3 of the
    # SOA protocol); empty = SOA-C/SOA-I recorded as not computed.
    soa_detector: str = ""
    # CLIP R-precision: 1 true caption + (candidates - 1) others from the split.
    r_precision_candidates: int = 100
    # CLIP that scores R-precision and CLIP-score: "" = the training CLIP (labelled a
    # training-signal diagnostic), else an open_clip model name with alignment_clip_pretrained.
    alignment_clip: str = ""
    alignment_clip_pretrained: str = "openai"


@dataclass(frozen=True)
class RunConfig:
    """Every knob of one training run."""

    mode: Mode = "language-free"
    scale: Literal["paper", "mini", "smoke"] = "paper"
    data: DataConfig = field(default_factory=DataConfig)
    world: WorldConfig = field(default_factory=WorldConfig)
    clip: ClipConfig = field(default_factory=ClipConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    perturb: PerturbConfig = field(default_factory=PerturbConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    # -- serialisation -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Nested plain dict with user-facing key names (``lambda``, not ``lambda_``)."""
        return _to_dict(self)

    def flat(self) -> dict[str, Any]:
        """Dotted keys to values, e.g. ``{"loss.tau": 0.5, ...}``: MLflow params."""
        out: dict[str, Any] = {}

        def walk(prefix: str, value: Any) -> None:
            if isinstance(value, dict):
                for key, sub in value.items():
                    walk(f"{prefix}.{key}" if prefix else key, sub)
            else:
                out[prefix] = value

        walk("", self.to_dict())
        return out

    def hash(self) -> str:
        """Stable 12-hex-digit name of this configuration (key order and float text agnostic)."""
        blob = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "config") -> RunConfig:
        """Build from a nested dict as written by :meth:`to_dict` (validated)."""
        flat = {k: v for k, v in _flatten(data).items() if k not in _RETIRED_KEYS}
        return RunConfig().override(flat, where=where).checked(where)

    # -- the mode ----------------------------------------------------------------------------
    @property
    def pseudo_text_probability(self) -> float:
        """Probability that a training sample's condition is a pseudo text feature rather than
        its caption's feature (the official --mixing_prob), from the mode: 1 language-free, 0
        supervised and semi-supervised (whose unpaired images take pseudo features anyway)."""
        return 1.0 if self.mode == "language-free" else 0.0

    @property
    def uses_captions(self) -> bool:
        """Whether training reads caption features of the training images."""
        return self.mode in ("supervised", "semi-supervised")

    @property
    def pretrained(self) -> bool:
        """Whether the run starts from (or, zero-shot, is) a pre-trained model."""
        return bool(self.train.init_job or self.train.init_checkpoint)

    def checked(self, where: str = "config") -> RunConfig:
        """This configuration, after the checks that involve several fields (a single field's
        type and range are checked when it is set). Raises ConfigError naming the fields."""
        # Again here, for a configuration made with dataclasses.replace rather than override.
        for dotted, value in self.flat().items():
            _check_range(dotted, value, where)
        p = self.data.paired_fraction
        if p != 1.0 and self.mode != "semi-supervised":
            raise ConfigError(
                f"{where}: 'data.paired_fraction' is {p} but mode is {self.mode!r}: the pair "
                "fraction only applies with mode: semi-supervised (remove it, or set the mode)"
            )
        if self.data.captions_job and self.data.captions_file:
            raise ConfigError(
                f"{where}: set one of 'data.captions_job' ({self.data.captions_job!r}) and "
                f"'data.captions_file' ({self.data.captions_file!r}), not both"
            )
        if self.clip.world_patch_size and self.clip.name != "world":
            raise ConfigError(
                f"{where}: 'clip.world_patch_size' ({self.clip.world_patch_size}) sizes the patches "
                f"of the world's CLIP, but clip.name is {self.clip.name!r}: remove it (open_clip "
                "names the patch size in the model, e.g. ViT-B-32 or ViT-B-16)"
            )
        if self.encoder.name != "clip":
            if self.mode != "supervised":
                raise ConfigError(
                    f"{where}: encoder.name {self.encoder.name!r} is a text-only encoder: it has no "
                    f"image features to make pseudo text features from, so mode must be "
                    f"'supervised' (got {self.mode!r})"
                )
            if self.loss.con_g:
                raise ConfigError(
                    f"{where}: encoder.name {self.encoder.name!r} has no image encoder for the "
                    "generated images, so L_ConG cannot be computed: set loss.con_g: false"
                )
        if self.train.init_job and self.train.init_checkpoint:
            raise ConfigError(
                f"{where}: set one of 'train.init_job' ({self.train.init_job!r}) and "
                f"'train.init_checkpoint' ({self.train.init_checkpoint!r}), not both"
            )
        if self.mode == "zero-shot" and not self.pretrained:
            raise ConfigError(
                f"{where}: mode 'zero-shot' evaluates a pre-trained model without training: name "
                "it with train.init_job (a generator job of experiments/jobs.yaml) or "
                "train.init_checkpoint (a checkpoint file)"
            )
        if self.data.resolution < _MODEL_MIN_RESOLUTION:
            raise ConfigError(
                f"{where}: 'data.resolution' must be at least {_MODEL_MIN_RESOLUTION} for a run, got "
                f"{self.data.resolution} (the smallest side the generator and discriminator are "
                "built for)"
            )
        if self.model.channel_base < self.data.resolution:
            raise ConfigError(
                f"{where}: 'model.channel_base' ({self.model.channel_base}) must be at least "
                f"data.resolution ({self.data.resolution}): the layers at resolution r get "
                "channel_base / r feature maps, which would be none at the top resolution"
            )
        if "IS" in self.eval.metrics and self.eval.n_samples < self.eval.isc_splits:
            raise ConfigError(
                f"{where}: 'eval.n_samples' ({self.eval.n_samples}) must be at least "
                f"eval.isc_splits ({self.eval.isc_splits}) for IS, which averages over that "
                "many splits of the generated images: raise n_samples or lower isc_splits"
            )
        return self

    def override(self, updates: dict[str, Any], where: str = "config") -> RunConfig:
        """A copy with dotted-key updates applied, each validated against the field's type.

        ``where`` names the origin (file, row) for error messages.
        """
        result = self
        for dotted, value in updates.items():
            result = _set(result, dotted, value, where)
        return result


# -- helpers -----------------------------------------------------------------------------------

_ALIASES = {"lambda": "lambda_"}
# Keys that older checkpoints hold and the mode now decides (perturb.mixing_prob: see Mode).
_RETIRED_KEYS = frozenset({"perturb.mixing_prob"})
_PUBLIC = {v: k for k, v in _ALIASES.items()}


def _to_dict(obj: Any) -> Any:
    if is_dataclass(obj):
        return {_PUBLIC.get(f.name, f.name): _to_dict(getattr(obj, f.name)) for f in fields(obj)}
    if isinstance(obj, tuple):
        return [_to_dict(v) for v in obj]
    return obj


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict):
            out.update(_flatten(value, dotted))
        else:
            out[dotted] = value
    return out


def valid_keys(obj: Any = None, prefix: str = "") -> list[str]:
    """Every dotted key a spec may set, for error messages and ``show``."""
    obj = obj if obj is not None else RunConfig()
    keys: list[str] = []
    for f in fields(obj):
        name = _PUBLIC.get(f.name, f.name)
        value = getattr(obj, f.name)
        if is_dataclass(value):
            keys.extend(valid_keys(value, f"{prefix}{name}."))
        else:
            keys.append(f"{prefix}{name}")
    return keys


def _set(obj: Any, dotted: str, value: Any, where: str, prefix: str = "") -> Any:
    head, _, rest = dotted.partition(".")
    full = prefix + dotted
    attr = _ALIASES.get(head, head)
    names = {f.name for f in fields(obj)}
    if attr not in names:
        raise ConfigError(
            f"{where}: unknown key '{full}' (no field '{prefix}{head}'). "
            f"Valid keys here: {', '.join(sorted(valid_keys(obj, prefix)))}"
        )
    current = getattr(obj, attr)
    if rest:
        if not is_dataclass(current):
            raise ConfigError(f"{where}: '{full}': '{prefix}{head}' is a value, not a section")
        return replace(obj, **{attr: _set(current, rest, value, where, f"{prefix}{head}.")})
    if is_dataclass(current):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: '{full}' is a section; give a mapping of its keys")
        sub = current
        for key, sub_value in _flatten(value).items():
            sub = _set(sub, key, sub_value, where, f"{prefix}{head}.")
        return replace(obj, **{attr: sub})
    hint = _field_types(type(obj))[attr]
    coerced = _coerce(value, hint, full, where)
    _check_range(full, coerced, where)
    return replace(obj, **{attr: coerced})


@dataclass(frozen=True)
class _Range:
    """The valid values of one numeric field: ``low`` (excluded if ``open_low``) to ``high``."""

    low: float | None = None
    high: float | None = None
    open_low: bool = False
    meaning: str = ""  # what the number is, when the bound needs a reason

    def holds(self, value: float) -> bool:
        if self.low is not None and (value <= self.low if self.open_low else value < self.low):
            return False
        return self.high is None or value <= self.high

    def describe(self) -> str:
        low = _number(self.low)
        if self.high is None:
            return f"greater than {low}" if self.open_low else f"at least {low}"
        return f"in {'(' if self.open_low else '['}{low}, {_number(self.high)}]"


def _number(value: float | None) -> str:
    return str(int(value)) if isinstance(value, int) else f"{value:g}"


def _at_least(low: float, meaning: str = "") -> _Range:
    return _Range(low, None, False, meaning)


def _positive(meaning: str = "") -> _Range:
    return _Range(0, None, True, meaning)


def _fraction(meaning: str = "") -> _Range:
    return _Range(0, 1, False, meaning)


_SEED = _Range(0, 2**32 - 1, False, "numpy's seeds are unsigned 32-bit")
# Image sides a dataset can be read at; a run's generator needs at least
# _MODEL_MIN_RESOLUTION (lafite.model.generator.MIN_RESOLUTION), checked in RunConfig.checked.
_RESOLUTIONS = (8, 1024)
_MODEL_MIN_RESOLUTION = 16

# Every int and float field (tests/test_config.py checks that none is missing).
_RANGES: dict[str, _Range] = {
    "data.resolution": _Range(*_RESOLUTIONS),
    "data.max_train_images": _at_least(0, "0 = every training image"),
    "data.paired_fraction": _fraction("the fraction of training images that keep their captions"),
    "world.n_train": _at_least(1, "images in the world's training split"),
    "world.n_test": _at_least(1, "images in the world's test split"),
    "world.seed": _SEED,
    "clip.gen_crop_min": _Range(0, 1, True, "the smallest crop side as a fraction of the image; "
                                            "1 disables cropping"),
    "clip.real_crop": _Range(0, 1, True, "the crop side as a fraction of the image"),
    "clip.world_seed": _SEED,
    "clip.world_patch_size": _at_least(0, "pixels; 0 = the shipped patch size"),
    "perturb.xi": _at_least(0, "the noise level of Eq. 1"),
    "perturb.mix": _fraction("the weight of the noise in the convex mix"),
    "perturb.text_mix": _fraction("the weight of the noise on text features; 0 disables"),
    "model.z_dim": _at_least(1),
    "model.w_dim": _at_least(1),
    "model.mapping_layers": _at_least(1),
    "model.channel_base": _at_least(1),
    "model.channel_max": _at_least(1),
    "model.cond_dim": _at_least(1),
    "model.cond_lr_mult": _positive("a learning-rate multiplier"),
    # The discriminator's epilogue always has the minibatch-std channel, so 0 cannot disable it.
    "model.mbstd_group": _at_least(1, "samples per minibatch standard-deviation group"),
    "model.cond_features": _at_least(0, "0 = the CLIP's feature dimension"),
    "loss.tau": _positive("the temperature divides the contrastive logits"),
    "loss.lambda": _at_least(0, "a loss weight; 0 switches L_ConG off"),
    "loss.gamma": _at_least(0, "a loss weight; 0 switches L_ConD off"),
    "loss.direction": _fraction("0 = softmax over images, 1 = over texts"),
    "loss.r1_gamma": _at_least(0, "a loss weight"),
    "loss.r1_interval": _at_least(1, "steps between R1 regularisations"),
    "loss.pl_weight": _at_least(0, "a loss weight; 0 switches it off"),
    "loss.pl_interval": _at_least(1, "steps between path-length regularisations"),
    "loss.style_mixing": _fraction("a probability"),
    "train.batch": _at_least(1, "images per training step"),
    "train.kimg": _positive("thousands of training images to show"),
    "train.lr_g": _positive("a learning rate"),
    "train.lr_d": _positive("a learning rate"),
    "train.ema_kimg": _at_least(0, "the EMA half-life in thousands of images"),
    "train.ema_rampup": _at_least(0, "0 disables the ramp-up"),
    "train.seed": _SEED,
    "train.checkpoint_kimg": _at_least(0, "0 = a checkpoint at the end only"),
    "train.eval_kimg": _at_least(0, "0 = an evaluation at the end only"),
    "train.log_every": _at_least(1, "steps between logged losses"),
    "train.fp16_blocks": _at_least(0, "highest-resolution blocks of G and D in fp16"),
    "train.conv_clamp": _at_least(0, "0 = no clamp of fp16 activations"),
    "train.workers": _at_least(0, "0 = images prepared in the training process"),
    "eval.n_samples": _at_least(1, "generated images per evaluation"),
    "eval.fid_k": _Range(0, 8, False, "blur radii in pixels"),
    "eval.batch": _at_least(1, "images per evaluation batch"),
    "eval.seed": _SEED,
    "eval.truncation_psi": _fraction("1 = no truncation, 0 = the average image"),
    "eval.isc_splits": _at_least(1),
    "eval.kid_subset_size": _at_least(2, "KID compares subsets of at least 2 images"),
    "eval.kid_subsets": _at_least(1),
    "eval.soa_images_per_caption": _at_least(1),
    "eval.soa_captions_per_class": _at_least(0, "0 = every caption that names the class"),
    "eval.r_precision_candidates": _at_least(2, "the true caption and at least one other"),
}


def _check_range(dotted: str, value: Any, where: str) -> None:
    """ConfigError if ``value`` (a number, or a sequence of numbers) is outside the field's range."""
    bounds = _RANGES.get(dotted)
    if bounds is None:
        return
    for number in value if isinstance(value, list | tuple) else (value,):
        if isinstance(number, float) and not math.isfinite(number):
            raise ConfigError(f"{where}: '{dotted}' must be a finite number, got {number}")
        if dotted == "data.resolution" and (not bounds.holds(number) or number & (number - 1)):
            raise ConfigError(
                f"{where}: 'data.resolution' must be a power of two between {_RESOLUTIONS[0]} and "
                f"{_RESOLUTIONS[1]}, got {number} (the generator doubles the image size per block)"
            )
        if not bounds.holds(number):
            note = f" ({bounds.meaning})" if bounds.meaning else ""
            raise ConfigError(
                f"{where}: '{dotted}' must be {bounds.describe()}, got {_number(number)}{note}"
            )
        if dotted == "eval.fid_k":
            from lafite.metrics import FID_RADII

            if number not in FID_RADII:
                raise ConfigError(
                    f"{where}: 'eval.fid_k' holds {number}, but FID-k is defined for the blur "
                    f"radii {', '.join(map(str, FID_RADII))} only"
                )


@cache
def _field_types(cls: type) -> dict[str, Any]:
    """Resolved field annotations; cached because resolving them dominates spec loading."""
    return get_type_hints(cls)


def _coerce(value: Any, hint: Any, dotted: str, where: str) -> Any:
    origin = get_origin(hint)
    if origin is Literal:
        choices = get_args(hint)
        if value not in choices:
            raise ConfigError(
                f"{where}: '{dotted}' must be one of {', '.join(map(repr, choices))}, got {value!r}"
            )
        return value
    if origin in (tuple, typing.Tuple):  # noqa: UP006
        (item_hint, *_rest) = get_args(hint)
        items = value if isinstance(value, list | tuple) else [value]
        return tuple(_coerce(v, item_hint, dotted, where) for v in items)
    if origin in (typing.Union, types.UnionType):
        for option in get_args(hint):
            try:
                return _coerce(value, option, dotted, where)
            except ConfigError:
                continue
        raise ConfigError(f"{where}: '{dotted}' has the wrong type: {value!r}")
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: '{dotted}' must be true or false, got {value!r}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{where}: '{dotted}' must be an integer, got {value!r}")
    if hint is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{where}: '{dotted}' must be a number, got {value!r}")
    if hint is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{where}: '{dotted}' must be a string, got {value!r}")
    return value


__all__ = [
    "MODES",
    "ClipConfig",
    "DataConfig",
    "EncoderConfig",
    "EvalConfig",
    "LossConfig",
    "ModelConfig",
    "PerturbConfig",
    "RunConfig",
    "TrainConfig",
    "WorldConfig",
    "valid_keys",
]

