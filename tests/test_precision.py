"""train.precision: auto resolves by the machine, says why, and a run keeps what it started in."""

import json
import sys
import warnings
from pathlib import Path

import pytest
import torch

import lafite.precision as P
from lafite.config import RunConfig
from lafite.errors import ConfigError
from lafite.train import TrainCallbacks, train_run

sys.path.insert(0, str(Path(__file__).parent))
from _train_smoke import smoke_config, tiny_clip  # noqa: E402

torch.set_num_threads(1)


def test_config_accepts_auto_and_fp16_and_rejects_others():
    cfg = RunConfig().override({"train.precision": "auto"})
    assert cfg.train.precision == "auto"
    assert RunConfig().override({"train.precision": "fp16"}).train.fp16_blocks == 4
    with pytest.raises(ConfigError, match="train.precision"):
        RunConfig().override({"train.precision": "fp8"})
    with pytest.raises(ConfigError, match="train.workers"):
        RunConfig().override({"train.workers": -1})
    # The run's identity is the configuration, never what a machine resolved it to.
    assert cfg.hash() == RunConfig().override({"train.precision": "auto"}).hash()


def test_mini_and_smoke_scales_say_auto():
    from lafite import spec as spec_mod

    spec = spec_mod.find("table5")
    for scale in ("mini", "smoke"):
        assert spec.base_config(scale).train.precision == "auto"


def test_explicit_precisions_and_fp16_needs_cuda():
    cfg = RunConfig().override({"train.precision": "bf16"})
    assert P.resolve(cfg, "cpu") == P.Resolved("bf16", "as configured")
    with pytest.raises(ConfigError, match="CUDA"):
        P.resolve(RunConfig().override({"train.precision": "fp16"}), "cpu")


def test_auto_is_fp32_without_native_bf16(monkeypatch):
    monkeypatch.setattr(P, "cpu_flags", lambda: {"avx2", "fma"})
    monkeypatch.setattr(P, "measured_bf16_speedup", lambda *a, **k: pytest.fail("measured"))
    resolved = P.resolve(RunConfig().override({"train.precision": "auto"}), "cpu")
    assert resolved.precision == "fp32"
    assert "native bf16" in resolved.reason


@pytest.mark.parametrize(("speedup", "expected"), [(2.0, "bf16"), (1.0, "fp32")])
def test_auto_on_a_native_bf16_cpu_follows_the_measured_speedup(monkeypatch, speedup, expected):
    monkeypatch.setattr(P, "cpu_flags", lambda: {"avx512f", "avx512_bf16"})
    monkeypatch.setattr(P, "measured_bf16_speedup", lambda shape, cache=None: speedup)
    resolved = P.resolve(smoke_config(**{"train.precision": "auto"}), "cpu")
    assert resolved.precision == expected
    assert "avx512_bf16" in resolved.reason and f"{speedup:.2f}x" in resolved.reason
    assert P.describe(smoke_config(**{"train.precision": "auto"})).startswith(
        f"train.precision auto -> {expected}")


def test_micro_benchmark_is_cached_per_machine_and_shape(tmp_path, monkeypatch):
    cache = tmp_path / "precision.json"
    first = P.measured_bf16_speedup((2, 8, 8), cache)
    assert first > 0 and len(json.loads(cache.read_text())) == 1
    monkeypatch.setattr(P, "kernel_seconds", lambda *a, **k: pytest.fail("measured again"))
    assert P.measured_bf16_speedup((2, 8, 8), cache) == pytest.approx(first, rel=1e-2)


def test_bench_shape_is_the_costliest_generator_resolution_capped():
    cfg = smoke_config()
    batch, channels, res = P.bench_shape(cfg)
    assert (batch, res) == (cfg.train.batch, 16) and channels == 32
    paper = RunConfig().override({"train.batch": 4})
    assert P.bench_shape(paper) == (4, 128, P.BENCH_MAX_RES)


def test_capabilities_name_the_processor():
    caps = P.cpu_capabilities()
    assert {"model", "flags", "native_bf16", "torch_dispatch", "threads"} <= set(caps)


def test_a_resumed_run_keeps_the_precision_it_started_in(tmp_path, monkeypatch):
    from lafite.workspace import Workspace

    workspace = Workspace.resolve(tmp_path / "ws")
    clip = tiny_clip()
    cfg = smoke_config(**{"train.precision": "auto"})
    monkeypatch.setattr(P, "cpu_flags", lambda: {"avx512_bf16"})
    monkeypatch.setattr(P, "measured_bf16_speedup", lambda shape, cache=None: 3.0)
    tags = []

    class Stop(Exception):
        pass

    def stop(step):
        if step == 5:
            raise Stop

    with pytest.raises(Stop):
        train_run(cfg, tmp_path / "run", workspace,
                  TrainCallbacks(on_step=stop, on_tags=tags.append), clip=clip)
    assert tags[0]["lafite.precision"] == "bf16"
    saved = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert saved["precision"] == "bf16" and "avx512_bf16" in saved["precision_reason"]
    # Another machine, without native bf16: the run resumes in bf16 and says so.
    monkeypatch.setattr(P, "cpu_flags", lambda: set())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = train_run(cfg, tmp_path / "run", workspace, TrainCallbacks(on_tags=tags.append),
                           clip=clip)
    assert result.resumed_from == 4
    assert any("resumes in bf16" in str(w.message) for w in caught)
    assert tags[-1]["lafite.precision"] == "bf16"
    assert torch.load(result.final_checkpoint, weights_only=True)["precision"] == "bf16"
    # A fresh run on this machine resolves to fp32.
    train_run(cfg, tmp_path / "fresh", workspace, TrainCallbacks(on_tags=tags.append), clip=clip)
    assert tags[-1]["lafite.precision"] == "fp32"
