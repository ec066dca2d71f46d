"""World captioners: the image captioners of Table 1's captioning baseline at mini and smoke scale.

The paper's Cap-Base and Cap-Large rows train supervised on captions that VinVL (base / large)
wrote for the MS-COCO training images. The world analogue needs captioners that never saw a
``scenes`` caption or any ground truth: they learn from the ``web`` domain (the CC3M analogue)
only, its images and its noisy captions, and then caption the run's training images.

- ``retrieval`` (captioner-base): the run's CLIP (the world's CLIP at the world scales) embeds
  every image to caption and every web training caption; each image gets its nearest caption,
  filler words, jumbled order and all.
- ``attributes`` (captioner-large): a small CNN trained on web images to predict what the web
  captions state about the main object (shape, colour, size, position) and the background,
  with labels parsed from the caption text alone (the first shape word of a caption names the
  main object; the colour, size and position words before the first relation word, "with",
  "above", ..., are the main object's); face captions are left out. It writes a templated
  caption, "a large red circle in the top left on a grey background".

Which is stronger is measured, not assumed: each build scores its captions on the test split of
the images it captions (ground truth of the world; never used to train) and writes the numbers
to the job folder's ``summary.json``:

- ``attribute_precision``: of the attribute values a caption names (shape, colour, size and
  position words, background), the fraction true of the image (of some object, for object
  attributes);
- ``main_colour`` / ``main_shape`` / ``main_colour_and_shape``: the share of images whose
  caption names the main object's colour / shape / both correctly (read as the main object's
  by the same rule as the training labels);
- ``coverage``: of the image's attributes (4 per object and the background), the fraction the
  caption names (``lafite.metrics.soa.caption_claims``).

At paper scale no captioner is trained here: VinVL's captions are given as a captions file
(``data.captions_file``, format in ``lafite.data.captions``).
"""

from __future__ import annotations

import json
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from lafite.config import RunConfig
from lafite.errors import UserError
from lafite.workspace import Workspace

if TYPE_CHECKING:  # torch is imported where a captioner is built: jobs.yaml is read without it
    import torch
    from torch import nn

METHODS = ("retrieval", "attributes")
# Settings a captioner job may give (experiments/jobs.yaml set/scales), with their defaults.
_COMMON = {"web_images": 8000}
_DEFAULTS: dict[str, dict[str, Any]] = {
    "retrieval": {},
    "attributes": {"steps": 2000, "batch": 128, "lr": 0.002, "width": 32, "seed": 0},
}
ATTRIBUTES = ("shape", "colour", "size", "position", "background")
CAPTIONS_NAME = "captions.jsonl"
_BATCH = 256


def captioner_settings(settings: dict[str, Any], where: str) -> dict[str, Any]:
    """A captioner job's settings, checked and completed with the method's defaults (so that a
    changed default makes a new job hash). Raises UserError naming ``where`` and the key."""
    method = settings.get("method")
    if method not in METHODS:
        raise UserError(f"{where}.set.method: must be one of {', '.join(METHODS)}, got {method!r}")
    defaults = {**_COMMON, **_DEFAULTS[method]}
    unknown = set(settings) - set(defaults) - {"method"}
    if unknown:
        raise UserError(
            f"{where}: unknown setting(s) {', '.join(sorted(unknown))} for a {method} captioner; "
            f"valid: method, {', '.join(defaults)}"
        )
    out: dict[str, Any] = {"method": method}
    for key, default in defaults.items():
        value = settings.get(key, default)
        kind = type(default)
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        floor = 0 if key == "seed" else 1e-12
        if not isinstance(value, kind) or isinstance(value, bool) or value < floor:
            what = "a non-negative" if key == "seed" else "a positive"
            raise UserError(f"{where}: {key} must be {what} {kind.__name__}, got {value!r}")
        out[key] = value
    return out


def check_world(cfg: RunConfig, name: str) -> None:
    """Captioner jobs caption the built-in world only; say what to do at paper scale."""
    if cfg.data.dataset != "world":
        raise UserError(
            f"captioner job {name!r} trains a world captioner on the world's web domain, but the "
            f"run reads {cfg.data.dataset!r}: at paper scale give the captioner's captions (the "
            "paper's VinVL outputs) as a captions file with data.captions_file, and clear "
            "data.captions_job"
        )


