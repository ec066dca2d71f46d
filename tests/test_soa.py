"""SOA-C / SOA-I (Hinz et al.) and the world's caption accuracy, on content known in advance."""

from __future__ import annotations

import pytest
import torch

from lafite.data.inspector import FaceReading, InspectorReading
from lafite.data.world import SHAPE_WORDS, SHAPES, FaceTruth, SceneTruth, World, WorldObject
from lafite.errors import UserError
from lafite.metrics.soa import (
    FACE_CAPTION_METRICS,
    CaptionScore,
    caption_claims,
    caption_subsets,
    compute_soa,
    load_detector,
    soa_from_detections,
)


def test_soa_from_known_detections():
    # circle: 3 of 4 images found; square: 1 of 2; star: 0 of 1.
    expected = ["circle"] * 4 + ["square"] * 2 + ["star"]
    found = [{"circle"}, {"circle", "star"}, set(), {"circle"}, {"square"}, {"circle"}, {"cross"}]
    result = soa_from_detections(expected, found)
    assert result.per_class == {"circle": 0.75, "square": 0.5, "star": 0.0}
    assert result.soa_c == pytest.approx((0.75 + 0.5 + 0.0) / 3)
    assert result.soa_i == pytest.approx(4 / 7)


class ColourCodedDetector:
    """Detects the class painted into the image's red channel (index into ``classes``);
    images painted 255 contain nothing."""

    def __init__(self, classes):
        self.classes = tuple(classes)

    def detect(self, images):
        out = []
        for code in images[:, 0, 0, 0].tolist():
            out.append(set() if code == 255 else {self.classes[code]})
        return out


def test_soa_end_to_end_with_a_known_generator_and_detector():
    classes = ("circle", "square", "star")
    subsets = caption_subsets(
        ["a red circle", "two blue squares", "a star and a circle", "a green cross", "a disc"],
        {c: SHAPE_WORDS[c] for c in classes},
    )
    assert subsets == {
        "circle": ["a red circle", "a star and a circle", "a disc"],
        "square": ["two blue squares"],
        "star": ["a star and a circle"],
    }

    def render(captions):
        # Draws the first class its caption names, except that stars are never drawn.
        images = torch.full((len(captions), 3, 4, 4), 255, dtype=torch.uint8)
        for i, caption in enumerate(captions):
            for code, name in enumerate(classes):
                if name != "star" and any(w in caption for w in SHAPE_WORDS[name]):
                    images[i, 0] = code
                    break
            if "disc" in caption:
                images[i, 0] = 0
        return images

    result = compute_soa(
        subsets, render, ColourCodedDetector(classes), images_per_caption=3, batch_size=4
    )
    # circle subset: "a red circle" ok, "a star and a circle" ok (circle drawn), "a disc" ok.
    assert result.per_class == {"circle": 1.0, "square": 1.0, "star": 0.0}
    assert result.images_per_class == {"circle": 9, "square": 3, "star": 3}
    assert result.soa_c == pytest.approx(2 / 3)
    assert result.soa_i == pytest.approx(12 / 15)


def test_person_class_gets_one_image_per_caption_and_caps_apply():
    subsets = caption_subsets(
        [f"person {i}" for i in range(10)] + ["a dog"],
        {"person": ["person"], "dog": ["dog"]},
        per_class=4,
        seed=3,
    )
    assert len(subsets["person"]) == 4 and subsets["dog"] == ["a dog"]
    detector = ColourCodedDetector(("person", "dog"))
    result = compute_soa(
        subsets,
        lambda caps: torch.zeros(len(caps), 3, 2, 2, dtype=torch.uint8),
        detector,
        images_per_caption=3,
    )
    assert result.images_per_class == {"person": 4, "dog": 3}
    assert result.per_class == {"person": 1.0, "dog": 0.0}


def test_user_detector_spec_errors_are_clear():
    with pytest.raises(UserError, match="module:factory"):
        load_detector("no_colon_here")
    with pytest.raises(UserError, match="cannot import"):
        load_detector("lafite.no_such_module:make")
    with pytest.raises(UserError, match="lacks .classes"):
        load_detector("builtins:object")


# -- caption accuracy -----------------------------------------------------------------------------

RED_CIRCLE = WorldObject("circle", "red", "large", "top-left")
BLUE_SQUARE = WorldObject("square", "blue", "small", "bottom-right")
TRUTH = SceneTruth("grey", (RED_CIRCLE, BLUE_SQUARE))


def reading(background, main, others=()):
    objects = (main, *others)
    return InspectorReading(background, main, objects, frozenset(o.shape for o in objects))


def test_caption_claims_name_only_what_the_caption_says():
    claims = caption_claims("a large red circle in the top left and a blue square", TRUTH)
    assert claims.background is None
    assert claims.objects[0] == {
        "shape": "circle",
        "colour": "red",
        "size": "large",
        "position": "top-left",
    }
    assert claims.objects[1] == {"shape": "square", "colour": "blue"}
    assert claims.n_claims == 6
    bare = caption_claims("photo of a circle, grey backdrop", TRUTH)
    assert bare.background == "grey" and bare.objects[0] == {"shape": "circle"}


