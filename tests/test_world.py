"""The built-in world: determinism, split hygiene, ground truth and captions."""

import hashlib
import json
import re

import numpy as np
import pytest

from lafite.data.world import (
    ACCESSORIES,
    BACKGROUNDS,
    CAPTIONED_DOMAINS,
    COLOURS,
    DOMAINS,
    EXPRESSIONS,
    EYE_COLOURS,
    FACE_CORRUPTIONS,
    FACE_DOMAINS,
    FACE_WORDS,
    HAIR_COLOURS,
    POSITIONS,
    SHAPE_WORDS,
    SHAPES,
    SIZES,
    SKIN_TONES,
    FaceTruth,
    SceneTruth,
    World,
    corruptions,
    is_materialised,
    materialise,
    read_truths,
)
from lafite.errors import UserError

OBJECT_DOMAINS = ("scenes", "objects", "narratives", "web")


def _object_truths(world, n):
    """(index, truth) of the object images among the first n (web mixes faces in)."""
    return [(i, t) for i in range(n) if isinstance(t := world.truth(i), SceneTruth)]


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


@pytest.mark.parametrize("domain", OBJECT_DOMAINS)
def test_ground_truth_invariants(domain):
    world = World(domain, "train", 32, size=300)
    for _, truth in _object_truths(world, 300):
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


@pytest.mark.parametrize("domain", OBJECT_DOMAINS)
def test_captions_name_the_main_object_first(domain):
    world = World(domain, "train", 32, size=200)
    expected = {"scenes": 5, "objects": 10, "narratives": 1, "web": 1}[domain]
    for i, truth in _object_truths(world, 200):
        captions = world.captions(i)
        assert len(captions) == expected
        main = truth.main
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
    for index, truth in _object_truths(web, len(web)):
        main = truth.main
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


# -- faces (MM-CelebA-HQ and FFHQ analogues) ----------------------------------------------------


def test_existing_domains_are_unchanged_by_faces():
    """Pixels, captions and truths as on main before faces existed (pinned from world-v2)."""
    digest = hashlib.sha256()
    for domain in ("scenes", "objects", "narratives"):
        for split in ("train", "test"):
            world = World(domain, split, 16, seed=1, size=12)
            digest.update(world.images(range(12)).tobytes())
            for i in range(12):
                digest.update("\n".join(world.captions(i)).encode())
                digest.update(json.dumps(world.truth(i).to_dict(), sort_keys=True).encode())
    assert digest.hexdigest() == "2e64433a2b58a57e4c84091af6a8407cba7df446e896d276cacadae720dd50ef"
    # Web images that are not faces keep their pixels, captions and truths too.
    web = World("web", "train", 16, seed=1, size=60)
    kept = [i for i in range(60) if isinstance(web.truth(i), SceneTruth)]
    assert len(kept) == 53
    digest = hashlib.sha256(web.images(kept).tobytes())
    for i in kept:
        digest.update("\n".join(web.captions(i)).encode())
        digest.update(repr(web.truth(i).to_dict()).encode())
    assert digest.hexdigest() == "c7c12685d1cf8f412f63e6df4a8a98b2ce3b8aba1fcc248bb68be7af41c3e89b"


def test_only_the_web_domain_invalidates_its_caches(tmp_path):
    """Web gained faces, so its folders and caches are rebuilt; the other domains' are kept."""
    assert World("scenes", "train", 32, seed=0, size=10).key == "scenes-train-r32-s0-n10-world-v2"
    assert World("web", "train", 32, seed=0, size=10).key == "web-train-r32-s0-n10-world-v2+faces"
    web = World("web", "test", 16, size=4)
    out = materialise(web, tmp_path / "web")
    marker = json.loads((out / "complete.json").read_text())
    marker["world_version"] = "world-v2"  # a folder materialised before faces
    (out / "complete.json").write_text(json.dumps(marker))
    assert not is_materialised(web, out)


