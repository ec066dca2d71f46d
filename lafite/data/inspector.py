"""The world's inspector: an independent judge of world images, real or generated.

Why: at ``mini`` and ``smoke`` scale there is no Inception network and no SOA object detector,
and the world's small CLIP cannot stand in for them because it is a training signal (L_ConG): a
generator learns to please it, so scores it gives can be gamed (a feasibility run reached 98%
R-precision with the training CLIP on striped colour blobs). The inspector is a small CNN trained
with supervision on the world's ground truth and never used as a training signal. It gives

- ``features``: penultimate activations, for FID and KID (the Inception pool3 analogue);
- ``class_logits``: log-probabilities over :data:`IS_CLASSES`, for IS: the main object's
  (shape, colour) classes, then the faces' (hair, expression, accessory) classes;
- ``predict``: background, main object, per-region objects and the set of shapes present, for
  the SOA analogue and caption accuracy, and for face images the face's attributes.

Face images (the ``faces`` domain and the faces among ``web`` images) train the face heads and
an is-a-face head; object heads never learn from faces and face heads never from object images
(their loss is masked), the background head learns from both.

Training images are rendered on the fly (cheap) with mild augmentation (shifts, blur, noise,
small colour changes) so that the judge stays sensible on imperfect generated images. Weights are
cached in the workspace under a hash of the world version and the training config: the first call
trains, later calls return at once.
"""

from __future__ import annotations

import math
import os
import pickle
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lafite.atomic import atomic_write
from lafite.data.world import (
    ACCESSORIES,
    BACKGROUNDS,
    COLOURS,
    EXPRESSIONS,
    EYE_COLOURS,
    HAIR_COLOURS,
    POSITIONS,
    SHAPES,
    SIZES,
    WORLD_VERSION,
    FaceTruth,
    SceneTruth,
    Truth,
    World,
    WorldObject,
)
from lafite.errors import UserError
from lafite.helper_keys import (
    INSPECTOR_VERSION,
    InspectorConfig,
    default_inspector_config,
    inspector_key,
    inspector_path,
)
from lafite.workspace import Workspace

_HEADS = (
    ("background", len(BACKGROUNDS)),
    ("main_shape", len(SHAPES)),
    ("main_colour", len(COLOURS)),
    ("main_size", len(SIZES)),
    ("main_position", len(POSITIONS)),
    ("region_present", len(POSITIONS)),
    ("region_shape", len(POSITIONS) * len(SHAPES)),
    ("region_colour", len(POSITIONS) * len(COLOURS)),
    ("region_size", len(POSITIONS) * len(SIZES)),
    ("shapes_present", len(SHAPES)),
    ("is_face", 1),
    ("face_hair", len(HAIR_COLOURS)),
    ("face_eyes", len(EYE_COLOURS)),
    ("face_expression", len(EXPRESSIONS)),
    ("face_accessory", len(ACCESSORIES)),
)
_OBJECT_CE_HEADS = ("main_shape", "main_colour", "main_size", "main_position")
_FACE_HEADS = ("face_hair", "face_eyes", "face_expression", "face_accessory")
# IS classes: the main object's (shape, colour) pairs.
MAIN_CLASSES = tuple(f"{colour} {shape}" for shape in SHAPES for colour in COLOURS)
# A face's IS class: (hair, expression, accessory). Eye colour is left out: the eyes are the
# smallest part (2-3 px at 32 px), so a generated face's class would hinge on a few pixels.
FACE_CLASSES = tuple(
    f"{expression} {hair}-haired face" + ("" if accessory == "none" else f" with {accessory}")
    for hair in HAIR_COLOURS
    for expression in EXPRESSIONS
    for accessory in ACCESSORIES
)
IS_CLASSES = MAIN_CLASSES + FACE_CLASSES


@dataclass(frozen=True)
class FaceReading:
    """What the inspector sees in a face image; ``confidence`` is its belief that it is a face."""

    hair: str
    eyes: str
    expression: str
    accessory: str
    confidence: float = 1.0