# -- reading captions ------------------------------------------------------------------------


@dataclass(frozen=True)
class Mention:
    """An attribute value named in a caption, at character ``start``."""

    start: int
    attribute: str
    value: str


@cache
def _patterns() -> tuple[tuple[str, str, re.Pattern[str]], ...]:
    from lafite.metrics.soa import attribute_words, word_pattern

    return tuple((attribute, value, word_pattern(words))
                 for attribute, values in attribute_words().items() if attribute in ATTRIBUTES
                 for value, words in values.items())


_FACE = re.compile(r"\b(?:hair|haired|eyes|eyed|person|model|portrait|face|individual)\b", re.I)
_RELATION = re.compile(r" (?:with|above|below|and|to the left of|to the right of) ", re.I)


def mentions(caption: str) -> list[Mention]:
    """Every attribute value ``caption`` names, in reading order."""
    found = [Mention(m.start(), attribute, value)
             for attribute, value, pattern in _patterns() for m in pattern.finditer(caption)]
    return sorted(found, key=lambda m: (m.start, m.attribute))


def is_face_caption(caption: str) -> bool:
    return bool(_FACE.search(caption))


def main_attributes(caption: str) -> dict[str, str]:
    """What ``caption`` says of its main object and background, from the text alone.

    The first shape word names the main object (world captions name it first, also in their
    jumbled forms, "circle, red, small"); colour, size and position words before the first
    relation word after it ("with", "above", "and", ...) are the main object's; a background
    word anywhere is the background.
    """
    found = mentions(caption)
    shape = next((m for m in found if m.attribute == "shape"), None)
    end = len(caption)
    if shape is not None:
        relation = _RELATION.search(caption, shape.start)
        end = relation.start() if relation else end
    out: dict[str, str] = {}
    for m in found:
        if m.attribute == "background" or (shape is not None and m.start < end):
            out.setdefault(m.attribute, m.value)
    return out


def caption_accuracy(captions: Sequence[str], truths: Sequence[Any]) -> dict[str, float | int]:
    """How true ``captions`` are of the images whose world ground truth is ``truths`` (scene
    truths; face images are skipped). See the module docstring for each number."""
    from lafite.metrics.soa import caption_claims

    named = true = colour = shape = both = 0
    coverage = 0.0
    n = 0
    for caption, truth in zip(captions, truths, strict=True):
        if truth is None or not hasattr(truth, "objects"):
            continue
        n += 1
        values = {(m.attribute, m.value) for m in mentions(caption)}
        for attribute, value in values:
            named += 1
            if attribute == "background":
                true += value == truth.background
            else:
                true += any(getattr(o, attribute) == value for o in truth.objects)
        main = main_attributes(caption)
        colour_ok = main.get("colour") == truth.main.colour
        shape_ok = main.get("shape") == truth.main.shape
        colour += colour_ok
        shape += shape_ok
        both += colour_ok and shape_ok
        coverage += caption_claims(caption, truth).n_claims / (1 + 4 * len(truth.objects))
    if not n:
        return {"n_images": 0}
    return {
        "n_images": n,
        "attribute_precision": true / named if named else 0.0,
        "main_colour": colour / n,
        "main_shape": shape / n,
        "main_colour_and_shape": both / n,
        "coverage": coverage / n,
    }


# -- captioners ------------------------------------------------------------------------------


class Captioner(Protocol):
    def caption(self, images: torch.Tensor) -> list[str]:
        """One caption per uint8 NCHW image."""
        ...


class RetrievalCaptioner:
    """Each image gets the web caption nearest to it in CLIP space."""

    def __init__(self, encoder: Any, captions: Sequence[str]) -> None:
        self.encoder = encoder
        self.captions = list(captions)
        self.features = encoder.encode_texts(self.captions).float().cpu()

    def caption(self, images: torch.Tensor) -> list[str]:
        feats = self.encoder.encode_images(images).float().cpu()
        best = (feats @ self.features.T).argmax(dim=1)
        return [self.captions[int(i)] for i in best]


@cache
def _classes() -> dict[str, tuple[str, ...]]:
    from lafite.data import world

    return {"shape": world.SHAPES, "colour": world.COLOURS, "size": world.SIZES,
            "position": world.POSITIONS, "background": world.BACKGROUNDS}


