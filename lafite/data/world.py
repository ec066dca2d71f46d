"""The built-in world: coloured shapes with compositional captions, generated, never downloaded.

Why it exists: the paper's datasets and CLIP cannot be fetched offline, so the ``mini`` and
``smoke`` scales train and evaluate on this world instead. It has six domains that mirror the
paper's datasets (``scenes`` ~ MS-COCO, ``objects`` ~ CUB, ``narratives`` ~ LN-COCO, ``web`` ~
CC3M, ``faces`` ~ MM-CelebA-HQ, ``portraits`` ~ FFHQ, which has no captions). Every image is a
pure function of ``(domain, split, index, seed)``: a per-image numpy
``SeedSequence`` is built from those four values, so any image can be regenerated alone, in any
order, on any machine, and the train and test splits draw from disjoint random streams.

Rendering is vectorised over a batch of images (signed distance functions evaluated on the pixel
grid, one-pixel linear coverage ramp for anti-aliasing), so thousands of images take a second.

The first-named object of every caption is the image's *main object*: it is strictly the
largest and drawn on top, so "the main object" of an image is never ambiguous, which the
inspector and the SOA analogue rely on.

Face images (``faces``, ``portraits`` and a share of ``web``) hold one centred stylised face
instead of objects: hair, skin, eyes, a mouth showing the expression and an optional accessory,
drawn with the same signed-distance renderer. Their ground truth is a :class:`FaceTruth`, not a
:class:`SceneTruth`; code that needs objects checks which one it holds.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from lafite.errors import UserError

# Bump when pixels, captions or ground truth change, so that every cache keyed by the world
# (materialised folders, the inspector, the world's CLIP, feature caches) is rebuilt.
WORLD_VERSION = "world-v2"
# Per-domain revisions on top of WORLD_VERSION: a domain whose content changed alone gets one, so
# that only its caches are rebuilt (web gained faces; the other domains' pixels did not move).
_DOMAIN_REVISION = {"web": "faces"}


def domain_version(domain: str) -> str:
    """The content version of ``domain``'s images and captions (part of every world cache key)."""
    revision = _DOMAIN_REVISION.get(domain)
    return f"{WORLD_VERSION}+{revision}" if revision else WORLD_VERSION


DOMAINS = ("scenes", "objects", "narratives", "web", "faces", "portraits")
# Every domain but ``portraits`` (the FFHQ analogue: images only, for language-free training).
CAPTIONED_DOMAINS = ("scenes", "objects", "narratives", "web", "faces")
# Domains made only of faces; ``web`` mixes faces (WEB_FACE_SHARE) into its object images.
FACE_DOMAINS = ("faces", "portraits")
SPLITS = ("train", "test")

SHAPES = ("circle", "square", "triangle", "diamond", "cross", "star")
COLOURS = ("red", "orange", "yellow", "green", "cyan", "blue", "purple", "pink")
SIZES = ("small", "medium", "large")
POSITIONS = ("top-left", "top-right", "bottom-left", "bottom-right", "centre")
# Backgrounds are disjoint from object colours and far from them in RGB, so an object can never
# melt into its background.
BACKGROUNDS = ("grey", "black", "white", "beige")
# Shades only occur in the ``objects`` domain (the CUB analogue's finer colour words).
SHADES = ("", "light", "dark")

# Face attributes (the MM-CelebA-HQ analogue's small vocabularies). Skin is drawn and recorded but
# never captioned.
HAIR_COLOURS = ("black", "brown", "blond", "red", "grey")
EYE_COLOURS = ("blue", "green", "brown")
EXPRESSIONS = ("smiling", "neutral", "surprised")
ACCESSORIES = ("none", "glasses", "hat")
SKIN_TONES = ("light", "medium", "dark")
# CC3M holds faces among everything else: this share of ``web`` images is a face.
WEB_FACE_SHARE = 0.18

DEFAULT_SIZES = {"train": 4000, "test": 1000}
MIN_RESOLUTION = 16

_COLOUR_RGB = {
    "red": (215, 35, 35),
    "orange": (240, 135, 25),
    "yellow": (235, 215, 35),
    "green": (45, 160, 60),
    "cyan": (40, 190, 205),
    "blue": (35, 75, 210),
    "purple": (135, 50, 175),
    "pink": (240, 125, 185),
}
_BACKGROUND_RGB = {
    "grey": (128, 128, 128),
    "black": (25, 25, 25),
    "white": (235, 235, 235),
    "beige": (205, 185, 145),
}
# Object span (diameter) as a fraction of the image side; far enough apart that a size stays
# recognisable under the +-4% jitter.
_SIZE_SPAN = {"small": 0.24, "medium": 0.36, "large": 0.50}
_POSITION_XY = {
    "top-left": (0.27, 0.27),
    "top-right": (0.73, 0.27),
    "bottom-left": (0.27, 0.73),
    "bottom-right": (0.73, 0.73),
    "centre": (0.5, 0.5),
}
_POSITION_JITTER = 0.03
_SIZE_JITTER = 0.04
_COLOUR_JITTER = 12
_BACKGROUND_JITTER = 8

# Face colours: hair, skin, eyes and mouth stay >= 55 RGB units apart wherever they touch, so
# every attribute stays readable under the colour jitter.
_HAIR_RGB = {
    "black": (40, 32, 28),
    "brown": (90, 52, 25),
    "blond": (235, 205, 100),
    "red": (185, 70, 35),
    "grey": (165, 165, 170),
}
_SKIN_RGB = {"light": (240, 205, 180), "medium": (200, 150, 110), "dark": (135, 90, 60)}
_EYE_RGB = {"blue": (45, 95, 215), "green": (40, 150, 65), "brown": (80, 45, 20)}
_MOUTH_RGB = (150, 25, 45)
_GLASSES_RGB = (20, 20, 25)
_HAT_RGB = tuple(_COLOUR_RGB[c] for c in ("blue", "green", "purple"))  # nuisance, not captioned
# Hair is never drawn on a background of nearly its colour (black on black, blond on beige),
# where the hair colour could not be seen.
_FACE_BACKGROUNDS = {
    hair: tuple(
        bg
        for bg in BACKGROUNDS
        if np.linalg.norm(np.subtract(_HAIR_RGB[hair], _BACKGROUND_RGB[bg])) >= 60
    )
    for hair in HAIR_COLOURS
}

# Stable codes for the per-image seed: never reorder, only append.
_DOMAIN_CODE = {"scenes": 11, "objects": 12, "narratives": 13, "web": 14, "faces": 15, "portraits": 16}
_SPLIT_CODE = {"train": 1, "test": 2}
# Render ids of the face parts (after the world's shapes, whose ids are their SHAPES indices).
_CIRCLE = SHAPES.index("circle")
_RING, _SMILE, _BAR, _BRIM, _CROWN = range(len(SHAPES), len(SHAPES) + 5)