@dataclass(frozen=True)
class InspectorReading:
    """What the inspector sees in one image (``objects`` by region, main object first).

    ``face`` is set when the inspector reads the image as a face (the object fields are then
    still filled, but meaningless).
    """

    background: str
    main: WorldObject
    objects: tuple[WorldObject, ...]
    shapes: frozenset[str]
    main_confidence: float = 1.0
    face: FaceReading | None = None


class Inspector(nn.Module):
    """A small CNN; resolution-specific (extra stride-2 stem layers above 32 px)."""

    def __init__(self, resolution: int, config: InspectorConfig | None = None) -> None:
        super().__init__()
        self.resolution = int(resolution)
        self.config = config or InspectorConfig()
        w = self.config.width
        layers: list[nn.Module] = []
        channels = 3
        # Bring anything above 32 px down to 32 px with learned stride-2 layers; below 32 px the
        # adaptive pool simply sees a coarser grid.
        for _ in range(max(0, int(round(math.log2(self.resolution / 32))))):
            layers += _conv(channels, w, stride=2)
            channels = w
        for out_channels, stride in (
            (w, 1),
            (w, 2),
            (2 * w, 1),
            (2 * w, 2),
            (4 * w, 1),
            (4 * w, 2),
        ):
            layers += _conv(channels, out_channels, stride)
            channels = out_channels
        layers.append(nn.AdaptiveAvgPool2d(4))
        self.trunk = nn.Sequential(*layers)
        self.embed = nn.Sequential(
            nn.Flatten(), nn.Linear(channels * 16, self.config.feature_dim), nn.ReLU()
        )
        self.heads = nn.Linear(self.config.feature_dim, sum(n for _, n in _HEADS))
        self.metrics: dict[str, float] = {}

    @property
    def feature_dim(self) -> int:
        return self.config.feature_dim

    @property
    def device(self) -> torch.device:
        return self.heads.weight.device

    # -- raw network ---------------------------------------------------------------------------
    def _prepare(self, x_uint8: torch.Tensor) -> torch.Tensor:
        if isinstance(x_uint8, np.ndarray):
            x_uint8 = torch.from_numpy(x_uint8)
        if x_uint8.ndim == 4 and x_uint8.shape[-1] == 3 and x_uint8.shape[1] != 3:
            x_uint8 = x_uint8.permute(0, 3, 1, 2)  # accept NHWC arrays as well
        x = x_uint8.to(self.device, torch.float32) / 127.5 - 1.0
        if x.shape[-1] != self.resolution or x.shape[-2] != self.resolution:
            x = F.interpolate(
                x, size=(self.resolution, self.resolution), mode="bilinear", antialias=True
            )
        return x

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.embed(self.trunk(x))

    def _split(self, out: torch.Tensor) -> dict[str, torch.Tensor]:
        parts = dict(zip([n for n, _ in _HEADS], out.split([k for _, k in _HEADS], dim=1)))
        n = out.shape[0]
        parts["region_shape"] = parts["region_shape"].reshape(n, len(POSITIONS), len(SHAPES))
        parts["region_colour"] = parts["region_colour"].reshape(n, len(POSITIONS), len(COLOURS))
        parts["region_size"] = parts["region_size"].reshape(n, len(POSITIONS), len(SIZES))
        parts["is_face"] = parts["is_face"].reshape(n)
        return parts

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Float NCHW in [-1, 1] at the inspector's resolution → head logits (for training)."""
        features = self._embed(x)
        parts = self._split(self.heads(features))
        parts["features"] = features
        return parts

    # -- judging API (uint8 in, eval mode, no grad) --------------------------------------------
    def _run(self, x_uint8: torch.Tensor) -> dict[str, torch.Tensor]:
        was_training = self.training
        self.eval()
        try:
            with torch.no_grad():
                return self.forward(self._prepare(x_uint8))
        finally:
            self.train(was_training)

    def features(self, x_uint8: torch.Tensor) -> torch.Tensor:
        """(N, F) penultimate features of uint8 NCHW images (any size; resized if needed)."""
        return self._run(x_uint8)["features"].float()

    def class_logits(self, x_uint8: torch.Tensor) -> torch.Tensor:
        """(N, K) log-probabilities over :data:`IS_CLASSES`.

        The first ``len(MAIN_CLASSES)`` columns are the main object's shape x colour, the rest
        :data:`FACE_CLASSES` (a face's hair x expression x accessory). Each part is a product of
        per-attribute softmaxes, weighted by the is-a-face probability (objects by its
        complement), so the K probabilities sum to one and a softmax over these logs (what IS
        applies) leaves them unchanged.
        """
        out = self._run(x_uint8)
        return _is_log_probs(out)

    def predict(self, x_uint8: torch.Tensor) -> list[InspectorReading]:
        out = self._run(x_uint8)
        background = out["background"].argmax(1).tolist()
        shape = out["main_shape"].argmax(1).tolist()
        colour = out["main_colour"].argmax(1).tolist()
        size = out["main_size"].argmax(1).tolist()
        position = out["main_position"].argmax(1).tolist()
        confidence = (
            out["main_shape"].softmax(1).amax(1) * out["main_colour"].softmax(1).amax(1)
        ).tolist()
        present = (out["region_present"] > 0).tolist()
        region_shape = out["region_shape"].argmax(2).tolist()
        region_colour = out["region_colour"].argmax(2).tolist()
        region_size = out["region_size"].argmax(2).tolist()
        shapes_present = (out["shapes_present"] > 0).tolist()
        face_prob = torch.sigmoid(out["is_face"]).tolist()
        face_values = {
            name: out[name].argmax(1).tolist() for name in _FACE_HEADS
        }
        readings = []
        for i in range(len(background)):
            main = WorldObject(
                SHAPES[shape[i]], COLOURS[colour[i]], SIZES[size[i]], POSITIONS[position[i]]
            )
            others = tuple(
                WorldObject(
                    SHAPES[region_shape[i][r]],
                    COLOURS[region_colour[i][r]],
                    SIZES[region_size[i][r]],
                    POSITIONS[r],
                )
                for r in range(len(POSITIONS))
                if present[i][r] and POSITIONS[r] != main.position
            )
            face = None
            if face_prob[i] > 0.5:
                face = FaceReading(
                    hair=HAIR_COLOURS[face_values["face_hair"][i]],
                    eyes=EYE_COLOURS[face_values["face_eyes"][i]],
                    expression=EXPRESSIONS[face_values["face_expression"][i]],
                    accessory=ACCESSORIES[face_values["face_accessory"][i]],
                    confidence=float(face_prob[i]),
                )
            readings.append(
                InspectorReading(
                    background=BACKGROUNDS[background[i]],
                    main=main,
                    objects=(main, *others),
                    shapes=frozenset(s for s, on in zip(SHAPES, shapes_present[i]) if on),
                    main_confidence=float(confidence[i]),
                    face=face,
                )
            )
        return readings


