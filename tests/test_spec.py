"""Experiment specs: the shipped Table 5 spec, validation messages, plans and hashes."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from lafite import spec as spec_mod
from lafite.errors import UserError
from lafite.spec import SpecError

REPO = Path(__file__).resolve().parent.parent
TABLE5 = REPO / "experiments" / "table5.yaml"

MINIMAL = """\
id: {id}
title: A test table
paper: {{table: 9, section: "1"}}
metrics:
  - {{name: IS, higher_is_better: true}}
  - {{name: FID-0, higher_is_better: false}}
base:
  loss: {{tau: 0.5}}
rows:
  - name: plain
    set: {{loss.con_g: false}}
    paper: {{IS: 10.5, FID-0: 20.25}}
  - name: other method
    reference: true
    paper: {{IS: 3.0}}
scales:
  paper: {{seeds: 1}}
  smoke:
    seeds: 2
    data: {{dataset: world, resolution: 16}}
    train.kimg: 0.1
"""


def write(tmp_path: Path, text: str, name: str = "tabletest") -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    return path


def test_table5_has_every_row_with_the_printed_numbers():
    spec = spec_mod.load(TABLE5)
    assert [r.name for r in spec.trainable_rows] == [
        "LAFITE_G",
        "LAFITE_G +L_ConG",
        "LAFITE_G +L_ConD",
        "LAFITE_G +L_ConG +L_ConD",
        "LAFITE_NN",
        "LAFITE_NN +L_ConG",
        "LAFITE_NN +L_ConD",
        "LAFITE_NN +L_ConG +L_ConD",
    ]
    printed = {
        "LAFITE_G": (14.79, 33.03, 9.64, 18.40),
        "LAFITE_G +L_ConG": (17.78, 29.65, 16.53, 30.33),
        "LAFITE_G +L_ConD": (22.28, 21.25, 29.09, 43.77),
        "LAFITE_G +L_ConG +L_ConD": (27.20, 18.04, 36.84, 54.16),
        "LAFITE_NN": (11.05, 72.03, 8.28, 14.46),
        "LAFITE_NN +L_ConG": (20.02, 30.67, 26.60, 41.26),
        "LAFITE_NN +L_ConD": (19.14, 33.88, 33.32, 49.86),
        # Table 5 prints 26.48 (Tables 1 and 4 print 26.56): the spec keeps its own table's.
        "LAFITE_NN +L_ConG +L_ConD": (22.23, 26.48, 36.86, 54.02),
    }
    for row in spec.rows:
        assert tuple(row.paper[m] for m in ("IS", "FID-0", "SOA-C", "SOA-I")) == printed[row.name]
    directions = {m.name: m.higher_is_better for m in spec.metrics}
    assert directions["FID-0"] is False and directions["IS"] is True


def test_table5_paper_scale_uses_the_papers_setting():
    spec = spec_mod.load(TABLE5)
    full_g = spec.resolve(spec.row("LAFITE_G +L_ConG +L_ConD"), "paper")
    assert full_g.clip.name == "ViT-B-32" and full_g.data.resolution == 256
    assert (full_g.loss.tau, full_g.loss.lambda_, full_g.loss.gamma, full_g.loss.r1_gamma) == (
        0.5, 10.0, 10.0, 10.0,
    )
    assert full_g.loss.logits == "exp" and full_g.data.mirror is True
    assert (full_g.train.batch, full_g.train.kimg) == (64, 25000.0)
    nn = spec.resolve(spec.row("LAFITE_NN"), "paper")
    assert nn.perturb.kind == "nn" and nn.perturb.nn_job == "nn-web"
    assert (nn.loss.con_g, nn.loss.con_d) == (False, False)
    smoke = spec.resolve(spec.row("LAFITE_G"), "smoke")
    assert smoke.data.dataset == "world" and smoke.clip.name == "world"
    assert smoke.eval.extractor == "inspector" and smoke.scale == "smoke"


def test_plan_hashes_are_stable_and_distinct(tmp_path):
    spec = spec_mod.load(write(tmp_path, MINIMAL.format(id="tabletest")))
    first = spec_mod.plan(spec, "smoke")
    again = spec_mod.plan(spec, "smoke")
    assert [p.hash for p in first] == [p.hash for p in again]
    assert [(p.row.name, p.seed) for p in first] == [("plain", 0), ("plain", 1)]
    assert len({p.hash for p in first}) == 2  # the seed is part of the configuration
    assert first[1].config.train.seed == 1 and first[0].config.train.kimg == 0.1
    assert len(spec_mod.plan(spec, "smoke", seeds=3)) == 3
    assert spec_mod.plan(spec, "paper")[0].hash != first[0].hash


def test_plan_rejects_unknown_rows_and_scales(tmp_path):
    spec = spec_mod.load(write(tmp_path, MINIMAL.format(id="tabletest")))
    with pytest.raises(UserError, match="unknown row.*'nope'.*Valid rows: 'plain'"):
        spec_mod.plan(spec, "smoke", rows=["nope"])
    with pytest.raises(UserError, match="unknown scale 'mini'.*paper, smoke|smoke, paper"):
        spec_mod.plan(spec, "mini")


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        # unknown top-level key
        (lambda t: t + "colour: blue\n", r"tabletest\.yaml: top level: unknown key 'colour'"),
        # unknown key inside a row names the row
        (
            lambda t: t.replace("    set: {loss.con_g: false}", "    set: {loss.con_g: false}\n    sett: 1"),
            r"rows\[0\] 'plain': unknown key 'sett'",
        ),
        # unknown config key in a row's overrides names the row and the key
        (
            lambda t: t.replace("loss.con_g: false", "loss.con_x: false"),
            r"rows\[0\] 'plain': set: unknown key 'loss.con_x'",
        ),
        # wrong type of a config value
        (
            lambda t: t.replace("loss.con_g: false", "loss.con_g: 3"),
            r"rows\[0\] 'plain': set: 'loss.con_g' must be true or false",
        ),
        # wrong type of a schema field
        (lambda t: t.replace("title: A test table", "title: [a, b]"), r"'title' must be a string"),
        # unknown metric name
        (
            lambda t: t.replace("name: IS,", "name: ISS,"),
            r"metrics\[0\]: unknown metric 'ISS'. Known metrics: .*FID-0",
        ),
        # paper number for a metric the spec does not list
        (
            lambda t: t.replace("paper: {IS: 10.5,", "paper: {SOA-C: 1.0, IS: 10.5,"),
            r"rows\[0\] 'plain': paper.SOA-C: not one of this spec's metrics",
        ),
        # paper number that is not a number
        (
            lambda t: t.replace("IS: 10.5", "IS: high"),
            r"rows\[0\] 'plain': paper.IS: must be a number",
        ),
        # a bad value in a scale names the scale
        (
            lambda t: t.replace("train.kimg: 0.1", "train.kimg: fast"),
            r"scales.smoke: 'train.kimg' must be a number",
        ),
        (lambda t: t.replace("  paper: {seeds: 1}", "  huge: {seeds: 1}"), r"unknown scale 'huge'"),
        (
            lambda t: t.replace("    reference: true", "    reference: true\n    set: {loss.tau: 1}"),
            r"rows\[1\] 'other method': a reference row",
        ),
        (lambda t: t.replace("id: tabletest", "id: other"), r"must equal the file name"),
        # a scale's SLURM settings are checked where they are written
        (
            lambda t: t.replace("  paper: {seeds: 1}", "  paper: {seeds: 1, slurm: {gpus: 4}}"),
            r"scales.paper.slurm: unknown SLURM setting 'gpus'",
        ),
        # a property (not a score) has no direction
        (
            lambda t: t.replace("name: IS, higher_is_better: true",
                                "name: feature-dim, higher_is_better: true"),
            r"metrics\[0\]: feature-dim is a property of the run, not a score: remove 'higher_is_better'",
        ),
    ],
)
def test_validation_errors_name_file_row_and_field(tmp_path, edit, expected):
    path = write(tmp_path, edit(MINIMAL.format(id="tabletest")))
    with pytest.raises(SpecError, match=expected) as info:
        spec_mod.load(path)
    assert str(path) in str(info.value)


def test_yaml_syntax_error_names_file_and_line(tmp_path):
    text = MINIMAL.format(id="tabletest").replace("  - name: plain\n", "  - name: plain\n   bad: [\n")
    path = write(tmp_path, text)
    with pytest.raises(SpecError) as info:
        spec_mod.load(path)
    message = str(info.value)
    line = text.splitlines().index("   bad: [") + 1
    assert "YAML syntax error" in message
    # The reported line is where YAML noticed the problem: at or just after the bad line.
    reported = int(message.split(f"{path}:")[1].split(":")[0])
    assert line <= reported <= line + 2


def test_unknown_table_lists_the_valid_ones():
    with pytest.raises(UserError, match="unknown table or figure 'table99'. Valid choices: .*table5"):
        spec_mod.find("table99")


def test_schema_fits_figures_and_multi_dataset_tables(tmp_path):
    """Figure 7 style: reference curves, x values and series; Table 3 style: groups."""
    text = textwrap.dedent(
        """\
        id: figure7
        title: Semi-supervised fine-tuning
        paper: {figure: 7, section: "4.4"}
        x_axis: {label: "% of image-text pairs", log: false}
        metrics:
          - {name: IS, higher_is_better: true}
          - {name: FID-0, higher_is_better: false}
        rows:
          - {name: XMC-GAN, reference: true, series: XMC-GAN, paper: {IS: 30.45, FID-0: 9.33}}
          - name: LAFITE 10%
            series: LAFITE
            x: 10
            group: MS-COCO
            set: {mode: semi-supervised, data.paired_fraction: 0.1}
            scales: {smoke: {world.domain: scenes}}
        scales:
          smoke: {data.dataset: world, data.resolution: 16}
        """
    )
    spec = spec_mod.load(write(tmp_path, text, "figure7"))
    assert spec.kind == "figure"
    assert [r.name for r in spec.trainable_rows] == ["LAFITE 10%"]
    row = spec.row("LAFITE 10%")
    assert (row.x, row.series, row.group) == (10.0, "LAFITE", "MS-COCO")
    assert spec.resolve(row, "smoke").data.paired_fraction == 0.1
    assert spec.row("XMC-GAN").paper == {"IS": 30.45, "FID-0": 9.33}


# -- the tables of the other settings (zero-shot, supervised, fine-tuning, semi-supervised) ----


def test_new_specs_hold_the_printed_numbers():
    t2, t3, t4 = (spec_mod.find(i) for i in ("table2", "table3", "table4"))
    assert t2.row("DALL-E").paper == {"IS": 17.90, "FID-0": 27.50, "FID-1": 28.00,
                                      "FID-2": 45.50, "FID-4": 83.50, "FID-8": 85.00}
    assert t2.row("CogView").paper == {} and t2.row("CogView").reference
    assert t2.row("LAFITE").paper["FID-8"] == 14.79 and t2.row("LAFITE").paper["SOA-I"] == 54.25
    assert t3.row("XMC-GAN (MS-COCO)").paper == {"IS": 30.45, "FID-0": 9.33, "SOA-C": 50.94,
                                                 "SOA-I": 71.33}
    assert t3.row("DF-GAN (MS-COCO)").paper == {"FID-0": 21.42}  # dashes stay missing
    assert t3.row("LAFITE (MM-CelebA-HQ)").paper == {"IS": 2.93, "FID-0": 12.54}
    assert t4.row("fine-tuned LAFITE_NN (MS-COCO)").paper == {"IS": 26.55, "FID-0": 17.44}
    assert t4.row("scratch LAFITE_NN (MS-COCO)").paper["FID-0"] == 26.56  # Table 5 prints 26.48
    assert t4.row("scratch LAFITE_G (CUB)").group == "CUB"
    f7 = spec_mod.find("figure7")
    assert [r.x for r in f7.trainable_rows] == [0, 10, 25, 50, 75, 100]
    assert all(not r.paper for r in f7.trainable_rows)  # the points are only in the figure
    assert f7.row("XMC-GAN").paper == {"IS": 30.45, "FID-0": 9.33}
    f1 = spec_mod.find("figure1")
    assert (f1.row("DALL-E").x, f1.row("CogView").x, f1.row("LAFITE").x) == (12000, 4000, 75)


@pytest.mark.parametrize("scale", ["smoke", "mini", "paper"])
def test_rows_equal_to_table5_rows_are_the_same_runs(scale):
    t5 = {r.row.name: r.hash for r in spec_mod.plan(spec_mod.find("table5"), scale)}
    t4 = {r.row.name: r.hash for r in spec_mod.plan(spec_mod.find("table4"), scale)}
    assert t4["scratch LAFITE_G (MS-COCO)"] == t5["LAFITE_G +L_ConG +L_ConD"]
    assert t4["scratch LAFITE_NN (MS-COCO)"] == t5["LAFITE_NN +L_ConG +L_ConD"]
    t2 = spec_mod.plan(spec_mod.find("table2"), scale)
    f1 = spec_mod.plan(spec_mod.find("figure1"), scale)
    assert [r.hash for r in t2] == [r.hash for r in f1]


def test_modes_and_datasets_resolve_per_scale():
    t3 = spec_mod.find("table3")
    coco = t3.row("LAFITE (MS-COCO)")
    paper, mini = t3.resolve(coco, "paper"), t3.resolve(coco, "mini")
    assert (paper.mode, paper.data.dataset, paper.clip.name) == ("supervised", "coco2014", "ViT-B-16")
    assert (mini.data.dataset, mini.world.domain, mini.clip.name) == ("world", "scenes", "world")
    faces = t3.resolve(t3.row("LAFITE (MM-CelebA-HQ)"), "mini")
    assert (faces.world.domain, faces.loss.r1_gamma, faces.eval.metrics) == (
        "faces", 0.016, ("IS", "FID-0", "caption-accuracy"))
    assert t3.resolve(t3.row("LAFITE (MM-CelebA-HQ)"), "paper").eval.n_samples == 6000
    t2 = spec_mod.find("table2")
    zero = t2.resolve(t2.row("LAFITE"), "mini")
    assert (zero.mode, zero.train.init_job) == ("zero-shot", "pretrain-cc3m")
    f7 = spec_mod.find("figure7")
    half = f7.resolve(f7.row("LAFITE p=50%"), "mini")
    assert (half.mode, half.data.paired_fraction, half.train.init_job) == (
        "semi-supervised", 0.5, "pretrain-coco-language-free")


def test_a_pretraining_job_is_one_job_for_every_table_that_needs_it():
    from lafite import jobs

    hashes = set()
    for spec_id, row in (("table2", "LAFITE"), ("figure1", "LAFITE"),
                         ("table4", "fine-tuned LAFITE_G (CUB)"),
                         ("table4", "fine-tuned LAFITE_NN (LN-COCO)")):
        spec = spec_mod.find(spec_id)
        cfg = spec.resolve(spec.row(row), "mini")
        hashes.add(jobs.resolve("pretrain-cc3m", cfg).hash)
    assert len(hashes) == 1
    job = jobs.resolve("pretrain-cc3m", cfg)
    assert (job.config.mode, job.config.world.domain) == ("supervised", "web")
    # Figure 7's language-free model is Table 5's full LAFITE_G row: the same configuration.
    f7 = spec_mod.find("figure7")
    lf = jobs.resolve("pretrain-coco-language-free", f7.resolve(f7.row("LAFITE p=10%"), "mini"))
    t5 = spec_mod.find("table5")
    assert lf.config == t5.resolve(t5.row("LAFITE_G +L_ConG +L_ConD"), "mini")


def _spec_with(tmp_path: Path, row: str, name: str = "tablebad") -> Path:
    text = MINIMAL.format(id=name).replace(
        "    set: {loss.con_g: false}\n", row
    )
    return write(tmp_path, text, name)


@pytest.mark.parametrize(
    "row, pattern",
    [
        ("    set: {mode: semi-supervised, data.paired_fraction: 1.5}\n",
         r"tablebad\.yaml: rows\[0\] 'plain'.*'data\.paired_fraction' must be in \[0, 1\]"),
        ("    set: {data.paired_fraction: 0.5}\n",
         r"rows\[0\] 'plain'.*pair fraction only applies with mode: semi-supervised"),
        ("    set: {mode: zero-shot}\n",
         r"rows\[0\] 'plain'.*zero-shot.*train\.init_job"),
        ("    dataset: imagenet\n", r"rows\[0\] 'plain': dataset: unknown dataset 'imagenet'"),
    ],
    ids=["fraction-out-of-range", "fraction-without-mode", "zero-shot-without-model",
         "unknown-dataset"],
)
def test_bad_modes_and_datasets_are_rejected_at_load(tmp_path, row, pattern):
    with pytest.raises(SpecError, match=pattern):
        spec_mod.load(_spec_with(tmp_path, row))


def test_a_dataset_the_world_has_no_domain_for_is_rejected_at_load(tmp_path, monkeypatch):
    from lafite.data import datasets

    monkeypatch.delitem(datasets.WORLD_ANALOGUES, "cub")
    with pytest.raises(SpecError, match=r"rows\[0\] 'plain': dataset \(at scale \w+\): the "
                       r"built-in world has no domain for dataset 'cub'"):
        spec_mod.load(_spec_with(tmp_path, "    dataset: cub\n"))


def test_extends_merges_base_and_scales_key_by_key(tmp_path):
    (tmp_path / "parent.yaml").write_text(MINIMAL.format(id="parent"))
    child = textwrap.dedent(
        """\
        id: child
        title: child
        paper: {table: 8}
        extends: parent
        metrics: [{name: IS, higher_is_better: true}]
        base: {loss.gamma: 3}
        rows: [{name: r}]
        scales: {smoke: {train: {batch: 4}}}
        """
    )
    spec = spec_mod.load(write(tmp_path, child, "child"))
    cfg = spec.resolve(spec.row("r"), "smoke")
    assert (cfg.loss.tau, cfg.loss.gamma) == (0.5, 3.0)  # the parent's tau is kept
    assert (cfg.train.kimg, cfg.train.batch, cfg.data.resolution) == (0.1, 4, 16)
    assert spec.scale("smoke").seeds == 2
    (tmp_path / "loop.yaml").write_text(child.replace("id: child", "id: loop").replace(
        "extends: parent", "extends: loop"))
    with pytest.raises(SpecError, match="extends itself"):
        spec_mod.load(tmp_path / "loop.yaml")


def test_table6_holds_the_printed_numbers_and_shares_table3s_coco_row():
    t6, t3 = spec_mod.find("table6"), spec_mod.find("table3")
    assert [r.name for r in t6.rows] == ["RoBERTa-Base", "RoBERTa-Large", "CLIP(B-32) Text encoder",
                                         "CLIP(B-16) Text encoder", "CLIP(B-32)", "CLIP(B-16)"]
    assert t6.row("RoBERTa-Large").paper == {"feature-dim": 1024, "IS": 14.11, "FID-0": 35.77,
                                             "SOA-C": 7.72, "SOA-I": 16.03}
    assert t6.row("CLIP(B-16) Text encoder").paper["SOA-I"] == 62.71
    assert [m.name for m in t6.metrics if not m.ranked] == ["feature-dim"]
    for scale in ("smoke", "mini", "paper"):
        coco = t3.resolve(t3.row("LAFITE (MS-COCO)"), scale)
        assert t6.resolve(t6.row("CLIP(B-16)"), scale).hash() == coco.hash()
        configs = {r.name: t6.resolve(r, scale) for r in t6.trainable_rows}
        assert all(c.mode == "supervised" for c in configs.values())
        assert {n for n, c in configs.items() if c.loss.con_g} == {"CLIP(B-32)", "CLIP(B-16)"}
    paper = {r.name: t6.resolve(r, "paper") for r in t6.trainable_rows}
    assert paper["RoBERTa-Base"].encoder.name == "roberta-base"
    assert paper["CLIP(B-32)"].clip.name == "ViT-B-32" and paper["CLIP(B-16)"].clip.name == "ViT-B-16"
    mini = {r.name: t6.resolve(r, "mini") for r in t6.trainable_rows}
    assert mini["RoBERTa-Large"].encoder.name == "world-text-large"
    # The stronger world CLIP (8 px patches, measured) plays ViT-B/16, the shipped one B/32.
    assert mini["CLIP(B-32) Text encoder"].clip.world_patch_size == 0
    assert mini["CLIP(B-16) Text encoder"].clip.world_patch_size == 8


def test_a_scales_slurm_settings_are_kept_apart_and_inherited():
    """Table 5's paper scale asks for the paper's 4 GPUs per run; Table 3 extends it and gets
    them too; neither is a configuration override (run hashes do not change)."""
    table5, table3 = spec_mod.find("table5"), spec_mod.find("table3")
    assert table5.scales["paper"].slurm == {"gpus_per_run": 4}
    assert table3.scales["paper"].slurm == {"gpus_per_run": 4}
    assert not any(k.startswith("slurm") for k in table3.scales["paper"].overrides)