@pytest.mark.parametrize("domain", FACE_DOMAINS)
def test_faces_are_a_pure_function_of_domain_split_index_and_seed(domain):
    world = World(domain, "train", 32, seed=2, size=40)
    batch = world.images([9, 2, 31])
    assert np.array_equal(batch[0], world.image(9)) and np.array_equal(batch[2], world.image(31))
    again = World(domain, "train", 32, seed=2, size=40)
    assert world.images(range(40)).tobytes() == again.images(range(40)).tobytes()
    assert [world.captions(i) for i in range(40)] == [again.captions(i) for i in range(40)]
    assert all(isinstance(world.truth(i), FaceTruth) for i in range(40))
    other_seed = World(domain, "train", 32, seed=3, size=40)
    assert world.images(range(40)).tobytes() != other_seed.images(range(40)).tobytes()
    # faces and portraits draw from different streams
    other_domain = World(FACE_DOMAINS[1 - FACE_DOMAINS.index(domain)], "train", 32, seed=2, size=40)
    assert [world.truth(i) for i in range(40)] != [other_domain.truth(i) for i in range(40)]


def test_face_truths_cover_the_vocabularies():
    world = World("faces", "train", 32, size=600)
    truths = [world.truth(i) for i in range(600)]
    for name, values in (("hair", HAIR_COLOURS), ("eyes", EYE_COLOURS),
                         ("expression", EXPRESSIONS), ("accessory", ACCESSORIES),
                         ("skin", SKIN_TONES), ("background", BACKGROUNDS)):
        seen = {getattr(t, name) for t in truths}
        assert seen == set(values), name
    # Hair is never drawn on a background of nearly its colour.
    assert not any(t.hair == "black" and t.background == "black" for t in truths)


def _face_claims(caption):
    """What a face caption says, parsed back with the words' context ("X hair", "X eyes")."""
    text = caption.lower()
    said = {}
    contexts = {
        "hair": r"(?: hair\b|-haired\b)",
        "eyes": r"(?: eyes\b|-eyed\b)",
        "expression": "",
        "accessory": "",
    }
    for attribute, context in contexts.items():
        for value, words in FACE_WORDS[attribute].items():
            for word in words:
                if re.search(rf"(?<![\w-]){re.escape(word)}{context}(?![\w-])", text):
                    said.setdefault(attribute, set()).add(value)
    names = "|".join(BACKGROUNDS)
    background = re.search(rf"\b({names}) (?:background|backdrop|wall)\b|\bon ({names})\b", text)
    if background:
        said["background"] = {background.group(1) or background.group(2)}
    return said


def _check_face_caption(caption, truth):
    said = _face_claims(caption)
    for attribute, values in said.items():
        assert values == {getattr(truth, attribute)}, (caption, truth)
    return said


def test_face_captions_name_only_true_attributes():
    world = World("faces", "train", 32, size=150)
    named_per_image = []
    for i in range(150):
        truth, captions = world.truth(i), world.captions(i)
        assert len(captions) == 10 and len(set(captions)) >= 8
        named = set()
        for caption in captions:
            said = _check_face_caption(caption, truth)
            assert said, caption  # every caption names something
            named |= set(said)
        named_per_image.append(named)
        if truth.accessory != "none":
            assert "accessory" in named
    # Over ten captions, hair, eyes and expression are named for nearly every image.
    for attribute in ("hair", "eyes", "expression"):
        assert sum(attribute in n for n in named_per_image) >= 0.95 * 150


def test_web_face_captions_are_noisy_but_true():
    web = World("web", "train", 32, size=1000)
    faces = [i for i in range(1000) if isinstance(web.truth(i), FaceTruth)]
    assert 0.14 <= len(faces) / 1000 <= 0.22
    for i in faces:
        (caption,) = web.captions(i)
        said = _check_face_caption(caption, web.truth(i))
        assert "hair" in said or "expression" in said, caption
    assert any(web.captions(i)[0].startswith(("stock photo of", "avatar:")) for i in faces)


def test_portraits_have_no_captions_on_disk_either(tmp_path):
    from lafite.data.folder import ImageTextFolder

    world = World("portraits", "train", 16, size=6)
    assert "portraits" not in CAPTIONED_DOMAINS and set(CAPTIONED_DOMAINS) | {"portraits"} == set(DOMAINS)
    assert all(world.captions(i) == [] for i in range(6))
    out = materialise(world, tmp_path / "p")
    assert len(list(out.glob("*.png"))) == 6 and not list(out.glob("*.txt"))
    folder = ImageTextFolder(out, 16)
    assert all(folder.captions(i) == [] for i in range(6))
    assert folder.truths()[3] == world.truth(3)


