"""Semantic Object Accuracy (Hinz et al., TPAMI 2020) and the world's caption accuracy.

SOA asks whether the objects a caption names appear in the generated image. For every class c a
*caption subset* holds the captions of the evaluation split that mention c; images are generated
from them (3 per caption; 1 for the "person" class in the original protocol) and a detector says
which classes each image contains. Then

* ``SOA-C`` = mean over classes of the share of that class's images in which c is detected
  (per-class recall, every class weighted equally);
* ``SOA-I`` = the same share pooled over all images of all subsets.

At paper scale the detector is the YOLOv3 of the SOA protocol, which the user supplies
(``eval.soa_detector = "module:factory"``); without one the metric is recorded as not computed.
At mini scale the world's ground truth defines the classes (its shapes) and the world's
inspector detects them.

Caption accuracy (mini scale only) goes further than SOA: of the attributes a caption names
(background; each object's shape, colour, size and position) it is the share that the inspector
finds in the image generated from that caption. Which attributes a caption names is decided
from the caption's own source image: each attribute of the source's ground truth counts as
named when one of its words appears in the caption. That is exact for the world's templated
captions except when two objects share a value and the caption names it for only one of them
(the value then counts as named for both), a rare case that only ever adds true claims.

Face captions (the ``faces`` domain, the MM-CelebA-HQ analogue) name a face's hair, eyes,
expression, accessory and background instead; a hair word counts only right before "hair" or
"-haired", an eye word only before "eyes" or "-eyed" and a background word only before
"background", "backdrop" or "wall" (or after "on"), so "brown hair" never claims brown eyes and
"grey hair" never a grey background. The inspector's face reading is scored against them
(parts ``face-hair``, ``face-eyes``, ... and ``all``; :data:`FACE_CAPTION_METRICS`).
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

from lafite.errors import UserError

# -- detectors --------------------------------------------------------------------------------


@runtime_checkable
class Detector(Protocol):
    """Finds which classes an image contains.

    ``classes`` are the class names, ``detect`` maps uint8 NCHW images to one set of detected
    class names per image. A user's YOLOv3 wrapper only needs these two members.
    """

    classes: Sequence[str]

    def detect(self, images_uint8: torch.Tensor) -> list[set[str]]: ...


def load_detector(spec: str) -> Detector:
    """Build the user's detector from ``eval.soa_detector`` ("package.module:factory")."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise UserError(
            f"eval.soa_detector: {spec!r} is not 'module:factory'; give the import path of a "
            "function returning an object with .classes and .detect(images_uint8)"
        )
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as err:
        raise UserError(f"eval.soa_detector: cannot import {spec!r}: {err}") from None
    detector = factory()
    if not isinstance(detector, Detector):
        raise UserError(
            f"eval.soa_detector: {spec!r} returned {type(detector).__name__}, which lacks "
            ".classes and .detect(images_uint8)"
        )
    return detector


class InspectorDetector:
    """The world's inspector as an SOA detector over the world's shapes."""

    def __init__(self, inspector: Any, classes: Sequence[str]) -> None:
        self.inspector = inspector
        self.classes = tuple(classes)

    def detect(self, images_uint8: torch.Tensor) -> list[set[str]]:
        with torch.no_grad():
            readings = self.inspector.predict(images_uint8)
        return [set(reading_shapes(r)) & set(self.classes) for r in readings]


# -- caption subsets ---------------------------------------------------------------------------


def word_pattern(words: Iterable[str]) -> re.Pattern[str]:
    """Case-insensitive whole-word match of any of ``words`` (multi-word phrases allowed)."""
    alternatives = sorted({w.lower() for w in words if w}, key=len, reverse=True)
    if not alternatives:
        raise ValueError("no words to match")
    body = "|".join(re.escape(w) for w in alternatives)
    return re.compile(rf"(?<![\w-])(?:{body})(?![\w-])", re.IGNORECASE)


