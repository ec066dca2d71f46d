"""Importing the authors' checkpoints (official StyleGAN2-ADA snapshots) without running them.

The snapshots here are written in the official format from our own networks with known
weights: every module a ``torch_utils.persistence`` record (source text, class name, state with
``_parameters``, ``_buffers``, ``_modules`` and the official attributes), tensors pickled the
way ``pickle.dump`` pickles them, ``dnnlib.util.EasyDict`` init kwargs, NumPy scalars.
"""

from __future__ import annotations

import collections
import os
import pickle
import re
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from lafite.config import ModelConfig
from lafite.errors import UserError
from lafite.importer import SnapshotError, import_snapshot, read_snapshot
from lafite.model import Discriminator, Generator

CFG = ModelConfig(z_dim=16, w_dim=16, mapping_layers=2, channel_base=256, channel_max=32,
                  cond_form="official", cond_dim=16, d_semantic="batch-sum", mbstd_group=2)
RES, F_DIM = 16, 24
FILTER = torch.outer(torch.tensor([1.0, 3, 3, 1]), torch.tensor([1.0, 3, 3, 1])) / 64
SOURCE = "import os\nopen('module-src-was-run', 'w').write('exec')\n"


# -- writing snapshots in the official format ----------------------------------------------


@pytest.fixture
def official_modules(monkeypatch):
    """The two modules an official snapshot names, faked for writing (never for reading)."""
    persistence = types.ModuleType("torch_utils.persistence")
    util = types.ModuleType("dnnlib.util")

    def _reconstruct_persistent_obj(meta):  # what the official loader does: exec(module_src)
        raise AssertionError("the importer must not call the official reconstruction")

    _reconstruct_persistent_obj.__module__ = "torch_utils.persistence"
    _reconstruct_persistent_obj.__qualname__ = "_reconstruct_persistent_obj"
    persistence._reconstruct_persistent_obj = _reconstruct_persistent_obj

    class EasyDict(dict):
        pass

    EasyDict.__module__, EasyDict.__qualname__ = "dnnlib.util", "EasyDict"
    util.EasyDict = EasyDict
    for name, module in {"torch_utils": types.ModuleType("torch_utils"),
                         "torch_utils.persistence": persistence,
                         "dnnlib": types.ModuleType("dnnlib"), "dnnlib.util": util}.items():
        monkeypatch.setitem(sys.modules, name, module)
    return types.SimpleNamespace(reconstruct=_reconstruct_persistent_obj, EasyDict=EasyDict)


class _Persistent:
    """Pickles as the official persistent classes do: (_reconstruct_persistent_obj, (meta,))."""

    def __init__(self, reconstruct, class_name: str, state: dict, source: str = SOURCE):
        self.reconstruct, self.meta = reconstruct, dict(
            type="class", version=6, module_src=source, class_name=class_name, state=state)

    def __reduce__(self):
        return self.reconstruct, (self.meta,)


_BUFFERS = ("noise_const", "w_avg", "resample_filter")


def _class_of(path: str, network: str) -> str:
    last = path.rsplit(".", 1)[-1]
    if network == "G":
        if path == "":
            return "Generator"
        if path in ("mapping", "synthesis"):
            return {"mapping": "MappingNetwork", "synthesis": "SynthesisNetwork"}[path]
        if re.fullmatch(r"b\d+", last):
            return "SynthesisBlock"
        return {"conv0": "SynthesisLayer", "conv1": "SynthesisLayer",
                "torgb": "ToRGBLayer"}.get(last, "FullyConnectedLayer")
    if path == "":
        return "Discriminator"
    if path == "b4":
        return "DiscriminatorEpilogue"
    if re.fullmatch(r"b\d+", path):
        return "DiscriminatorBlock"
    if path == "b4.mbstd":
        return "MinibatchStdLayer"
    return "Conv2dLayer" if last in ("fromrgb", "conv0", "conv1", "skip", "conv") \
        else "FullyConnectedLayer"


