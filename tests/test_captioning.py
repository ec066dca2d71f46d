"""Table 1's captioning baseline: captions files, the world captioners, and their use in training."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lafite import jobs as jobs_mod
from lafite import spec as spec_mod
from lafite.data.captions import CaptionedFolder, read_captions_file, write_captions_file
from lafite.data.folder import ImageTextFolder
from lafite.errors import UserError

# -- captions files ----------------------------------------------------------------------------


@pytest.fixture
def folder(tmp_path) -> ImageTextFolder:
    root = tmp_path / "train"
    (root / "sub").mkdir(parents=True)
    for name in ("a.png", "b.png", "sub/c.png"):
        Image.new("RGB", (8, 8), (200, 10, 10)).save(root / name)
        (root / name).with_suffix(".txt").write_text("the dataset's own caption\n")
    return ImageTextFolder(root, 8)


def _write(path: Path, *lines: str | bytes) -> Path:
    path.write_bytes(b"\n".join(x if isinstance(x, bytes) else x.encode() for x in lines) + b"\n")
    return path


def test_a_captions_file_replaces_the_folders_captions(folder, tmp_path):
    path = _write(tmp_path / "caps.jsonl",
                  '{"image": "a.png", "caption": "a red square", "score": 0.9}',
                  "",
                  '{"image": "./b.png", "caption": "  a small red square  "}',
                  '{"image": "sub/c.png", "caption": "red"}',
                  '{"image": "a.png", "caption": "a square on white"}')
    data = CaptionedFolder(folder, path)
    assert len(data) == 3 and data.root == folder.root and data.resolution == 8
    assert data.captions(0) == ["a red square", "a square on white"]
    assert data.captions(1) == ["a small red square"]
    assert data.captions(2) == ["red"]
    assert data.image(0).shape == (3, 8, 8) and data[1].dtype == folder[1].dtype
    assert folder.captions(0) == ["the dataset's own caption"]


@pytest.mark.parametrize("lines, message", [
    ((b'{"image": "a.png", "caption": "ok"}', b'{"image": "b.png", "caption": "caf\xe9"}'),
     r"caps\.jsonl:2: not valid UTF-8"),
    (('{"image": "a.png", "caption": "ok"}', '{"image": "b.png", "caption": "ok"',),
     r"caps\.jsonl:2: invalid JSON"),
    (('["a.png", "ok"]',), r"caps\.jsonl:1: expected a JSON object"),
    (('{"caption": "a square"}',), r"caps\.jsonl:1: missing key 'image'"),
    (('{"image": "a.png"}',), r"caps\.jsonl:1: missing key 'caption'"),
    (('', '{"image": "a.png", "caption": "   "}'), r"caps\.jsonl:2: empty caption for image 'a\.png'"),
    (('{"image": "a.png", "caption": 3}',), r"caps\.jsonl:1: 'caption' must be a string"),
    (('{"image": "a.png", "caption": "x"}', '{"image": "nope.png", "caption": "x"}'),
     r"caps\.jsonl:2: image 'nope\.png' is not in the training images of .*train"),
    (('{"image": "a.png", "caption": "x"}',),
     r"caps\.jsonl: 2 of 3 training images have no caption \(the first: 'b\.png'\)"),
])
def test_bad_captions_files_name_the_file_and_line(folder, tmp_path, lines, message):
    path = _write(tmp_path / "caps.jsonl", *lines)
    with pytest.raises(UserError, match=message):
        CaptionedFolder(folder, path)


def test_a_missing_captions_file_says_the_format(folder, tmp_path):
    with pytest.raises(UserError, match=r"gone\.jsonl not found; write it as JSON Lines"):
        read_captions_file(tmp_path / "gone.jsonl")


def test_lines_for_images_outside_a_subset_are_ignored(tmp_path, folder):
    subset = ImageTextFolder(folder.root, 8, max_images=2)
    path = write_captions_file(tmp_path / "caps.jsonl",
                               [("a.png", "one"), ("b.png", "two"), ("sub/c.png", "three")])
    assert CaptionedFolder(subset, path).captions(1) == ["two"]


def test_the_fingerprint_changes_with_the_captions_not_with_the_file_name(folder, tmp_path):
    pairs = [("a.png", "one"), ("b.png", "two"), ("sub/c.png", "three")]
    first = CaptionedFolder(folder, write_captions_file(tmp_path / "1.jsonl", pairs))
    same = CaptionedFolder(folder, write_captions_file(tmp_path / "2.jsonl", pairs))
    other = CaptionedFolder(folder, write_captions_file(tmp_path / "3.jsonl",
                                                        [*pairs[:2], ("sub/c.png", "four")]))
    assert first.fingerprint() == same.fingerprint()
    assert len({folder.fingerprint(), first.fingerprint(), other.fingerprint()}) == 3


def test_a_relative_captions_file_is_read_beside_the_dataset_splits(tmp_path):
    from lafite.config import RunConfig
    from lafite.data.datasets import captions_path

    cfg = RunConfig().override({"data.dataset": "coco2014", "data.data_root": str(tmp_path),
                                "data.captions_file": "v.jsonl"})
    assert captions_path(cfg) == tmp_path / "coco2014" / "v.jsonl"
    absolute = cfg.override({"data.captions_file": str(tmp_path / "x.jsonl")})
    assert captions_path(absolute) == tmp_path / "x.jsonl"
    with pytest.raises(UserError, match=r"relative: it is read from <data\.data_root>/coco2014/"):
        captions_path(cfg.override({"data.data_root": ""}))


def test_preflight_names_a_missing_captions_file_and_records_nothing(workspace, tmp_path):
    from lafite import runner

    root = tmp_path / "data"
    for split in ("train", "test"):
        (root / "coco2014" / split).mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(root / "coco2014" / split / "x.png")
    full = runner.make_plan(spec_mod.find("table1"), "paper", rows=["Cap-Large"],
                            extra={"data.data_root": str(root)})
    with pytest.raises(UserError, match=r"captions file .*coco2014/vinvl-large\.jsonl not found "
                                        r"\(data\.captions_file"):
        runner.preflight(full, workspace)
    _write(root / "coco2014" / "vinvl-large.jsonl", '{"image": "x.png", "caption": ""}')
    with pytest.raises(UserError, match=r"vinvl-large\.jsonl:1: empty caption"):
        runner.preflight(full, workspace)
    assert not (workspace.root / "mlflow.db").exists()


# -- reading what a caption says ---------------------------------------------------------------


def test_main_attributes_are_read_from_the_caption_text():
    from lafite.captioners import is_face_caption, main_attributes

    assert main_attributes("wallpaper with a medium emerald square in the centre on a black "
                           "background") == {"size": "medium", "colour": "green", "shape": "square",
                                             "position": "centre", "background": "black"}
    assert main_attributes("cross, pink, large in the bottom right below two small yellow "
                           "circles in the top right on a white background hd") == {
        "shape": "cross", "colour": "pink", "size": "large", "position": "bottom-right",
        "background": "white"}
    assert main_attributes("grey background, a red circle with a small blue star in the top left") \
        == {"background": "grey", "colour": "red", "shape": "circle"}
    assert is_face_caption("a smiling model with chestnut hair and sky-blue eyes")
    assert not is_face_caption("a large cyan square on a grey background")


def test_caption_accuracy_counts_what_captions_name():
    from lafite.captioners import caption_accuracy
    from lafite.data.world import SceneTruth, WorldObject

    truth = SceneTruth("grey", (WorldObject("circle", "red", "large", "centre"),
                                WorldObject("star", "blue", "small", "top-left")))
    right = caption_accuracy(["a large red circle in the centre on a grey background"], [truth])
    assert right["attribute_precision"] == 1.0 and right["main_colour_and_shape"] == 1.0
    assert right["coverage"] == pytest.approx(5 / 9)
    wrong = caption_accuracy(["a small blue circle on a white background"], [truth])
    # "small" and "blue" are true of the star, "circle" of the main object; white is false.
    assert wrong["attribute_precision"] == 0.75
    assert (wrong["main_colour"], wrong["main_shape"]) == (0.0, 1.0)


# -- the world captioners as jobs --------------------------------------------------------------


@pytest.fixture
def smoke_workspace(tmp_path, tiny_models, one_torch_thread):
    from lafite.workspace import Workspace

    home = tmp_path / "ws"
    shutil.copytree(tiny_models, home / "models")
    return Workspace.resolve(home)


def _cap_config(row: str):
    t1 = spec_mod.find("table1")
    return t1.resolve(t1.row(row), "smoke")


@pytest.mark.parametrize("row, method", [("Cap-Base", "retrieval"), ("Cap-Large", "attributes")])
def test_a_captioner_job_captions_every_training_image_and_scores_itself(
        smoke_workspace, row, method):
    from lafite.data.datasets import open_dataset

    cfg = _cap_config(row)
    (job,) = [j for j in jobs_mod.needed_jobs(cfg) if j.kind == "captioner"]
    assert job.settings["method"] == method and job.config.world.domain == "scenes"
    path = jobs_mod.ensure(job, smoke_workspace, progress=False)
    train = open_dataset(cfg, "train", smoke_workspace)
    captioned = CaptionedFolder(train, path)  # every training image has a caption
    assert len(captioned) == cfg.world.n_train == 256
    assert all(captioned.captions(i) for i in range(len(captioned)))
    summary = json.loads((path.parent / "summary.json").read_text())
    accuracy = summary["accuracy"]
    assert accuracy["n_images"] == cfg.world.n_test
    for key in ("attribute_precision", "main_colour", "main_shape", "main_colour_and_shape",
                "coverage"):
        assert 0.0 <= accuracy[key] <= 1.0
    assert summary["web_images"] == 256 and summary["seconds"]["fit"] >= 0


def test_captioner_jobs_follow_the_images_they_caption_and_enter_the_run_hash():
    cfg = _cap_config("Cap-Base")
    job = jobs_mod.resolve("captioner-base", cfg)
    assert job.config.data.captions_job == "" and job.config.world.n_train == 256
    bigger = cfg.override({"world.n_train": 300})
    assert jobs_mod.resolve("captioner-base", bigger).hash != job.hash
    assert jobs_mod.resolve("captioner-base", cfg.override({"loss.tau": 0.1})).hash == job.hash
    assert jobs_mod.run_job_hashes(cfg)["captioner-base"] == job.hash
    base, large = (r.hash for r in spec_mod.plan(spec_mod.find("table1"), "smoke",
                                                 rows=["Cap-Base", "Cap-Large"]))
    assert base != large


def test_a_captioner_job_at_paper_scale_is_refused_before_anything_runs(workspace):
    from lafite import runner

    full = runner.make_plan(spec_mod.find("table1"), "paper", rows=["Cap-Base"],
                            extra={"data.captions_file": "", "data.captions_job": "captioner-base"})
    with pytest.raises(UserError, match=r"captioner job 'captioner-base' .* give the captioner's "
                                        r"captions .* with data\.captions_file"):
        runner.preflight(full, workspace)


def test_supervised_training_reads_the_captioners_captions(smoke_workspace, tmp_path):
    from lafite.clip import FeatureCache, load_clip
    from lafite.data.datasets import open_dataset
    from lafite.train import train_run

    cfg = _cap_config("Cap-Large")
    (job,) = [j for j in jobs_mod.needed_jobs(cfg) if j.kind == "captioner"]
    captions = jobs_mod.ensure(job, smoke_workspace, progress=False)
    with pytest.raises(UserError, match=r"data\.captions_job='captioner-large' needs the captions"):
        train_run(cfg, tmp_path / "no-captions", smoke_workspace)
    result = train_run(cfg, tmp_path / "run", smoke_workspace, captions=captions)
    assert Path(result.final_checkpoint).is_file()
    plain = open_dataset(cfg, "train", smoke_workspace)
    captioned = open_dataset(cfg, "train", smoke_workspace, captions=captions)
    encoder = load_clip(cfg.clip, smoke_workspace, cfg.data.resolution)
    cache = FeatureCache(smoke_workspace)
    # Training filled the cache under the captioned fingerprint; the captioner's features are
    # not the ground truth's.
    assert (cache.folder(captioned, encoder) / "text.npy").is_file()
    assert not (cache.folder(plain, encoder) / "text.npy").exists()
    ours, offsets = cache.text_features(captioned, encoder)
    truth, truth_offsets = cache.text_features(plain, encoder)
    assert len(offsets) == len(truth_offsets) == 257
    assert not np.allclose(np.asarray(ours[offsets[0]]), np.asarray(truth[truth_offsets[0]]))


# -- the spec ----------------------------------------------------------------------------------


@pytest.mark.parametrize("scale", spec_mod.SCALES)
def test_table1_lafite_rows_are_table5s_runs(scale):
    t1 = {r.row.name: r.hash for r in spec_mod.plan(spec_mod.find("table1"), scale)}
    t5 = {r.row.name: r.hash for r in spec_mod.plan(spec_mod.find("table5"), scale)}
    assert t1["LAFITE_G"] == t5["LAFITE_G +L_ConG +L_ConD"]
    assert t1["LAFITE_NN"] == t5["LAFITE_NN +L_ConG +L_ConD"]


def test_table1_prints_the_papers_numbers_and_cap_rows_resolve_per_scale():
    t1 = spec_mod.find("table1")
    assert [m.name for m in t1.metrics][:6] == ["IS", "FID-0", "FID-1", "FID-2", "FID-4", "FID-8"]
    assert t1.row("Cap-Large").paper == {"IS": 16.95, "FID-0": 47.21, "FID-1": 42.35,
                                         "FID-2": 37.85, "FID-4": 31.59, "FID-8": 23.49}
    assert t1.row("LAFITE_NN").paper["FID-0"] == 26.56
    paper = t1.resolve(t1.row("Cap-Base"), "paper")
    assert (paper.mode, paper.data.captions_job, paper.data.captions_file, paper.eval.fid_k) == (
        "supervised", "", "vinvl-base.jsonl", (1, 2, 4, 8))
    mini = t1.resolve(t1.row("Cap-Base"), "mini")
    assert (mini.mode, mini.data.captions_job, mini.data.captions_file) == (
        "supervised", "captioner-base", "")