@dataclass(frozen=True)
class WorldObject:
    """One object of an image. ``shade`` ("", "light", "dark") only varies in ``objects``."""

    shape: str
    colour: str
    size: str
    position: str
    shade: str = ""

    def to_dict(self) -> dict[str, str]:
        data = asdict(self)
        if not self.shade:
            del data["shade"]
        return data


@dataclass(frozen=True)
class SceneTruth:
    """Ground truth of one image; ``objects[0]`` is the main object (largest, on top, named first)."""

    background: str
    objects: tuple[WorldObject, ...]

    @property
    def main(self) -> WorldObject:
        return self.objects[0]

    def to_dict(self) -> dict:
        return {"background": self.background, "objects": [o.to_dict() for o in self.objects]}

    @classmethod
    def from_dict(cls, data: dict) -> SceneTruth:
        return cls(data["background"], tuple(WorldObject(**o) for o in data["objects"]))


@dataclass(frozen=True)
class FaceTruth:
    """Ground truth of a face image: one centred face on a background.

    ``to_dict`` nests the face attributes under a ``"face"`` key, which is how ``truth.jsonl``
    records tell a face from a scene (``read_truths``).
    """

    background: str
    hair: str
    eyes: str
    expression: str
    accessory: str
    skin: str

    def to_dict(self) -> dict:
        face = {k: v for k, v in asdict(self).items() if k != "background"}
        return {"background": self.background, "face": face}

    @classmethod
    def from_dict(cls, data: dict) -> FaceTruth:
        return cls(data["background"], **data["face"])


Truth = SceneTruth | FaceTruth


def truth_from_dict(data: dict) -> Truth:
    """A :class:`FaceTruth` or :class:`SceneTruth` from its ``to_dict`` form."""
    return FaceTruth.from_dict(data) if "face" in data else SceneTruth.from_dict(data)


@dataclass(frozen=True)
class _Placed:
    """Render geometry of one object (fractions of the image side)."""

    shape: int
    cx: float
    cy: float
    radius: float
    rgb: tuple[float, float, float]


@dataclass(frozen=True)
class _FaceLayout:
    """Where a face sits and its per-part colour noise, so a corruption can redraw one part."""

    cx: float
    cy: float
    scale: float
    skin_noise: tuple[float, float, float]
    hair_noise: tuple[float, float, float]
    eye_noise: tuple[float, float, float]
    hat_rgb: tuple[float, float, float]


@dataclass(frozen=True)
class _Scene:
    truth: Truth
    background_rgb: tuple[float, float, float]
    # Scenes: same order as truth.objects (main first). Faces: front part first (slot 0 is
    # painted last), the hair behind everything.
    placed: tuple[_Placed, ...]
    face_layout: _FaceLayout | None = None


def _check_domain(domain: str) -> None:
    if domain not in DOMAINS:
        raise UserError(
            f"unknown world domain {domain!r}; valid domains: {', '.join(DOMAINS)} "
            "(set world.domain in the spec)"
        )


class World:
    """One split of one domain of the built-in world.

    ``size`` is the number of images (``len``); None takes 4000 for train and 1000 for test,
    the :class:`lafite.config.WorldConfig` defaults.
    """

    def __init__(
        self,
        domain: str,
        split: str,
        resolution: int = 32,
        seed: int = 0,
        size: int | None = None,
    ) -> None:
        _check_domain(domain)
        if split not in SPLITS:
            raise UserError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}")
        if int(resolution) < MIN_RESOLUTION:
            raise UserError(
                f"world resolution {resolution} is too small: shapes are only recognisable from "
                f"{MIN_RESOLUTION} px (set data.resolution to 16, 32 or 64)"
            )
        size = DEFAULT_SIZES[split] if size is None else int(size)
        if size < 1:
            raise UserError(f"world size must be at least 1 image, got {size}")
        self.domain = domain
        self.split = split
        self.resolution = int(resolution)
        self.seed = int(seed)
        self.size = size

    def __len__(self) -> int:
        return self.size

    def __repr__(self) -> str:
        return (
            f"World({self.domain!r}, {self.split!r}, resolution={self.resolution}, "
            f"seed={self.seed}, size={self.size})"
        )

    @property
    def key(self) -> str:
        """A name that changes whenever any pixel or caption of this world would change."""
        return (
            f"{self.domain}-{self.split}-r{self.resolution}-s{self.seed}-n{self.size}-"
            f"{domain_version(self.domain)}"
        )

    # -- per-image randomness -------------------------------------------------------------------
    def _streams(self, index: int) -> tuple[np.random.Generator, np.random.Generator, bool]:
        """(scene stream, caption stream, whether the image is a face)."""
        if not 0 <= index < self.size:
            raise IndexError(f"image index {index} out of range for {self!r}")
        root = np.random.SeedSequence(
            [self.seed, _DOMAIN_CODE[self.domain], _SPLIT_CODE[self.split], int(index)]
        )
        # Separate streams: changing the caption templates never moves a pixel, and vice versa.
        scene_seq, caption_seq = root.spawn(2)
        face = self.domain in FACE_DOMAINS
        if self.domain == "web":
            # A third child stream decides which web images are faces: the first two streams,
            # and so every web image that is not a face, stay what they were before faces.
            (kind_seq,) = root.spawn(1)
            face = bool(np.random.default_rng(kind_seq).random() < WEB_FACE_SHARE)
        return np.random.default_rng(scene_seq), np.random.default_rng(caption_seq), face

    def _scene(self, index: int) -> _Scene:
        scene_rng, _, face = self._streams(index)
        return _sample_face(scene_rng) if face else _sample_scene(self.domain, scene_rng)

    # -- public API -----------------------------------------------------------------------------
    def truth(self, index: int) -> Truth:
        """A :class:`FaceTruth` for face images, else a :class:`SceneTruth`."""
        return self._scene(index).truth

    def captions(self, index: int) -> list[str]:
        """The image's captions; [] for ``portraits`` (the FFHQ analogue has none)."""
        scene_rng, caption_rng, face = self._streams(index)
        if self.domain not in CAPTIONED_DOMAINS:
            return []
        if face:
            truth = _sample_face(scene_rng).truth
            captioner = _web_face_caption if self.domain == "web" else _face_captions
            return captioner(truth, caption_rng)
        truth = _sample_scene(self.domain, scene_rng).truth
        return _CAPTIONERS[self.domain](truth, caption_rng)

    def image(self, index: int) -> np.ndarray:
        """uint8 HxWx3."""
        return self.images([index])[0]

    def images(self, indices: Iterable[int]) -> np.ndarray:
        """uint8 NxHxWx3, rendered in vectorised chunks."""
        scenes = [self._scene(int(i)) for i in indices]
        return render_scenes(scenes, self.resolution)

    def corrupted(self, indices: Sequence[int], corruption: str, seed: int = 0
                  ) -> tuple[list[Truth], np.ndarray]:
        """The images ``indices`` with one controlled change (``corruptions(domain)``), and the
        truth of what is drawn. The random redraws depend on ``seed`` only."""
        valid = corruptions(self.domain)
        if corruption not in valid:
            raise UserError(
                f"unknown corruption {corruption!r} for the {self.domain} domain; valid: "
                f"{', '.join(valid)}"
            )
        rng = np.random.default_rng([int(seed), _DOMAIN_CODE[self.domain], _SPLIT_CODE[self.split]])
        scenes = [corrupt_scene(self._scene(int(i)), corruption, rng) for i in indices]
        return [s.truth for s in scenes], render_scenes(scenes, self.resolution)

    def scenes_and_images(self, indices: Sequence[int]) -> tuple[list[Truth], np.ndarray]:
        """Ground truth and pixels in one pass (the inspector trains on both)."""
        scenes = [self._scene(int(i)) for i in indices]
        return [s.truth for s in scenes], render_scenes(scenes, self.resolution)