def _conv(cin: int, cout: int, stride: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]


def _joint_log_probs(shape_logits: torch.Tensor, colour_logits: torch.Tensor) -> torch.Tensor:
    shape_lp = shape_logits.log_softmax(1)
    colour_lp = colour_logits.log_softmax(1)
    return (shape_lp[:, :, None] + colour_lp[:, None, :]).reshape(shape_lp.shape[0], -1)


def _face_joint_log_probs(out: dict[str, torch.Tensor]) -> torch.Tensor:
    """(N, len(FACE_CLASSES)) log-probabilities of hair x expression x accessory."""
    hair = out["face_hair"].log_softmax(1)
    expression = out["face_expression"].log_softmax(1)
    accessory = out["face_accessory"].log_softmax(1)
    joint = hair[:, :, None, None] + expression[:, None, :, None] + accessory[:, None, None, :]
    return joint.reshape(hair.shape[0], -1)


def _is_log_probs(out: dict[str, torch.Tensor]) -> torch.Tensor:
    objects = _joint_log_probs(out["main_shape"], out["main_colour"])
    objects = objects + F.logsigmoid(-out["is_face"])[:, None]
    faces = _face_joint_log_probs(out) + F.logsigmoid(out["is_face"])[:, None]
    return torch.cat([objects, faces], dim=1)