def _attributes(path: str, network: str, tensors: dict, f_dim: int, res: int,
                structure: int) -> dict:
    last = path.rsplit(".", 1)[-1]
    cls = _class_of(path, network)
    if cls == "FullyConnectedLayer":
        w = tensors[f"{path}.weight"]
        lr = 0.01 if (last.startswith("fc") and path.startswith("mapping")) or last.startswith(
            ("pre_", "scale_layer_0", "scale_layer_1", "bias_layer_0", "bias_layer_1")) else 1
        return {"activation": "lrelu", "weight_gain": np.float64(lr / np.sqrt(w.shape[1])),
                "bias_gain": lr}
    if cls == "SynthesisLayer":
        return {"structure": structure, "conv_clamp": 256, "use_noise": True,
                "activation": "lrelu", "act_gain": np.float64(np.sqrt(2)), "padding": 1}
    if cls == "ToRGBLayer":
        return {"structure": structure, "conv_clamp": 256}
    if cls == "SynthesisBlock":
        return {"architecture": "skip", "use_fp16": int(last[1:]) >= 8, "resolution": int(last[1:])}
    if cls == "DiscriminatorBlock":
        return {"architecture": "resnet", "use_fp16": True, "resolution": int(path[1:])}
    if cls == "MinibatchStdLayer":
        return {"group_size": CFG.mbstd_group, "num_channels": 1}
    if cls == "Generator":
        return {"z_dim": CFG.z_dim, "c_dim": 0, "w_dim": CFG.w_dim, "img_resolution": res,
                "img_channels": 3, "m_layer_features": f_dim, "mani": None}
    if cls == "Discriminator":
        return {"c_dim": 0, "img_resolution": res, "img_channels": 3, "use_norm": False,
                "use_fts": "b4.fts.weight" in tensors}
    return {}


def _records(tensors: dict, network: str, mods, f_dim: int, res: int, structure: int = 2,
             extra_modules: tuple[str, ...] = ()):
    """Nested persistent records holding ``tensors`` (official names), as the official
    networks' ``__dict__`` would."""
    paths = {""} | set(extra_modules)
    for name in tensors:
        parts = name.split(".")[:-1]
        paths.update(".".join(parts[:i]) for i in range(len(parts) + 1))

    def build(path: str):
        prefix = f"{path}." if path else ""
        params, buffers, children = (collections.OrderedDict() for _ in range(3))
        for name, value in tensors.items():
            if name.startswith(prefix) and "." not in name[len(prefix):]:
                leaf = name[len(prefix):]
                if leaf in _BUFFERS:
                    buffers[leaf] = value
                else:
                    params[leaf] = torch.nn.Parameter(value, requires_grad=False)
        for child in sorted(p for p in paths if p.startswith(prefix) and p != path
                            and "." not in p[len(prefix):]):
            children[child[len(prefix):]] = build(child)
        state = {"training": False, "_parameters": params, "_buffers": buffers,
                 "_non_persistent_buffers_set": set(), "_backward_hooks": collections.OrderedDict(),
                 "_forward_hooks": collections.OrderedDict(), "_modules": children,
                 "_init_args": (), "_init_kwargs": mods.EasyDict(example=1),
                 **_attributes(path, network, tensors, f_dim, res, structure)}
        if path == "" and network == "G":
            state["synthesis_kwargs"] = mods.EasyDict(channel_base=CFG.channel_base,
                                                      channel_max=CFG.channel_max)
        return _Persistent(mods.reconstruct, _class_of(path, network), state)

    return build("")


