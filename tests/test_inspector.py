"""The world's inspector: learns quickly, saves and loads exactly, caches, and reports clearly."""

import dataclasses
import time

import pytest
import torch

from lafite.data.inspector import (
    FACE_CLASSES,
    IGNORE,
    IS_CLASSES,
    MAIN_CLASSES,
    Inspector,
    InspectorConfig,
    _labels,
    _loss,
    _with_negatives,
    clutter_false_positives,
    clutter_images,
    inspector_accuracy,
    load_inspector,
    load_inspector_file,
    save_inspector,
    train_inspector,
)
from lafite.data.world import (
    ACCESSORIES,
    BACKGROUNDS,
    COLOURS,
    EXPRESSIONS,
    EYE_COLOURS,
    HAIR_COLOURS,
    POSITIONS,
    SHAPES,
    FaceTruth,
    World,
)
from lafite.errors import UserError

TINY = InspectorConfig(width=8, feature_dim=32, steps=60, batch=32, lr=1e-2, eval_images=32)
# Half faces, so that 80 tiny steps learn what a face is (about 3 s on one thread).
TINY_FACES = dataclasses.replace(
    TINY, steps=80, domains=("scenes", "faces"), domain_weights=(0.5, 0.5), eval_images=100
)


@pytest.fixture(scope="module")
def tiny_trained(tmp_path_factory):
    from lafite.workspace import Workspace

    torch.set_num_threads(1)  # tiny nets: threads only add contention on a shared machine
    workspace = Workspace.resolve(tmp_path_factory.mktemp("inspector-ws"))
    path = train_inspector(workspace, 16, seed=0, progress=False, config=TINY)
    return workspace, path


def test_beats_chance_after_a_few_steps(tiny_trained):
    _, path = tiny_trained
    model = load_inspector_file(path)
    accuracy = inspector_accuracy(model, World("scenes", "test", 16, size=200))
    # 60 tiny steps: twice chance on the easy readings, above chance on colour.
    assert accuracy["background"] > 2 / len(BACKGROUNDS)
    assert accuracy["main_position"] > 2 / len(POSITIONS)
    assert accuracy["main_colour"] > 1 / len(COLOURS)
    assert model.metrics["scenes/background"] == pytest.approx(
        inspector_accuracy(model, World("scenes", "test", 16, size=32))["background"]
    )


def test_outputs_have_the_documented_shapes(tiny_trained):
    _, path = tiny_trained
    model = load_inspector_file(path)
    x = torch.from_numpy(World("scenes", "test", 16, size=5).images(range(5))).permute(0, 3, 1, 2)
    assert model.features(x).shape == (5, 32)
    logits = model.class_logits(x)
    assert logits.shape == (5, len(IS_CLASSES)) == (5, len(MAIN_CLASSES) + len(FACE_CLASSES))
    assert torch.allclose(logits.exp().sum(1), torch.ones(5), atol=1e-5)
    readings = model.predict(x)
    assert len(readings) == 5
    for reading in readings:
        assert reading.background in BACKGROUNDS
        assert reading.objects[0] == reading.main and reading.main.shape in SHAPES
        assert reading.shapes <= set(SHAPES)
    # Other sizes are resized to the inspector's resolution rather than rejected.
    big = torch.from_numpy(World("scenes", "test", 32, size=2).images(range(2))).permute(0, 3, 1, 2)
    assert model.features(big).shape == (2, 32)


def test_save_and_load_give_identical_outputs(tmp_path):
    torch.manual_seed(1)
    model = Inspector(16, TINY).eval()
    model.metrics = {"scenes/background": 0.5}
    x = torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8)
    path = save_inspector(model, tmp_path / "inspector.pt")
    loaded = load_inspector_file(path)
    assert torch.equal(model.features(x), loaded.features(x))
    assert torch.equal(model.class_logits(x), loaded.class_logits(x))
    assert loaded.metrics == model.metrics and loaded.config == TINY