# -- scene sampling ------------------------------------------------------------------------------


def _jittered_rgb(base: Sequence[int], rng: np.random.Generator, amount: int) -> tuple:
    noise = rng.uniform(-amount, amount, size=3).tolist()
    return tuple(min(255.0, max(0.0, b + d)) for b, d in zip(base, noise))


def _shaded(rgb: tuple, shade: str) -> tuple:
    if shade == "light":
        return tuple(v * 0.7 + 255 * 0.3 for v in rgb)
    if shade == "dark":
        return tuple(v * 0.62 for v in rgb)
    return rgb


def _choice(rng: np.random.Generator, options: Sequence, p: Sequence[float] | None = None):
    # rng.choice is ~10x slower than this for small option lists, and sampling dominates the
    # cost of generating an image.
    if p is None:
        return options[int(rng.integers(len(options)))]
    u = rng.random()
    total = 0.0
    for option, weight in zip(options, p):
        total += weight
        if u < total:
            return option
    return options[-1]


def _sample_scene(domain: str, rng: np.random.Generator) -> _Scene:
    background = _choice(rng, BACKGROUNDS)
    close_up = domain == "objects" or (domain == "web" and rng.random() < 0.3)
    if close_up:
        shade = _choice(rng, SHADES, p=[0.5, 0.25, 0.25])
        objects = [
            WorldObject(_choice(rng, SHAPES), _choice(rng, COLOURS), "large", "centre", shade)
        ]
    else:
        objects = _sample_layout(domain, rng)
    placed = [_place(obj, rng) for obj in objects]
    bg_rgb = _jittered_rgb(_BACKGROUND_RGB[background], rng, _BACKGROUND_JITTER)
    return _Scene(SceneTruth(background, tuple(objects)), bg_rgb, tuple(placed))


def _place(obj: WorldObject, rng: np.random.Generator) -> _Placed:
    """Render geometry of one object, with the world's jitter of position, size and colour."""
    base_x, base_y = _POSITION_XY[obj.position]
    cx = base_x + rng.uniform(-_POSITION_JITTER, _POSITION_JITTER)
    cy = base_y + rng.uniform(-_POSITION_JITTER, _POSITION_JITTER)
    radius = _SIZE_SPAN[obj.size] / 2 * (1 + rng.uniform(-_SIZE_JITTER, _SIZE_JITTER))
    rgb = _shaded(_jittered_rgb(_COLOUR_RGB[obj.colour], rng, _COLOUR_JITTER), obj.shade)
    return _Placed(SHAPES.index(obj.shape), cx, cy, radius, rgb)


# -- faces ---------------------------------------------------------------------------------------

# Geometry in fractions of the image side, for scale 1: at 32 px the head is 17 px across and
# each eye 3 px, at 16 px half that.
_FACE_CENTRE = (0.5, 0.56)
_HEAD_RADIUS = 0.27
_HAIR_RADIUS = 0.37
_HAIR_RISE = 0.05  # hair disc centre above the head centre
_EYE_DX, _EYE_RISE, _EYE_RADIUS = 0.10, 0.05, 0.05
_MOUTH_DROP = 0.13
_SKIN_JITTER = 10


def _noise(rng: np.random.Generator, amount: float) -> tuple[float, float, float]:
    a, b, c = rng.uniform(-amount, amount, size=3).tolist()
    return a, b, c


def _sample_face(rng: np.random.Generator) -> _Scene:
    hair = _choice(rng, HAIR_COLOURS)
    eyes = _choice(rng, EYE_COLOURS)
    expression = _choice(rng, EXPRESSIONS)
    accessory = _choice(rng, ACCESSORIES)
    skin = _choice(rng, SKIN_TONES)
    background = _choice(rng, _FACE_BACKGROUNDS[hair])
    layout = _FaceLayout(
        cx=_FACE_CENTRE[0] + rng.uniform(-_POSITION_JITTER, _POSITION_JITTER),
        cy=_FACE_CENTRE[1] + rng.uniform(-_POSITION_JITTER, _POSITION_JITTER),
        scale=1 + rng.uniform(-_SIZE_JITTER, _SIZE_JITTER),
        skin_noise=_noise(rng, _SKIN_JITTER),
        hair_noise=_noise(rng, _COLOUR_JITTER),
        eye_noise=_noise(rng, _COLOUR_JITTER),
        hat_rgb=_jittered_rgb(_choice(rng, _HAT_RGB), rng, _COLOUR_JITTER),
    )
    bg_rgb = _jittered_rgb(_BACKGROUND_RGB[background], rng, _BACKGROUND_JITTER)
    truth = FaceTruth(background, hair, eyes, expression, accessory, skin)
    return _Scene(truth, bg_rgb, _face_parts(truth, layout), layout)