def test_caption_accuracy_counts_the_named_attributes_found():
    caption = "a large red circle in the top left and a blue square on a grey background"
    claims = caption_claims(caption, TRUTH)
    score = CaptionScore()
    # Perfect image: all 7 claims found.
    score.update(claims, reading("grey", RED_CIRCLE, (BLUE_SQUARE,)))
    # Wrong background, main object green, no square: 3 of 7 (main shape, size, position).
    wrong_main = WorldObject("circle", "green", "large", "top-left")
    score.update(claims, reading("white", wrong_main))
    assert score.accuracy("all") == pytest.approx(10 / 14)
    assert score.accuracy("background") == 0.5
    assert score.accuracy("main-colour") == 0.5
    assert score.accuracy("main-shape") == 1.0
    assert score.accuracy("main-position") == 1.0
    assert score.accuracy("main-size") == 1.0
    # Both objects are named: two detected objects is right, one is not.
    assert score.accuracy("count") == 0.5
    # A caption leaving the square out says nothing about the count.
    partial = CaptionScore()
    partial.update(caption_claims("a large red circle on grey", TRUTH), reading("grey", RED_CIRCLE))
    assert partial.accuracy("count") is None and partial.accuracy("main-size") == 1.0


def test_every_world_caption_names_its_main_shape():
    for domain in ("scenes", "objects", "narratives"):
        world = World(domain, "test", resolution=16, size=20)
        for i in range(len(world)):
            truth = world.truth(i)
            for caption in world.captions(i):
                claims = caption_claims(caption, truth)
                assert claims.objects[0].get("shape") == truth.main.shape, (domain, caption)
    assert set(SHAPES) == set(SHAPE_WORDS)


# -- caption accuracy on faces ----------------------------------------------------------------------

FACE = FaceTruth("grey", "brown", "blue", "smiling", "glasses", "light")


def face_reading(face):
    return InspectorReading("grey", RED_CIRCLE, (RED_CIRCLE,), frozenset(), face=face)


def test_face_claims_read_words_in_their_context():
    claims = caption_claims("a smiling person with brown hair and blue eyes wearing glasses", FACE)
    assert claims.objects == () and claims.background is None
    assert claims.face == {"hair": "brown", "eyes": "blue", "expression": "smiling",
                           "accessory": "glasses"}
    assert claims.n_claims == 4
    # "brown" before "hair" is not a claim about the eyes, nor "grey hair" about the background.
    other = FaceTruth("grey", "grey", "brown", "neutral", "none", "dark")
    assert caption_claims("a calm person with grey hair", other).face == {"hair": "grey",
                                                                          "expression": "neutral"}
    assert caption_claims("a calm person with grey hair", other).background is None
    assert caption_claims("a grey-haired face on a grey background", other).background == "grey"
    assert caption_claims("a person with brown eyes", FACE).face == {}


def test_face_caption_accuracy_scores_the_face_reading():
    caption = "a grinning person with chestnut hair and sky-blue eyes wearing spectacles on grey"
    claims = caption_claims(caption, FACE)
    assert claims.background == "grey" and len(claims.face) == 4
    score = CaptionScore()
    score.update(claims, face_reading(FaceReading("brown", "blue", "smiling", "glasses")))
    score.update(claims, face_reading(FaceReading("blond", "blue", "neutral", "glasses")))
    score.update(claims, face_reading(None))  # not seen as a face: no face attribute found
    assert score.accuracy("face-hair") == pytest.approx(1 / 3)
    assert score.accuracy("face-eyes") == pytest.approx(2 / 3)
    assert score.accuracy("face-expression") == pytest.approx(1 / 3)
    assert score.accuracy("background") == 1.0
    assert score.accuracy("all") == pytest.approx((5 + 3 + 1) / 15)
    assert score.accuracy("main-shape") is None and score.accuracy("count") is None
    assert set(FACE_CAPTION_METRICS.values()) == {f"face-{a}" for a in
                                                  ("hair", "eyes", "expression", "accessory")}


def test_every_face_caption_makes_true_claims():
    world = World("faces", "test", resolution=16, size=30)
    for i in range(len(world)):
        truth = world.truth(i)
        perfect = face_reading(FaceReading(truth.hair, truth.eyes, truth.expression, truth.accessory))
        for caption in world.captions(i):
            claims = caption_claims(caption, truth)
            assert claims.n_claims >= 1, caption
            score = CaptionScore()
            score.update(claims, InspectorReading(truth.background, RED_CIRCLE, (RED_CIRCLE,),
                                                  frozenset(), face=perfect.face))
            assert score.accuracy("all") == 1.0