def caption_subsets(
    captions: Iterable[str],
    class_words: Mapping[str, Iterable[str]],
    *,
    per_class: int = 0,
    seed: int = 0,
) -> dict[str, list[str]]:
    """Captions that mention each class (Hinz et al.'s per-class caption subsets).

    ``class_words`` maps a class to the words that name it (synonyms, plurals). ``per_class``
    caps a subset by a seeded draw (0 keeps all); order is the captions' order otherwise.
    """
    patterns = {name: word_pattern(words) for name, words in class_words.items()}
    subsets: dict[str, list[str]] = {name: [] for name in class_words}
    for caption in captions:
        for name, pattern in patterns.items():
            if pattern.search(caption):
                subsets[name].append(caption)
    if per_class > 0:
        rng = np.random.default_rng(seed)
        for name, items in subsets.items():
            if len(items) > per_class:
                keep = np.sort(rng.choice(len(items), size=per_class, replace=False))
                subsets[name] = [items[int(i)] for i in keep]
    return subsets


# -- SOA ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SoaResult:
    """SOA-C and SOA-I (fractions in [0, 1]; the paper prints percentages) and their parts."""

    soa_c: float
    soa_i: float
    per_class: dict[str, float]
    images_per_class: dict[str, int]
    skipped_classes: tuple[str, ...] = ()


def soa_from_detections(expected_class: Sequence[str], detections: Sequence[set[str]]) -> SoaResult:
    """SOA from each image's subset class and the detector's output for it.

    Classes without images (an empty caption subset) are left out of the class mean and listed
    in ``skipped_classes`` by :func:`compute_soa`.
    """
    if len(expected_class) != len(detections):
        raise ValueError("one detection set per image is needed")
    if not expected_class:
        raise ValueError("SOA needs at least one image")
    hits: dict[str, int] = {}
    counts: dict[str, int] = {}
    for cls, found in zip(expected_class, detections):
        counts[cls] = counts.get(cls, 0) + 1
        hits[cls] = hits.get(cls, 0) + int(cls in found)
    per_class = {cls: hits[cls] / counts[cls] for cls in counts}
    return SoaResult(
        soa_c=float(np.mean(list(per_class.values()))),
        soa_i=sum(hits.values()) / sum(counts.values()),
        per_class=per_class,
        images_per_class=counts,
    )


def compute_soa(
    subsets: Mapping[str, Sequence[str]],
    render: Callable[[list[str]], torch.Tensor],
    detector: Detector,
    *,
    images_per_caption: int = 3,
    single_image_classes: Sequence[str] = ("person",),
    batch_size: int = 64,
) -> SoaResult:
    """Generate from every caption of every subset, detect, and score.

    ``render(captions)`` returns one uint8 NCHW image per caption. Classes in
    ``single_image_classes`` get one image per caption (Hinz et al. do this for "person", whose
    subset is by far the largest).
    """
    jobs: list[tuple[str, str]] = []
    skipped = []
    for cls, captions in subsets.items():
        if not captions:
            skipped.append(cls)
            continue
        repeat = 1 if cls in single_image_classes else images_per_caption
        jobs.extend((cls, caption) for caption in captions for _ in range(repeat))
    if not jobs:
        raise ValueError("every caption subset is empty")
    expected: list[str] = []
    detections: list[set[str]] = []
    for start in range(0, len(jobs), batch_size):
        chunk = jobs[start : start + batch_size]
        images = render([caption for _, caption in chunk])
        detections.extend(detector.detect(images))
        expected.extend(cls for cls, _ in chunk)
    result = soa_from_detections(expected, detections)
    return SoaResult(
        result.soa_c,
        result.soa_i,
        result.per_class,
        result.images_per_class,
        tuple(skipped),
    )


# -- caption accuracy (world only) ---------------------------------------------------------------

OBJECT_ATTRIBUTES = ("shape", "colour", "size", "position")