def _face_parts(truth: FaceTruth, layout: _FaceLayout) -> tuple[_Placed, ...]:
    """Render geometry of a face, front part first (slot 0 is painted last)."""

    def rgb(base: Sequence[int], noise: Sequence[float]) -> tuple[float, float, float]:
        r, g, b = (min(255.0, max(0.0, v + d)) for v, d in zip(base, noise))
        return r, g, b

    s, x, y = layout.scale, layout.cx, layout.cy
    hair = _Placed(_CIRCLE, x, y - _HAIR_RISE * s, _HAIR_RADIUS * s,
                   rgb(_HAIR_RGB[truth.hair], layout.hair_noise))
    head = _Placed(_CIRCLE, x, y, _HEAD_RADIUS * s, rgb(_SKIN_RGB[truth.skin], layout.skin_noise))
    eye_y = y - _EYE_RISE * s
    eye_rgb = rgb(_EYE_RGB[truth.eyes], layout.eye_noise)
    eyes = [_Placed(_CIRCLE, x + dx * s, eye_y, _EYE_RADIUS * s, eye_rgb)
            for dx in (-_EYE_DX, _EYE_DX)]
    mouth_y = y + _MOUTH_DROP * s
    if truth.expression == "smiling":
        # A U: the lower half of a ring whose centre sits above the mouth line.
        mouth = _Placed(_SMILE, x, mouth_y - 0.04 * s, 0.085 * s, _MOUTH_RGB)
    elif truth.expression == "surprised":
        mouth = _Placed(_CIRCLE, x, mouth_y, 0.05 * s, _MOUTH_RGB)
    else:
        mouth = _Placed(_BAR, x, mouth_y, 0.085 * s, _MOUTH_RGB)
    front: list[_Placed] = []
    if truth.accessory == "glasses":
        front = [_Placed(_RING, x + dx * s, eye_y, 0.085 * s, _GLASSES_RGB)
                 for dx in (-_EYE_DX, _EYE_DX)]
    elif truth.accessory == "hat":
        front = [
            _Placed(_CROWN, x, y - 0.36 * s, 0.2 * s, layout.hat_rgb),
            _Placed(_BRIM, x, y - 0.25 * s, 0.38 * s, layout.hat_rgb),
        ]
    return (*front, mouth, *eyes, head, hair)


# -- controlled corruptions ------------------------------------------------------------------------

# Each renders the same scenes with one thing changed, to read what a metric sees (what FID on
# the inspector's features costs for "colour blobs in the right layout", for a caption word
# ignored, ...). A "main-*" corruption redraws that attribute of the main object uniformly, so
# it keeps the attribute's distribution over images and breaks only its match to the caption.
CORRUPTIONS = {
    "none": "the images as they are",
    "all-circles": "every object drawn as a circle (layout, colours and sizes kept)",
    "main-shape": "the main object's shape redrawn at random",
    "main-colour": "the main object's colour redrawn at random",
    "main-size": "the main object's size redrawn at random",
    "main-position": "the main object moved to a random position",
    "no-secondary": "the secondary objects removed",
    "no-objects": "every object removed (background only)",
}
# The same idea for the face domains: one face attribute redrawn, or the face removed.
FACE_CORRUPTIONS = {
    "none": "the images as they are",
    "face-hair": "the hair colour redrawn at random",
    "face-eyes": "the eye colour redrawn at random",
    "face-expression": "the expression redrawn at random",
    "face-accessory": "the accessory redrawn at random",
    "no-face": "the face removed (background only)",
}


def corruptions(domain: str) -> dict[str, str]:
    """The controlled corruptions of ``domain``'s images: name -> description.

    ``web`` takes the object corruptions; its face images pass through them unchanged, except
    ``no-objects``, which removes the face too.
    """
    _check_domain(domain)
    return FACE_CORRUPTIONS if domain in FACE_DOMAINS else CORRUPTIONS


def corrupt_scene(scene: _Scene, corruption: str, rng: np.random.Generator) -> _Scene:
    """``scene`` with one controlled change; its truth says what is drawn."""
    if corruption not in CORRUPTIONS and corruption not in FACE_CORRUPTIONS:
        raise UserError(
            f"unknown corruption {corruption!r}; valid: "
            f"{', '.join(dict.fromkeys([*CORRUPTIONS, *FACE_CORRUPTIONS]))}"
        )
    if isinstance(scene.truth, FaceTruth):
        return _corrupt_face(scene, corruption, rng)
    if corruption in FACE_CORRUPTIONS and corruption not in CORRUPTIONS:
        return scene
    truth, placed = scene.truth, list(scene.placed)
    objects = list(truth.objects)
    if corruption == "all-circles":
        objects = [replace(o, shape="circle") for o in objects]
        placed = [replace(p, shape=SHAPES.index("circle")) for p in placed]
    elif corruption.startswith("main-"):
        main = objects[0]
        if corruption == "main-shape":
            main = replace(main, shape=_choice(rng, SHAPES))
        elif corruption == "main-colour":
            main = replace(main, colour=_choice(rng, COLOURS))
        elif corruption == "main-size":
            main = replace(main, size=_choice(rng, SIZES))
        else:
            main = replace(main, position=_choice(rng, POSITIONS))
        objects[0] = main
        placed[0] = _place(main, rng)
    elif corruption == "no-secondary":
        objects, placed = objects[:1], placed[:1]
    elif corruption == "no-objects":
        objects, placed = [], []
    return _Scene(SceneTruth(truth.background, tuple(objects)), scene.background_rgb, tuple(placed))


def _corrupt_face(scene: _Scene, corruption: str, rng: np.random.Generator) -> _Scene:
    truth = scene.truth
    assert isinstance(truth, FaceTruth) and scene.face_layout is not None
    if corruption in ("no-face", "no-objects"):
        return _Scene(SceneTruth(truth.background, ()), scene.background_rgb, ())
    if corruption == "face-hair":
        # Only hair colours that may appear on this background (never black on black).
        options = [h for h in HAIR_COLOURS if truth.background in _FACE_BACKGROUNDS[h]]
        truth = replace(truth, hair=_choice(rng, options))
    elif corruption == "face-eyes":
        truth = replace(truth, eyes=_choice(rng, EYE_COLOURS))
    elif corruption == "face-expression":
        truth = replace(truth, expression=_choice(rng, EXPRESSIONS))
    elif corruption == "face-accessory":
        truth = replace(truth, accessory=_choice(rng, ACCESSORIES))
    else:  # "none" and the object corruptions leave a face as it is
        return scene
    return replace(scene, truth=truth, placed=_face_parts(truth, scene.face_layout))


def _sample_layout(domain: str, rng: np.random.Generator) -> list[WorldObject]:
    p_count = [0.5, 0.25, 0.25] if domain == "web" else [0.3, 0.35, 0.35]
    count = _choice(rng, (1, 2, 3), p=p_count)
    positions = [POSITIONS[i] for i in rng.permutation(len(POSITIONS))[:count]]
    if count == 1:
        main_size = _choice(rng, SIZES)
    else:
        main_size = _choice(rng, ("medium", "large"))
    main = WorldObject(_choice(rng, SHAPES), _choice(rng, COLOURS), main_size, positions[0])
    smaller = SIZES[: SIZES.index(main_size)]
    others: list[WorldObject] = []
    twins = count == 3 and rng.random() < 0.4
    for position in positions[1:]:
        if twins and others:
            template = others[0]
            others.append(WorldObject(template.shape, template.colour, template.size, position))
        else:
            others.append(
                WorldObject(
                    _choice(rng, SHAPES), _choice(rng, COLOURS), _choice(rng, smaller), position
                )
            )
    return [main, *others]


# -- rendering -----------------------------------------------------------------------------------