def test_second_call_is_a_cache_hit(tiny_trained):
    workspace, path = tiny_trained
    before = path.stat().st_mtime_ns
    start = time.perf_counter()
    again = train_inspector(workspace, 16, seed=0, progress=False, config=TINY)
    assert again == path and time.perf_counter() - start < 1.0
    assert path.stat().st_mtime_ns == before
    assert isinstance(load_inspector(workspace, 16, config=TINY), Inspector)


def test_missing_or_corrupt_weights_are_user_errors(workspace, tmp_path):
    with pytest.raises(UserError, match="lafite-repro world inspector"):
        load_inspector(workspace, 32)
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"garbage")
    with pytest.raises(UserError, match="bad.pt"):
        load_inspector_file(bad)


@pytest.mark.slow
def test_default_inspector_meets_the_accuracy_targets(workspace):
    """The brief's bar on held-out images at 32 px (minutes: run with -m slow)."""
    model = load_inspector_file(train_inspector(workspace, 32, progress=False))
    for domain in ("scenes", "objects"):
        accuracy = inspector_accuracy(model, World(domain, "test", 32, size=1000))
        assert accuracy["background"] >= 0.95
        assert accuracy["main_colour"] >= 0.95
        assert accuracy["main_shape"] >= 0.95
        assert accuracy["main_position"] >= 0.90
        clutter = clutter_false_positives(model, 32)
        assert clutter["clutter/any_shape_rate"] <= 0.05
        assert clutter["clutter/any_region_rate"] <= 0.05


def test_clutter_negatives_are_labelled_empty_and_ignored_elsewhere():
    gen = torch.Generator().manual_seed(0)
    images = clutter_images(6, 16, gen)
    assert images.shape == (6, 3, 16, 16)
    assert images.min() >= -1 and images.max() <= 1
    truths, _ = World("scenes", "train", 16, size=4).scenes_and_images(range(4))
    labels = _with_negatives(_labels(truths), 3)
    assert labels["shapes_present"].shape == (7, 6)
    assert labels["shapes_present"][4:].sum() == 0 and labels["region_present"][4:].sum() == 0
    assert labels["shapes_present"][:4].sum(1).min() >= 1
    assert (labels["main_shape"][4:] == IGNORE).all() and (labels["main_shape"][:4] >= 0).all()
    assert (labels["region_shape"][4:] == IGNORE).all()
    # The negatives change the presence terms only: given the presence outputs and targets of
    # the real images again, the loss is that of the real images alone.
    torch.manual_seed(0)
    model = Inspector(16, TINY)
    out = model(torch.cat([torch.rand(4, 3, 16, 16) * 2 - 1, images[:4]]))
    real_only = _loss({k: v[:4] for k, v in out.items()}, _labels(truths))
    labels = _with_negatives(_labels(truths), 4)
    presence = ("region_present", "shapes_present", "is_face")
    for name in presence:
        labels[name][4:] = labels[name][:4]
    repeated = {k: v[[0, 1, 2, 3] * 2] if k in presence else v for k, v in out.items()}
    assert torch.allclose(_loss(repeated, labels), real_only, atol=1e-5)


# -- faces ----------------------------------------------------------------------------------------


def _nchw(world, n):
    return torch.from_numpy(world.images(range(n))).permute(0, 3, 1, 2)


def test_default_mixture_holds_faces_and_the_key_follows_the_recipe(tiny_trained):
    from lafite.data.inspector import inspector_key

    config = InspectorConfig()
    assert "faces" in config.domains and len(config.domain_weights) == len(config.domains)
    assert inspector_key(32) != inspector_key(32, config=dataclasses.replace(
        config, domains=("scenes", "objects", "web"), domain_weights=(0.5, 0.2, 0.3)))
    # The default tiny run (scenes, objects, web, faces) reports held-out faces numbers.
    model = load_inspector_file(tiny_trained[1])
    for name in ("background", "is_face", "face_hair", "face_eyes", "face_expression",
                 "face_accessory", "face_class"):
        assert 0.0 <= model.metrics[f"faces/{name}"] <= 1.0
    assert "faces/main_shape" not in model.metrics and "scenes/face_hair" not in model.metrics