def _world_words() -> dict[str, dict[str, tuple[str, ...]]]:
    """Words naming each attribute value in world captions (synonyms included)."""
    from lafite.data import world

    colour_words = getattr(world, "_COLOUR_SYNONYMS", {})
    large_words = tuple(getattr(world, "_LARGE_WORDS", ("large",)))
    position_words = getattr(world, "_POSITION_WORDS", {})
    return {
        "shape": {s: tuple(world.SHAPE_WORDS.get(s, (s,))) for s in world.SHAPES},
        "colour": {c: tuple(colour_words.get(c, (c,))) for c in world.COLOURS},
        "size": {s: (large_words if s == "large" else (s,)) for s in world.SIZES},
        "position": {
            # "centred" and "in the middle" name the centre in the close-up (objects) domain.
            p: ((position_words.get(p, p),) + (("centred", "middle") if p == "centre" else ()))
            for p in world.POSITIONS
        },
        "background": {b: (b,) for b in world.BACKGROUNDS},
    }


def attribute_words() -> dict[str, dict[str, tuple[str, ...]]]:
    """attribute (shape, colour, size, position, background) -> value -> the words naming it in
    world captions: the vocabulary caption accuracy reads captions with."""
    return _world_words()


@dataclass(frozen=True)
class CaptionClaims:
    """The attributes of a caption's source image that the caption names.

    ``objects[i]`` maps attribute name to value for object i of the source truth (0 = main);
    ``face`` maps face attribute name (hair, eyes, expression, accessory) to value for a face.
    """

    background: str | None
    objects: tuple[dict[str, str], ...] = field(default_factory=tuple)
    face: dict[str, str] = field(default_factory=dict)

    @property
    def n_claims(self) -> int:
        return (
            int(self.background is not None) + sum(len(o) for o in self.objects) + len(self.face)
        )


_PATTERNS: dict[tuple[str, str], re.Pattern[str]] = {}


def _named(caption: str, attribute: str, value: str) -> bool:
    key = (attribute, value)
    if key not in _PATTERNS:
        words = _world_words()[attribute].get(value, (value,))
        _PATTERNS[key] = word_pattern(words)
    return bool(_PATTERNS[key].search(caption))


FACE_ATTRIBUTES = ("hair", "eyes", "expression", "accessory")
# What must follow a value's word for it to name that attribute of a face.
_FACE_CONTEXT = {
    "hair": r"(?: hair|-haired)",
    "eyes": r"(?: eyes|-eyed)",
    "expression": "",
    "accessory": "",
    "background": r" (?:background|backdrop|wall)",
}
_FACE_PATTERNS: dict[tuple[str, str], re.Pattern[str] | None] = {}


def _face_named(caption: str, attribute: str, value: str) -> bool:
    key = (attribute, value)
    if key not in _FACE_PATTERNS:
        from lafite.data import world

        if attribute == "background":
            words: tuple[str, ...] = (value,)
        else:
            words = tuple(world.FACE_WORDS[attribute].get(value, ()))
        if not words:  # e.g. the accessory "none", which captions never name
            _FACE_PATTERNS[key] = None
        else:
            body = "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))
            alternatives = [rf"(?<![\w-])(?:{body}){_FACE_CONTEXT[attribute]}(?![\w-])"]
            if attribute == "background":
                alternatives.append(rf"(?<![\w-])on (?:{body})(?![\w-])")
            _FACE_PATTERNS[key] = re.compile("|".join(alternatives), re.IGNORECASE)
    pattern = _FACE_PATTERNS[key]
    return bool(pattern and pattern.search(caption))


def face_caption_claims(caption: str, truth: Any) -> CaptionClaims:
    """What a face caption names of its source face (``truth`` a FaceTruth)."""
    background = truth.background if _face_named(caption, "background", truth.background) else None
    face = {
        attr: getattr(truth, attr)
        for attr in FACE_ATTRIBUTES
        if _face_named(caption, attr, getattr(truth, attr))
    }
    return CaptionClaims(background, (), face)


def caption_claims(caption: str, truth: Any) -> CaptionClaims:
    """What ``caption`` (a caption of the image whose ground truth is ``truth``) names.

    ``truth`` is a world SceneTruth, or a FaceTruth (see :func:`face_caption_claims`).
    """
    if not hasattr(truth, "objects"):
        return face_caption_claims(caption, truth)
    background = truth.background if _named(caption, "background", truth.background) else None
    objects = []
    for obj in truth.objects:
        objects.append(
            {
                attr: getattr(obj, attr)
                for attr in OBJECT_ATTRIBUTES
                if _named(caption, attr, getattr(obj, attr))
            }
        )
    return CaptionClaims(background, tuple(objects))


