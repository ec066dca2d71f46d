"""The built-in world: determinism, split hygiene, ground truth and captions."""

import hashlib
import json
import re

import numpy as np
import pytest

from lafite.data.world import (
    BACKGROUNDS,
    COLOURS,
    DOMAINS,
    POSITIONS,
    SHAPE_WORDS,
    SHAPES,
    SIZES,
    World,
    is_materialised,
    materialise,
    read_truths,
)
from lafite.errors import UserError


def test_same_seed_same_bytes_and_captions():
    a = World("scenes", "train", 32, seed=3, size=40)
    b = World("scenes", "train", 32, seed=3, size=40)
    assert a.images(range(40)).tobytes() == b.images(range(40)).tobytes()
    assert [a.captions(i) for i in range(40)] == [b.captions(i) for i in range(40)]
    other = World("scenes", "train", 32, seed=4, size=40)
    assert a.images(range(40)).tobytes() != other.images(range(40)).tobytes()


def test_image_is_a_pure_function_of_its_index():
    world = World("web", "train", 32, size=50)
    batch = world.images([7, 3, 41])
    assert np.array_equal(batch[0], world.image(7))
    assert np.array_equal(batch[2], world.image(41))
    assert world.truth(41) == World("web", "train", 32, size=50).truth(41)


@pytest.mark.parametrize("domain", DOMAINS)
def test_train_and_test_share_no_image(domain):
    train = World(domain, "train", 32, size=300).images(range(300))
    test = World(domain, "test", 32, size=300).images(range(300))
    train_hashes = {hashlib.sha1(img.tobytes()).hexdigest() for img in train}
    test_hashes = {hashlib.sha1(img.tobytes()).hexdigest() for img in test}
    assert not train_hashes & test_hashes


def test_unknown_domain_lists_the_valid_ones():
    with pytest.raises(UserError) as info:
        World("coco", "train")
    for domain in DOMAINS:
        assert domain in str(info.value)
    with pytest.raises(UserError, match="resolution"):
        World("scenes", "train", resolution=8)


@pytest.mark.parametrize("resolution", [16, 32, 64, 48])
def test_resolutions(resolution):
    images = World("scenes", "test", resolution, size=4).images(range(4))
    assert images.shape == (4, resolution, resolution, 3) and images.dtype == np.uint8


@pytest.mark.parametrize("domain", DOMAINS)
def test_ground_truth_invariants(domain):
    world = World(domain, "train", 32, size=300)
    for i in range(300):
        truth = world.truth(i)
        assert truth.background in BACKGROUNDS
        assert 1 <= len(truth.objects) <= 3
        positions = [o.position for o in truth.objects]
        assert len(set(positions)) == len(positions), "objects must sit in distinct regions"
        main_size = SIZES.index(truth.main.size)
        for obj in truth.objects:
            assert obj.shape in SHAPES and obj.colour in COLOURS and obj.position in POSITIONS
            assert obj.colour not in BACKGROUNDS
        for other in truth.objects[1:]:
            assert SIZES.index(other.size) < main_size, "the main object is strictly largest"
        if domain == "objects":
            assert len(truth.objects) == 1 and truth.main.size == "large"


def test_main_object_is_drawn_on_top():
    world = World("scenes", "train", 64, size=400)
    for i in range(400):
        truth = world.truth(i)
        if len(truth.objects) > 1:
            scene = world._scene(i)
            main = scene.placed[0]
            x, y = int(main.cx * 64), int(main.cy * 64)
            # The main object's centre pixel has the main object's colour, whatever overlaps.
            assert np.abs(world.image(i)[y, x].astype(float) - main.rgb).max() < 2


def _first_shape(caption):
    lowered = caption.lower()
    best = None
    for shape, words in SHAPE_WORDS.items():
        for word in words:
            match = re.search(rf"\b{re.escape(word)}\b", lowered)
            if match and (best is None or match.start() < best[0]):
                best = (match.start(), shape)
    return best[1] if best else None


@pytest.mark.parametrize("domain", DOMAINS)
def test_captions_name_the_main_object_first(domain):
    world = World(domain, "train", 32, size=200)
    expected = {"scenes": 5, "objects": 10, "narratives": 1, "web": 1}[domain]
    for i in range(200):
        captions = world.captions(i)
        assert len(captions) == expected
        main = world.truth(i).main
        for caption in captions:
            assert _first_shape(caption) == main.shape, caption


def test_count_words_for_repeated_objects():
    world = World("scenes", "train", 32, size=400)
    seen = 0
    for i in range(400):
        objects = world.truth(i).objects
        if len(objects) == 3 and (objects[1].shape, objects[1].colour) == (
            objects[2].shape,
            objects[2].colour,
        ):
            seen += 1
            assert any(f"two {objects[1].size} {objects[1].colour}" in c for c in world.captions(i))
    assert seen > 5