def _sd_box(px: np.ndarray, py: np.ndarray, bx, by) -> np.ndarray:
    dx = np.abs(px) - bx
    dy = np.abs(py) - by
    outside = np.hypot(np.maximum(dx, 0), np.maximum(dy, 0))
    return outside + np.minimum(np.maximum(dx, dy), 0)


def _sd_circle(px, py, r):
    return np.hypot(px, py) - r


def _sd_square(px, py, r):
    half = 0.86 * r
    return _sd_box(px, py, half, half)


def _sd_diamond(px, py, r):
    half = 1.1 * r
    return (np.abs(px) + np.abs(py) - half) / np.sqrt(2.0)


def _sd_triangle(px, py, r):
    # Equilateral, pointing up; the bounding box (not the centroid) sits at the object's centre.
    a = 1.08 * r
    k = np.sqrt(3.0)
    py = py + a / (2 * k)  # centre the bounding box
    qx = np.abs(px) - a
    qy = py + a / k
    fold = qx + k * qy > 0
    nx = np.where(fold, (qx - k * qy) / 2, qx)
    ny = np.where(fold, (-k * qx - qy) / 2, qy)
    nx = nx - np.clip(nx, -2 * a, 0)
    return -np.hypot(nx, ny) * np.sign(ny)


def _sd_cross(px, py, r):
    arm = 0.34 * r
    return np.minimum(_sd_box(px, py, r, arm), _sd_box(px, py, arm, r))


def _sd_star(px, py, r):
    # Five-pointed star (I. Quilez's exact SDF), point up, bounding box centred.
    outer = 1.08 * r
    inner_ratio = 0.46
    py = py + outer * (1 - 0.809016994375) / 2
    k1x, k1y = 0.809016994375, -0.587785252292
    k2x, k2y = -k1x, k1y
    px = np.abs(px)
    d = np.maximum(k1x * px + k1y * py, 0)
    px, py = px - 2 * d * k1x, py - 2 * d * k1y
    d = np.maximum(k2x * px + k2y * py, 0)
    px, py = px - 2 * d * k2x, py - 2 * d * k2y
    px = np.abs(px)
    py = py - outer
    bax, bay = inner_ratio * -k1y, inner_ratio * k1x - 1.0
    h = np.clip((px * bax + py * bay) / (bax * bax + bay * bay), 0, outer)
    return np.hypot(px - bax * h, py - bay * h) * np.sign(py * bax - px * bay)


def _sd_ring(px, py, r):
    # Glasses rim: a ring of radius r, 0.5 r thick.
    return np.abs(np.hypot(px, py) - r) - 0.25 * r


def _sd_smile(px, py, r):
    # The lower half of a ring (a U), 0.6 r thick, with round ends.
    half = 0.3 * r
    ring = np.abs(np.hypot(px, py) - r) - half
    ends = np.hypot(np.abs(px) - r, py) - half
    return np.where(py < 0, ring, ends)


def _sd_bar(px, py, r):
    return _sd_box(px, py, r, 0.3 * r)


def _sd_brim(px, py, r):
    return _sd_box(px, py, r, 0.1 * r)


def _sd_crown(px, py, r):
    return _sd_box(px, py, r, 0.5 * r)


# The world's shapes first (ids = SHAPES indices), then the face parts.
_SDF = (
    _sd_circle, _sd_square, _sd_triangle, _sd_diamond, _sd_cross, _sd_star,
    _sd_ring, _sd_smile, _sd_bar, _sd_brim, _sd_crown,
)
assert _SDF.index(_sd_ring) == _RING and _SDF.index(_sd_crown) == _CROWN


