"""Sparse fine-tuning with a fixed mask (Fisher and random): the Fisher equals a naive per-example loop;
masks keep exactly k entries; after training under AdamW (weight decay on) every weight outside the
mask is bitwise the base; a masked gradient alone leaks under weight decay (the restore is needed); the
saved sparse difference reproduces the fine-tuned model exactly. Run:
``.venv/bin/pytest tests/test_sparse.py``. CPU only, about a minute."""
import conftest
import pytest
import torch

from peftlab import Hook, TrainConfig, apply_method, count_parameters, train, world
from peftlab.data import collate, encode_example
from peftlab.methods import sparse
from peftlab.state import model_hooks


def tiny_llama(vocab_size: int):
    return conftest.tiny_llama(vocab_size=vocab_size, seed=0, max_position_embeddings=2048)


def naive_fisher(model, tokenizer, examples):
    """One backward pass per example of -log p(target | prompt), via the model's own mean loss."""
    fisher = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    model.eval()
    for ex in examples:
        batch = collate([encode_example(tokenizer, ex)], tokenizer.pad_token_id)
        model.zero_grad()
        out = model(input_ids=batch["input_ids"], labels=batch["labels"])
        n_target_tokens = int((batch["labels"][:, 1:] != -100).sum())
        (out.loss * n_target_tokens).backward()  # mean over target tokens -> sum = sequence NLL
        for n, p in model.named_parameters():
            fisher[n] += p.grad ** 2
    return fisher


def bitwise_changed(model, base):
    return {n: sparse.bits(p.detach()) != sparse.bits(base[n]) for n, p in model.named_parameters()}


