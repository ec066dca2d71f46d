"""Score a generator: the metrics named in ``cfg.eval.metrics``, one protocol for every caller.

Training calls :func:`evaluate_generator` periodically and ``lafite-repro evaluate`` calls it
on a finished run; both get an :class:`EvaluationResult`. The protocol is the official one
(``reference/official-lafite.md`` sections 6 and 8 item 15):

* ``cfg.eval.n_samples`` images (30,000 in the paper, 6,000 for MM-CelebA-HQ) are generated from
  captions of the evaluation (test) split: its images are visited in file order, cycling when
  the split is smaller, and each visit draws one of the image's captions uniformly at random;
  the condition is the caption's normalised CLIP text feature (no perturbation), z ~ N(0, I),
  ``truncation_psi`` and ``noise_mode`` from ``cfg.eval``.
* FID-k, KID and IS come from torch-fidelity against reference statistics of the split named by
  ``cfg.eval.reference_split`` (official default: train), cached per dataset fingerprint,
  split, blur radius, extractor and resolution. All other per-sample metrics (caption accuracy,
  R-precision, CLIP score) are computed on the same generated images as they stream past.
* SOA generates its own images, from the per-class caption subsets of the evaluation split
  (``eval.soa_captions_per_class`` captions per class, 0 = all of them; for the world, 0 means
  enough captions for about ``n_samples`` SOA images, since all of them would be ~30,000).

A metric that cannot be computed (no detector, not the world, no inspector, too few captions)
is recorded in ``not_computed`` with the reason; no number is ever made up. The evaluation runs
under its own seeded RNG state and leaves the caller's RNG streams untouched, so periodic
evaluation does not change the course of training.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from lafite.config import ClipConfig, EvalConfig, RunConfig
from lafite.errors import UserError
from lafite.metrics import (
    CLIP_SCORED,
    DIAGNOSTIC_LABEL,
    FEATURE_DIM,
    METRICS,
    fid_radius,
    metric_info,
)
from lafite.metrics.soa import CAPTION_METRICS, FACE_CAPTION_METRICS
from lafite.workspace import Workspace

EVAL_SPLIT = "test"
SOA_METRICS = ("SOA-C", "SOA-I")
DIVERSITY_METRIC = "z-diversity"
# z-diversity: the first 16 captions of the evaluation split, 8 noise draws each.
DIVERSITY_CAPTIONS = 16
DIVERSITY_DRAWS = 8
# Largest candidate pool for R-precision negatives (captions of distinct images of the split).
MAX_POOL = 5000


# -- result ------------------------------------------------------------------------------------


@dataclass
class EvaluationResult:
    """Metric values by registry name, the metrics not computed with their reasons, and labels.

    ``labels[name]`` marks a metric that needs qualifying wherever it is shown (today only
    :data:`lafite.metrics.DIAGNOSTIC_LABEL` on CLIP-scored metrics when the scoring CLIP is the
    training CLIP). ``details`` holds supporting numbers (IS std, KID std, per-class SOA,
    the extractor and reference used) for the report.
    """

    metrics: dict[str, float] = field(default_factory=dict)
    not_computed: dict[str, str] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)

    def display_name(self, name: str) -> str:
        """``"R-precision (training-signal diagnostic)"`` for labelled metrics, else the name."""
        label = self.labels.get(name)
        return f"{name} ({label})" if label else name

    def tracking_name(self, name: str) -> str:
        """MLflow-safe key (MLflow forbids parentheses): ``"R-precision - training-signal
        diagnostic"`` for labelled metrics, else the name."""
        label = self.labels.get(name)
        return f"{name} - {label}" if label else name

    def for_tracking(self) -> dict[str, float]:
        """Metrics keyed by :meth:`tracking_name`, ready for ``mlflow.log_metrics``."""
        return {self.tracking_name(name): value for name, value in self.metrics.items()}

    def to_dict(self) -> dict[str, Any]:
        return {
            "metrics": dict(self.metrics),
            "not_computed": dict(self.not_computed),
            "labels": dict(self.labels),
            "details": dict(self.details),
        }