def render_scenes(scenes: Sequence[_Scene], resolution: int) -> np.ndarray:
    """Rasterise scenes to uint8 NxHxWx3, vectorised per (object slot, shape) group."""
    n = len(scenes)
    out = np.empty((n, resolution, resolution, 3), dtype=np.uint8)
    if n == 0:
        return out
    chunk = max(1, 2**22 // (resolution * resolution))
    grid = (np.arange(resolution, dtype=np.float32) + 0.5) / resolution
    for start in range(0, n, chunk):
        part = scenes[start : start + chunk]
        out[start : start + len(part)] = _render_chunk(part, resolution, grid)
    return out


def _render_chunk(scenes: Sequence[_Scene], resolution: int, grid: np.ndarray) -> np.ndarray:
    n = len(scenes)
    slots = max(len(s.placed) for s in scenes)
    canvas = np.empty((n, resolution, resolution, 3), dtype=np.float32)
    canvas[:] = np.asarray([s.background_rgb for s in scenes], dtype=np.float32)[:, None, None, :]
    # Back to front: the main object (slot 0) is painted last, i.e. on top.
    for slot in reversed(range(slots)):
        rows = [i for i, s in enumerate(scenes) if len(s.placed) > slot]
        objs = [scenes[i].placed[slot] for i in rows]
        shape_ids = np.asarray([o.shape for o in objs])
        for shape_id in np.unique(shape_ids):
            sel = np.flatnonzero(shape_ids == shape_id)
            idx = np.asarray(rows)[sel]
            cx = np.asarray([objs[j].cx for j in sel], dtype=np.float32)[:, None, None]
            cy = np.asarray([objs[j].cy for j in sel], dtype=np.float32)[:, None, None]
            r = np.asarray([objs[j].radius for j in sel], dtype=np.float32)[:, None, None]
            rgb = np.asarray([objs[j].rgb for j in sel], dtype=np.float32)[:, None, None, :]
            px = grid[None, None, :] - cx
            py = cy - grid[None, :, None]  # y up, so "point up" shapes point to the top row
            distance = _SDF[shape_id](px, py, r)
            coverage = np.clip(0.5 - distance * resolution, 0.0, 1.0)[..., None]
            canvas[idx] = canvas[idx] * (1 - coverage) + rgb * coverage
    return np.clip(np.rint(canvas), 0, 255).astype(np.uint8)


# -- captions ------------------------------------------------------------------------------------

_PLURAL = {
    "circle": "circles",
    "square": "squares",
    "triangle": "triangles",
    "diamond": "diamonds",
    "cross": "crosses",
    "star": "stars",
}
_POSITION_WORDS = {
    "top-left": "top left",
    "top-right": "top right",
    "bottom-left": "bottom left",
    "bottom-right": "bottom right",
    "centre": "centre",
}
_COUNT_WORDS = {2: "two", 3: "three"}
# Finer words for the objects domain (the CUB analogue): synonyms and shade words.
_COLOUR_SYNONYMS = {
    "red": ("red", "crimson", "scarlet"),
    "orange": ("orange", "tangerine", "amber"),
    "yellow": ("yellow", "lemon", "golden"),
    "green": ("green", "emerald", "grass-green"),
    "cyan": ("cyan", "turquoise", "aqua"),
    "blue": ("blue", "azure", "cobalt"),
    "purple": ("purple", "violet", "plum"),
    "pink": ("pink", "rose", "bubblegum"),
}
_SHADE_SYNONYMS = {"light": ("light", "pale"), "dark": ("dark", "deep")}
_SHAPE_SYNONYMS = {
    "circle": ("circle", "disc", "round dot"),
    "square": ("square", "block", "box"),
    "triangle": ("triangle", "three-sided shape", "trigon"),
    "diamond": ("diamond", "rhombus", "lozenge"),
    "cross": ("cross", "plus sign", "plus shape"),
    "star": ("star", "five-pointed star", "starburst"),
}
SHAPE_WORDS = {shape: _SHAPE_SYNONYMS[shape] + (_PLURAL[shape],) for shape in SHAPES}
_LARGE_WORDS = ("large", "big", "huge")


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _phrase(obj: WorldObject, count: int = 1, with_size: bool = True) -> str:
    words = ([obj.size] if with_size else []) + [obj.colour]
    if count == 1:
        text = " ".join([*words, obj.shape])
        return f"{_article(text)} {text}"
    return " ".join([_COUNT_WORDS[count], *words, _PLURAL[obj.shape]])


def _groups(objects: Sequence[WorldObject]) -> list[tuple[WorldObject, list[str]]]:
    """Identical secondary objects merged (for count words), in first-seen order."""
    groups: dict[tuple, tuple[WorldObject, list[str]]] = {}
    for obj in objects:
        key = (obj.shape, obj.colour, obj.size)
        if key not in groups:
            groups[key] = (obj, [])
        groups[key][1].append(obj.position)
    return list(groups.values())


def _where(positions: Sequence[str]) -> str:
    words = [_POSITION_WORDS[p] for p in positions]
    if len(words) == 1:
        return f"in the {words[0]}"
    return "in the " + " and the ".join(words)


def _relation(main: WorldObject, others: Sequence[WorldObject]) -> str:
    """How the main object sits relative to all others, or "" when no single word is true."""
    words = set()
    mx, my = _POSITION_XY[main.position]
    for other in others:
        ox, oy = _POSITION_XY[other.position]
        if oy > my:
            words.add("above")
        elif oy < my:
            words.add("below")
        elif ox > mx:
            words.add("to the left of")
        else:
            words.add("to the right of")
    return words.pop() if len(words) == 1 else ""


def _others_phrase(others: Sequence[WorldObject], with_positions: bool) -> str:
    parts = []
    for obj, positions in _groups(others):
        text = _phrase(obj, len(positions))
        if with_positions:
            text += " " + _where(positions)
        parts.append(text)
    return " and ".join(parts)


def _scene_captions(truth: SceneTruth, rng: np.random.Generator, count: int = 5) -> list[str]:
    main, others, bg = truth.main, truth.objects[1:], truth.background
    m = _phrase(main)
    m_pos = _where([main.position])
    if not others:
        templates = [
            f"{m} on a {bg} background",
            f"a {bg} background with {m} {m_pos}",
            f"{m} {m_pos}",
            f"there is {m} {m_pos} of a {bg} image",
            f"{m} against a {bg} backdrop",
            f"an image of {m} {m_pos} on {bg}",
            f"a single {main.size} {main.colour} {main.shape} on a {bg} background",
        ]
    else:
        rel = _relation(main, others)
        o_plain = _others_phrase(others, with_positions=False)
        o_pos = _others_phrase(others, with_positions=True)
        link = rel if rel else "with"
        templates = [
            f"{m} {link} {o_plain} on a {bg} background",
            f"a {bg} background with {m} {m_pos} and {o_pos}",
            f"{m} {m_pos}, {o_pos}",
            f"there is {m} {m_pos} and {o_pos}",
            f"{m} and {o_plain} against a {bg} backdrop",
            f"an image of {m} {link} {o_plain}",
            f"{m} with {o_pos} on {bg}",
        ]
    picks = rng.choice(len(templates), size=count, replace=False)
    return [templates[int(i)] for i in picks]


def _object_words(obj: WorldObject, rng: np.random.Generator) -> tuple[str, str, str]:
    colour = _choice(rng, _COLOUR_SYNONYMS[obj.colour])
    if obj.shade:
        colour = f"{_choice(rng, _SHADE_SYNONYMS[obj.shade])} {colour}"
    return _choice(rng, _LARGE_WORDS), colour, _choice(rng, _SHAPE_SYNONYMS[obj.shape])


def _object_captions(truth: SceneTruth, rng: np.random.Generator) -> list[str]:
    bg = truth.background
    makers = [
        lambda s, c, n: f"{_article(s)} {s} {c} {n}",
        lambda s, c, n: f"{_article(c)} {c} {n} on a {bg} background",
        lambda s, c, n: f"a close-up of {_article(c)} {c} {n}",
        lambda s, c, n: f"this picture shows {_article(s)} {s} {c} {n} against a {bg} backdrop",
        lambda s, c, n: f"{_article(n)} {n} coloured {c}, filling the middle of the frame",
        lambda s, c, n: f"{_article(s)} {s} {n} in {c} on {bg}",
        lambda s, c, n: f"{_article(s)} {s} {c} {n} centred on {bg}",
        lambda s, c, n: f"{c} {n}, {bg} background",
        lambda s, c, n: f"{_article(c)} {c} {n} seen up close",
        lambda s, c, n: f"one {s} {c} {n} in the middle of a {bg} image",
    ]
    order = rng.permutation(len(makers))
    return [makers[int(i)](*_object_words(truth.main, rng)) for i in order]


def _narrative_caption(truth: SceneTruth, rng: np.random.Generator) -> list[str]:
    main, others, bg = truth.main, truth.objects[1:], truth.background
    opener = _choice(rng, ("In this image we can see", "This picture shows", "Here we see"))
    sentences = [f"{opener} {_phrase(main)} {_where([main.position])}."]
    for obj, positions in _groups(others):
        verb = "is" if len(positions) == 1 else "are"
        if len(positions) == 1:
            sentences.append(f"There {verb} also {_phrase(obj)} {_where(positions)}.")
        else:
            each = ", ".join(f"one in the {_POSITION_WORDS[p]}" for p in positions)
            sentences.append(f"There {verb} also {_phrase(obj, len(positions))}, {each}.")
    sentences.append(f"The background is {bg}.")
    if others:
        sentences.append(f"The {main.shape} is the biggest object in the picture.")
    else:
        sentences.append(f"Nothing else is visible apart from the {main.colour} {main.shape}.")
    return [" ".join(sentences)]


_FILLER_PREFIX = (
    "photo of",
    "stock image:",
    "stock photo of",
    "vector illustration of",
    "image may contain:",
    "nice",
    "clip art:",
    "wallpaper with",
)
_FILLER_SUFFIX = (
    "| free clipart",
    "#shapes #art",
    "- high quality",
    "(2019)",
    "on sale",
    "- royalty free",
    "hd",
)


def _loose_others(others: Sequence[WorldObject], rng: np.random.Generator) -> str:
    """Secondary objects as a web caption states them: some lose their attributes or positions."""
    parts = []
    for obj, positions in _groups(others):
        detail = rng.random()
        if detail < 0.2:  # attributes dropped: "a square", "two stars"
            count = len(positions)
            if count == 1:
                text = f"{_article(obj.shape)} {obj.shape}"
            else:
                text = f"{_COUNT_WORDS[count]} {_PLURAL[obj.shape]}"
        else:
            text = _phrase(obj, len(positions), with_size=detail >= 0.45)
        if rng.random() < 0.35:
            text += " " + _where(positions)
        parts.append(text)
    return " and ".join(parts)


def _web_caption(truth: SceneTruth, rng: np.random.Generator) -> list[str]:
    """One noisy caption, noisy in form but informative about the main object.

    The noise is the CC3M analogue's: filler words, synonyms, jumbled order, secondary objects
    or the background sometimes left out. The main object's colour and shape are always named
    (first), and its size or position almost always: captions that fit several of any 100
    images would cap the retrieval the world's CLIP can reach (world-v1's web captions dropped
    the colour or size of the main object, and a perfect matcher scored only ~75% top-1).
    """
    main, others, bg = truth.main, truth.objects[1:], truth.background
    close_up = len(truth.objects) == 1 and main.position == "centre" and main.size == "large"
    if main.shade or rng.random() < (0.5 if close_up else 0.2):
        large_word, colour, shape = _object_words(main, rng)
        size = large_word if close_up else main.size
    else:
        size, colour, shape = main.size, main.colour, main.shape
    say_size = close_up or rng.random() < 0.9
    words = ([size] if say_size else []) + [colour, shape]
    form = rng.random()
    if form < 0.15:
        text = ", ".join(reversed(words))  # jumbled, e.g. "circle, red, small"
    elif form < 0.25:
        text = " ".join(words)  # headline style, no article
    else:
        text = " ".join(words)
        text = f"{_article(text)} {text}"
    if not close_up and rng.random() < (0.9 if say_size else 1.0):
        text += " " + _where([main.position])
    elif close_up and rng.random() < 0.3:
        text += _choice(rng, (" up close", ", close-up", " filling the frame"))
    if others and rng.random() < 0.85:
        text += f" {_relation(main, others) or 'with'} {_loose_others(others, rng)}"
    if rng.random() < 0.85:
        backdrop = _choice(rng, (f" on {bg}", f" on a {bg} background", f", {bg} backdrop"))
        if rng.random() < 0.15:
            text = f"{bg} background, {text}"  # jumbled: the backdrop first
        else:
            text += backdrop
    if rng.random() < 0.5:
        text = f"{_choice(rng, _FILLER_PREFIX)} {text}"
    if rng.random() < 0.3:
        text = f"{text} {_choice(rng, _FILLER_SUFFIX)}"
    return [text]


# -- face captions (MM-CelebA-HQ analogue, and the faces among web images) ------------------------

# Words naming each face attribute value; a caption puts a hair word right before "hair" or
# "-haired" and an eye word right before "eyes" or "-eyed", so a reader can tell brown hair from
# brown eyes. Expressions are adjectives ("a smiling person", "the person is smiling"). The
# accessory "none" is never named.
FACE_WORDS: dict[str, dict[str, tuple[str, ...]]] = {
    "hair": {
        "black": ("black", "jet-black", "raven"),
        "brown": ("brown", "chestnut", "dark brown"),
        "blond": ("blond", "blonde", "fair"),
        "red": ("red", "ginger", "auburn"),
        "grey": ("grey", "gray", "silver"),
    },
    "eyes": {"blue": ("blue", "sky-blue"), "green": ("green", "emerald"), "brown": ("brown", "dark")},
    "expression": {
        "smiling": ("smiling", "happy", "cheerful", "grinning"),
        "neutral": ("serious", "calm", "expressionless", "neutral-looking"),
        "surprised": ("surprised", "astonished", "shocked", "open-mouthed"),
    },
    "accessory": {"none": (), "glasses": ("glasses", "eyeglasses", "spectacles"), "hat": ("hat",)},
}
_FACE_NOUNS = ("person", "individual", "face")
_WEB_FACE_NOUNS = ("person", "face", "model", "portrait")


def _face_words(truth: FaceTruth, rng: np.random.Generator, nouns: Sequence[str]) -> dict[str, str]:
    words = {attr: _choice(rng, FACE_WORDS[attr][getattr(truth, attr)])
             for attr in ("hair", "eyes", "expression")}
    words["noun"] = _choice(rng, nouns)
    if truth.accessory == "glasses":
        glasses = _choice(rng, FACE_WORDS["accessory"]["glasses"])
        words["acc"] = _choice(rng, (f" wearing {glasses}", f" with {glasses}"))
    elif truth.accessory == "hat":
        words["acc"] = _choice(rng, (" wearing a hat", " in a hat", " with a hat on"))
    else:
        words["acc"] = ""
    bg = truth.background
    words["bg"] = bg
    words["backdrop"] = _choice(
        rng, (f"on a {bg} background", f"against a {bg} backdrop", f"in front of a {bg} wall")
    )
    return words


_ARTICLE = re.compile(r"\b(a|an) (\w)")


def _fix_articles(text: str) -> str:
    """"a"/"an" agreeing with the word after it, whatever word a template slot received."""
    return _ARTICLE.sub(lambda m: f"{_article(m.group(2))} {m.group(2)}", text)


_FACE_TEMPLATES = (
    "a {expression} {noun} with {hair} hair and {eyes} eyes{acc}",
    "this {noun} has {hair} hair and {eyes} eyes",
    "the {noun} is {expression} and has {hair} hair{acc}",
    "a {hair}-haired {noun}{acc} {backdrop}",
    "a {noun} with {eyes} eyes who is {expression}",
    "a close-up of a {expression} {noun}{acc}",
    "{hair} hair, {eyes} eyes, {expression} {noun}{acc}, {bg} background",
    "a portrait of a {noun} with {hair} hair {backdrop}",
    "the {noun} in the picture is {expression} and has {eyes} eyes",
    "this {noun} is {expression}{acc}",
    "a {noun} with {hair} hair{acc}",
    "a {expression} {hair}-haired {noun} with {eyes} eyes {backdrop}",
    "a {eyes}-eyed {noun} with {hair} hair, {expression}{acc}",
)


def _face_captions(truth: FaceTruth, rng: np.random.Generator, count: int = 10) -> list[str]:
    """Ten templated captions, each naming some or all of the attributes with synonyms."""
    picks = rng.choice(len(_FACE_TEMPLATES), size=count, replace=False)
    captions = []
    for i in picks:
        words = _face_words(truth, rng, _FACE_NOUNS)
        captions.append(_fix_articles(_FACE_TEMPLATES[int(i)].format(**words)))
    return captions


_FACE_FILLER_PREFIX = (
    "stock photo of",
    "portrait photo:",
    "closeup of",
    "avatar:",
    "image may contain:",
    "headshot of",
)
_FACE_FILLER_SUFFIX = ("| stock photo", "#portrait", "- high quality", "hd", "(2019)", "- royalty free")


def _web_face_caption(truth: FaceTruth, rng: np.random.Generator) -> list[str]:
    """One noisy web caption of a face: filler words, partial attributes, jumbled forms.

    The hair colour is almost always named (it is the most visible attribute); the expression,
    eyes, accessory and background only sometimes.
    """
    w = _face_words(truth, rng, _WEB_FACE_NOUNS)
    say_hair = rng.random() < 0.9
    say_expression = rng.random() < 0.7 or not say_hair
    form = rng.random()
    if form < 0.2 and say_hair:
        parts = [f"{w['hair']} hair"]  # headline list, e.g. "blond hair, blue eyes, smiling"
        if rng.random() < 0.5:
            parts.append(f"{w['eyes']} eyes")
        if say_expression:
            parts.append(w["expression"])
        text = ", ".join(parts)
    else:
        text = w["noun"]
        if say_hair:
            text = f"{w['hair']}-haired {text}" if rng.random() < 0.4 else f"{text} with {w['hair']} hair"
        if say_expression:
            text = f"{w['expression']} {text}"
        text = f"a {text}" if rng.random() < 0.6 else text
        if rng.random() < 0.3:
            text += f" and {w['eyes']} eyes" if say_hair and " with " in text else f" with {w['eyes']} eyes"
    if w["acc"] and rng.random() < 0.6:
        text += w["acc"]
    if rng.random() < 0.4:
        text += _choice(rng, (f", {w['bg']} background", f" on {w['bg']}", f" {w['backdrop']}"))
    if rng.random() < 0.5:
        text = f"{_choice(rng, _FACE_FILLER_PREFIX)} {text}"
    if rng.random() < 0.3:
        text = f"{text} {_choice(rng, _FACE_FILLER_SUFFIX)}"
    return [_fix_articles(text)]


_CAPTIONERS = {
    "scenes": _scene_captions,
    "objects": _object_captions,
    "narratives": _narrative_caption,
    "web": _web_caption,
}


# -- materialisation -----------------------------------------------------------------------------

COMPLETE_MARKER = "complete.json"


def _marker(world: World) -> dict:
    return {
        "world_version": domain_version(world.domain),
        "domain": world.domain,
        "split": world.split,
        "resolution": world.resolution,
        "seed": world.seed,
        "size": world.size,
    }


def is_materialised(world: World, out_dir: str | os.PathLike) -> bool:
    marker = Path(out_dir) / COMPLETE_MARKER
    try:
        return json.loads(marker.read_text()) == _marker(world)
    except (OSError, ValueError):
        return False


def materialise(world: World, out_dir: str | os.PathLike, progress: bool = False) -> Path:
    """Write the world as ``NNNNNNNN.png`` + ``NNNNNNNN.txt`` (one caption a line) + ``truth.jsonl``.

    The official code's folder format, so one loader serves the world and real datasets. An
    uncaptioned domain (``portraits``) gets no ``.txt`` files, like FFHQ. Idempotent: a folder
    whose completion marker matches is left untouched. The folder is built next to its
    destination and moved into place with the marker written last, so an
    interrupted or concurrent run never leaves a half-written folder that looks complete.
    """
    from PIL import Image

    out = Path(out_dir)
    if is_materialised(world, out):
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".{out.name}.tmp-{os.getpid()}"
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir()
    chunk = 512
    captioned = world.domain in CAPTIONED_DOMAINS
    with _progress(progress, f"materialising {world.key}", len(world)) as advance:
        with open(staging / "truth.jsonl", "w") as truth_file:
            for start in range(0, len(world), chunk):
                indices = range(start, min(start + chunk, len(world)))
                scenes = [world._scene(i) for i in indices]
                pixels = render_scenes(scenes, world.resolution)
                for offset, index in enumerate(indices):
                    stem = f"{index:08d}"
                    Image.fromarray(pixels[offset]).save(staging / f"{stem}.png", compress_level=1)
                    if captioned:
                        captions = world.captions(index)
                        (staging / f"{stem}.txt").write_text("\n".join(captions) + "\n")
                    record = {"file": f"{stem}.png", **scenes[offset].truth.to_dict()}
                    truth_file.write(json.dumps(record) + "\n")
                advance(len(indices))
    (staging / COMPLETE_MARKER).write_text(json.dumps(_marker(world)))
    if is_materialised(world, out):  # another process finished first
        shutil.rmtree(staging)
        return out
    if out.exists():
        shutil.rmtree(out)
    os.replace(staging, out)
    return out


def read_truths(folder: str | os.PathLike) -> dict[str, Truth]:
    """Ground truth of a materialised world folder, by image file name.

    A record with a ``"face"`` key is a :class:`FaceTruth`, any other a :class:`SceneTruth`.
    """
    path = Path(folder) / "truth.jsonl"
    truths = {}
    with open(path) as handle:
        for line in handle:
            record = json.loads(line)
            truths[record.pop("file")] = truth_from_dict(record)
    return truths


class _progress:
    """A rich progress bar, or nothing when quiet (CI)."""

    def __init__(self, enabled: bool, description: str, total: int) -> None:
        self.enabled, self.description, self.total = enabled, description, total
        self._bar = None

    def __enter__(self):
        if not self.enabled:
            return lambda n: None
        from rich.progress import Progress

        self._bar = Progress(transient=True)
        self._bar.__enter__()
        task = self._bar.add_task(self.description, total=self.total)
        return lambda n: self._bar.advance(task, n)

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)


__all__ = [
    "ACCESSORIES",
    "BACKGROUNDS",
    "CAPTIONED_DOMAINS",
    "COLOURS",
    "CORRUPTIONS",
    "DOMAINS",
    "EXPRESSIONS",
    "EYE_COLOURS",
    "FACE_CORRUPTIONS",
    "FACE_DOMAINS",
    "FACE_WORDS",
    "HAIR_COLOURS",
    "POSITIONS",
    "SHAPES",
    "SHAPE_WORDS",
    "SIZES",
    "SKIN_TONES",
    "SPLITS",
    "WEB_FACE_SHARE",
    "WORLD_VERSION",
    "FaceTruth",
    "SceneTruth",
    "Truth",
    "World",
    "WorldObject",
    "corruptions",
    "domain_version",
    "is_materialised",
    "materialise",
    "read_truths",
    "render_scenes",
    "truth_from_dict",
]
