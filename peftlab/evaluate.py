"""Evaluation: task metrics, source metrics, and learning vs forgetting.

- ``exact_match``: greedy decoding after the prompt reproduces the target token for token. Computed
  with one teacher-forced forward pass: greedy decoding emits the target iff, at every target
  position, the argmax of the logits given the true prefix is the true next token.
- ``choice_accuracy``: the choice with the highest total log-probability is the target.
- ``perplexity``: exp of the mean token negative log-likelihood on held-out English paragraphs.

Learning = target metric after - before; forgetting = source metric before - after (for
perplexity, where lower is better, forgetting is after - before). Both are always reported
together (Biderman et al. 2024, "LoRA Learns Less and Forgets Less").
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from . import world
from .data import IGNORE_INDEX, collate, encode_example
from .world import Example


def _forward_batches(model, tokenizer, examples: Sequence[Example], batch_size: int):
    device = next(model.parameters()).device
    for start in range(0, len(examples), batch_size):
        chunk = examples[start:start + batch_size]
        batch = collate([encode_example(tokenizer, ex) for ex in chunk], tokenizer.pad_token_id)
        batch = {k: v.to(device) for k, v in batch.items()}
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        # logits at position t predict token t+1
        yield chunk, logits[:, :-1].float(), batch["labels"][:, 1:]


@torch.no_grad()
def exact_match(model, tokenizer, examples: Sequence[Example], batch_size: int = 64) -> float:
    """Fraction of examples whose target greedy decoding reproduces exactly (the eos is not required)."""
    was_training = model.training
    model.eval()
    hits = 0
    for _, logits, labels in _forward_batches(model, tokenizer, examples, batch_size):
        # the final label of each row is the eos we append; the target's own "\n" already ends it
        mask = labels != IGNORE_INDEX
        last = mask.long().cumsum(1).eq(mask.sum(1, keepdim=True)) & mask
        mask = mask & ~last
        correct = (logits.argmax(-1) == labels) | ~mask
        hits += int(correct.all(dim=1).sum())
    model.train(was_training)
    return hits / max(len(examples), 1)


@torch.no_grad()
def sequence_logprobs(model, tokenizer, examples: Sequence[Example], batch_size: int = 64) -> torch.Tensor:
    """Sum of log-probabilities of each example's target tokens (without the appended eos)."""
    was_training = model.training
    model.eval()
    scores = []
    for _, logits, labels in _forward_batches(model, tokenizer, examples, batch_size):
        mask = labels != IGNORE_INDEX
        last = mask.long().cumsum(1).eq(mask.sum(1, keepdim=True)) & mask
        mask = mask & ~last
        logp = torch.log_softmax(logits, -1).gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        scores.append((logp * mask).sum(1).cpu())
    model.train(was_training)
    return torch.cat(scores) if scores else torch.zeros(0)


def choice_accuracy(model, tokenizer, examples: Sequence[Example], batch_size: int = 64) -> float:
    """Fraction of examples whose target has the highest log-probability among ``choices``."""
    expanded = [Example(ex.prompt, c) for ex in examples for c in ex.choices]
    scores = sequence_logprobs(model, tokenizer, expanded, batch_size)
    hits, offset = 0, 0
    for ex in examples:
        k = len(ex.choices)
        best = int(scores[offset:offset + k].argmax())
        hits += ex.choices[best] == ex.target
        offset += k
    return hits / max(len(examples), 1)