# -- labels and loss -----------------------------------------------------------------------------


IGNORE = -100


def _with_negatives(
    labels: dict[str, torch.Tensor], n_negatives: int
) -> dict[str, torch.Tensor]:
    """Labels extended by ``n_negatives`` object-free images: nothing present, no face, nothing
    else known."""
    out = {}
    for name, value in labels.items():
        extra_shape = (n_negatives, *value.shape[1:])
        if name in ("region_present", "shapes_present", "is_face"):
            extra = torch.zeros(extra_shape, dtype=value.dtype)
        elif name == "object_weight":  # the presence heads do learn "nothing here" from them
            extra = torch.ones(extra_shape, dtype=value.dtype)
        else:
            extra = torch.full(extra_shape, IGNORE, dtype=value.dtype)
        out[name] = torch.cat([value, extra])
    return out


def clutter_images(n: int, resolution: int, gen: torch.Generator) -> torch.Tensor:
    """Object-free images in [-1, 1]: white noise, smooth random colour fields, or a blend.

    They stand for what an untrained or collapsed generator makes; no world image looks like them.
    """
    grid = torch.randint(2, 9, (), generator=gen).item()
    field = torch.rand(n, 3, grid, grid, generator=gen) * 2 - 1
    smooth = F.interpolate(field, size=(resolution, resolution), mode="bilinear", align_corners=False)
    white = torch.randn(n, 3, resolution, resolution, generator=gen) * 0.6
    blend = torch.rand(n, 1, 1, 1, generator=gen)
    return (blend * smooth + (1 - blend) * white).clamp(-1, 1)


# The image-level attributes, each with its classes in label order.
MAIN_ATTRIBUTES = {
    "background": BACKGROUNDS,
    "main_shape": SHAPES,
    "main_colour": COLOURS,
    "main_size": SIZES,
    "main_position": POSITIONS,
}
# The same for face images (the attribute names of FaceTruth).
FACE_ATTRIBUTES = {
    "background": BACKGROUNDS,
    "hair": HAIR_COLOURS,
    "eyes": EYE_COLOURS,
    "expression": EXPRESSIONS,
    "accessory": ACCESSORIES,
}


def main_attribute_labels(truths: Sequence[SceneTruth]) -> dict[str, torch.Tensor]:
    """Class indices of the background and the main object's attributes (MAIN_ATTRIBUTES)."""
    if any(isinstance(t, FaceTruth) for t in truths):
        raise UserError(
            "main-object attributes need object images; faces have none "
            "(use face_attribute_labels for face images)"
        )
    reads = {
        "background": lambda t: t.background,
        "main_shape": lambda t: t.main.shape,
        "main_colour": lambda t: t.main.colour,
        "main_size": lambda t: t.main.size,
        "main_position": lambda t: t.main.position,
    }
    return {
        name: torch.tensor([MAIN_ATTRIBUTES[name].index(read(t)) for t in truths])
        for name, read in reads.items()
    }


def face_attribute_labels(truths: Sequence[FaceTruth]) -> dict[str, torch.Tensor]:
    """Class indices of a face image's attributes (FACE_ATTRIBUTES)."""
    if not all(isinstance(t, FaceTruth) for t in truths):
        raise UserError("face attributes need face images (FaceTruth); got object images")
    return {
        name: torch.tensor([values.index(getattr(t, name)) for t in truths])
        for name, values in FACE_ATTRIBUTES.items()
    }