@pytest.fixture(scope="module")
def tiny_faces(tmp_path_factory):
    from lafite.workspace import Workspace

    torch.set_num_threads(1)
    workspace = Workspace.resolve(tmp_path_factory.mktemp("inspector-faces-ws"))
    return load_inspector_file(train_inspector(workspace, 16, progress=False, config=TINY_FACES))


def test_face_heads_learn_and_predict_reads_faces(tiny_faces):
    model = tiny_faces
    metrics = model.metrics
    assert metrics["faces/is_face"] > 0.9 and metrics["scenes/is_face"] > 0.9
    assert metrics["faces/face_hair"] > 2 / len(HAIR_COLOURS)
    assert metrics["faces/face_accessory"] > 1.5 / len(ACCESSORIES)
    faces = World("faces", "test", 16, size=40)
    readings = model.predict(_nchw(faces, 40))
    read = [r.face for r in readings if r.face is not None]
    assert len(read) >= 36
    for face in read:
        assert face.hair in HAIR_COLOURS and face.eyes in EYE_COLOURS
        assert face.expression in EXPRESSIONS and face.accessory in ACCESSORIES
        assert 0.5 < face.confidence <= 1.0
    truths = [faces.truth(i) for i in range(40)]
    hair_right = sum(r.face is not None and r.face.hair == t.hair for r, t in zip(readings, truths))
    assert hair_right > 2 * 40 / len(HAIR_COLOURS)
    scenes = model.predict(_nchw(World("scenes", "test", 16, size=40), 40))
    assert sum(r.face is not None for r in scenes) <= 4


def test_class_logits_put_faces_in_face_classes(tiny_faces):
    faces = tiny_faces.class_logits(_nchw(World("faces", "test", 16, size=20), 20))
    scenes = tiny_faces.class_logits(_nchw(World("scenes", "test", 16, size=20), 20))
    for logits in (faces, scenes):
        assert torch.allclose(logits.exp().sum(1), torch.ones(len(logits)), atol=1e-5)
    k = len(MAIN_CLASSES)
    assert (faces.argmax(1) >= k).float().mean() > 0.9
    assert (scenes.argmax(1) < k).float().mean() > 0.9


def test_face_labels_mask_the_other_kind_of_head():
    truths, _ = World("web", "train", 16, size=60).scenes_and_images(range(60))
    assert any(isinstance(t, FaceTruth) for t in truths)
    labels = _labels(truths)
    is_face = torch.tensor([isinstance(t, FaceTruth) for t in truths])
    assert torch.equal(labels["is_face"].bool(), is_face)
    assert (labels["main_shape"][is_face] == IGNORE).all()
    assert (labels["face_hair"][~is_face] == IGNORE).all() and (labels["face_hair"][is_face] >= 0).all()
    assert (labels["object_weight"][is_face] == 0).all() and (labels["region_present"][is_face] == 0).all()
    # Object heads' outputs on faces (and face heads' on object images) do not move the loss.
    torch.manual_seed(0)
    out = Inspector(16, TINY)(torch.rand(60, 3, 16, 16) * 2 - 1)
    changed = {k: v.clone() for k, v in out.items()}
    for name in ("main_shape", "main_colour", "region_present", "shapes_present", "region_shape"):
        changed[name][is_face] += 5.0
    for name in ("face_hair", "face_eyes", "face_expression", "face_accessory"):
        changed[name][~is_face] -= 5.0
    assert torch.allclose(_loss(changed, labels), _loss(out, labels), atol=1e-5)
    # A batch without faces gives a finite loss (no all-ignored cross-entropy).
    scenes, _ = World("scenes", "train", 16, size=8).scenes_and_images(range(8))
    assert torch.isfinite(_loss({k: v[:8] for k, v in out.items()}, _labels(scenes)))
