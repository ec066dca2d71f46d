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


# -- 16-bit images -----------------------------------------------------------------------------


def _write_png16(path, pixels):
    """A 16-bit PNG (grey, grey+alpha, RGB or RGBA by the channel count), written by hand:
    PIL cannot write 16-bit colour PNGs."""
    import struct
    import zlib

    pixels = np.asarray(pixels, dtype=">u2")
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    height, width, channels = pixels.shape
    colour_type = {1: 0, 2: 4, 3: 2, 4: 6}[channels]

    def chunk(kind, data):
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc

    raw = b"".join(b"\x00" + row.tobytes() for row in pixels)
    header = struct.pack(">IIBBBBB", width, height, 16, colour_type, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
                     + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def test_sixteen_bit_images_are_scaled_to_8_bit_not_clipped(tmp_path):
    grey = np.array([[0, 32768], [65535, 100 * 256 + 255]], dtype=np.uint16)
    Image.fromarray(grey).save(tmp_path / "a_grey.png")
    assert Image.open(tmp_path / "a_grey.png").mode.startswith("I")
    colour = np.zeros((2, 2, 4), dtype=np.uint16)
    colour[..., :3] = (32768, 16384, 65535)
    colour[..., 3] = 65535
    _write_png16(tmp_path / "b_rgb.png", colour[..., :3])
    _write_png16(tmp_path / "c_rgba.png", colour)
    folder = ImageTextFolder(tmp_path, 2)
    assert folder[0].permute(1, 2, 0)[..., 0].tolist() == [[0, 128], [255, 100]]
    assert all((folder[0][c] == folder[0][0]).all() for c in (1, 2))
    for index in (1, 2):
        assert folder[index].reshape(3, -1)[:, 0].tolist() == [128, 64, 255]
    # Mid-grey stays mid-grey after the resize too (it read as 255 before).
    resized = ImageTextFolder(tmp_path, 1)[0]
    assert abs(int(ImageTextFolder(tmp_path, 2)[0].float().mean()) - int(resized[0, 0, 0])) <= 2


def test_32_bit_integer_grey_is_read_as_16_bit(tmp_path):
    from lafite.data.folder import _to_8bit_grey

    wide = Image.fromarray(np.array([[32768, 70000, -5]], dtype=np.int32))
    assert wide.mode == "I"
    assert np.asarray(_to_8bit_grey(wide)).tolist() == [[128, 255, 0]]


# -- checking a folder before it is used -------------------------------------------------------


def _png(path, size=8, value=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size, size, 3), value, np.uint8)).save(path)


def test_an_image_without_a_caption_is_named_with_its_caption_file(tmp_path):
    for name in ("a", "b", "c"):
        _png(tmp_path / f"{name}.png")
    (tmp_path / "a.txt").write_text("a caption\n")
    (tmp_path / "b.txt").write_text("\n   \n")
    folder = ImageTextFolder(tmp_path, 8)
    assert folder.caption_problem(0) is None
    empty, missing = folder.caption_problem(1), folder.caption_problem(2)
    assert f"caption file {tmp_path / 'b.txt'} of {tmp_path / 'b.png'} is empty" in empty
    assert f"{tmp_path / 'c.png'} has no caption file" in missing
    assert str(tmp_path / "c.txt") in missing
    folder.check(need_captions=False)  # language-free training needs no captions
    with pytest.raises(UserError) as info:
        folder.check(need_captions=True, why="the run is evaluated on them")
    message = str(info.value)
    assert ("2 of 3 images cannot be used (captions are needed: the run is evaluated on them)"
            in message)
    assert empty in message and missing in message and "more" not in message


