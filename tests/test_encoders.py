"""Condition encoders: the world's text-only encoders and RoBERTa through transformers."""

from __future__ import annotations

import pytest
import torch

from lafite.config import RunConfig
from lafite.encoders import condition_dim, load_text_encoder
from lafite.errors import UserError


def test_text_only_encoders_need_supervised_training_without_l_cong():
    with pytest.raises(UserError, match="mode must be 'supervised'"):
        RunConfig().override({"encoder.name": "roberta-base"}).checked()
    with pytest.raises(UserError, match="set loss.con_g: false"):
        RunConfig().override({"encoder.name": "roberta-base", "mode": "supervised"}).checked()
    ok = RunConfig().override({"encoder.name": "roberta-large", "mode": "supervised",
                               "loss.con_g": False}).checked()
    assert condition_dim(ok) == 1024
    assert condition_dim(RunConfig(), clip_dim=512) == 512
    with pytest.raises(UserError, match="must be one of 'clip', 'roberta-base'"):
        RunConfig().override({"encoder.name": "bert"})


def test_world_text_encoder_learns_caption_words_without_images(workspace, one_torch_thread):
    from lafite.encoders.world_text import (
        WorldTextConfig,
        load_world_text_encoder,
        pretrain_world_text,
        world_text_dir,
    )

    tiny = WorldTextConfig(width=32, layers=1, heads=2, captions_per_domain=200, steps=150,
                           batch=64, probe_train=300, probe_test=100)
    folder = pretrain_world_text(workspace, "world-text-small", progress=False, config=tiny)
    assert folder == world_text_dir(workspace, "world-text-small", tiny)
    import json

    meta = json.loads((folder / "meta.json").read_text())
    probe = meta["probe"]
    # Colour and background words are in every scenes caption: a trained encoder carries them.
    assert probe["main-colour"] > probe["chance.main-colour"] + 0.2
    assert probe["background"] > probe["chance.background"] + 0.2
    assert meta["final_loss"] < meta["first_loss"] - 1.0
    # A second call returns the cached model at once.
    assert pretrain_world_text(workspace, "world-text-small", progress=False, config=tiny) == folder

    import lafite.encoders.world_text as wt

    original = wt.WORLD_TEXT_ENCODERS["world-text-small"]
    wt.WORLD_TEXT_ENCODERS["world-text-small"] = tiny
    try:
        encoder = load_world_text_encoder(workspace, "world-text-small")
        cls_encoder = load_world_text_encoder(workspace, "world-text-small", pooling="cls")
    finally:
        wt.WORLD_TEXT_ENCODERS["world-text-small"] = original
    feats = encoder.encode_texts(["a small red circle in the centre", "a large blue star"])
    assert feats.shape == (2, 32) and torch.allclose(feats.norm(dim=1), torch.ones(2), atol=1e-5)
    assert not torch.allclose(cls_encoder.encode_texts(["a red circle"]),
                              encoder.encode_texts(["a red circle"]))
    assert encoder.id != cls_encoder.id and not encoder.has_images


def test_a_missing_world_text_encoder_says_how_to_build_it(workspace):
    cfg = RunConfig().override({"encoder.name": "world-text-large", "mode": "supervised",
                                "loss.con_g": False})
    with pytest.raises(UserError, match="world-text-large.*is not built"):
        load_text_encoder(cfg, workspace)


