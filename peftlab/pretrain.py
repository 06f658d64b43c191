"""Create the tiny world's base model: train a BPE tokenizer, pretrain a small Llama, save it.

``python -m peftlab pretrain`` re-creates ``peftlab/base/`` from nothing but this package, in about
ten CPU minutes. The corpus of every pass is fresh: new random biographies of the source people
(other templates, other sentence orders), all their question/answer pairs, and a random quarter of
the English training paragraphs, packed into blocks of ``block_size`` tokens. Seeds are fixed, so
the same command on the same software gives the same weights.

The model is a Llama (RMSNorm, rotary positions, SwiGLU MLP) with bias terms in attention and MLP
(``attention_bias``, ``mlp_bias``) so that BitFit has biases to train, and tied input/output embeddings.
"""
from __future__ import annotations

import json
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from tqdm.auto import tqdm
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from . import world
from .data import encode_example, pack
from .models import BASE_DIR
from .train import warmup_factor
from .utils import set_seed

SPECIAL_TOKENS = ["<|endoftext|>", "<|pad|>"]


@dataclass
class PretrainConfig:
    vocab_size: int = 2048  # BPE vocabulary; digits are always single tokens
    hidden_size: int = 256  # model width d
    intermediate_size: int = 688  # SwiGLU inner width (~ 8/3 d)
    num_layers: int = 4  # transformer blocks
    num_heads: int = 4  # attention heads (head dim = d / heads)
    block_size: int = 128  # tokens per packed training sequence
    batch_size: int = 32  # sequences per step
    steps: int = 1000  # optimizer steps
    lr: float = 3e-3  # peak AdamW learning rate (cosine decay, linear warm-up)
    warmup: int = 50  # warm-up steps
    weight_decay: float = 0.01  # AdamW weight decay
    english_fraction: float = 0.25  # share of the English training paragraphs in each pass
    seed: int = 0  # seeds tokenizer corpus, initialisation and data order


def tokenizer_corpus(seed: int = 0) -> list[str]:
    """Text the tokenizer is trained on: every kind of text the course uses."""
    rng = random.Random(seed)
    texts = [world.biography(p, rng) for p in world.source_people() + world.new_people()]
    texts += [ex.prompt + ex.target for ex in world.qa_examples(world.source_people())]
    # Task text exactly as when the committed base was made (the tasks' training generators have since
    # been split into train/validation/test), so `pretrain` still re-creates the same tokenizer.
    sentiment_rng = random.Random(seed)
    task_text = (world.knowledge_documents(world.new_people(), n_bios_each=4, seed=seed)[:200]
                 + world.get_task("addition").train_examples(200, seed)
                 + [world.sentiment_example(sentiment_rng) for _ in range(200)])
    texts += [ex.prompt + ex.target for ex in task_text]
    texts += world.english_paragraphs("train")
    return texts


def train_tokenizer(vocab_size: int = 2048, seed: int = 0) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer; digits split individually so numbers have a regular form."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(tokenizer_corpus(seed), trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                                   pad_token="<|pad|>", model_max_length=4096)


def model_config(cfg: PretrainConfig, tokenizer) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads, num_key_value_heads=cfg.num_heads,
        max_position_embeddings=256, attention_bias=True, mlp_bias=True, tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def pretraining_blocks(tokenizer, epoch: int, block_size: int, seed: int, english_fraction: float = 0.25) -> torch.Tensor:
    """One pass of the corpus, freshly augmented for ``epoch``, packed into blocks."""
    rng = random.Random(seed * 100_003 + epoch)
    people = world.source_people()
    docs = [world.Example("", world.biography(p, rng)) for p in people]
    docs += world.qa_examples(people)
    english = world.english_paragraphs("train")
    docs += [world.Example("", t) for t in rng.sample(english, int(len(english) * english_fraction))]
    rng.shuffle(docs)
    return pack([encode_example(tokenizer, d, max_length=10_000)[0] for d in docs], block_size)


def pretrain(cfg: PretrainConfig = PretrainConfig(), out_dir: Path = BASE_DIR, progress: bool = True) -> dict:
    """Train the tokenizer and the base model, save both to ``out_dir``, return a report."""
    torch.use_deterministic_algorithms(True)
    set_seed(cfg.seed)
    start = time.time()
    tokenizer = train_tokenizer(cfg.vocab_size, cfg.seed)
    set_seed(cfg.seed)
    model = LlamaForCausalLM(model_config(cfg, tokenizer))
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.95))

    def lr_at(step: int) -> float:  # warm-up, then cosine decay to 5% of the peak
        return cfg.lr * warmup_factor(step, cfg.warmup, cfg.steps, floor=0.05)

    gen = torch.Generator().manual_seed(cfg.seed)
    epoch, blocks, cursor = 0, None, 0
    losses = []
    model.train()
    bar = tqdm(range(cfg.steps), desc="pretrain", disable=not progress)
    for step in bar:
        if blocks is None or cursor + cfg.batch_size > len(blocks):
            blocks = pretraining_blocks(tokenizer, epoch, cfg.block_size, cfg.seed, cfg.english_fraction)
            blocks = blocks[torch.randperm(len(blocks), generator=gen)]
            epoch, cursor = epoch + 1, 0
        batch = blocks[cursor:cursor + cfg.batch_size]
        cursor += cfg.batch_size
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step)
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
        if step % 20 == 0:
            bar.set_postfix(loss=f"{sum(losses[-20:]) / len(losses[-20:]):.3f}", epoch=epoch)
    torch.use_deterministic_algorithms(False)

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    report = base_report(model, tokenizer)
    report.update(pretrain_seconds=round(time.time() - start, 1), epochs=epoch,
                  final_loss=round(sum(losses[-20:]) / 20, 4), config=asdict(cfg),
                  parameters=sum(p.numel() for p in model.parameters()))
    (out_dir / "pretrain_report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def base_report(model, tokenizer) -> dict:
    """What the base knows: attribute recall of the source people (overall and per attribute), held-out
    English perplexity, and the target tasks' metrics before any fine-tuning."""
    from . import evaluate

    people = world.source_people()
    report = evaluate.source_metrics(model, tokenizer)
    report["recall_by_attribute"] = evaluate.recall_by_attribute(model, tokenizer, people)
    report["tasks_before"] = {name: evaluate.task_metric(model, tokenizer, task)
                              for name, task in world.TASKS.items()}
    return report