def reading_shapes(reading: Any) -> set[str]:
    """Shapes an inspector reading says are present."""
    shapes = getattr(reading, "shapes", None)
    if shapes is None:
        shapes = {o.shape for o in reading_objects(reading)}
    return set(shapes)


def reading_objects(reading: Any) -> list[Any]:
    objects = getattr(reading, "objects", None)
    if objects is None:
        return [reading_main(reading)]
    return list(objects)


def reading_main(reading: Any) -> Any:
    main = getattr(reading, "main", None)
    if main is not None:
        return main
    return reading.objects[0]


@dataclass
class CaptionScore:
    """Running totals of caption accuracy: found / named, overall and per part."""

    named: dict[str, int] = field(default_factory=dict)
    found: dict[str, int] = field(default_factory=dict)

    def add(self, part: str, hit: bool) -> None:
        self.named[part] = self.named.get(part, 0) + 1
        self.found[part] = self.found.get(part, 0) + int(hit)

    def update(self, claims: CaptionClaims, reading: Any) -> None:
        """Score one generated image (its inspector ``reading``) against its caption's claims."""
        if claims.background is not None:
            hit = reading.background == claims.background
            self.add("all", hit)
            self.add("background", hit)
        if claims.face:
            # A reading that does not see a face finds none of the face's attributes.
            face = getattr(reading, "face", None)
            for attr, value in claims.face.items():
                hit = face is not None and getattr(face, attr) == value
                self.add("all", hit)
                self.add(f"face-{attr}", hit)
        if not claims.objects:
            return
        main = reading_main(reading)
        detected = reading_objects(reading)
        if claims.objects and all(claims.objects):
            # Every object of the source image is named, so the caption fixes how many there are.
            self.add("count", len(detected) == len(claims.objects))
        for index, named in enumerate(claims.objects):
            for attr, value in named.items():
                if index == 0:
                    hit = getattr(main, attr) == value
                    self.add(f"main-{attr}", hit)
                elif attr == "shape":
                    hit = value in reading_shapes(reading)
                else:
                    # A secondary object's attribute is found when a detected object of the
                    # named shape (or of any shape, when the caption leaves the shape out)
                    # carries it.
                    shape = named.get("shape")
                    hit = any(
                        getattr(o, attr) == value
                        for o in detected
                        if shape is None or o.shape == shape
                    )
                self.add("all", hit)

    def accuracy(self, part: str) -> float | None:
        named = self.named.get(part, 0)
        return self.found.get(part, 0) / named if named else None


# Names in lafite.metrics.METRICS -> CaptionScore parts.
CAPTION_METRICS = {
    "caption-accuracy": "all",
    "main-shape-accuracy": "main-shape",
    "main-colour-accuracy": "main-colour",
    "main-position-accuracy": "main-position",
    "main-size-accuracy": "main-size",
    "object-count-accuracy": "count",
    "background-accuracy": "background",
}
# The face parts (faces domain). Not in CAPTION_METRICS: their names are not in the metric
# registry (lafite.metrics.METRICS) yet, and evaluation reports every CAPTION_METRICS name.
FACE_CAPTION_METRICS = {
    "face-hair-accuracy": "face-hair",
    "face-eyes-accuracy": "face-eyes",
    "face-expression-accuracy": "face-expression",
    "face-accessory-accuracy": "face-accessory",
}


__all__ = [
    "CAPTION_METRICS",
    "FACE_ATTRIBUTES",
    "FACE_CAPTION_METRICS",
    "CaptionClaims",
    "CaptionScore",
    "Detector",
    "InspectorDetector",
    "SoaResult",
    "attribute_words",
    "caption_claims",
    "caption_subsets",
    "compute_soa",
    "face_caption_claims",
    "load_detector",
    "soa_from_detections",
    "word_pattern",
]