def snapshot(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("vectorized", [False, True])
def test_fisher_equals_a_naive_per_example_loop(tiny_base, vectorized):
    _, tokenizer = tiny_base
    model = tiny_llama(len(tokenizer))
    examples = world.get_task("addition").train_examples(5, seed=3) + world.get_task("new_people").train_examples(3)
    expected = naive_fisher(model, tokenizer, examples)
    model.requires_grad_(False)  # the Fisher needs gradients of every weight, frozen or not
    got = sparse.fisher_information(model, tokenizer, examples, batch_size=3, vectorized=vectorized)
    assert not any(p.requires_grad for p in model.parameters())  # and leaves the flags as they were
    assert set(got) == set(expected)
    for name in expected:
        # float32 rounding: different summation orders (vmap batches, padded vs unpadded sequences)
        torch.testing.assert_close(got[name], expected[name], rtol=1e-4, atol=1e-6 * float(expected[name].max()))


def test_top_k_mask_keeps_exactly_k_of_the_largest():
    torch.manual_seed(1)
    scores = {"a": torch.rand(40, 30), "b": torch.rand(100) * 2, "c": torch.rand(7)}
    total = sum(s.numel() for s in scores.values())
    masks = sparse.top_k_mask(scores, 0.05)
    k = round(0.05 * total)
    assert sparse.mask_size(masks) == k
    kept = torch.cat([s[m] for s, m in zip(scores.values(), masks.values())])
    dropped = torch.cat([s[~m] for s, m in zip(scores.values(), masks.values())])
    assert kept.min() >= dropped.max()
    per_tensor = sparse.top_k_mask(scores, 0.05, per_tensor=True)
    for name, s in scores.items():
        assert int(per_tensor[name].sum()) == max(1, round(0.05 * s.numel()))
        assert s[per_tensor[name]].min() >= s[~per_tensor[name]].max()


def test_random_mask_has_the_fisher_masks_size():
    params = {"a": torch.zeros(50, 20), "b": torch.zeros(300)}
    scores = {"a": torch.rand(50, 20), "b": torch.rand(300)}
    for per_tensor in (False, True):
        fisher_mask = sparse.top_k_mask(scores, 0.1, per_tensor)
        rnd = sparse.random_mask(params, 0.1, per_tensor, seed=0)
        assert sparse.mask_size(rnd) == sparse.mask_size(fisher_mask)
        if per_tensor:
            assert all(int(rnd[n].sum()) == int(fisher_mask[n].sum()) for n in params)
    assert not torch.equal(sparse.random_mask(params, 0.1, seed=0)["a"], sparse.random_mask(params, 0.1, seed=1)["a"])


def test_registered_and_idempotent(fresh_base):
    model, tokenizer = fresh_base
    apply_method(model, "fisher", n_samples=8, task="addition")
    masks = {n: m.clone() for n, m in sparse.get_mask(model).items()}
    counts = count_parameters(model)
    apply_method(model, "fisher", n_samples=8, task="addition")
    assert len(model_hooks(model)) == 1
    assert count_parameters(model) == counts
    assert all(torch.equal(masks[n], m) for n, m in sparse.get_mask(model).items())
    assert sparse.mask_size(masks) == round(0.005 * counts.total)
    # every tensor the mask touches trains (dense), every other one is frozen
    assert {n for n, p in model.named_parameters() if p.requires_grad} == set(masks)


@pytest.mark.parametrize("method", ["fisher", "random_mask"])
def test_training_changes_nothing_outside_the_mask(fresh_base, method):
    model, tokenizer = fresh_base
    base = snapshot(model)
    overrides = {"n_samples": 8, "task": "addition"} if method == "fisher" else {}
    apply_method(model, method, keep_fraction=0.01, **overrides)
    masks = sparse.get_mask(model)
    examples = world.get_task("addition").train_examples(64, seed=0)
    # AdamW with weight decay and gradient clipping: both would move masked weights if the masking leaked
    train(model, tokenizer, examples, TrainConfig(steps=3, batch_size=8, lr=1e-2, weight_decay=0.1), progress=False)
    changed = bitwise_changed(model, base)
    n_changed = 0
    for name, diff in changed.items():
        outside = diff & ~masks[name] if name in masks else diff
        assert not outside.any(), f"{int(outside.sum())} weights of {name} outside the mask changed"
        n_changed += int(diff.sum())
    assert 0 < n_changed <= sparse.mask_size(masks)


def test_the_optimizer_sees_only_masked_gradients(fresh_base):
    """Gradients are masked inside backward: what clipping and AdamW's moments see is zero outside the mask."""
    model, tokenizer = fresh_base
    apply_method(model, "random_mask", keep_fraction=0.01)
    masks = sparse.get_mask(model)

    class RecordGradients(Hook):  # runs before the mask hook's own before_step
        leaked = None

        def before_step(self, model, step, optimizer):
            self.leaked = sum(int((p.grad[~masks[n]] != 0).sum()) for n, p in model.named_parameters()
                              if p.grad is not None)
            self.nonzero = sum(int((p.grad != 0).sum()) for p in model.parameters() if p.grad is not None)

    recorder = RecordGradients()
    examples = world.get_task("addition").train_examples(16, seed=0)
    train(model, tokenizer, examples, TrainConfig(steps=1, batch_size=8), hooks=[recorder], progress=False)
    assert recorder.leaked == 0 and recorder.nonzero > 0


def test_a_masked_gradient_alone_leaks_under_weight_decay(fresh_base):
    """Why ``restore_outside`` exists: AdamW's decoupled weight decay moves every weight it holds."""
    model, tokenizer = fresh_base
    base = snapshot(model)
    apply_method(model, "random_mask", keep_fraction=0.01, restore_outside=False)
    masks = sparse.get_mask(model)
    examples = world.get_task("addition").train_examples(32, seed=0)
    train(model, tokenizer, examples, TrainConfig(steps=2, batch_size=8, lr=1e-2, weight_decay=0.1), progress=False)
    leaked = sum(int((diff & ~masks[n]).sum()) for n, diff in bitwise_changed(model, base).items() if n in masks)
    assert leaked > 0


def test_sparse_difference_reproduces_the_fine_tuned_model(fresh_base, tiny_base, tmp_path):
    model, tokenizer = fresh_base
    apply_method(model, "random_mask", keep_fraction=0.002)
    examples = world.get_task("addition").train_examples(32, seed=0)
    train(model, tokenizer, examples, TrainConfig(steps=2, batch_size=8, lr=1e-2), progress=False)
    kept = sparse.mask_size(sparse.get_mask(model))
    n_bytes = sparse.save_sparse_difference(model, tmp_path / "diff.safetensors")
    assert n_bytes < 8 * kept + 64 * 1024  # int32 index + fp32 value per entry, plus the header
    assert n_bytes < sum(p.numel() * 4 for p in model.parameters()) / 50
    from peftlab import load_base

    restored, _ = load_base("tiny")
    assert not all(torch.equal(a, b) for a, b in zip(restored.parameters(), model.parameters()))
    sparse.load_sparse_difference(restored, tmp_path / "diff.safetensors")
    for (name, a), b in zip(model.named_parameters(), restored.parameters()):
        assert torch.equal(sparse.bits(a.detach()), sparse.bits(b.detach())), name
    ids = torch.tensor([encode_example(tokenizer, examples[0])[0]])
    assert torch.equal(model(ids).logits, restored(ids).logits)
    # against an explicit base as well: the same entries
    assert sparse.sparse_difference(model, tiny_base[0]).keys() == sparse.sparse_difference(model).keys()


def test_costs_match_the_training_loops_tensor_accounting(fresh_base):
    model, tokenizer = fresh_base
    apply_method(model, "random_mask", keep_fraction=0.005)
    costs = sparse.mask_costs(model)
    examples = world.get_task("sentiment").train_examples(16, seed=0)
    result = train(model, tokenizer, examples, TrainConfig(steps=1, batch_size=8), progress=False)
    assert result.grad_bytes == costs["dense_grad"]  # the gradient is dense: the mask saves none of it
    n_tensors = len(sparse.get_mask(model))
    assert result.optimizer_state_bytes == costs["dense_adam"]  # the moments; AdamW's step counters are not per-parameter
    assert n_tensors == len(sparse.get_mask(model))
    assert costs["sparse_adam"] < costs["dense_adam"] / 10
    assert costs["sparse_checkpoint"] == costs["kept"] * 8


def test_fisher_takes_examples_and_tokenizer_for_a_model_without_a_folder(tiny_base):
    _, tokenizer = tiny_base
    model = tiny_llama(len(tokenizer))
    examples = world.get_task("addition").train_examples(6)
    with pytest.raises(ValueError, match="tokenizer="):
        apply_method(model, "fisher", examples=examples)
    apply_method(model, "fisher", examples=examples, tokenizer=tokenizer, keep_fraction=0.1, per_tensor=True)
    masks = sparse.get_mask(model)
    for name, p in model.named_parameters():
        assert int(masks[name].sum()) == max(1, round(0.1 * p.numel()))


def test_excluded_tensors_never_train_and_sizes_still_match(tiny_base):
    _, tokenizer = tiny_base
    examples = world.get_task("addition").train_examples(4)
    sizes = {}
    for method, options in [("fisher", {"examples": examples, "tokenizer": tokenizer}), ("random_mask", {})]:
        model = tiny_llama(len(tokenizer))
        apply_method(model, method, keep_fraction=0.05, exclude=("embed_tokens",), **options)
        masks = sparse.get_mask(model)
        assert "model.embed_tokens.weight" not in masks  # an empty mask: the tensor is frozen
        assert not model.model.embed_tokens.weight.requires_grad
        sizes[method] = sparse.mask_size(masks)
    eligible = sum(p.numel() for n, p in tiny_llama(len(tokenizer)).named_parameters() if "embed_tokens" not in n)
    assert sizes["fisher"] == sizes["random_mask"] == round(0.05 * eligible)
    with pytest.raises(ValueError, match="leaves no parameter"):
        apply_method(tiny_llama(len(tokenizer)), "random_mask", exclude=("model",))


def test_gpt2_conv1d_model_trains_inside_its_fisher_mask(tiny_base):
    """Masks are per parameter, so any architecture works: here GPT-2 (Conv1D projections, tied head)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    _, tokenizer = tiny_base
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_embd=32, n_layer=2, n_head=4, n_positions=64,
                                       resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0))
    examples = world.get_task("addition").train_examples(16, seed=1)
    base = snapshot(model)
    apply_method(model, "fisher", examples=examples, tokenizer=tokenizer, n_samples=4, keep_fraction=0.02)
    masks = sparse.get_mask(model)
    train(model, tokenizer, examples, TrainConfig(steps=2, batch_size=8, lr=1e-2, weight_decay=0.1), progress=False)
    changed = bitwise_changed(model, base)
    assert not any((diff & ~masks[n]).any() if n in masks else diff.any() for n, diff in changed.items())
    assert 0 < sum(int(d.sum()) for d in changed.values()) <= sparse.mask_size(masks)
