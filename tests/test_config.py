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
        ({"train.precision": "fp8"}, "'train.precision' must be one of"),
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


# -- ranges of numeric fields -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("train.batch", 0, "'train.batch' must be at least 1, got 0"),
        ("train.kimg", -5, "'train.kimg' must be greater than 0, got -5"),
        ("loss.tau", 0, "'loss.tau' must be greater than 0, got 0"),
        ("loss.lambda", -1, "'loss.lambda' must be at least 0, got -1"),
        ("loss.style_mixing", 1.2, "'loss.style_mixing' must be in [0, 1], got 1.2"),
        ("data.paired_fraction", 1.5, "'data.paired_fraction' must be in [0, 1], got 1.5"),
        ("clip.gen_crop_min", 0, "'clip.gen_crop_min' must be in (0, 1], got 0"),
        ("eval.r_precision_candidates", 1, "'eval.r_precision_candidates' must be at least 2"),
        ("train.seed", -1, "'train.seed' must be in [0, 4294967295], got -1"),
        ("data.resolution", 48, "'data.resolution' must be a power of two between 8 and 1024"),
        ("eval.fid_k", [0, 3], "'eval.fid_k' holds 3, but FID-k is defined for the blur radii"),
        ("perturb.xi", float("nan"), "'perturb.xi' must be a finite number, got nan"),
        ("train.lr_g", float("inf"), "'train.lr_g' must be a finite number, got inf"),
    ],
)
def test_out_of_range_numbers_name_the_field_and_its_range(key, value, message):
    with pytest.raises(ConfigError) as err:
        RunConfig().override({key: value}, where="experiments/x.yaml: scales.smoke")
    assert str(err.value).startswith(f"experiments/x.yaml: scales.smoke: {message}")


def test_every_numeric_field_has_a_range_and_the_defaults_are_in_it():
    from lafite.config import _RANGES

    numeric = [k for k, v in RunConfig().flat().items()
               if isinstance(v, int | float) and not isinstance(v, bool)]
    numeric.append("eval.fid_k")  # a tuple of ints, empty by default
    assert sorted(set(numeric) - set(_RANGES)) == []
    assert sorted(set(_RANGES) - set(valid_keys())) == []
    assert RunConfig().checked() == RunConfig()


def test_boundary_values_are_valid():
    cfg = RunConfig().override({
        "train.batch": 1, "loss.lambda": 0, "loss.gamma": 0, "data.max_train_images": 0,
        "loss.style_mixing": 1, "perturb.mix": 0, "clip.gen_crop_min": 1.0,
        "train.eval_kimg": 0, "eval.fid_k": [0, 8], "data.resolution": 1024,
    })
    assert cfg.checked() is cfg


def test_checked_sees_values_set_without_override():
    from dataclasses import replace

    cfg = RunConfig()
    bad = replace(cfg, train=replace(cfg.train, batch=0))
    with pytest.raises(ConfigError, match="row 'r': 'train.batch' must be at least 1, got 0"):
        bad.checked("row 'r'")


@pytest.mark.parametrize(
    ("updates", "message"),
    [
        ({"data.resolution": 8}, "'data.resolution' must be at least 16 for a run, got 8"),
        ({"model.channel_base": 128}, "'model.channel_base' (128) must be at least data.resolution (256)"),
        ({"eval.n_samples": 5, "eval.metrics": ["IS"]},
         "'eval.n_samples' (5) must be at least eval.isc_splits (10) for IS"),
    ],
)
def test_checks_across_fields(updates, message):
    cfg = RunConfig().override(updates)  # each value alone is fine
    with pytest.raises(ConfigError) as err:
        cfg.checked("spec")
    assert message in str(err.value)