def attribute_net(resolution: int, width: int) -> nn.Sequential:
    """A small CNN: the image in [-1, 1] to the logits of every attribute, concatenated in
    ATTRIBUTES order (spatial layout kept to the end: position is one of the attributes)."""
    from torch import nn

    layers: list[nn.Module] = [nn.Conv2d(3, width, 3, padding=1), nn.ReLU()]
    channels, side = width, resolution
    while side > 4:
        out = min(channels * 2, width * 4)
        layers += [nn.Conv2d(channels, out, 3, stride=2, padding=1), nn.BatchNorm2d(out),
                   nn.ReLU()]
        channels, side = out, (side + 1) // 2
    n_out = sum(len(_classes()[a]) for a in ATTRIBUTES)
    layers += [nn.Flatten(), nn.Linear(channels * side * side, 128), nn.ReLU(),
               nn.Linear(128, n_out)]
    return nn.Sequential(*layers)


def _attribute_logits(net: nn.Module, images: torch.Tensor) -> list[torch.Tensor]:
    logits = net(images.float() / 127.5 - 1.0)
    return list(logits.split([len(_classes()[a]) for a in ATTRIBUTES], dim=1))


def web_labels(captions: Sequence[str]) -> tuple[np.ndarray, dict[str, float]]:
    """(N, 5) class indices parsed from captions (-1 = not stated or a face caption), and the
    share of captions stating each attribute."""
    classes = _classes()
    labels = np.full((len(captions), len(ATTRIBUTES)), -1, dtype=np.int64)
    for i, caption in enumerate(captions):
        if is_face_caption(caption):
            continue
        said = main_attributes(caption)
        if "shape" not in said:
            continue
        for j, attribute in enumerate(ATTRIBUTES):
            if attribute in said:
                labels[i, j] = classes[attribute].index(said[attribute])
    shares = {a: float((labels[:, j] >= 0).mean()) for j, a in enumerate(ATTRIBUTES)}
    return labels, shares


class AttributeCaptioner:
    """Predicts the main object's attributes and the background, and writes them as a caption."""

    def __init__(self, net: nn.Module) -> None:
        self.net = net.eval()

    def caption(self, images: torch.Tensor) -> list[str]:
        import torch

        classes = _classes()
        with torch.no_grad():
            logits = _attribute_logits(self.net, torch.as_tensor(images))
        picks = {a: [classes[a][int(k)] for k in lg.argmax(dim=1)]
                 for a, lg in zip(ATTRIBUTES, logits, strict=True)}
        return [template(*(picks[a][i] for a in ATTRIBUTES)) for i in range(len(images))]


def template(shape: str, colour: str, size: str, position: str, background: str) -> str:
    where = position.replace("-", " ")
    article = "an" if size[0] in "aeiou" else "a"
    return f"{article} {size} {colour} {shape} in the {where} on a {background} background"