def _labels(truths: Sequence[Truth]) -> dict[str, torch.Tensor]:
    """Targets of every head; a head's targets are IGNORE (or weight 0) on the other kind of
    image: object heads never learn from faces, face heads never from object images."""
    n, regions = len(truths), len(POSITIONS)
    background = torch.zeros(n, dtype=torch.long)
    main = {name: torch.full((n,), IGNORE, dtype=torch.long) for name in _OBJECT_CE_HEADS}
    face = {name: torch.full((n,), IGNORE, dtype=torch.long) for name in _FACE_HEADS}
    is_face = torch.zeros(n)
    present = torch.zeros(n, regions)
    shape = torch.zeros(n, regions, dtype=torch.long)
    colour = torch.zeros(n, regions, dtype=torch.long)
    size = torch.zeros(n, regions, dtype=torch.long)
    shapes_present = torch.zeros(n, len(SHAPES))
    for i, truth in enumerate(truths):
        background[i] = BACKGROUNDS.index(truth.background)
        if isinstance(truth, FaceTruth):
            is_face[i] = 1
            face["face_hair"][i] = HAIR_COLOURS.index(truth.hair)
            face["face_eyes"][i] = EYE_COLOURS.index(truth.eyes)
            face["face_expression"][i] = EXPRESSIONS.index(truth.expression)
            face["face_accessory"][i] = ACCESSORIES.index(truth.accessory)
            continue
        main["main_shape"][i] = SHAPES.index(truth.main.shape)
        main["main_colour"][i] = COLOURS.index(truth.main.colour)
        main["main_size"][i] = SIZES.index(truth.main.size)
        main["main_position"][i] = POSITIONS.index(truth.main.position)
        for obj in truth.objects:
            r = POSITIONS.index(obj.position)
            present[i, r] = 1
            shape[i, r] = SHAPES.index(obj.shape)
            colour[i, r] = COLOURS.index(obj.colour)
            size[i, r] = SIZES.index(obj.size)
            shapes_present[i, SHAPES.index(obj.shape)] = 1
    return {
        "background": background,
        **main,
        "region_present": present,
        "region_shape": shape,
        "region_colour": colour,
        "region_size": size,
        "shapes_present": shapes_present,
        # Whether the presence heads learn from the image (0 for faces).
        "object_weight": 1 - is_face,
        "is_face": is_face,
        **face,
    }


def _ce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    # F.cross_entropy is NaN when every target is ignored (a batch without faces, say).
    if not (target != IGNORE).any():
        return logits.sum() * 0.0
    return F.cross_entropy(logits, target, ignore_index=IGNORE)


