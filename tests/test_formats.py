"""The paper's datasets in their published formats, read through the path training reads.

Each test writes a tiny dataset in the real structures of one format (caption JSON, AttnGAN
pickles, Localized Narratives JSONL, webdataset tar shards, the official zip) and opens it with
``open_dataset`` and a RunConfig naming the real dataset id, as training and evaluation do.
"""

import pickle
import tarfile
import warnings
import zipfile

import pytest
from click.testing import CliRunner

from lafite.config import RunConfig
from lafite.data.datasets import data_location, open_dataset
from lafite.data.folder import ImageTextFolder
from lafite.data.formats.samples import write_sample
from lafite.errors import UserError

SMALL = (40, 30)
# dataset -> (captions per image of the first training image, test split exists)
EXPECTED = {"coco2014": (5, True), "cub": (10, True), "ln-coco": (1, True),
            "mm-celeba-hq": (10, True), "cc3m": (1, True), "ffhq": (0, False)}


def _cfg(dataset, root, **more):
    return RunConfig().override({"data.dataset": dataset, "data.data_root": str(root),
                                 "data.resolution": 16, **more})


@pytest.mark.parametrize("dataset", list(EXPECTED))
def test_each_published_format_reads_through_open_dataset(dataset, tmp_path, workspace):
    write_sample(dataset, tmp_path / dataset, train=4, test=3, size=SMALL)
    cfg = _cfg(dataset, tmp_path)
    train = open_dataset(cfg, "train", workspace)
    assert isinstance(train, ImageTextFolder) and len(train) == 4
    assert train[0].shape == (3, 16, 16) and train.images([0, 3]).shape == (2, 3, 16, 16)
    per_image, has_test = EXPECTED[dataset]
    assert len(train.captions(0)) == per_image
    assert "as published" in data_location(cfg, "train")
    train.check(need_captions=per_image > 0, why="supervised")  # the runner's preflight scan
    assert open_dataset(cfg, "train", workspace).fingerprint() == train.fingerprint()
    assert len(open_dataset(_cfg(dataset, tmp_path, **{"data.max_train_images": 2}), "train",
                            workspace)) == 2
    if has_test:
        test = open_dataset(cfg, "test", workspace)
        assert len(test) == 3 and test.fingerprint() != train.fingerprint()
        assert set(test.files).isdisjoint(train.files)
    else:
        with pytest.raises(UserError, match="no test split"):
            open_dataset(cfg, "test", workspace)


def test_captions_come_from_the_published_files(tmp_path, workspace):
    write_sample("coco2014", tmp_path / "coco2014", train=2, test=1, size=SMALL)
    train = open_dataset(_cfg("coco2014", tmp_path), "train", workspace)
    assert train.files[0].name == "COCO_train2014_000000000100.jpg"
    assert train.captions(0)[0].endswith("number 100")
    write_sample("ln-coco", tmp_path / "ln-coco", train=2, test=1, size=SMALL)
    ln = open_dataset(_cfg("ln-coco", tmp_path), "train", workspace)
    assert [len(ln.captions(i)) for i in range(2)] == [1, 2]  # every narrative is a caption
    assert ln.captions(0)[0].startswith("In this image")


def test_official_zip_is_read_with_its_stored_features(tmp_path, workspace):
    write_sample("lafite-zip", tmp_path / "coco2014", train=3, test=2, size=(24, 24))
    cfg = _cfg("coco2014", tmp_path)
    train = open_dataset(cfg, "train", workspace)
    assert len(train) == 3 and train[2].shape == (3, 16, 16) and train.captions(0) == []
    stored = train.stored_features()
    assert stored["model"] == "ViT-B/32" and stored["image"].shape == (3, 512)
    assert [t.shape[0] for t in stored["text"]] == [1, 2, 3]
    assert len(open_dataset(cfg, "test", workspace)) == 2
    train.check(need_captions=False)
    with pytest.raises(UserError, match="stores CLIP ViT-B/32 features of the captions"):
        train.check(need_captions=True, why="supervised")
    # A zip named directly, as data.train_path.
    direct = RunConfig().override({"data.dataset": "folder", "data.resolution": 16,
                                   "data.train_path": str(tmp_path / "coco2014" /
                                                          "COCO2014_train_CLIP_ViTB32.zip")})
    assert len(open_dataset(direct, "train", workspace)) == 3