@torch.no_grad()
def perplexity(model, tokenizer, texts: Sequence[str], max_length: int = 256, batch_size: int = 16) -> float:
    """Token-level perplexity of ``texts`` (each a document, cut to ``max_length`` tokens)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total_nll, total_tokens = 0.0, 0
    for start in range(0, len(texts), batch_size):
        encoded = [encode_example(tokenizer, Example("", t), max_length) for t in texts[start:start + batch_size]]
        batch = {k: v.to(device) for k, v in collate(encoded, tokenizer.pad_token_id).items()}
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
        labels = batch["labels"][:, 1:]
        nll = torch.nn.functional.cross_entropy(logits.float().transpose(1, 2), labels,
                                                ignore_index=IGNORE_INDEX, reduction="sum")
        total_nll += float(nll)
        total_tokens += int((labels != IGNORE_INDEX).sum())
    model.train(was_training)
    return math.exp(total_nll / max(total_tokens, 1))


def task_metric(model, tokenizer, task: world.Task, examples: Sequence[Example] | None = None,
                split: str = "test") -> float:
    """The task's metric on ``examples`` (default: its held-out ``split``, ``"test"`` or ``"validation"``)."""
    examples = task.eval_examples(split=split) if examples is None else examples
    if task.metric == "exact_match":
        return exact_match(model, tokenizer, examples)
    if task.metric == "accuracy":
        return choice_accuracy(model, tokenizer, examples)
    raise ValueError(f"task {task.name!r} has unknown metric {task.metric!r}; expected exact_match or accuracy")


# Source metrics: what the base knows and fine-tuning may destroy. Higher is better except perplexity.
SOURCE_METRICS = ("source_recall", "english_ppl")
LOWER_IS_BETTER = {"english_ppl"}


# Paragraphs of held-out English the perplexity probe reads: enough for a stable number, few enough
# that evaluating every method of the comparison stays fast.
N_PPL_PARAGRAPHS = 100


def source_metrics(model, tokenizer, n_people: int | None = None,
                   n_paragraphs: int | None = N_PPL_PARAGRAPHS, *, model_name: str = "tiny") -> dict[str, float]:
    """Recall of the pretraining people's attributes (QA exact match) and held-out English perplexity
    (on the first ``n_paragraphs`` held-out paragraphs; ``None`` for all of them).

    A real base (``model_name`` "smollm2") never met the invented people: its source knowledge is the
    probe of real facts it answers (``peftlab.realworld``; ``n_people`` then counts facts)."""
    from . import realworld

    if model_name in realworld.REAL_MODELS:
        return realworld.source_metrics(model, tokenizer, n_people, realworld.N_PPL_PARAGRAPHS
                                        if n_paragraphs == N_PPL_PARAGRAPHS else n_paragraphs)
    people = world.source_people()[:n_people]
    return {
        "source_recall": exact_match(model, tokenizer, world.qa_examples(people)),
        "english_ppl": perplexity(model, tokenizer, world.english_paragraphs("heldout")[:n_paragraphs]),
    }


def recall_by_attribute(model, tokenizer, people: Sequence[world.Person]) -> dict[str, float]:
    return {a: exact_match(model, tokenizer, [world.qa_example(p, a) for p in people]) for a in world.ATTRIBUTES}


@dataclass
class Evaluation:
    """Metrics of one model on one target task and the source knowledge."""

    target: float  # the task's metric on held-out examples (the test split unless asked otherwise)
    source: dict[str, float]
    memorization: float | None = None  # knowledge tasks: recall of the trained questions


def evaluate_model(model, tokenizer, task: world.Task, n_people: int | None = None, *,
                   n_target: int | None = None, n_paragraphs: int | None = N_PPL_PARAGRAPHS,
                   split: str = "test", model_name: str = "tiny") -> Evaluation:
    """The target metric on the task's held-out ``split`` (its first ``n_target`` examples; default:
    the task's standard evaluation size), memorization for knowledge tasks, and the source metrics
    (``source_metrics``); smaller numbers for quicker samples."""
    examples = task.eval_examples(split=split) if n_target is None else task.eval_examples(n_target, split=split)
    trained = task.memorization_examples()
    return Evaluation(task_metric(model, tokenizer, task, examples),
                      source_metrics(model, tokenizer, n_people, n_paragraphs, model_name=model_name),
                      exact_match(model, tokenizer, trained) if trained else None)


def learning_and_forgetting(before: Evaluation, after: Evaluation) -> dict[str, float]:
    """``learning`` = target after - before; ``forgetting_<metric>`` = how much worse each source
    metric got (before - after, or after - before for lower-is-better metrics). Positive = forgot."""
    out = {"learning": after.target - before.target}
    for name, value_before in before.source.items():
        value_after = after.source[name]
        out[f"forgetting_{name}"] = (value_after - value_before if name in LOWER_IS_BETTER
                                     else value_before - value_after)
    return out
