"""From ``Example`` to tensors: tokenization with a document marker, loss masks, padding, packing.

Every sequence the model sees starts with the ``<|endoftext|>`` token (the document marker), both in
pretraining and fine-tuning, so a prompt at evaluation looks exactly like a document start in training.
Labels are ``-100`` (ignored by the loss) on the marker, the prompt and the padding.
"""
from __future__ import annotations

import random
from collections.abc import Iterator, Sequence

import torch

from .world import Example

IGNORE_INDEX = -100


def encode_example(tokenizer, example: Example, max_length: int = 256) -> tuple[list[int], list[int]]:
    """Token ids and labels for one example: ``[bos] prompt target [eos]``, loss on target and eos."""
    prompt_ids = [tokenizer.bos_token_id] + tokenizer.encode(example.prompt, add_special_tokens=False)
    target_ids = tokenizer.encode(example.target, add_special_tokens=False) + [tokenizer.eos_token_id]
    input_ids = (prompt_ids + target_ids)[:max_length]
    labels = ([IGNORE_INDEX] * len(prompt_ids) + target_ids)[:max_length]
    return input_ids, labels


def collate(encoded: Sequence[tuple[list[int], list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a list of ``(input_ids, labels)`` into a batch with an attention mask."""
    width = max(len(ids) for ids, _ in encoded)
    input_ids = torch.full((len(encoded), width), pad_id, dtype=torch.long)
    labels = torch.full((len(encoded), width), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(encoded), width), dtype=torch.long)
    for row, (ids, labs) in enumerate(encoded):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        labels[row, : len(labs)] = torch.tensor(labs)
        attention_mask[row, : len(ids)] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def _encoded_batches(encoded: Sequence, batch_size: int, seed: int | None) -> Iterator[list]:
    rng = random.Random(seed)
    order = list(range(len(encoded)))
    while True:
        if seed is not None:
            rng.shuffle(order)
        for start in range(0, len(order) - batch_size + 1, batch_size):
            yield [encoded[i] for i in order[start:start + batch_size]]
        if len(order) < batch_size:
            yield [encoded[i] for i in order]


def batches(tokenizer, examples: Sequence[Example], batch_size: int, seed: int | None = 0,
            max_length: int = 256, replay: Sequence[Example] = (), replay_fraction: float = 0.0
            ) -> Iterator[dict[str, torch.Tensor]]:
    """Endless stream of shuffled, padded batches (reshuffled every pass; ``seed=None`` keeps order).

    With ``replay_fraction`` > 0, ``round(replay_fraction * batch_size)`` rows of every batch come from
    ``replay`` (source data the base was trained on, mixed in against forgetting) and the rest from
    ``examples``; each stream is shuffled on its own.
    """
    encoded = [encode_example(tokenizer, ex, max_length) for ex in examples]
    n_replay = round(replay_fraction * batch_size)
    if not n_replay:
        for rows in _encoded_batches(encoded, batch_size, seed):
            yield collate(rows, tokenizer.pad_token_id)
        return
    if not replay or n_replay >= batch_size:
        raise ValueError(f"replay_fraction {replay_fraction} needs replay examples and must leave room "
                         f"for target rows in a batch of {batch_size}")
    replayed = [encode_example(tokenizer, ex, max_length) for ex in replay]
    target_stream = _encoded_batches(encoded, batch_size - n_replay, seed)
    replay_stream = _encoded_batches(replayed, n_replay, None if seed is None else seed + 1)
    for rows, replay_rows in zip(target_stream, replay_stream):
        yield collate(rows + replay_rows, tokenizer.pad_token_id)


def pack(token_streams: Sequence[list[int]], block_size: int) -> torch.Tensor:
    """Concatenate documents (each already starting with the marker) and cut into full blocks."""
    flat = [t for stream in token_streams for t in stream]
    n_blocks = len(flat) // block_size
    return torch.tensor(flat[: n_blocks * block_size], dtype=torch.long).view(n_blocks, block_size)