def test_check_finds_broken_images_and_bad_captions_and_counts_the_rest(tmp_path):
    for i in range(14):
        _png(tmp_path / f"{i:02d}.png", value=i)
    good = (tmp_path / "00.png").read_bytes()
    (tmp_path / "01.png").write_bytes(good[: len(good) // 2])  # truncated: header still fine
    (tmp_path / "02.png").write_bytes(b"not a png at all")
    (tmp_path / "03.txt").write_bytes(b"caf\xe9 au lait\n")  # Latin-1, not UTF-8
    (tmp_path / "04.txt").write_bytes("\ufeffa caption after a byte-order mark\n".encode())
    folder = ImageTextFolder(tmp_path, 8)
    assert folder.captions(4) == ["a caption after a byte-order mark"]
    assert folder.image_problem(0) is None
    assert "01.png" in folder.image_problem(1) and "02.png" in folder.image_problem(2)
    assert "03.txt is not valid UTF-8 (byte 4)" in folder.caption_problem(3)
    with pytest.raises(UserError) as info:
        folder.check(need_captions=False)
    assert "2 of 14 images cannot be used:" in str(info.value)
    seen = []
    with pytest.raises(UserError) as info:
        folder.check(need_captions=True, advance=seen.append, workers=2)
    message = str(info.value)
    # 13 images lack a usable caption (all but 04), two of them are also unreadable.
    assert "13 of 14 images cannot be used" in message
    assert "15 problems, the first 10:" in message and "... and 5 more" in message
    assert message.count("\n  - ") == 10 and "cannot read image" in message
    assert sum(seen) == 14


def _coco(root, split_captions):
    """A paper-scale coco2014 layout under ``root``: {split: [caption text or None per image]}."""
    for split, captions in split_captions.items():
        for i, text in enumerate(captions):
            _png(root / "coco2014" / split / f"{i}.png")
            if text is not None:
                (root / "coco2014" / split / f"{i}.txt").write_text(text)


def _paper_plan(root, **extra):
    from lafite import runner
    from lafite.spec import find

    # The world's CLIP at 16 px: a real CLIP would need its weights (offline here).
    settings = {"data.data_root": str(root), "clip.name": "world", "data.resolution": 16, **extra}
    return runner.make_plan(find("table5"), "paper", rows=["LAFITE_G"], extra=settings)


def test_preflight_checks_real_data_before_anything_is_recorded(workspace, tmp_path):
    from lafite import runner

    root = tmp_path / "data"
    _coco(root, {"train": [None, None], "test": ["a dog\n", "\n"]})
    with pytest.raises(UserError) as info:
        runner.preflight(_paper_plan(root), workspace)
    message = str(info.value)
    assert str(root / "coco2014" / "test" / "1.txt") in message and "is empty" in message
    assert "evaluated on the test split's captions" in message
    (root / "coco2014" / "test" / "1.txt").write_text("a cat\n")
    runner.preflight(_paper_plan(root), workspace)  # language-free: no training captions needed
    with pytest.raises(UserError) as info:
        runner.preflight(_paper_plan(root, mode="supervised"), workspace)
    message = str(info.value)
    assert "trains in mode supervised" in message and "2 of 2 images" in message
    assert str(root / "coco2014" / "train" / "0.txt") in message
    (root / "coco2014" / "train" / "1.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    with pytest.raises(UserError, match=r"cannot read image .*train/1\.png"):
        runner.preflight(_paper_plan(root), workspace)
    assert not (workspace.root / "mlflow.db").exists()


def test_preflight_remembers_a_passed_folder_until_a_file_changes(workspace, tmp_path, monkeypatch):
    from lafite import runner

    root = tmp_path / "data"
    _coco(root, {"train": ["a\n", "b\n"], "test": ["c\n"]})
    runner.preflight(_paper_plan(root, mode="supervised"), workspace)
    scanned = []
    monkeypatch.setattr(ImageTextFolder, "check",
                        lambda self, need, *args, **kwargs: scanned.append((self.root.name, need)))
    runner.preflight(_paper_plan(root, mode="supervised"), workspace)
    runner.preflight(_paper_plan(root), workspace)  # a pass with captions covers one without
    assert scanned == []
    (root / "coco2014" / "train" / "1.txt").write_text("a longer caption\n")
    runner.preflight(_paper_plan(root, mode="supervised"), workspace)
    assert scanned == [("train", True)]


def test_preflight_leaves_the_world_alone(workspace, monkeypatch):
    from lafite import runner
    from lafite.spec import find

    def fail(*args, **kwargs):
        raise AssertionError("the world needs no check")

    monkeypatch.setattr(ImageTextFolder, "check", fail)
    runner.preflight(runner.make_plan(find("table5"), "smoke", rows=["LAFITE_G"]), workspace)
    assert not (workspace.cache_dir / "data-checks").exists()


def test_preflight_shows_progress_for_large_folders(workspace, tmp_path, monkeypatch, capsys):
    from lafite import runner

    root = tmp_path / "data"
    _coco(root, {"train": [None] * 3, "test": ["a\n"]})
    monkeypatch.setattr(runner, "_PROGRESS_FROM", 2)
    runner.preflight(_paper_plan(root), workspace)
    assert f"checking 3 images in {root / 'coco2014' / 'train'}" in capsys.readouterr().err


def test_bad_data_through_the_cli_exits_2_with_one_message(workspace, tmp_path):
    from click.testing import CliRunner

    from lafite.cli import main

    root = tmp_path / "data"
    _coco(root, {"train": [None], "test": [None]})
    result = CliRunner().invoke(main, [
        "run", "table5", "--scale", "paper", "--rows", "LAFITE_G", "--set",
        f"data.data_root={root}", "--set", "clip.name=world", "--set", "data.resolution=16"])
    assert result.exit_code == 2, result.output
    assert f"{root / 'coco2014' / 'test' / '0.png'} has no caption file" in result.output
    assert "Traceback" not in result.output
    assert not (workspace.root / "mlflow.db").exists()


def test_evaluation_names_the_test_image_without_a_caption(tmp_path):
    from lafite.metrics.evaluate import EvalCaptions

    Image.new("RGB", (8, 8), (10, 20, 30)).save(tmp_path / "a.png")
    (tmp_path / "a.txt").write_text("", encoding="utf-8")
    captions = EvalCaptions(ImageTextFolder(tmp_path, 8), seed=0)
    with pytest.raises(UserError, match=r"evaluation split: caption file .*a\.txt of .*a\.png is empty"):
        captions.take(1)