def _weighted_bce(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    per_image = F.binary_cross_entropy_with_logits(logits, target, reduction="none").mean(1)
    return (per_image * weight).sum() / weight.sum().clamp(min=1.0)


def _loss(out: dict[str, torch.Tensor], labels: dict[str, torch.Tensor]) -> torch.Tensor:
    # IGNORE marks what an image cannot teach: object-free negatives have no background or main
    # object, faces no main object, object images no face.
    loss = sum(_ce(out[name], labels[name]) for name in ("background", *_OBJECT_CE_HEADS))
    # Face heads: summed over the faces, divided by the whole batch, so that the few faces of a
    # batch do not weigh as much as all its object images (that cost the object readings).
    n = labels["background"].shape[0]
    for name in _FACE_HEADS:
        valid = labels[name] != IGNORE
        if valid.any():
            loss = loss + F.cross_entropy(out[name][valid], labels[name][valid], reduction="sum") / n
    weight = labels["object_weight"]
    loss = loss + _weighted_bce(out["region_present"], labels["region_present"], weight)
    mask = labels["region_present"].bool()
    if mask.any():
        for name in ("region_shape", "region_colour", "region_size"):
            loss = loss + F.cross_entropy(out[name][mask], labels[name][mask])
    loss = loss + _weighted_bce(out["shapes_present"], labels["shapes_present"], weight)
    loss = loss + F.binary_cross_entropy_with_logits(out["is_face"], labels["is_face"])
    return loss


# -- augmentation --------------------------------------------------------------------------------


def _augment(x: torch.Tensor, config: InspectorConfig, resolution: int, gen: torch.Generator):
    """Mild, label-preserving perturbations that make generated images look in-distribution."""
    n = x.shape[0]
    scale = resolution / 32
    shift = int(round(config.shift_px * scale))
    if shift > 0:
        padded = F.pad(x, (shift, shift, shift, shift), mode="replicate")
        offsets = torch.randint(0, 2 * shift + 1, (n, 2), generator=gen).tolist()
        x = torch.stack(
            [
                padded[i, :, dy : dy + resolution, dx : dx + resolution]
                for i, (dy, dx) in enumerate(offsets)
            ]
        )
    if config.blur_prob > 0:
        low, high = config.blur_sigma
        sigma = (low + (high - low) * torch.rand((), generator=gen).item()) * scale
        blurred = _gaussian_blur(x, sigma)
        chosen = (torch.rand(n, 1, 1, 1, generator=gen) < config.blur_prob).float()
        x = chosen * blurred + (1 - chosen) * x
    brightness = 1 + config.brightness * (2 * torch.rand(n, 1, 1, 1, generator=gen) - 1)
    offset = config.channel_offset * (2 * torch.rand(n, 3, 1, 1, generator=gen) - 1)
    noise_std = config.noise_std * torch.rand(n, 1, 1, 1, generator=gen)
    noise = torch.randn(x.shape, generator=gen) * noise_std
    return ((x + 1) * brightness - 1 + offset + noise).clamp(-1, 1)


def _gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    radius = max(1, int(math.ceil(2 * sigma)))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype)
    kernel = torch.exp(-0.5 * (t / sigma) ** 2)
    kernel = kernel / kernel.sum()
    c = x.shape[1]
    horizontal = kernel.view(1, 1, 1, -1).repeat(c, 1, 1, 1)
    vertical = kernel.view(1, 1, -1, 1).repeat(c, 1, 1, 1)
    x = F.pad(x, (radius, radius, radius, radius), mode="replicate")
    x = F.conv2d(x, horizontal, groups=c)
    return F.conv2d(x, vertical, groups=c)


# -- data ----------------------------------------------------------------------------------------


def _batch(
    worlds: Sequence[World], counts: Sequence[int], step: int
) -> tuple[list[Truth], torch.Tensor]:
    """A training batch; image indices advance with the step, so no image is seen twice."""
    truths: list[Truth] = []
    pixels = []
    for world, count in zip(worlds, counts):
        if count == 0:
            continue
        start = step * count
        t, p = world.scenes_and_images(range(start, start + count))
        truths += t
        pixels.append(p)
    x = torch.from_numpy(np.concatenate(pixels)).permute(0, 3, 1, 2).float() / 127.5 - 1
    return truths, x


def _counts(config: InspectorConfig) -> list[int]:
    weights = np.asarray(config.domain_weights, dtype=np.float64)
    raw = weights / weights.sum() * config.batch
    counts = np.floor(raw).astype(int)
    counts[np.argmax(raw - counts)] += config.batch - counts.sum()
    return counts.tolist()


# -- evaluation ----------------------------------------------------------------------------------


