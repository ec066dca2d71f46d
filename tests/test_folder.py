"""Image + caption folders and dataset resolution (world and real data)."""

import numpy as np
import pytest
import torch
from PIL import Image

from lafite.config import RunConfig
from lafite.data.datasets import VALID_DATASETS, open_dataset, world_folder
from lafite.data.folder import ImageTextFolder
from lafite.data.world import World, materialise
from lafite.errors import UserError


def test_materialise_then_folder_round_trip(tmp_path):
    world = World("objects", "train", 32, size=10)
    folder = ImageTextFolder(materialise(world, tmp_path / "objects"), 32)
    assert len(folder) == 10
    for i in (0, 9):
        item = folder[i]
        assert item.dtype == torch.uint8 and item.shape == (3, 32, 32)
        assert np.array_equal(item.permute(1, 2, 0).numpy(), world.image(i))
        assert folder.captions(i) == world.captions(i)
    assert folder.truths()[4] == world.truth(4)
    assert folder.images([1, 2]).shape == (2, 3, 32, 32)


def test_fingerprint_tracks_files_and_resolution(tmp_path):
    out = materialise(World("scenes", "test", 16, size=4), tmp_path / "s")
    fp = ImageTextFolder(out, 16).fingerprint()
    assert ImageTextFolder(out, 16).fingerprint() == fp
    assert ImageTextFolder(out, 32).fingerprint() != fp
    (out / "00000002.txt").write_text("a new caption that is longer than before\n")
    assert ImageTextFolder(out, 16).fingerprint() != fp


def test_real_images_are_cropped_resized_and_made_rgb(tmp_path):
    wide = np.zeros((40, 80, 3), dtype=np.uint8)
    wide[:, 20:60] = (255, 0, 0)  # the centre square is red, the sides black
    Image.fromarray(wide).save(tmp_path / "a.jpg", quality=98)
    (tmp_path / "a.txt").write_text("a red thing\n\n  second caption  \n")
    Image.fromarray(np.full((20, 20, 4), 200, dtype=np.uint8), "RGBA").save(tmp_path / "b.png")
    Image.fromarray(np.full((30, 30), 90, dtype=np.uint8), "L").save(tmp_path / "c.png")
    folder = ImageTextFolder(tmp_path, 16)
    a, b, c = folder[0], folder[1], folder[2]
    assert a.shape == b.shape == c.shape == (3, 16, 16)
    assert a[0].float().mean() > 240 and a[1:].float().mean() < 15  # cropped to the red centre
    assert int(b[0, 0, 0]) == 200 and int(c[2, 5, 5]) == 90
    assert folder.captions(0) == ["a red thing", "second caption"]
    assert folder.captions(1) == []  # no .txt: no captions (language-free allowed)
    assert folder.truths() is None


def test_corrupt_image_names_the_file(tmp_path):
    (tmp_path / "broken.png").write_bytes(b"not a png at all")
    folder = ImageTextFolder(tmp_path, 16)
    with pytest.raises(UserError, match="broken.png"):
        folder[0]


def test_empty_or_missing_folder(tmp_path):
    with pytest.raises(UserError, match="no images"):
        ImageTextFolder(tmp_path, 16)
    with pytest.raises(UserError, match="does not exist"):
        ImageTextFolder(tmp_path / "nope", 16)


def _world_cfg(**data):
    return RunConfig().override(
        {"data.resolution": 16, "world.n_train": 6, "world.n_test": 3, **data}
    )


def test_open_dataset_world(workspace):
    cfg = _world_cfg()
    train = open_dataset(cfg, "train", workspace)
    test = open_dataset(cfg, "test", workspace)
    assert (len(train), len(test)) == (6, 3)
    assert train.root == world_folder(cfg, "train", workspace)
    assert train[0].shape == (3, 16, 16)
    assert len(open_dataset(_world_cfg(**{"data.max_train_images": 4}), "train", workspace)) == 4


def test_open_dataset_missing_real_data_says_where_and_how(workspace, tmp_path):
    cfg = RunConfig().override({"data.dataset": "cub", "data.data_root": str(tmp_path)})
    with pytest.raises(UserError) as info:
        open_dataset(cfg, "test", workspace)
    message = str(info.value)
    assert str(tmp_path / "cub" / "test") in message and "AttnGAN" in message
    with pytest.raises(UserError, match="data.data_root"):
        open_dataset(RunConfig().override({"data.dataset": "coco2014"}), "train", workspace)
    with pytest.raises(UserError, match="train_path"):
        open_dataset(RunConfig().override({"data.dataset": "folder"}), "train", workspace)
    with pytest.raises(UserError) as info:
        open_dataset(RunConfig().override({"data.dataset": "imagenet"}), "train", workspace)
    assert all(name in str(info.value) for name in VALID_DATASETS)


def test_open_dataset_real_layout(workspace, tmp_path):
    for split in ("train", "test"):
        (tmp_path / "ffhq" / split).mkdir(parents=True)
        Image.fromarray(np.zeros((24, 24, 3), np.uint8)).save(tmp_path / "ffhq" / split / "0.png")
    cfg = RunConfig().override(
        {"data.dataset": "ffhq", "data.data_root": str(tmp_path), "data.resolution": 8}
    )
    assert open_dataset(cfg, "test", workspace)[0].shape == (3, 8, 8)