def requested_metrics(eval_cfg: EvalConfig) -> list[str]:
    """The metric names ``cfg.eval`` asks for: ``metrics`` plus ``FID-k`` for each ``fid_k``.

    An unknown name is a UserError listing the known ones.
    """
    names: list[str] = []
    for name in eval_cfg.metrics:
        metric_info(name, "eval.metrics")
        if name not in names:
            names.append(name)
    for k in eval_cfg.fid_k:
        name = f"FID-{k}"
        metric_info(name, "eval.fid_k")
        if name not in names:
            names.append(name)
    return names


# -- conditioning and the generated stream ----------------------------------------------------


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Generator output (float NCHW, about [-1, 1]) to uint8, the StyleGAN2 way."""
    return (images * 127.5 + 128).clamp(0, 255).to(torch.uint8)


class EvalCaptions:
    """Captions of the evaluation split in the official order.

    Visit t uses image ``t mod N`` (file order, cycling) and one of its captions drawn
    uniformly at random by a generator seeded with ``seed``; :meth:`reset` rewinds.
    """

    def __init__(self, dataset: Any, seed: int) -> None:
        if len(dataset) == 0:
            raise UserError("the evaluation split has no images")
        self.dataset = dataset
        self.seed = seed
        self.reset()

    def reset(self) -> None:
        self._visit = 0
        self._rng = np.random.default_rng(self.seed)

    def take(self, count: int) -> tuple[list[str], list[int]]:
        captions, sources = [], []
        self.last_picks: list[int] = []  # which of its image's captions each one is
        for _ in range(count):
            source = self._visit % len(self.dataset)
            options = self.dataset.captions(source)
            if not options:
                named = getattr(self.dataset, "caption_problem", None)
                problem = named(source) if named is not None else None
                raise UserError(
                    f"evaluation split: {problem}" if problem else
                    f"image {source} of the evaluation split has no caption; every test image "
                    "needs at least one line in its .txt file"
                )
            pick = int(self._rng.integers(len(options)))
            captions.append(options[pick])
            self.last_picks.append(pick)
            sources.append(source)
            self._visit += 1
        return captions, sources


class CaptionStream:
    """Generated images conditioned on :class:`EvalCaptions` (an ``ImageStream``).

    After each :meth:`render`, ``last_captions``, ``last_sources`` and ``last_conditions``
    describe the batch, for observers that score it. ``caption_features`` (the split's cached
    ``(features, offsets)`` from :class:`lafite.clip.FeatureCache`, computed by the same
    ``clip``) replaces encoding each drawn caption again with a row lookup.
    """

    def __init__(
        self,
        generator: nn.Module,
        clip: Any,
        captions: EvalCaptions,
        *,
        device: torch.device,
        truncation_psi: float = 1.0,
        noise_mode: str = "random",
        caption_features: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> None:
        self.generator = generator
        self.clip = clip
        self.captions = captions
        self.caption_features = caption_features
        self.device = device
        self.truncation_psi = truncation_psi
        self.noise_mode = noise_mode
        self.z_size = int(generator.z_dim)
        self.last_captions: list[str] = []
        self.last_sources: list[int] = []
        self.last_conditions: torch.Tensor | None = None

    def reset(self) -> None:
        self.captions.reset()

    @torch.no_grad()
    def render(self, z: torch.Tensor) -> torch.Tensor:
        captions, sources = self.captions.take(z.shape[0])
        if self.caption_features is not None:
            features, offsets = self.caption_features
            rows = np.asarray(offsets)[sources] + np.asarray(self.captions.last_picks, dtype=np.int64)
            conditions = torch.from_numpy(np.ascontiguousarray(features[rows])).to(
                self.device, torch.float32)
        else:
            conditions = self.clip.encode_texts(captions).to(self.device, torch.float32)
        images = self.generator(
            z.to(self.device, torch.float32),
            conditions,
            truncation_psi=self.truncation_psi,
            noise_mode=self.noise_mode,
        )
        self.last_captions, self.last_sources, self.last_conditions = (
            captions,
            sources,
            conditions,
        )
        return to_uint8(images)


def drain(stream: CaptionStream, n_samples: int, batch_size: int, seed: int, observers) -> None:
    """Run ``stream`` for ``n_samples`` images with torch-fidelity's noise convention, feeding
    ``observers``; used when no torch-fidelity metric drives the stream."""
    rng = np.random.RandomState(seed)
    stream.reset()
    for start in range(0, n_samples, batch_size):
        count = min(batch_size, n_samples - start)
        z = torch.from_numpy(rng.randn(count, stream.z_size).astype(np.float32))
        images = stream.render(z)
        for observe in observers:
            observe(images)


# -- the entry point ---------------------------------------------------------------------------


def evaluate_generator(
    cfg: RunConfig,
    G_ema: nn.Module,
    workspace: Workspace,
    *,
    clip: Any = None,
    inspector: Any = None,
    datasets: Mapping[str, Any] | None = None,
    device: str | torch.device | None = None,
    n_samples: int | None = None,
    progress: bool = False,
    encoder: Any = None,
) -> EvaluationResult:
    """Compute every metric ``cfg.eval`` names for ``G_ema``.

    ``clip`` (a ``ClipEncoder``), ``encoder`` (the run's condition encoder, ``encoder.*``; the
    CLIP itself by default), ``inspector`` and ``datasets`` (``{"train": ..., "test": ...}`` of
    ``ImageTextFolder``-like datasets) are loaded from the workspace when not given; callers
    that hold them already (training) pass them to avoid reloading. ``n_samples`` overrides
    ``cfg.eval.n_samples``. The CLIP is loaded only where it is used: as the condition encoder,
    or to score CLIP alignment.
    """
    names = requested_metrics(cfg.eval)
    device = torch.device(device) if device is not None else _module_device(G_ema)
    cuda_devices = []
    if device.type == "cuda":
        cuda_devices = [device.index if device.index is not None else torch.cuda.current_device()]
    with torch.random.fork_rng(devices=cuda_devices):
        torch.manual_seed(cfg.eval.seed)
        was_training = G_ema.training
        G_ema.eval()
        try:
            return _evaluate(
                cfg, names, G_ema, workspace, clip, inspector, datasets, device, n_samples,
                progress, encoder,
            )
        finally:
            G_ema.train(was_training)


# INTERFACES.md names the entry point evaluate_run.
evaluate_run = evaluate_generator


def _module_device(module: nn.Module) -> torch.device:
    for tensor in list(module.parameters()) + list(module.buffers()):
        return tensor.device
    return torch.device("cpu")


def _evaluate(
    cfg: RunConfig,
    names: list[str],
    G_ema: nn.Module,
    workspace: Workspace,
    clip: Any,
    inspector: Any,
    datasets: Mapping[str, Any] | None,
    device: torch.device,
    n_samples: int | None,
    progress: bool,
    encoder: Any = None,
) -> EvaluationResult:
    ev = cfg.eval
    result = EvaluationResult()
    n = int(n_samples if n_samples is not None else ev.n_samples)
    if n <= 0:
        raise UserError(f"eval.n_samples must be positive, got {n}")
    is_world = cfg.data.dataset == "world"
    resolution = cfg.data.resolution
    result.details["n_samples"] = n

    def get_dataset(split: str) -> Any:
        if datasets is not None and split in datasets:
            return datasets[split]
        from lafite.data.datasets import open_dataset

        return open_dataset(cfg, split, workspace)

    def get_clip() -> Any:
        nonlocal clip
        if clip is None:
            from lafite.clip import load_clip

            clip = load_clip(cfg.clip, workspace, resolution, device=str(device))
        return clip

    # What turns a test caption into the generator's condition: the run's encoder.
    if encoder is None:
        from lafite.encoders import load_text_encoder

        encoder = (get_clip() if cfg.encoder.name == "clip"
                   else load_text_encoder(cfg, workspace, device=str(device)))

    def get_inspector() -> tuple[Any, str | None]:
        nonlocal inspector
        if inspector is not None:
            return inspector, None
        if not is_world:
            return None, "the inspector judges only the built-in world (data.dataset: world)"
        try:
            from lafite.data.inspector import load_inspector

            inspector = load_inspector(workspace, resolution, device=str(device))
        except UserError as err:
            return None, f"the world's inspector is not available: {err}"
        return inspector, None

    eval_split = get_dataset(EVAL_SPLIT)
    stream = CaptionStream(
        G_ema,
        encoder,
        EvalCaptions(eval_split, ev.seed),
        device=device,
        truncation_psi=ev.truncation_psi,
        noise_mode=ev.noise_mode,
        caption_features=_cached_caption_features(eval_split, encoder, workspace),
    )
    observers = []
    finishers = []

    # Caption accuracy (world only), on the streamed images.
    caption_names = [name for name in names
                     if name in CAPTION_METRICS or name in FACE_CAPTION_METRICS]
    if caption_names:
        reason = None
        if not is_world:
            reason = "caption accuracy needs the world's ground truth (data.dataset: world)"
        judge, inspector_reason = get_inspector()
        reason = reason or inspector_reason
        if reason:
            for name in caption_names:
                result.not_computed[name] = reason
        else:
            observe, finish = _caption_accuracy_observer(cfg, stream, judge, caption_names)
            observers.append(observe)
            finishers.append(finish)

    # CLIP alignment, on the streamed images.
    alignment_names = [name for name in names if name in CLIP_SCORED]
    if alignment_names:
        observe, finish = _alignment_observer(
            cfg, stream, get_clip(), workspace, eval_split, alignment_names, device
        )
        observers.append(observe)
        finishers.append(finish)

    # torch-fidelity metrics; they drive the stream (and so the observers).
    fidelity_names = [
        name for name in names if name in ("IS", "KID") or fid_radius(name) is not None
    ]
    streamed = False
    if fidelity_names:
        streamed = _fidelity(
            cfg,
            names,
            fidelity_names,
            stream,
            n,
            observers,
            get_dataset,
            get_inspector,
            workspace,
            device,
            progress,
            result,
        )
    if observers and not streamed:
        drain(stream, n, ev.batch, ev.seed, observers)
    for finish in finishers:
        finish(result)

    # SOA, on images of its own.
    soa_names = [name for name in names if name in SOA_METRICS]
    if soa_names:
        _soa(cfg, soa_names, G_ema, encoder, eval_split, get_inspector, device, n, result)

    if DIVERSITY_METRIC in names:
        from lafite.metrics.diversity import diversity

        captions, _ = EvalCaptions(eval_split, ev.seed).take(
            min(DIVERSITY_CAPTIONS, len(eval_split)))
        conditions = encoder.encode_texts(captions).to(device, torch.float32)
        spread = diversity(G_ema, conditions, draws=DIVERSITY_DRAWS, seed=ev.seed,
                           truncation_psi=ev.truncation_psi, noise_mode=ev.noise_mode)
        result.metrics[DIVERSITY_METRIC] = spread.z
        result.details["caption-diversity"] = spread.captions

    cond_dim = getattr(G_ema, "cond_dim", None)
    if cond_dim:
        result.metrics[FEATURE_DIM] = float(cond_dim)

    # Keep the requested order; every requested name ends up in exactly one of the two dicts.
    result.metrics = {name: result.metrics[name] for name in _ordered(names, result.metrics)}
    for name in names:
        if name not in result.metrics and name not in result.not_computed:
            result.not_computed[name] = "no value was produced (see the log)"
    return result


def _cached_caption_features(split: Any, encoder: Any, workspace: Workspace
                             ) -> tuple[np.ndarray, np.ndarray] | None:
    """Every caption feature of the evaluation split from the feature cache (built once per
    split and encoder, then read by every evaluation), or None for a split or encoder the cache
    cannot key (no fingerprint, no weights id): those captions are encoded as they are drawn."""
    if not (hasattr(split, "fingerprint") and hasattr(split, "captions")
            and isinstance(getattr(encoder, "id", None), str) and hasattr(encoder, "dim")):
        return None
    from lafite.clip import FeatureCache

    return FeatureCache(workspace).text_features(split, encoder)


def _ordered(names: Sequence[str], values: Mapping[str, float]) -> list[str]:
    extra = [name for name in values if name not in names]
    return [name for name in names if name in values] + extra


def _fidelity(
    cfg,
    names,
    fidelity_names,
    stream,
    n,
    observers,
    get_dataset,
    get_inspector,
    workspace,
    device,
    progress,
    result,
) -> bool:
    """FID-k/KID/IS; returns whether the generated stream ran (and fed the observers)."""
    from lafite.metrics.extractors import inception_extractor, module_extractor
    from lafite.metrics.fidelity import FidelityRequest, ReferenceSet, compute_fidelity

    ev = cfg.eval
    if ev.extractor == "inception":
        extractor = inception_extractor(ev.inception_weights)
    else:
        judge, reason = get_inspector()
        if judge is None:
            for name in fidelity_names:
                result.not_computed[name] = f"eval.extractor is 'inspector' but {reason}"
            return False
        extractor = module_extractor(judge, "inspector")
    result.details["extractor"] = extractor.id

    radii = {fid_radius(name) for name in fidelity_names} - {None}
    request = FidelityRequest(
        inception_score="IS" in fidelity_names,
        kid="KID" in fidelity_names,
        fid_radii=tuple(sorted(radii)),  # type: ignore[arg-type]
    )
    reference = None
    if request.kid or request.fid_radii:
        images = get_dataset(ev.reference_split)
        reference = ReferenceSet(
            images=images,
            fingerprint=images.fingerprint(),
            split=ev.reference_split,
            resolution=cfg.data.resolution,
        )
        result.details["reference"] = f"{ev.reference_split} ({len(images)} images)"
        if request.kid and min(n, len(images)) < 2:
            result.not_computed["KID"] = "KID needs at least 2 generated and 2 reference images"
            request = FidelityRequest(request.inception_score, False, request.fid_radii)
            if request.empty:
                return False
    if request.inception_score and n < ev.isc_splits:
        result.not_computed["IS"] = (
            f"IS needs at least eval.isc_splits={ev.isc_splits} images, got n_samples={n}"
        )
        request = FidelityRequest(False, request.kid, request.fid_radii)
        if request.empty:
            return False
    values = compute_fidelity(
        stream,
        reference,
        request,
        extractor,
        cache_root=workspace.cache_dir / "fidelity",
        n_samples=n,
        batch_size=ev.batch,
        cuda=device.type == "cuda",
        seed=ev.seed,
        isc_splits=ev.isc_splits,
        kid_subset_size=ev.kid_subset_size,
        kid_subsets=ev.kid_subsets,
        observers=observers,
        spool_dir=workspace.cache_dir / "eval-spool",
        verbose=progress,
    )
    if values.inception_score is not None:
        result.metrics["IS"] = values.inception_score
        result.details["IS-std"] = values.inception_score_std
    if values.kid is not None:
        result.metrics["KID"] = values.kid
        result.details["KID-std"] = values.kid_std
    for name in fidelity_names:
        k = fid_radius(name)
        if k is not None and k in values.fid:
            result.metrics[name] = values.fid[k]
    return True


def _world_truths(cfg: RunConfig, eval_split: Any) -> Any:
    from lafite.data.world import World

    world = World(
        cfg.world.domain,
        EVAL_SPLIT,
        resolution=cfg.data.resolution,
        seed=cfg.world.seed,
        size=cfg.world.n_test,
    )
    if len(world) != len(eval_split):
        raise UserError(
            f"the world's test split has {len(world)} images but the evaluation dataset has "
            f"{len(eval_split)}; delete the materialised world folder under the workspace and "
            "run again"
        )
    return world


def _caption_accuracy_observer(cfg, stream, judge, caption_names):
    from lafite.metrics.soa import CaptionScore, caption_claims

    world = _world_truths(cfg, stream.captions.dataset)
    score = CaptionScore()
    truths: dict[int, Any] = {}

    def observe(images: torch.Tensor) -> None:
        with torch.no_grad():
            readings = judge.predict(images)
        for caption, source, reading in zip(stream.last_captions, stream.last_sources, readings):
            if source not in truths:
                truths[source] = world.truth(source)
            score.update(caption_claims(caption, truths[source]), reading)

    def finish(result: EvaluationResult) -> None:
        # Asking for caption-accuracy reports its parts too: training's conditioning check.
        from lafite.data.world import FACE_DOMAINS

        parts = ({**CAPTION_METRICS, **FACE_CAPTION_METRICS} if cfg.world.domain in FACE_DOMAINS
                 else CAPTION_METRICS)
        wanted = set(caption_names)
        if "caption-accuracy" in wanted:
            wanted |= set(parts)
        for name, part in {**CAPTION_METRICS, **FACE_CAPTION_METRICS}.items():
            if name not in wanted:
                continue
            value = score.accuracy(part)
            if value is None:
                result.not_computed[name] = (
                    f"no caption of the {cfg.world.domain} domain names this attribute"
                )
            else:
                result.metrics[name] = value
        result.details["caption-claims"] = dict(score.named)

    return observe, finish


def _alignment_observer(cfg, stream, train_clip, workspace, eval_split, names, device):
    from lafite.metrics.alignment import AlignmentScore, is_training_clip

    ev = cfg.eval
    same_clip = is_training_clip(ev.alignment_clip, ev.alignment_clip_pretrained, cfg.clip)
    # The run's CLIP scores its own training signal only where it made the conditions; under a
    # text-only encoder (Table 6's RoBERTa rows) it never saw training and is an outside judge,
    # and the conditions are not in its space: it encodes the captions itself.
    diagnostic = same_clip and cfg.encoder.name == "clip"
    if same_clip:
        scorer = train_clip
    else:
        from lafite.clip import load_clip

        scorer = load_clip(
            ClipConfig(name=ev.alignment_clip, pretrained=ev.alignment_clip_pretrained),
            workspace,
            cfg.data.resolution,
            device=str(device),
        )

    pool = None
    pool_reason = None
    if "R-precision" in names:
        pool, pool_reason = _candidate_pool(scorer, eval_split, ev)
    score = AlignmentScore(pool, ev.r_precision_candidates, ev.seed)

    def observe(images: torch.Tensor) -> None:
        image_features = scorer.encode_images(images)
        if diagnostic:
            caption_features = stream.last_conditions
        else:
            caption_features = scorer.encode_texts(stream.last_captions)
        # CLIP score: against the condition; for text conditions that is the caption feature.
        score.update(image_features, caption_features, caption_features, stream.last_sources)

    def finish(result: EvaluationResult) -> None:
        values = {"CLIP-score": score.clip_score(), "R-precision": score.r_precision()}
        for name in names:
            if name == "R-precision" and pool is None:
                result.not_computed[name] = pool_reason or "no candidate captions"
            elif values[name] is None:
                result.not_computed[name] = "no generated images were scored"
            else:
                result.metrics[name] = float(values[name])  # type: ignore[arg-type]
                if diagnostic:
                    result.labels[name] = DIAGNOSTIC_LABEL
        result.details["alignment-clip"] = getattr(scorer, "id", ev.alignment_clip or "training")

    return observe, finish


def _candidate_pool(scorer, eval_split, ev) -> tuple[Any, str | None]:
    from lafite.metrics.alignment import CandidatePool

    need = ev.r_precision_candidates
    if need < 2:
        return None, f"eval.r_precision_candidates must be at least 2, got {need}"
    count = len(eval_split)
    # One caption from each of up to MAX_POOL images (evenly spread over the split).
    picks = np.unique(np.linspace(0, count - 1, num=min(count, MAX_POOL)).round().astype(int))
    rng = np.random.default_rng(ev.seed + 1)
    captions, sources = [], []
    for index in picks:
        options = eval_split.captions(int(index))
        if options:
            captions.append(options[int(rng.integers(len(options)))])
            sources.append(int(index))
    if len(captions) < need:
        return None, (
            f"R-precision needs {need} candidate captions from distinct images "
            f"(eval.r_precision_candidates) but the evaluation split has {len(captions)}"
        )
    features = []
    for start in range(0, len(captions), 256):
        features.append(scorer.encode_texts(captions[start : start + 256]).float().cpu())
    return CandidatePool(torch.cat(features), np.asarray(sources)), None


def _soa(cfg, soa_names, G_ema, clip, eval_split, get_inspector, device, n, result) -> None:
    from lafite.metrics.soa import (
        InspectorDetector,
        caption_subsets,
        compute_soa,
        load_detector,
    )

    ev = cfg.eval
    if cfg.data.dataset == "world":
        judge, reason = get_inspector()
        if judge is None:
            for name in soa_names:
                result.not_computed[name] = reason
            return
        from lafite.data.world import SHAPE_WORDS, SHAPES

        detector = InspectorDetector(judge, SHAPES)
        class_words = {shape: SHAPE_WORDS[shape] for shape in SHAPES}
        single_image_classes: tuple[str, ...] = ()
    elif ev.soa_detector:
        detector = load_detector(ev.soa_detector)
        words = getattr(detector, "class_words", None) or {}
        class_words = {c: tuple(words.get(c, (c,))) for c in detector.classes}
        single_image_classes = ("person",)
    else:
        for name in soa_names:
            result.not_computed[name] = (
                "SOA needs an object detector: set eval.soa_detector to 'module:factory' "
                "returning the YOLOv3 detector of the SOA protocol (Hinz et al.) wrapped as "
                "lafite.metrics.soa.Detector"
            )
        return

    per_class = ev.soa_captions_per_class
    if per_class == 0 and cfg.data.dataset == "world":
        # Every naming caption of the world's test split would mean ~30,000 SOA images at mini
        # scale; instead take enough captions per class for about eval.n_samples images.
        per_class = max(1, -(-n // (len(class_words) * max(1, ev.soa_images_per_caption))))
    all_captions = (c for i in range(len(eval_split)) for c in eval_split.captions(i))
    subsets = caption_subsets(all_captions, class_words, per_class=per_class, seed=ev.seed)
    if not any(subsets.values()):
        for name in soa_names:
            result.not_computed[name] = "no caption of the evaluation split names any class"
        return
    rng = np.random.RandomState(ev.seed + 2)

    @torch.no_grad()
    def render(captions: list[str]) -> torch.Tensor:
        z = torch.from_numpy(rng.randn(len(captions), int(G_ema.z_dim)).astype(np.float32))
        conditions = clip.encode_texts(captions).to(device, torch.float32)
        images = G_ema(
            z.to(device),
            conditions,
            truncation_psi=ev.truncation_psi,
            noise_mode=ev.noise_mode,
        )
        return to_uint8(images)

    # The synthesis noise (noise_mode "random") draws from torch's global generator, which the
    # metrics before SOA advance by different amounts (e.g. only the first evaluation computes
    # the FID reference statistics): seed it here so that SOA depends on the model alone.
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(ev.seed + 3)
        soa = compute_soa(
            subsets,
            render,
            detector,
            images_per_caption=ev.soa_images_per_caption,
            single_image_classes=single_image_classes,
            batch_size=ev.batch,
        )
    # Percentages, as Hinz et al. and the paper's tables print them.
    values = {"SOA-C": 100.0 * soa.soa_c, "SOA-I": 100.0 * soa.soa_i}
    for name in soa_names:
        result.metrics[name] = values[name]
    result.details["SOA-per-class"] = soa.per_class
    result.details["SOA-images-per-class"] = soa.images_per_class
    if soa.skipped_classes:
        result.details["SOA-classes-without-captions"] = list(soa.skipped_classes)


__all__ = [
    "METRICS",
    "CaptionStream",
    "EvalCaptions",
    "EvaluationResult",
    "evaluate_generator",
    "evaluate_run",
    "requested_metrics",
    "to_uint8",
]