def inspector_accuracy(
    inspector: Inspector, world: World, n: int | None = None, batch: int = 250
) -> dict[str, float]:
    """Accuracy of each reading on a world split (use a test split: held-out images).

    Object readings are scored on object images, face readings (``face_*``) on face images,
    ``background`` and ``is_face`` on all; a reading with no image to score is left out.
    ``face_class`` is the joint (hair, expression, accessory) IS class of a face.
    """
    n = min(n or len(world), len(world))
    totals: dict[str, float] = {}
    counts: dict[str, float] = {}

    def add(name: str, correct: torch.Tensor, weight: torch.Tensor | None = None) -> None:
        w = torch.ones_like(correct, dtype=torch.float32) if weight is None else weight.float()
        totals[name] = totals.get(name, 0.0) + float((correct.float() * w).sum())
        counts[name] = counts.get(name, 0.0) + float(w.sum())

    for start in range(0, n, batch):
        truths, pixels = world.scenes_and_images(range(start, min(start + batch, n)))
        out = inspector._run(torch.from_numpy(pixels).permute(0, 3, 1, 2))
        labels = _labels(truths)
        objects = labels["object_weight"]
        faces = labels["is_face"]
        add("background", out["background"].argmax(1) == labels["background"])
        add("is_face", (out["is_face"] > 0).float() == faces)
        for name in _OBJECT_CE_HEADS:
            add(name, out[name].argmax(1) == labels[name], weight=objects)
        main_class = labels["main_shape"] * len(COLOURS) + labels["main_colour"]
        add(
            "main_class",
            _joint_log_probs(out["main_shape"], out["main_colour"]).argmax(1) == main_class,
            weight=objects,
        )
        present = labels["region_present"]
        add("region_present", (out["region_present"] > 0).float() == present,
            weight=objects[:, None].expand_as(present))
        for name in ("region_shape", "region_colour", "region_size"):
            add(name, out[name].argmax(2) == labels[name], weight=present)
        add(
            "shapes_present_exact",
            ((out["shapes_present"] > 0).float() == labels["shapes_present"]).all(1),
            weight=objects,
        )
        for name in _FACE_HEADS:
            add(name, out[name].argmax(1) == labels[name], weight=faces)
        face_class = (
            labels["face_hair"] * len(EXPRESSIONS) + labels["face_expression"]
        ) * len(ACCESSORIES) + labels["face_accessory"]
        add("face_class", _face_joint_log_probs(out).argmax(1) == face_class, weight=faces)
    return {name: totals[name] / counts[name] for name in totals if counts[name] > 0}