def test_a_folder_of_another_layout_names_it_and_what_was_expected(tmp_path, workspace):
    write_sample("coco2014", tmp_path / "cub", train=2, test=1, size=SMALL)  # COCO where CUB goes
    with pytest.raises(UserError) as info:
        open_dataset(_cfg("cub", tmp_path), "train", workspace)
    message = str(info.value)
    assert str(tmp_path / "cub") in message and "train2014/" in message
    assert "data.dataset: coco2014" in message and "filenames.pickle" in message


def test_caption_json_naming_a_missing_image(tmp_path, workspace):
    root = write_sample("coco2014", tmp_path / "coco2014", train=4, test=1, size=SMALL)
    (root / "train2014" / "COCO_train2014_000000000101.jpg").unlink()
    with pytest.raises(UserError) as info:
        open_dataset(_cfg("coco2014", tmp_path), "train", workspace)
    message = str(info.value)
    assert "captions_train2014.json" in message and "image id 101" in message
    assert "COCO_train2014_000000000101.jpg" in message and "skip_corrupt" in message
    with pytest.warns(UserWarning, match="skipped 1"):
        kept = open_dataset(_cfg("coco2014", tmp_path, **{"data.skip_corrupt": True}), "train",
                            workspace)
    assert len(kept) == 3 and len(kept.skipped) == 1


def test_split_file_naming_a_missing_image(tmp_path, workspace):
    root = write_sample("cub", tmp_path / "cub", train=3, test=1, size=SMALL)
    gone = sorted((root / "CUB_200_2011" / "images").rglob("*.jpg"))[0]
    gone.unlink()
    with pytest.raises(UserError, match=f"filenames.pickle names .*{gone.stem}"):
        open_dataset(_cfg("cub", tmp_path), "train", workspace)


def test_split_pickle_that_would_run_code_is_refused(tmp_path, workspace):
    root = write_sample("mm-celeba-hq", tmp_path / "mm-celeba-hq", train=2, test=1, size=SMALL)
    (root / "train" / "filenames.pickle").write_bytes(pickle.dumps(ValueError("x")))
    with pytest.raises(UserError, match="not a pickled list of file names"):
        open_dataset(_cfg("mm-celeba-hq", tmp_path), "train", workspace)


