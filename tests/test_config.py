import pytest

from lafite.config import RunConfig, valid_keys
from lafite.errors import ConfigError


def test_defaults_follow_the_paper():
    cfg = RunConfig()
    assert cfg.loss.tau == 0.5 and cfg.loss.lambda_ == 10.0 and cfg.loss.gamma == 10.0
    assert cfg.loss.logits == "plain" and cfg.loss.reduction == "sum"
    assert cfg.perturb.kind == "gaussian"
    assert cfg.model.d_semantic == "per-sample"
    assert cfg.model.cond_form == "paper"


def test_round_trip_and_user_facing_names():
    cfg = RunConfig().override({"loss.lambda": 5, "eval.fid_k": [0, 1, 2]})
    assert cfg.loss.lambda_ == 5.0 and isinstance(cfg.loss.lambda_, float)
    assert cfg.eval.fid_k == (0, 1, 2)
    assert cfg.flat()["loss.lambda"] == 5.0
    assert "loss.lambda" in valid_keys()
    assert RunConfig.from_dict(cfg.to_dict()) == cfg


def test_hash_is_stable_and_sensitive():
    a = RunConfig().override({"loss.tau": 0.5})
    b = RunConfig()
    assert a.hash() == b.hash()
    assert RunConfig().override({"loss.tau": 0.25}).hash() != b.hash()
    assert len(b.hash()) == 12


@pytest.mark.parametrize(
    ("updates", "fragment"),
    [
        ({"loss.lamda": 1}, "unknown key 'loss.lamda'"),
        ({"train.precision": "fp16"}, "'train.precision' must be one of"),
        ({"loss.con_g": "yes"}, "'loss.con_g' must be true or false"),
        ({"train.batch": 2.5}, "'train.batch' must be an integer"),
        ({"loss.tau.x": 1}, "is a value, not a section"),
    ],
)
def test_bad_overrides_name_the_field(updates, fragment):
    with pytest.raises(ConfigError) as err:
        RunConfig().override(updates, where="experiments/x.yaml, row 'r'")
    assert fragment in str(err.value)
    assert "experiments/x.yaml, row 'r'" in str(err.value)


def test_world_patch_size_is_for_the_world_clip_only():
    from lafite.config import ConfigError, RunConfig

    assert RunConfig().override({"clip.name": "world", "clip.world_patch_size": 8}).checked()
    with pytest.raises(ConfigError, match="'clip.world_patch_size' \\(8\\).*clip.name is 'ViT-B-32'"):
        RunConfig().override({"clip.world_patch_size": 8}).checked()