def clutter_false_positives(
    inspector: Inspector, resolution: int, seed: int = 0, n: int = 500
) -> dict[str, float]:
    """How often the inspector reads an object into object-free clutter (lower is better)."""
    gen = torch.Generator().manual_seed(seed + 1)
    x = torch.cat([clutter_images(50, resolution, gen) for _ in range(n // 50)])
    pixels = ((x + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
    out = inspector._run(pixels)
    return {
        "clutter/any_shape_rate": float((out["shapes_present"] > 0).any(1).float().mean()),
        "clutter/any_region_rate": float((out["region_present"] > 0).any(1).float().mean()),
    }


# -- training, caching, loading -----------------------------------------------------------------

def train_inspector(
    workspace: Workspace,
    resolution: int,
    seed: int = 0,
    progress: bool = True,
    *,
    config: InspectorConfig | None = None,
    device: str = "cpu",
) -> Path:
    """Train (or find cached) the inspector for ``resolution``; returns the weights file."""
    config = config or default_inspector_config(resolution)
    path = inspector_path(workspace, resolution, seed, config)
    if path.exists():
        return path
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = Inspector(resolution, config).to(device)
    # Enough indices for every step; images are generated on demand, never stored.
    counts = _counts(config)
    worlds = [
        World(domain, "train", resolution, seed=seed, size=max(1, count) * (config.steps + 1))
        for domain, count in zip(config.domains, counts)
    ]
    optimiser = torch.optim.AdamW(
        model.parameters(), lr=config.lr, weight_decay=config.weight_decay
    )
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimiser, max_lr=config.lr, total_steps=max(1, config.steps), pct_start=0.1
    )
    started = time.time()
    model.train()
    with _Progress(progress, f"training inspector ({resolution}px)", config.steps) as bar:
        for step in range(config.steps):
            truths, x = _batch(worlds, counts, step)
            x = _augment(x, config, resolution, gen)
            labels = _labels(truths)
            n_negatives = int(round(config.negative_fraction * len(truths)))
            if n_negatives:
                x = torch.cat([x, clutter_images(n_negatives, resolution, gen)])
                labels = _with_negatives(labels, n_negatives)
            x = x.to(device)
            labels = {k: v.to(device) for k, v in labels.items()}
            loss = _loss(model(x), labels)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            schedule.step()
            bar.advance(f"loss {loss.item():.3f}")
    train_seconds = time.time() - started
    metrics: dict[str, float] = {"train_seconds": train_seconds}
    for domain in ("scenes", "objects", "faces"):
        held_out = World(domain, "test", resolution, seed=seed, size=config.eval_images)
        for name, value in inspector_accuracy(model, held_out).items():
            metrics[f"{domain}/{name}"] = value
    metrics.update(clutter_false_positives(model, resolution, seed))
    model.metrics = metrics
    save_inspector(model, path)
    return path


def save_inspector(model: Inspector, path: str | os.PathLike) -> Path:
    """Write a state_dict plus plain config (loadable with ``weights_only=True``), atomically."""
    path = Path(path)
    payload = {
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "resolution": model.resolution,
        "config": _config_to_plain(model.config),
        "world_version": WORLD_VERSION,
        "inspector_version": INSPECTOR_VERSION,
        "metrics": dict(model.metrics),
    }
    return atomic_write(path, lambda handle: torch.save(payload, handle))


def _config_to_plain(config: InspectorConfig) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(config).items()}


def _config_from_plain(data: dict) -> InspectorConfig:
    tuple_fields = {f for f, v in asdict(InspectorConfig()).items() if isinstance(v, tuple)}
    return InspectorConfig(**{k: tuple(v) if k in tuple_fields else v for k, v in data.items()})


def load_inspector_file(path: str | os.PathLike, device: str = "cpu") -> Inspector:
    """Load a saved inspector (weights-only unpickling: no code runs from the file)."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        model = Inspector(payload["resolution"], _config_from_plain(payload["config"]))
        model.load_state_dict(payload["state_dict"])
    except (OSError, RuntimeError, KeyError, TypeError, EOFError, pickle.UnpicklingError) as error:
        raise UserError(
            f"inspector weights {path} cannot be read ({error}); delete the file and run "
            "`lafite-repro world inspector` again"
        ) from error
    model.metrics = dict(payload.get("metrics", {}))
    return model.to(device).eval()


def load_inspector(
    workspace: Workspace,
    resolution: int,
    seed: int = 0,
    *,
    config: InspectorConfig | None = None,
    device: str = "cpu",
) -> Inspector:
    """The cached inspector for ``resolution``; a UserError says how to train it if missing."""
    path = inspector_path(workspace, resolution, seed, config)
    if not path.exists():
        raise UserError(
            f"no world inspector for {resolution}px in {path.parent} (expected {path.name}); "
            f"train it with `lafite-repro world inspector` (resolution {resolution})"
        )
    return load_inspector_file(path, device)


@dataclass
class _Progress:
    enabled: bool
    description: str
    total: int
    _bar: object = field(default=None, repr=False)
    _task: int = 0

    def __enter__(self) -> _Progress:
        if self.enabled:
            from rich.progress import Progress

            self._bar = Progress(
                *Progress.get_default_columns(),
                "[progress.description]{task.fields[status]}",
                transient=False,
            )
            self._bar.__enter__()
            self._task = self._bar.add_task(self.description, total=self.total, status="")
        return self

    def advance(self, status: str = "") -> None:
        if self._bar is not None:
            self._bar.update(self._task, advance=1, status=status)

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)


__all__ = [
    "FACE_ATTRIBUTES",
    "FACE_CLASSES",
    "INSPECTOR_VERSION",
    "IS_CLASSES",
    "MAIN_ATTRIBUTES",
    "MAIN_CLASSES",
    "FaceReading",
    "Inspector",
    "InspectorConfig",
    "InspectorReading",
    "face_attribute_labels",
    "inspector_accuracy",
    "inspector_key",
    "main_attribute_labels",
    "inspector_path",
    "load_inspector",
    "load_inspector_file",
    "save_inspector",
    "train_inspector",
]