def test_face_truths_round_trip_through_materialise(tmp_path):
    world = World("faces", "test", 16, size=8)
    out = materialise(world, tmp_path / "f")
    truths = read_truths(out)
    assert truths == {f"{i:08d}.png": world.truth(i) for i in range(8)}
    record = json.loads((out / "truth.jsonl").read_text().splitlines()[0])
    assert set(record) == {"file", "background", "face"}
    assert (out / "00000002.txt").read_text().splitlines() == world.captions(2)
    # A web folder mixes both kinds of record.
    web = World("web", "test", 16, size=30)
    mixed = read_truths(materialise(web, tmp_path / "w"))
    assert {type(t) for t in mixed.values()} == {FaceTruth, SceneTruth}
    assert mixed == {f"{i:08d}.png": web.truth(i) for i in range(30)}


def _near(image, rgb, tolerance):
    return np.abs(image.astype(int) - np.asarray(rgb)).max(-1) <= tolerance


def test_face_attributes_are_visible_in_the_pixels():
    from lafite.data.world import _EYE_RGB, _GLASSES_RGB, _HAIR_RGB, _HAT_RGB, _MOUTH_RGB

    for resolution in (32, 16):
        world = World("faces", "test", resolution, size=120)
        images = world.images(range(120))
        for i in range(120):
            truth, image = world.truth(i), images[i]
            layout = world._scene(i).face_layout
            # Hair: a band of the truth's hair colour (the jitter is at most 12 per channel).
            assert _near(image, _HAIR_RGB[truth.hair], 16).sum() >= (40 if resolution == 32 else 5)
            if resolution == 16:
                continue
            # Eyes: at least two fully covered pixels of the eye colour at 32 px.
            assert _near(image, _EYE_RGB[truth.eyes], 16).sum() >= 2, truth
            # The mouth, under the eyes and inside the head.
            rows = slice(int((layout.cy + 0.03) * 32), int((layout.cy + 0.25) * 32) + 1)
            cols = slice(int((layout.cx - 0.15) * 32), int((layout.cx + 0.15) * 32) + 1)
            assert _near(image[rows, cols], _MOUTH_RGB, 40).sum() >= 3
            hat = sum(_near(image, rgb, 25).sum() for rgb in _HAT_RGB)
            yy, xx = np.mgrid[0:32, 0:32]
            inside_head = np.hypot((xx + 0.5) / 32 - layout.cx, (yy + 0.5) / 32 - layout.cy) < 0.2
            glasses = (_near(image, _GLASSES_RGB, 40) & inside_head).sum()
            if truth.accessory == "hat":
                assert hat >= 30
            if truth.accessory == "glasses":
                assert glasses >= 6
            elif truth.hair != "black":
                assert glasses == 0


def test_face_corruptions_change_one_thing():
    world = World("faces", "train", 32, size=200)
    assert corruptions("faces") == FACE_CORRUPTIONS and corruptions("scenes")["all-circles"]
    truths, images = world.corrupted(range(200), "face-hair", seed=1)
    originals = [world.truth(i) for i in range(200)]
    changed = 0
    for truth, original in zip(truths, originals):
        assert isinstance(truth, FaceTruth)
        assert {**truth.to_dict()["face"], "hair": None} == {**original.to_dict()["face"], "hair": None}
        changed += truth.hair != original.hair
    assert changed > 100
    same, unchanged = world.corrupted(range(200), "none")
    assert same == originals and np.array_equal(unchanged, world.images(range(200)))
    empty, flat = world.corrupted(range(5), "no-face")
    assert all(isinstance(t, SceneTruth) and not t.objects for t in empty)
    assert (flat.reshape(5, -1, 3) == flat.reshape(5, -1, 3)[:, :1]).all()
    with pytest.raises(UserError, match="face-hair"):
        world.corrupted(range(2), "all-circles")
    # Web takes the object corruptions; its faces pass through them, except no-objects.
    web = World("web", "train", 16, size=40)
    faces = [i for i in range(40) if isinstance(web.truth(i), FaceTruth)]
    truths, images = web.corrupted(range(40), "main-colour", seed=2)
    assert faces and all(truths[i] == web.truth(i) for i in faces)
    assert np.array_equal(images[faces], web.images(faces))
    truths, _ = web.corrupted(range(40), "no-objects")
    assert all(isinstance(t, SceneTruth) and not t.objects for t in truths)