def fit_attributes(images: torch.Tensor, labels: np.ndarray, settings: dict[str, Any],
                   progress: bool = False) -> tuple[AttributeCaptioner, dict[str, float]]:
    """Train the attribute CNN on uint8 NCHW ``images`` with ``labels`` (-1 = unknown)."""
    import torch
    from torch import nn

    keep = torch.from_numpy(labels[:, 0] >= 0)
    x, y = images[keep], torch.from_numpy(labels)[keep]
    if len(x) == 0:
        raise UserError("the web captions name no shape: the attribute captioner has nothing "
                        "to learn from")
    torch.manual_seed(settings["seed"])
    net = attribute_net(images.shape[-1], settings["width"])
    optimiser = torch.optim.Adam(net.parameters(), lr=settings["lr"])
    generator = torch.Generator().manual_seed(settings["seed"])
    loss_fn = nn.CrossEntropyLoss(ignore_index=-1)
    steps = settings["steps"]
    net.train()
    running = 0.0
    for step in range(steps):
        batch = torch.randint(len(x), (min(settings["batch"], len(x)),), generator=generator)
        logits = _attribute_logits(net, x[batch])
        loss = sum(loss_fn(lg, y[batch, j]) for j, lg in enumerate(logits)
                   if bool((y[batch, j] >= 0).any()))
        optimiser.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[union-attr]
        optimiser.step()
        value = float(loss.detach())
        running = 0.9 * running + 0.1 * value if step else value
        if progress and (step + 1) % max(1, steps // 5) == 0:
            _say(progress, f"  attribute captioner step {step + 1}/{steps}: loss {running:.3f}")
    return AttributeCaptioner(net), {"final_loss": running, "training_images": len(x)}


def _caption_all(captioner: Captioner, dataset: Any) -> list[str]:
    out: list[str] = []
    for start in range(0, len(dataset), _BATCH):
        indices = range(start, min(start + _BATCH, len(dataset)))
        out.extend(captioner.caption(dataset.images(indices)))
    return out


def _say(progress: bool, message: str) -> None:
    if progress:
        print(message, file=sys.stderr, flush=True)


def build_captioner(cfg: RunConfig, settings: dict[str, Any], workspace: Workspace,
                    folder: Path, progress: bool = False, name: str = "captioner") -> Path:
    """Train the captioner ``settings`` describe on the world's web domain, caption every
    training image ``cfg`` reads, score the captions on its test split and return the
    captions file (``folder/captions.jsonl``); the scores and times go to ``summary.json``."""
    import torch

    from lafite.data.captions import image_name, write_captions_file
    from lafite.data.datasets import open_dataset
    from lafite.data.world import World

    check_world(cfg, name)
    settings = captioner_settings(settings, f"experiments/jobs.yaml: jobs.{name}")
    method = settings["method"]
    started = time.perf_counter()
    web = World("web", "train", cfg.data.resolution, seed=cfg.world.seed,
                size=settings["web_images"])
    web_captions = [web.captions(i)[0] for i in range(len(web))]
    details: dict[str, Any] = {}
    captioner: Captioner
    if method == "retrieval":
        from lafite.clip import load_clip

        encoder = load_clip(cfg.clip, workspace, cfg.data.resolution)
        captioner = RetrievalCaptioner(encoder, web_captions)
    else:
        labels, details["web_labels_stated"] = web_labels(web_captions)
        pixels = torch.from_numpy(np.ascontiguousarray(
            web.images(range(len(web))).transpose(0, 3, 1, 2)))
        captioner, fit = fit_attributes(pixels, labels, settings, progress)
        details.update(fit)
    fit_seconds = time.perf_counter() - started

    started = time.perf_counter()
    train = open_dataset(cfg, "train", workspace)
    captions = _caption_all(captioner, train)
    path = write_captions_file(folder / CAPTIONS_NAME,
                               ((image_name(train, i), c) for i, c in enumerate(captions)))
    caption_seconds = time.perf_counter() - started

    test = open_dataset(cfg, "test", workspace)
    truths = test.truths()
    accuracy: dict[str, Any] = {"n_images": 0}
    examples: list[dict[str, Any]] = []
    if truths is not None:
        test_captions = _caption_all(captioner, test)
        accuracy = caption_accuracy(test_captions, truths)
        examples = [{"caption": c, "truth": t.to_dict()}
                    for c, t in zip(test_captions[:8], truths[:8], strict=True)]
    summary = {
        "method": method,
        "settings": settings,
        "web_images": len(web),
        "captioned": {"images": len(train), "folder": str(train.root)},
        "accuracy_on": f"{cfg.world.domain} test ({accuracy['n_images']} images)",
        "accuracy": accuracy,
        "seconds": {"fit": round(fit_seconds, 2), "caption_training_images": round(caption_seconds, 2)},
        **details,
        "examples": examples,
    }
    (folder / "summary.json").write_text(json.dumps(summary, indent=2))
    if accuracy["n_images"]:
        _say(progress, (
            f"captioner {name} ({method}): on {accuracy['n_images']} {cfg.world.domain} test "
            f"images, attributes named that are true {accuracy['attribute_precision']:.1%}, main "
            f"colour {accuracy['main_colour']:.1%}, main shape {accuracy['main_shape']:.1%}, both "
            f"{accuracy['main_colour_and_shape']:.1%}, coverage {accuracy['coverage']:.1%}; "
            f"fit {fit_seconds:.1f} s, captioning {caption_seconds:.1f} s"
        ))
    return path


__all__ = [
    "ATTRIBUTES",
    "METHODS",
    "attribute_net",
    "AttributeCaptioner",
    "RetrievalCaptioner",
    "build_captioner",
    "caption_accuracy",
    "captioner_settings",
    "check_world",
    "is_face_caption",
    "main_attributes",
    "mentions",
    "template",
    "web_labels",
]
