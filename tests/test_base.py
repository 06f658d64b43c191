"""The embedded base model: committed in Hugging Face format, small, Llama with biases, and it
genuinely knows its world. Pretraining is deterministic (checked on a few steps of a smaller model).
CPU only, under a minute."""
import json

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaForCausalLM

from peftlab import evaluate, world
from peftlab.models import BASE_DIR, load_base


def test_committed_in_hf_format_and_small():
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        assert (BASE_DIR / name).exists(), name
    size = sum(f.stat().st_size for f in BASE_DIR.iterdir())
    assert size <= 25 * 2**20, f"base is {size / 2**20:.1f} MiB, limit 25"
    model = AutoModelForCausalLM.from_pretrained(BASE_DIR)
    assert isinstance(model, LlamaForCausalLM)
    assert 1e6 < model.num_parameters() < 2e7
    biases = [n for n, _ in model.named_parameters() if n.endswith(".bias")]
    assert any("self_attn.q_proj.bias" in n for n in biases) and any("mlp.up_proj.bias" in n for n in biases)


def test_base_knows_its_world(tiny_base):
    model, tok = tiny_base
    metrics = evaluate.source_metrics(model, tok)
    assert metrics["source_recall"] >= 0.80, metrics
    report = json.loads((BASE_DIR / "pretrain_report.json").read_text())
    assert report["source_recall"] == pytest.approx(metrics["source_recall"], abs=1e-9)
    assert report["english_ppl"] == pytest.approx(metrics["english_ppl"], rel=1e-3)
    # it has not seen the target tasks: new people are unknown, additions are not computed
    assert evaluate.exact_match(model, tok, world.get_task("new_people").eval_examples()) < 0.2
    assert evaluate.exact_match(model, tok, world.get_task("addition").eval_examples(100)) < 0.2


def test_pretraining_is_deterministic(tmp_path):
    from peftlab.pretrain import PretrainConfig, pretrain

    cfg = PretrainConfig(hidden_size=32, intermediate_size=64, num_layers=1, num_heads=2, steps=3, batch_size=4,
                         vocab_size=600)
    pretrain(cfg, tmp_path / "a", progress=False)
    pretrain(cfg, tmp_path / "b", progress=False)
    a = load_base(str(tmp_path / "a"))[0].state_dict()
    b = load_base(str(tmp_path / "b"))[0].state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (tmp_path / "a" / "tokenizer.json").read_text() == (tmp_path / "b" / "tokenizer.json").read_text()


def test_missing_base_says_how_to_make_it(monkeypatch, tmp_path):
    import peftlab.models as models

    monkeypatch.setattr(models, "BASE_DIR", tmp_path)
    with pytest.raises(FileNotFoundError, match="python -m peftlab pretrain"):
        models.load_base("tiny")