def test_narratives_are_long_and_web_is_noisier():
    narratives = World("narratives", "train", 32, size=50)
    assert all(narratives.captions(i)[0].count(".") >= 3 for i in range(50))
    web = World("web", "train", 32, size=300)
    words = [len(web.captions(i)[0].split()) for i in range(300)]
    assert min(words) < 4  # some captions lose attributes
    assert any(c[0].startswith(("photo of", "stock image")) for c in map(web.captions, range(300)))


def test_materialise_is_idempotent(tmp_path):
    world = World("scenes", "test", 16, size=12)
    out = materialise(world, tmp_path / "w")
    assert is_materialised(world, out)
    assert len(list(out.glob("*.png"))) == 12 and len(list(out.glob("*.txt"))) == 12
    first = (out / "00000000.png").stat().st_mtime_ns
    assert (out / "00000003.txt").read_text().splitlines() == world.captions(3)
    truths = read_truths(out)
    assert truths["00000005.png"] == world.truth(5)
    assert json.loads((out / "truth.jsonl").read_text().splitlines()[0])["file"] == "00000000.png"
    materialise(world, out)
    assert (out / "00000000.png").stat().st_mtime_ns == first
    # A different world in the same folder is rebuilt, not mixed in.
    bigger = World("scenes", "test", 16, size=14)
    materialise(bigger, out)
    assert len(list(out.glob("*.png"))) == 14 and is_materialised(bigger, out)


def test_web_captions_always_name_the_main_objects_colour_and_shape():
    """Noisy in form, informative in content: otherwise retrieval among 100 is capped (~75%)."""
    from lafite.data.world import _COLOUR_SYNONYMS, SHAPE_WORDS, World

    web = World("web", "test", resolution=16, size=300)
    for index in range(len(web)):
        main = web.truth(index).main
        (caption,) = web.captions(index)
        text = caption.lower()
        assert any(word in text for word in _COLOUR_SYNONYMS[main.colour]), caption
        assert any(word in text for word in SHAPE_WORDS[main.shape]), caption


# -- controlled corruptions (what the FID anchors score) -----------------------------------------


def _without(obj, field):
    data = obj.to_dict()
    data.pop(field)
    return data


def test_corruption_none_is_the_world_itself():
    world = World("scenes", "train", 32, size=40)
    truths, images = world.corrupted(range(40), "none")
    assert np.array_equal(images, world.images(range(40)))
    assert truths == [world.truth(i) for i in range(40)]


@pytest.mark.parametrize("field", ["shape", "colour", "size", "position"])
def test_main_corruptions_redraw_one_attribute_of_the_main_object_only(field):
    world = World("scenes", "train", 32, size=300)
    truths, images = world.corrupted(range(300), f"main-{field}", seed=3)
    changed = 0
    for i, truth in enumerate(truths):
        original = world.truth(i)
        assert truth.background == original.background
        assert truth.objects[1:] == original.objects[1:]
        assert _without(truth.main, field) == _without(original.main, field)
        changed += getattr(truth.main, field) != getattr(original.main, field)
    options = {"shape": SHAPES, "colour": COLOURS, "size": SIZES, "position": POSITIONS}[field]
    # A uniform redraw keeps the old value with probability 1 / len(options).
    assert changed / 300 == pytest.approx(1 - 1 / len(options), abs=0.08)
    # Same seed, same redraws; the pixels follow the truth.
    again_truths, again = world.corrupted(range(300), f"main-{field}", seed=3)
    assert again_truths == truths and np.array_equal(again, images)


def test_all_circles_keeps_the_layout_and_changes_only_the_shapes():
    world = World("scenes", "train", 32, size=60)
    truths, images = world.corrupted(range(60), "all-circles")
    originals = [world.truth(i) for i in range(60)]
    for truth, original in zip(truths, originals):
        assert all(o.shape == "circle" for o in truth.objects)
        assert [_without(o, "shape") for o in truth.objects] == [
            _without(o, "shape") for o in original.objects
        ]
    real = world.images(range(60))
    same = [np.array_equal(images[i], real[i]) for i in range(60)]
    only_circles = [all(o.shape == "circle" for o in t.objects) for t in originals]
    assert same == only_circles


def test_object_removal_corruptions():
    world = World("scenes", "train", 32, size=30)
    truths, _ = world.corrupted(range(30), "no-secondary")
    assert all(len(t.objects) == 1 and t.main == world.truth(i).main for i, t in enumerate(truths))
    truths, images = world.corrupted(range(30), "no-objects")
    assert all(not t.objects for t in truths)
    flat = images.reshape(30, -1, 3)
    assert (flat == flat[:, :1]).all()  # background only: one colour per image


def test_unknown_corruption_names_the_valid_ones():
    with pytest.raises(UserError, match="all-circles"):
        World("scenes", "train", 32, size=4).corrupted(range(4), "upside-down")
