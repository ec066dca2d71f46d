"""FID anchors: real world images under controlled corruptions, scored like a run's samples."""

import shutil
from pathlib import Path

import pytest
import torch

from lafite import spec as spec_mod
from lafite.data.inspector import InspectorConfig, inspector_path, train_inspector
from lafite.data.world import CORRUPTIONS
from lafite.errors import UserError
from lafite.metrics.anchors import anchor_images, fid_anchors
from lafite.workspace import Workspace

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def smoke_cfg():
    spec = spec_mod.load(REPO / "experiments" / "table5.yaml")
    return spec.resolve(spec.row("LAFITE_G"), "smoke")


def test_anchor_images_are_the_corruptions_blurs_and_a_flat_image(smoke_cfg):
    anchors = anchor_images(smoke_cfg, 8, blur_radii=(1, 2))
    names = [name for name, _, _ in anchors]
    assert names == ["real", *[c for c in CORRUPTIONS if c != "none"], "blur-1", "blur-2", "flat-mean"]
    images = {name: x for name, _, x in anchors}
    assert all(x.shape == (8, 3, 16, 16) and x.dtype == torch.uint8 for x in images.values())
    assert not torch.equal(images["blur-1"], images["real"])
    flat = images["flat-mean"].float()
    assert torch.equal(flat, flat[:, :, :1, :1].expand_as(flat))
    mean = images["real"].float().mean(dim=(0, 2, 3))
    assert torch.allclose(flat[0, :, 0, 0], mean, atol=0.5)


def test_fid_anchors_order_what_the_judge_sees(tmp_path, smoke_cfg):
    torch.set_num_threads(1)
    workspace = Workspace.resolve(tmp_path / "ws")
    scratch = Workspace.resolve(tmp_path / "scratch")
    tiny = train_inspector(scratch, 16, progress=False, config=InspectorConfig(
        width=8, feature_dim=32, steps=60, batch=32, lr=1e-2, eval_images=32))
    target = inspector_path(workspace, 16)
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(tiny, target)
    anchors = {a.name: a.fid for a in fid_anchors(smoke_cfg, workspace, n=64, blur_radii=(1,))}
    assert set(anchors) == {"real", *[c for c in CORRUPTIONS if c != "none"], "blur-1", "flat-mean"}
    assert all(value >= 0 for value in anchors.values())
    # Real training images sit far closer to the test reference than background-only images.
    assert anchors["real"] < anchors["no-objects"] and anchors["real"] < anchors["flat-mean"]


def test_fid_anchors_need_the_world_and_its_inspector(tmp_path, smoke_cfg):
    workspace = Workspace.resolve(tmp_path / "ws")
    with pytest.raises(UserError, match="lafite-repro world inspector"):
        fid_anchors(smoke_cfg, workspace, n=8)
    with pytest.raises(UserError, match="eval.extractor"):
        fid_anchors(smoke_cfg.override({"eval.extractor": "inception"}), workspace, n=8)
    with pytest.raises(UserError, match="data.dataset"):
        anchor_images(smoke_cfg.override({"data.dataset": "coco2014"}), 8)