def official_g_names(G: Generator) -> dict:
    """Our generator's state dict under the official names, with the resampling filters."""
    res = G.synthesis.resolutions
    out = {}
    for name, value in G.state_dict().items():
        name = re.sub(r"^mapping\.layers\.(\d+)\.", r"mapping.fc\1.", name)
        m = re.match(r"synthesis\.blocks\.(\d+)\.", name)
        if m:
            name = f"synthesis.b{res[int(m.group(1))]}." + name[m.end():]
        name = (name.replace("style.cond.0", "pre_0").replace("style.cond.1", "pre_1")
                .replace("style.affine", "affine_0"))
        out[name] = value.clone()
    for r in res:
        out[f"synthesis.b{r}.resample_filter"] = FILTER.clone()
        for conv in ("conv0", "conv1") if r > 4 else ("conv1",):
            out[f"synthesis.b{r}.{conv}.resample_filter"] = FILTER.clone()
    return out


def official_d_names(D: Discriminator) -> dict:
    res = [D.resolution // 2**i for i in range(len(D.blocks))]
    epilogue = {"conv": "b4.conv", "fc": "b4.fc", "f_d": "b4.out", "f_s": "b4.fts"}
    out = {}
    for name, value in D.state_dict().items():
        head, rest = name.split(".", 1)
        if head == "blocks":
            k, rest = rest.split(".", 1)
            name = f"b{res[int(k)]}.{rest}"
        else:
            name = f"{epilogue[head]}.{rest}"
        out[name] = value.clone()
    for r in res:
        out[f"b{r}.resample_filter"] = FILTER.clone()
        for layer in ("conv0", "conv1", "skip") + (("fromrgb",) if r == D.resolution else ()):
            out[f"b{r}.{layer}.resample_filter"] = FILTER.clone()
    out["b4.conv.resample_filter"] = FILTER.clone()
    return out


def randomised(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Every parameter and buffer drawn afresh (biases and noise strengths too)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tensor in [*module.parameters(), *module.buffers()]:
            tensor.copy_(torch.randn(tensor.shape, generator=gen) * 0.3)
    return module.eval()


def networks(cfg: ModelConfig = CFG, res: int = RES, f_dim: int = F_DIM):
    G = randomised(Generator(cfg, res, f_dim), 1)
    G_ema = randomised(Generator(cfg, res, f_dim), 2)
    D = randomised(Discriminator(cfg, res, f_dim), 3)
    return G, G_ema, D


def write_snapshot(path: Path, mods, G, G_ema, D, f_dim: int = F_DIM, res: int = RES) -> Path:
    data = {
        "G": _records(official_g_names(G), "G", mods, f_dim, res),
        "D": _records(official_d_names(D), "D", mods, f_dim, res, extra_modules=("b4.mbstd",)),
        "G_ema": _records(official_g_names(G_ema), "G", mods, f_dim, res),
        "augment_pipe": None,
        "training_set_kwargs": {"path": "./datasets/COCO2014_train_CLIP_ViTB32.zip",
                                "resolution": res, "use_clip": True},
    }
    with open(path, "wb") as handle:
        pickle.dump(data, handle)
    return path


# -- tests ---------------------------------------------------------------------------------


def test_imported_snapshot_gives_the_same_outputs(tmp_path, official_modules, one_torch_thread,
                                                  monkeypatch):
    monkeypatch.chdir(tmp_path)
    G, G_ema, D = networks()
    path = write_snapshot(tmp_path / "network-snapshot-000400.pkl", official_modules, G, G_ema, D)

    imported = import_snapshot(path)
    d = imported.detected
    assert (d.resolution, d.f_dim, d.cond_dim, d.mapping_layers, d.z_dim, d.w_dim) == (
        RES, F_DIM, CFG.cond_dim, CFG.mapping_layers, CFG.z_dim, CFG.w_dim)
    assert (d.channel_base, d.channel_max, d.structure, d.cond_form) == (256, 32, 2, "official")
    assert d.mbstd_group == CFG.mbstd_group and d.d_semantic_head and not d.d_normalize_fs
    assert imported.params_G == sum(p.numel() for p in G.parameters())
    assert imported.params_D == sum(p.numel() for p in D.parameters())
    for ours, theirs in ((G.state_dict(), imported.G), (G_ema.state_dict(), imported.G_ema),
                         (D.state_dict(), imported.D)):
        assert set(ours) == set(theirs)
        assert all(torch.equal(ours[k], theirs[k]) for k in ours)

    new_G, new_D = imported.networks()
    gen = torch.Generator().manual_seed(7)
    z = torch.randn(4, CFG.z_dim, generator=gen)
    cond = torch.nn.functional.normalize(torch.randn(4, F_DIM, generator=gen), dim=1)
    with torch.no_grad():
        expected = G_ema(z, cond, noise_mode="const")
        got = new_G(z, cond, noise_mode="const")
        assert (got - expected).abs().max().item() == 0.0
        logit, semantic = D(expected, cond)
        new_logit, new_semantic = new_D(expected, cond)
    assert torch.equal(logit, new_logit) and torch.equal(semantic, new_semantic)
    # The module source stored with every record was never run.
    assert not (tmp_path / "module-src-was-run").exists()


class _Smuggler:
    """An object whose unpickling would run a shell command creating ``marker``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_smuggled_callable_is_refused_and_nothing_runs(tmp_path, official_modules):
    G, _, _ = networks()
    path = tmp_path / "evil.pkl"
    marker = tmp_path / "pwned"
    # Hidden deep inside a layer's state, after the tensors that come before it.
    records = _records(official_g_names(G), "G", official_modules, F_DIM, RES)
    records.meta["state"]["_modules"]["mapping"].meta["state"]["hook"] = _Smuggler(marker)
    with open(path, "wb") as handle:
        pickle.dump({"G_ema": records}, handle)
    with pytest.raises(UserError) as refused:
        import_snapshot(path)
    message = str(refused.value)
    assert str(path) in message and re.search(r"(posix|os)\.system", message)
    assert "Nothing in it was run" in message
    assert not marker.exists()

    # At the top level, and through a lafite-repro code path that reads checkpoints.
    with open(path, "wb") as handle:
        pickle.dump(_Smuggler(marker), handle)
    with pytest.raises(UserError, match=r"(posix|os)\.system"):
        read_snapshot(path)
    assert not marker.exists()


def test_truncated_and_foreign_snapshots_are_refused(tmp_path, official_modules):
    G, G_ema, D = networks()
    path = write_snapshot(tmp_path / "network-snapshot-000400.pkl", official_modules, G, G_ema, D)
    cut = tmp_path / "cut.pkl"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(SnapshotError, match=r"cut\.pkl .*bytes\) cannot be read: it ends early"):
        import_snapshot(cut)

    not_a_pickle = tmp_path / "notes.pkl"
    not_a_pickle.write_text("hello")
    with pytest.raises(SnapshotError, match=r"notes\.pkl .*cannot be read"):
        import_snapshot(not_a_pickle)

    plain = tmp_path / "list.pkl"
    plain.write_bytes(pickle.dumps([1, 2, 3]))
    with pytest.raises(SnapshotError, match=r"list\.pkl is a pickle of a list, not a StyleGAN2"):
        import_snapshot(plain)


def test_a_plain_stylegan2_snapshot_is_another_architecture(tmp_path, official_modules):
    G, G_ema, D = networks()
    names = official_g_names(G_ema)
    plain_g: dict = {}
    for name, value in names.items():
        if ".pre_" in name:
            continue
        if ".affine_0." in name:  # StyleGAN2's unconditional affine: w -> channels
            name = name.replace(".affine_0.", ".affine.")
            value = value[:, -CFG.w_dim:] if value.ndim == 2 else value
        plain_g[name] = value
    plain_d = {k: v for k, v in official_d_names(D).items() if not k.startswith("b4.fts")}
    path = tmp_path / "stylegan2-ffhq.pkl"
    with open(path, "wb") as handle:
        pickle.dump({"G_ema": _records(plain_g, "G", official_modules, F_DIM, RES, structure=3),
                     "D": _records(plain_d, "D", official_modules, F_DIM, RES,
                                   extra_modules=("b4.mbstd",))}, handle)
    with pytest.raises(SnapshotError) as refused:
        import_snapshot(path)
    message = str(refused.value)
    assert str(path) in message and "another architecture" in message
    assert "plain StyleGAN2" in message and "Nothing was imported" in message

    # A shape that does not fit the layout the other tensors describe.
    names = official_g_names(G_ema)
    names["synthesis.b8.conv1.weight"] = names["synthesis.b8.conv1.weight"][:, :-1]
    path = tmp_path / "odd.pkl"
    with open(path, "wb") as handle:
        pickle.dump({"G_ema": _records(names, "G", official_modules, F_DIM, RES)}, handle)
    with pytest.raises(SnapshotError, match=r"G_ema\.synthesis\.b8\.conv1\.weight has shape"):
        import_snapshot(path)


SMOKE_SET = ["scale=smoke", "data.dataset=world", "world.n_train=64", "world.n_test=32",
             "clip.name=world", "eval.extractor=inspector", "eval.n_samples=32", "eval.batch=32",
             "eval.reference_split=test", "eval.metrics=[FID-0]", "eval.isc_splits=2",
             "train.device=cpu"]


@pytest.mark.usefixtures("one_torch_thread")
def test_import_cli_records_a_run_that_evaluate_uses(tmp_path, workspace, tiny_models,
                                                     official_modules):
    import json
    import shutil

    from click.testing import CliRunner

    from lafite.cli import main
    from lafite.spec import AUTHORS_CHECKPOINT, load, plan
    from lafite.tracking import Tracker

    shutil.copytree(tiny_models, workspace.root / "models")
    smoke = ModelConfig(z_dim=16, w_dim=16, mapping_layers=1, channel_base=256, channel_max=16,
                        cond_form="official", cond_dim=16, d_semantic="batch-sum")
    G, G_ema, D = networks(smoke, 16, 32)  # the tiny world CLIP's features have 32 dimensions
    path = write_snapshot(tmp_path / "network-snapshot-000400.pkl", official_modules, G, G_ema,
                          D, f_dim=32, res=16)
    runner = CliRunner()
    args = ["--home", str(workspace.root), "import", str(path), "--name", "authors-smoke"]
    for item in SMOKE_SET:
        args += ["--set", item]
    result = runner.invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    run_id = re.search(r"MLflow run: (\w+)", result.output).group(1)
    assert f"parameters: G {sum(p.numel() for p in G.parameters()):,}" in result.output

    run = Tracker(workspace).client.get_run(run_id)
    tags, params = run.data.tags, run.data.params
    assert run.info.status == "FINISHED" and tags["lafite.role"] == "imported"
    assert tags["lafite.imported"] == "true"
    import hashlib
    assert tags["lafite.import.sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert (params["import.resolution"], params["import.f_dim"], params["import.mapping_layers"],
            params["import.channel_max"]) == ("16", "32", "1", "16")

    again = runner.invoke(main, args[:6], catch_exceptions=False)  # same file, same name
    assert again.exit_code == 0 and "already imported" in again.output and run_id in again.output
    taken = tmp_path / "other.pkl"
    taken.write_bytes(path.read_bytes() + b".")  # another file under the same name
    refused = runner.invoke(main, ["--home", str(workspace.root), "import", str(taken),
                                   "--name", "authors-smoke"])
    assert refused.exit_code == 2 and "already the import of" in refused.output

    scored = runner.invoke(main, ["--home", str(workspace.root), "evaluate", "--run", run_id],
                           catch_exceptions=False)
    assert scored.exit_code == 0, scored.output
    printed, _ = json.JSONDecoder().raw_decode(scored.output[scored.output.index("{"):])
    assert np.isfinite(printed["metrics"]["FID-0"])
    history = Tracker(workspace).client.get_metric_history(run_id, "FID-0")
    assert len(history) == 1 and history[0].value == pytest.approx(printed["metrics"]["FID-0"])

    # A spec row naming the import gets the authors' checkpoint beside it, with its settings.
    spec_path = tmp_path / "authors.yaml"
    spec_path.write_text(
        "id: authors\ntitle: t\npaper: {table: 1}\nmetrics: [{name: FID-0, higher_is_better: "
        "false}]\nrows:\n  - name: LAFITE\n    paper: {FID-0: 8.12}"
        "\n    import: {smoke: authors-smoke}\nscales:\n  smoke:\n    clip: {name: world}\n"
        "    data: {dataset: world, resolution: 16}\n    eval: {extractor: inspector, n_samples: 32, metrics: [FID-0]}\n"
        "  paper: {}\n")
    spec = load(spec_path)
    runs = plan(spec, "smoke", workspace=workspace)
    assert [r.row.name for r in runs] == [f"LAFITE: {AUTHORS_CHECKPOINT}", "LAFITE"]
    authors = runs[0].config
    assert authors.mode == "zero-shot" and authors.model.cond_form == "official"
    assert Path(authors.train.init_checkpoint) == workspace.models_dir / "imported" / \
        "authors-smoke" / "checkpoint.pt"
    assert authors.eval == runs[1].config.eval and authors.data == runs[1].config.data
    assert [r.row.name for r in plan(spec, "paper", workspace=workspace)] == ["LAFITE"]
    assert [r.name for r in spec.report_rows("smoke")] == [f"LAFITE: {AUTHORS_CHECKPOINT}",
                                                           "LAFITE"]


def test_a_snapshot_path_reads_as_a_checkpoint_and_the_report_places_its_row(
        tmp_path, official_modules):
    import pandas as pd

    from lafite.checkpoint import load_checkpoint
    from lafite.report.tables import summarise
    from lafite.spec import AUTHORS_CHECKPOINT, parse
    from lafite.train import load_generator

    G, G_ema, D = networks()
    path = write_snapshot(tmp_path / "network-snapshot-000400.pkl", official_modules, G, G_ema, D)
    # train.init_checkpoint and `evaluate --run` read checkpoints through load_checkpoint.
    saved = load_checkpoint(path)
    assert {"G", "D", "G_ema", "config", "cond_dim"} <= set(saved) and saved["cond_dim"] == F_DIM
    loaded, cfg = load_generator(path)
    assert cfg.model.cond_form == "official" and cfg.data.resolution == RES
    assert all(torch.equal(v, G_ema.state_dict()[k]) for k, v in loaded.state_dict().items())

    spec = parse({"id": "t", "title": "t", "paper": {"table": 1},
                  "metrics": [{"name": "FID-0", "higher_is_better": False}],
                  "rows": [{"name": "A", "paper": {"FID-0": 10.0}, "import": "x"},
                           {"name": "B", "paper": {"FID-0": 12.0}}],
                  "scales": {"paper": {}}}, Path("t.yaml"))
    authors = f"A: {AUTHORS_CHECKPOINT}"
    frame = pd.DataFrame({"row": [authors, "A", "B"], "seed": [0, 0, 0],
                          "scale": ["paper"] * 3, "run_id": ["r0", "r1", "r2"],
                          "metrics.FID-0": [10.2, 14.0, 13.0]})
    table = summarise(spec, frame, "paper")
    assert [r.name for r in table.rows] == [authors, "A", "B"]
    assert table.rows[0].cells["FID-0"].diff == pytest.approx(0.2)
    # The authors' checkpoint is not ranked against the rows of the paper's table.
    (agreement,) = table.agreements
    assert agreement.n_rows == 2 and agreement.our_best == "B"