def _corrupt_member(shard, member):
    """Overwrite ``member``'s bytes inside a tar shard with garbage (same size)."""
    with tarfile.open(shard) as archive:
        info = archive.getmember(member)
    with open(shard, "r+b") as handle:
        handle.seek(info.offset_data)
        handle.write(b"\x00garbage" * (info.size // 8))


def test_shard_with_a_corrupt_image(tmp_path, workspace):
    root = write_sample("cc3m", tmp_path / "cc3m", train=4, test=1, size=SMALL)
    _corrupt_member(root / "00000.tar", "000000002.jpg")
    cfg = _cfg("cc3m", tmp_path)
    data = open_dataset(cfg, "train", workspace)
    with pytest.raises(UserError) as info:
        data.check(need_captions=True, why="supervised")  # the runner's preflight
    message = str(info.value)
    assert "00000.tar (member 000000002.jpg)" in message and "data.skip_corrupt" in message
    with pytest.raises(UserError, match="000000002.jpg"):
        data[2]
    skipping = _cfg("cc3m", tmp_path, **{"data.skip_corrupt": True})
    with pytest.warns(UserWarning, match="skipped 1 of 4"):
        kept = open_dataset(skipping, "train", workspace)
    assert len(kept) == 3 and "000000002.jpg" in kept.skipped[0]
    kept.check(need_captions=True)
    with warnings.catch_warnings(record=True) as seen:  # the scan was recorded: no rescan
        warnings.simplefilter("always")
        assert len(open_dataset(skipping, "train", workspace)) == 3
    assert list((workspace.cache_dir / "data-checks").glob("*-unreadable.json"))
    assert any("skipped 1" in str(w.message) for w in seen)


def test_truncated_shard(tmp_path, workspace):
    root = write_sample("cc3m", tmp_path / "cc3m", train=4, test=1, size=SMALL)
    shard = root / "00000.tar"
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    with pytest.raises(UserError, match="00000.tar is truncated"):
        open_dataset(_cfg("cc3m", tmp_path), "train", workspace)
    with pytest.warns(UserWarning, match="skipped"):
        kept = open_dataset(_cfg("cc3m", tmp_path, **{"data.skip_corrupt": True}), "train",
                            workspace)
    assert 0 < len(kept) < 4


def test_broken_zip_names_the_file(tmp_path, workspace):
    root = write_sample("lafite-zip", tmp_path / "cub", train=2, test=1, size=(24, 24))
    path = root / "COCO2014_train_CLIP_ViTB32.zip"
    with zipfile.ZipFile(path) as archive:
        assert "dataset.json" in archive.namelist()
    cfg = RunConfig().override({"data.dataset": "cub", "data.resolution": 16,
                                "data.train_path": str(tmp_path / "missing.zip")})
    with pytest.raises(UserError, match="missing.zip does not exist"):
        open_dataset(cfg, "train", workspace)
    bad = tmp_path / "bad_train.zip"
    bad.write_bytes(b"PK not really")
    cfg = cfg.override({"data.train_path": str(bad)})
    with pytest.raises(UserError, match="bad_train.zip is not a readable zip"):
        open_dataset(cfg, "train", workspace)


def _check(*args):
    from lafite.cli import main

    return CliRunner().invoke(main, ["data", "check", *args])


def test_data_check_reports_splits_captions_and_problems(tmp_path, workspace):
    write_sample("cub", tmp_path / "cub", train=4, test=2, size=SMALL)
    result = _check("cub", "--root", str(tmp_path))  # the folder holding cub/ works too
    assert result.exit_code == 0, result.output
    assert "images: 4" in result.output and "images: 2" in result.output
    assert "captions per image: min 10" in result.output and "result: ready" in result.output

    root = write_sample("cc3m", tmp_path / "cc3m", train=3, test=0, size=SMALL)
    _corrupt_member(root / "00000.tar", "000000001.jpg")
    result = _check("cc3m", "--root", str(root))
    assert result.exit_code == 1
    assert "unreadable images: 1" in result.output and "000000001.jpg" in result.output
    assert "validation/*.tar (the test shards)" in result.output and "img2dataset" in result.output
    result = _check("cc3m", "--root", str(root), "--split", "train", "--skip-corrupt")
    assert result.exit_code == 0, result.output

    result = _check("coco2014", "--root", str(tmp_path / "cub"))
    assert result.exit_code == 1 and "It looks like CUB" in result.output
    result = _check("imagenet", "--root", str(tmp_path))
    assert result.exit_code == 2 and "unknown dataset 'imagenet'" in result.output


def test_data_check_names_missing_parts_with_how_to_get_them(tmp_path, workspace):
    root = write_sample("coco2014", tmp_path / "coco", train=2, test=1, size=SMALL)
    (root / "annotations" / "captions_val2014.json").unlink()
    result = _check("coco2014", "--root", str(root))
    assert result.exit_code == 1
    assert "captions_val2014.json (the test captions)" in result.output
    assert "annotations_trainval2014.zip" in result.output and "images: 2" in result.output