def _tiny_roberta(folder):
    """A tiny RoBERTa with a byte-level BPE vocabulary, saved as transformers saves models."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast, RobertaConfig, RobertaModel

    bpe = ByteLevelBPETokenizer()
    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    bpe.train_from_iterator(["a red circle", "a blue square on a grey background"] * 20,
                            vocab_size=300, special_tokens=specials)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, bos_token="<s>",
                                        pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
                                        mask_token="<mask>")
    tokenizer.save_pretrained(folder)
    torch.manual_seed(0)
    model = RobertaModel(RobertaConfig(vocab_size=len(tokenizer), hidden_size=24,
                                       num_hidden_layers=1, num_attention_heads=2,
                                       intermediate_size=48, max_position_embeddings=160,
                                       pad_token_id=tokenizer.pad_token_id))
    model.save_pretrained(folder)


def test_roberta_from_a_local_folder(tmp_path, workspace, one_torch_thread):
    _tiny_roberta(tmp_path)
    cfg = RunConfig().override({"encoder.name": "roberta-base", "encoder.path": str(tmp_path),
                                "mode": "supervised", "loss.con_g": False})
    encoder = load_text_encoder(cfg, workspace)
    feats = encoder.encode_texts(["a red circle", "a blue square on a grey background"])
    assert feats.shape == (2, 24) and encoder.dim == 24
    assert torch.allclose(feats.norm(dim=1), torch.ones(2), atol=1e-5)
    assert not torch.allclose(feats[0], feats[1])
    cls = load_text_encoder(cfg.override({"encoder.pooling": "cls"}), workspace)
    assert not torch.allclose(cls.encode_texts(["a red circle"]), feats[:1])


def test_a_missing_roberta_names_the_path_and_how_to_fetch_it(tmp_path, workspace, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = RunConfig().override({"encoder.name": "roberta-large", "mode": "supervised",
                                "loss.con_g": False, "encoder.path": str(tmp_path / "none")})
    with pytest.raises(UserError) as info:
        load_text_encoder(cfg, workspace)
    message = str(info.value)
    assert str(tmp_path / "none") in message and "huggingface-cli download" in message


def test_supervised_training_on_a_text_only_encoder(workspace, tmp_path, one_torch_thread,
                                                    monkeypatch):
    import sys
    from pathlib import Path

    import lafite.encoders.world_text as wt
    from lafite.encoders.world_text import WorldTextConfig, pretrain_world_text
    from lafite.train import TrainCallbacks, load_generator, train_run

    sys.path.insert(0, str(Path(__file__).parent))
    from _train_smoke import smoke_config, tiny_clip

    tiny = WorldTextConfig(width=24, layers=1, heads=2, captions_per_domain=50, steps=5,
                           batch=16, probe_train=60, probe_test=30)
    monkeypatch.setitem(wt.WORLD_TEXT_ENCODERS, "world-text-small", tiny)
    pretrain_world_text(workspace, "world-text-small", progress=False, config=tiny)
    cfg = smoke_config(**{"mode": "supervised", "encoder.name": "world-text-small",
                          "loss.con_g": False, "train.kimg": 0.008})
    result = train_run(cfg, tmp_path / "run", workspace, TrainCallbacks())
    g_ema, saved_cfg = load_generator(result.final_checkpoint)
    assert saved_cfg.encoder.name == "world-text-small"
    assert g_ema.mapping is not None
    saved = torch.load(result.final_checkpoint, map_location="cpu", weights_only=True)
    assert saved["cond_dim"] == 24  # sized from the encoder, not from a CLIP
    # Fine-tuning a CLIP-conditioned run from it: both dimensions are named.
    clip_run = smoke_config(**{"train.init_checkpoint": str(result.final_checkpoint)})
    with pytest.raises(UserError, match=r"condition dimension 24 \(encoder 'world-text-small'\); "
                                        r"this run's encoder 'clip' gives dimension 32"):
        train_run(clip_run, tmp_path / "other", workspace, clip=tiny_clip())


def test_world_text_encoders_are_jobs_that_name_their_runs():
    from lafite import jobs
    from lafite.encoders.world_text import world_text_key

    cfg = RunConfig().override({"encoder.name": "world-text-large", "mode": "supervised",
                                "loss.con_g": False, "data.dataset": "world", "clip.name": "world",
                                "data.resolution": 16, "scale": "smoke"})
    needed = {job.kind: job for job in jobs.needed_jobs(cfg)}
    assert needed["world-text"].name == "world-text-large"
    assert needed["world-text"].builder_key == world_text_key("world-text-large")
    assert jobs.run_job_hashes(cfg)["world-text-large"] == world_text_key("world-text-large")
    small = cfg.override({"encoder.name": "world-text-small"})
    from lafite.spec import run_hash

    assert run_hash(cfg, jobs.run_job_hashes(cfg)) != run_hash(small, jobs.run_job_hashes(small))
