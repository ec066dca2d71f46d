"""Artifacts that rows need, built once and shared between rows and tables.

Some rows cannot start before another piece of training is done: every mini-scale run needs the
world's CLIP (its condition space) and the world's inspector (its judge); LAFITE_NN rows need the
inference model of Eq. 2 trained on the CC3M analogue; fine-tuning rows need a pre-trained
generator; Table 1's captioning baseline needs the captions a captioner wrote for its training
images. Each such job is defined once in ``experiments/jobs.yaml`` and resolved for the run
that needs it (its scale, resolution and CLIP), which gives it a configuration hash. The artifact
lives under ``<workspace>/models/jobs/<name>-<hash>/`` and is built at most once for that hash:
a file lock makes a second process wait for the first one's build instead of repeating it, and a
``done.json`` marker written last tells a finished build from one killed half-way.

The world's CLIP and inspector are implicit jobs: a run needs them whenever ``clip.name`` is
``world`` or ``eval.extractor`` is ``inspector``; their builders cache by their own hash, the lock
here only keeps two processes from training them at the same time.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lafite.config import RunConfig
from lafite.errors import ConfigError, UserError
from lafite.locks import exclusive
from lafite.workspace import Workspace

KINDS = ("world-clip", "inspector", "inference-model", "generator", "captioner", "world-text")
_JOB_KEYS = {"kind", "description", "set", "scales", "from", "dataset"}


@dataclass(frozen=True)
class JobDefinition:
    """One entry of jobs.yaml: what to build, with per-scale overrides."""

    name: str
    kind: str
    description: str = ""
    settings: dict[str, Any] = field(default_factory=dict)
    scales: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Generator jobs: the spec row whose recipe (at the needing run's scale) the pre-training
    # starts from, {"spec": "table5", "row": "..."}, and the dataset it trains on (a real
    # dataset id, resolved to its world analogue at the world scales).
    source: dict[str, str] = field(default_factory=dict)
    dataset: str = ""


@dataclass(frozen=True)
class Job:
    """A job resolved for one run: everything that determines its artifact, and its hash."""

    name: str
    kind: str
    scale: str
    resolution: int
    settings: dict[str, Any]
    # The condition space the artifact must live in (name, pretrained): a model trained on
    # features of one CLIP is useless with another.
    clip: dict[str, Any]
    # The configuration the job's data (and, for generators, its training run) is read from.
    config: RunConfig | None = None
    # For the implicit jobs, the builder's own cache key (world CLIP or inspector: code version,
    # network and training settings), so that a change there makes a new job, not a stale hit.
    builder_key: str = ""

    @property
    def hash(self) -> str:
        blob = json.dumps(
            {
                "name": self.name,
                "kind": self.kind,
                "scale": self.scale,
                "resolution": self.resolution,
                "settings": self.settings,
                "clip": self.clip,
                "config": self.config.hash() if self.config else None,
                **({"builder_key": self.builder_key} if self.builder_key else {}),
            },
            sort_keys=True,
            default=str,
        )
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    @property
    def label(self) -> str:
        return f"{self.name} ({self.kind}, {self.resolution}px)"

    def folder(self, workspace: Workspace) -> Path:
        return workspace.models_dir / "jobs" / f"{self.name}-{self.hash}"


# -- definitions -------------------------------------------------------------------------------


def jobs_file() -> Path:
    from lafite.spec import experiments_dirs

    for folder in experiments_dirs():
        if (folder / "jobs.yaml").is_file():
            return folder / "jobs.yaml"
    raise UserError("experiments/jobs.yaml not found: run from the repository checkout")


def load_definitions(path: Path | None = None) -> dict[str, JobDefinition]:
    """Read and validate jobs.yaml (errors name the file, the job and the key)."""
    from lafite.spec import SCALES, SpecError

    path = path or jobs_file()
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise SpecError(f"{where}: YAML syntax error: {getattr(exc, 'problem', exc)}") from None
    if not isinstance(data, dict) or set(data) != {"jobs"} or not isinstance(data["jobs"], dict):
        raise SpecError(f"{path}: expected one top-level key 'jobs' mapping names to jobs")
    out: dict[str, JobDefinition] = {}
    for name, body in data["jobs"].items():
        where = f"{path}: jobs.{name}"
        if not isinstance(body, dict):
            raise SpecError(f"{where}: expected a mapping with 'kind'")
        unknown = set(body) - _JOB_KEYS
        if unknown:
            raise SpecError(
                f"{where}: unknown key(s) {', '.join(sorted(unknown))}; valid: {', '.join(sorted(_JOB_KEYS))}"
            )
        if body.get("kind") not in KINDS:
            raise SpecError(f"{where}.kind: must be one of {', '.join(KINDS)}, got {body.get('kind')!r}")
        source = body.get("from") or {}
        if source and (not isinstance(source, dict) or set(source) != {"spec", "row"}
                       or not all(isinstance(v, str) for v in source.values())):
            raise SpecError(f"{where}.from: expected {{spec: <table id>, row: <row name>}}")
        if source and body["kind"] != "generator":
            raise SpecError(f"{where}.from: only generator jobs start from a spec row")
        dataset = body.get("dataset", "")
        if dataset:
            from lafite.data.datasets import REAL_DATASETS

            if dataset not in REAL_DATASETS:
                raise SpecError(
                    f"{where}.dataset: unknown dataset {dataset!r}; valid: {', '.join(REAL_DATASETS)}"
                )
        scales = body.get("scales") or {}
        for scale in scales:
            if scale not in SCALES:
                raise SpecError(f"{where}.scales.{scale}: unknown scale; valid: {', '.join(SCALES)}")
        if body["kind"] == "captioner":
            if dataset:
                raise SpecError(f"{where}.dataset: a captioner captions the training images of "
                                "the run that needs it; remove 'dataset'")
            from lafite.captioners import captioner_settings

            for scale in SCALES:
                captioner_settings({**(body.get("set") or {}), **(scales.get(scale) or {})},
                                   f"{where} (scale {scale})")
        out[name] = JobDefinition(
            name=name,
            kind=body["kind"],
            description=body.get("description", ""),
            settings=dict(body.get("set") or {}),
            scales={k: dict(v or {}) for k, v in scales.items()},
            source=dict(source),
            dataset=dataset,
        )
    return out


# Knobs of the run that a job inherits: the condition space (CLIP), the image size and where
# data lives. Everything else comes from the job's own settings, so that rows which differ only
# in the method (losses, perturbation) share one job.
_INHERITED = ("scale", "data.resolution", "data.data_root", "clip.name", "clip.pretrained",
              "clip.real_crop", "clip.world_seed", "clip.world_patch_size", "world.seed",
              "train.device", "train.precision")
# Settings of an inference-model job that go to perturb.train_inference_model; the others are
# RunConfig overrides naming the paired data it is trained on.
_INFERENCE_KNOBS = ("steps", "batch", "lr", "seed")
# What a captioner job does not take from the run's data.* and world.*: how the run uses its
# captions, not which images it captions.
_NOT_CAPTIONED = ("data.captions_job", "data.captions_file", "data.paired_fraction",
                  "data.paired_split", "data.mirror")


def _named_jobs(cfg: RunConfig) -> list[str]:
    """The jobs a run names through its configuration, in build order."""
    return [j for j in (cfg.perturb.nn_job, cfg.train.init_job, cfg.data.captions_job) if j]


def condition_space(cfg: RunConfig) -> dict[str, Any]:
    """What identifies the run's CLIP: its name and weights, and for the world's CLIP its
    builder key (its training recipe), since a retrained world CLIP keeps name and tag."""
    space = {"name": cfg.clip.name, "pretrained": cfg.clip.pretrained}
    if cfg.clip.name == "world":
        space["world_clip"] = _world_clip_key(cfg)
    return space


def _world_clip_key(cfg: RunConfig) -> str:
    from lafite.helper_keys import world_clip_config, world_clip_key

    resolution = cfg.data.resolution
    return world_clip_key(resolution, cfg.clip.world_seed,
                          world_clip_config(resolution, cfg.clip.world_patch_size))


def run_job_hashes(cfg: RunConfig, definitions: dict[str, JobDefinition] | None = None
                   ) -> dict[str, str]:
    """The hashes that extend a run's configuration hash: the jobs it names (perturb.nn_job,
    train.init_job, data.captions_job) and the world CLIP it trains with, so that results made
    with an older inference model, captioner or condition space are never taken for this run's.
    The inspector is left out: it judges a run, it does not train it (its key is tagged on every
    run)."""
    hashes: dict[str, str] = {}
    named = _named_jobs(cfg)
    if named:
        definitions = definitions if definitions is not None else load_definitions()
        hashes = {j: resolve(j, cfg, definitions).hash for j in named}
    if cfg.clip.name == "world":
        hashes["world-clip"] = condition_space(cfg)["world_clip"]
    if cfg.encoder.name.startswith("world-text"):
        from lafite.helper_keys import world_text_key

        hashes[cfg.encoder.name] = world_text_key(cfg.encoder.name)
    return hashes


def resolve(name: str, cfg: RunConfig, definitions: dict[str, JobDefinition] | None = None) -> Job:
    """The job ``name`` as the run ``cfg`` needs it (its scale, resolution and CLIP)."""
    definitions = definitions if definitions is not None else load_definitions()
    if name not in definitions:
        raise UserError(
            f"unknown job {name!r} (named by perturb.nn_job, train.init_job or "
            "data.captions_job). "
            f"Jobs in experiments/jobs.yaml: {', '.join(definitions)}"
        )
    definition = definitions[name]
    settings = {**definition.settings, **definition.scales.get(cfg.scale, {})}
    flat = cfg.flat()
    inherited = {key: flat[key] for key in _INHERITED if key in flat}
    where = f"experiments/jobs.yaml: jobs.{name}"
    config_overrides = settings
    if definition.kind == "inference-model":
        config_overrides = {k: v for k, v in settings.items() if k not in _INFERENCE_KNOBS}
        settings = {k: v for k, v in settings.items() if k in _INFERENCE_KNOBS}
    elif definition.kind == "captioner":
        # A captioner captions the run's training images: it takes the run's data and world
        # (which images), and its settings are the captioner's own.
        from lafite.captioners import captioner_settings

        inherited.update({k: v for k, v in flat.items()
                          if k.startswith(("data.", "world.")) and k not in _NOT_CAPTIONED})
        config_overrides = {}
        settings = captioner_settings(settings, where)
    else:
        settings = {}
    start = RunConfig()
    if definition.kind == "generator":
        # A pre-trained generator must fit the run that starts from it tensor for tensor: it
        # takes the run's architecture as well as its condition space.
        inherited.update({k: v for k, v in flat.items() if k.startswith("model.")})
        if definition.source:
            start = _source_config(definition, cfg.scale, where)
    try:
        config = start.override(inherited, where=where)
        if definition.dataset:
            from lafite.data.datasets import dataset_overrides

            config = config.override(dataset_overrides(config, definition.dataset), where=where)
        config = config.override(config_overrides, where=where).checked(where)
    except ConfigError as exc:
        raise UserError(str(exc)) from None
    return Job(
        name=name,
        kind=definition.kind,
        scale=cfg.scale,
        resolution=cfg.data.resolution,
        settings=settings,
        clip=condition_space(cfg),
        config=config,
    )


def _source_config(definition: JobDefinition, scale: str, where: str) -> RunConfig:
    """The resolved configuration of the spec row a generator job starts from, at ``scale``."""
    from lafite.spec import find

    spec = find(definition.source["spec"])
    try:
        row = spec.row(definition.source["row"])
    except UserError as exc:
        raise UserError(f"{where}.from: {exc}") from None
    if row.reference:
        raise UserError(f"{where}.from: {row.name!r} is a reference row; name a trainable row")
    return spec.resolve(row, scale)


def needed_jobs(cfg: RunConfig, definitions: dict[str, JobDefinition] | None = None) -> list[Job]:
    """Every job a run needs before it can start, in build order (CLIP before its users)."""
    jobs: list[Job] = []
    clip = {"name": cfg.clip.name, "pretrained": cfg.clip.pretrained}
    resolution = cfg.data.resolution
    if cfg.clip.name == "world":
        settings: dict[str, Any] = {"seed": cfg.clip.world_seed}
        if cfg.clip.world_patch_size:
            settings["patch_size"] = cfg.clip.world_patch_size
        jobs.append(Job("world-clip", "world-clip", "any", resolution, settings, clip,
                        builder_key=_world_clip_key(cfg)))
    if cfg.eval.extractor == "inspector":
        from lafite.helper_keys import inspector_key

        jobs.append(Job("inspector", "inspector", "any", resolution, {}, {},
                        builder_key=inspector_key(resolution)))
    if cfg.encoder.name.startswith("world-text"):
        from lafite.helper_keys import world_text_key

        # An implicit job like the world CLIP: the text-only encoder of the run's conditions.
        jobs.append(Job(cfg.encoder.name, "world-text", "any", resolution, {}, {},
                        builder_key=world_text_key(cfg.encoder.name)))
    for name in _named_jobs(cfg):
        jobs.append(resolve(name, cfg, definitions))
    return jobs


# -- building ----------------------------------------------------------------------------------


def artifact_path(job: Job, workspace: Workspace) -> Path | None:
    """The built artifact of ``job``, or None if it has not been built (completely)."""
    marker = job.folder(workspace) / "done.json"
    if not marker.is_file():
        return None
    artifact = Path(json.loads(marker.read_text())["artifact"])
    return artifact if artifact.exists() else None  # deleted by hand: build it again


def job_artifact(name: str, cfg: RunConfig, workspace: Workspace) -> Path:
    """The artifact of the job ``name`` for the run ``cfg``, building it if needed.

    This is what training calls to find ``perturb.nn_job`` or ``train.init_job``.
    """
    return ensure(resolve(name, cfg), workspace)


def ensure(job: Job, workspace: Workspace, progress: bool = True) -> Path:
    """Build ``job`` unless it is built; wait for another process that is building it."""
    found = artifact_path(job, workspace)
    if found is not None:
        return found
    folder = job.folder(workspace)
    with exclusive(workspace.locks_dir / f"job-{job.name}-{job.hash}.lock"):
        found = artifact_path(job, workspace)  # built while we waited for the lock
        if found is not None:
            return found
        folder.mkdir(parents=True, exist_ok=True)
        artifact = BUILDERS[job.kind](job, workspace, folder, progress)
        (folder / "job.json").write_text(
            json.dumps({"name": job.name, "kind": job.kind, "hash": job.hash,
                        "resolution": job.resolution, "settings": job.settings,
                        "clip": job.clip}, indent=2, default=str)
        )
        tmp = folder / "done.json.tmp"
        tmp.write_text(json.dumps({"artifact": str(artifact)}))
        os.replace(tmp, folder / "done.json")
        return artifact


def _build_world_clip(job: Job, workspace: Workspace, folder: Path, progress: bool) -> Path:
    from lafite.clip import pretrain_world_clip

    return Path(pretrain_world_clip(workspace, job.resolution, progress=progress, **job.settings))


def _build_inspector(job: Job, workspace: Workspace, folder: Path, progress: bool) -> Path:
    from lafite.data.inspector import train_inspector

    return Path(train_inspector(workspace, job.resolution, progress=progress))


def _build_inference_model(job: Job, workspace: Workspace, folder: Path, progress: bool) -> Path:
    """Eq. 2's inference model, fitted on CLIP features of the job's paired data."""
    import numpy as np
    import torch

    from lafite.clip import FeatureCache, load_clip
    from lafite.data.datasets import open_dataset
    from lafite.perturb import save_inference_model, train_inference_model

    assert job.config is not None
    cfg = job.config
    dataset = open_dataset(cfg, "train", workspace)
    encoder = load_clip(cfg.clip, workspace, cfg.data.resolution)
    cache = FeatureCache(workspace)
    # The cache hands out read-only memmaps; training wants its own writable copies.
    image_feats = torch.from_numpy(np.array(cache.image_features(dataset, encoder)))
    text_feats, offsets = cache.text_features(dataset, encoder)
    counts = torch.as_tensor(offsets[1:] - offsets[:-1]).long()
    # One pair per caption: repeat each image's feature for each of its captions.
    paired_images = torch.repeat_interleave(image_feats, counts, dim=0)
    model, summary = train_inference_model(
        paired_images, torch.from_numpy(np.array(text_feats)), progress=progress, **job.settings
    )
    (folder / "summary.json").write_text(json.dumps(summary, indent=2))
    return save_inference_model(model, folder / "inference_model.pt")


def _build_generator(job: Job, workspace: Workspace, folder: Path, progress: bool) -> Path:
    """Pre-train a generator. It trains in the run folder of its configuration, the folder a
    table row of the same configuration trains in: a pre-training that equals a row (Figure 7's
    language-free model is Table 5's full LAFITE_G row at the same scale) is trained once."""
    from lafite.spec import run_hash
    from lafite.train import train_run

    assert job.config is not None
    if job.config.train.init_job or job.config.perturb.nn_job:
        raise UserError(f"generator job {job.name!r} cannot itself need a job (init_job, nn_job)")
    run_dir = workspace.runs_dir / run_hash(job.config, run_job_hashes(job.config))
    result = train_run(job.config, run_dir, workspace, None)
    (folder / "run.json").write_text(json.dumps({"run_dir": str(run_dir),
                                                 "kimg": result.kimg}, indent=2))
    return Path(result.final_checkpoint)


def _build_captioner(job: Job, workspace: Workspace, folder: Path, progress: bool) -> Path:
    """A world captioner trained on the web domain; the artifact is the captions file of the
    needing run's training images (lafite.data.captions format)."""
    from lafite.captioners import build_captioner

    assert job.config is not None
    return build_captioner(job.config, job.settings, workspace, folder, progress, name=job.name)


def _build_world_text(job: Job, workspace: Workspace, folder: Path, progress: bool) -> Path:
    from lafite.encoders.world_text import pretrain_world_text

    return pretrain_world_text(workspace, job.name, progress=progress) / "model.pt"


BUILDERS: dict[str, Callable[[Job, Workspace, Path, bool], Path]] = {
    "world-clip": _build_world_clip,
    "inspector": _build_inspector,
    "inference-model": _build_inference_model,
    "generator": _build_generator,
    "captioner": _build_captioner,
    "world-text": _build_world_text,
}

__all__ = [
    "KINDS",
    "Job",
    "JobDefinition",
    "artifact_path",
    "ensure",
    "job_artifact",
    "load_definitions",
    "needed_jobs",
    "resolve",
]
