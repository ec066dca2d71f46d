"""The world's inspector: learns quickly, saves and loads exactly, caches, and reports clearly."""

import time

import pytest
import torch

from lafite.data.inspector import (
    IGNORE,
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
from lafite.data.world import BACKGROUNDS, COLOURS, POSITIONS, SHAPES, World
from lafite.errors import UserError

TINY = InspectorConfig(width=8, feature_dim=32, steps=60, batch=32, lr=1e-2, eval_images=32)


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
    assert logits.shape == (5, len(MAIN_CLASSES))
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
    presence = ("region_present", "shapes_present")
    for name in presence:
        labels[name][4:] = labels[name][:4]
    repeated = {k: v[[0, 1, 2, 3] * 2] if k in presence else v for k, v in out.items()}
    assert torch.allclose(_loss(repeated, labels), real_only, atol=1e-5)
