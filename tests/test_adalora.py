"""AdaLoRA: the budget schedule and the kept triplets against Hugging Face peft, the orthogonality
regularizer on a hand-computed case (the paper's squared norm and peft's unsquared one), masked
triplets adding nothing, and the final kept rank equal to the budget after training through the loop.

Run: ``OMP_NUM_THREADS=1 .venv/bin/pytest tests/test_adalora.py``. CPU only, about ten seconds.
"""
import copy
import math
import warnings

import conftest
import pytest
import torch

from peftlab import TrainConfig, apply_method, train, world
from peftlab.methods.adalora import (
    AdaLoraConfig,
    SVDLinear,
    adalora_layers,
    budget_schedule,
    get_rank_allocator,
    kept_parameters,
    orthogonality_regularizer,
    rank_pattern,
)
from peftlab.state import model_hooks

peft = pytest.importorskip("peft")
from peft.tuners.adalora import RankAllocator as PeftRankAllocator  # noqa: E402

# (init_r, target_r, tinit, tfinal, deltaT, total_step, matrices)
SCHEDULES = [(12, 8, 0, 0, 1, 50, 28), (12, 8, 10, 20, 1, 100, 28), (6, 2, 3, 5, 4, 40, 7),
             (16, 4, 25, 30, 10, 300, 12), (8, 8, 1, 1, 1, 10, 3), (4, 1, 0, 1, 3, 7, 1)]


def peft_config(init_r, target_r, tinit, tfinal, deltaT, total_step, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return peft.AdaLoraConfig(init_r=init_r, target_r=target_r, tinit=tinit, tfinal=tfinal, deltaT=deltaT,
                                  total_step=total_step, **kwargs)


@pytest.mark.parametrize("init_r,target_r,tinit,tfinal,deltaT,total_step,matrices", SCHEDULES)
def test_budget_schedule_equals_peft_step_by_step(init_r, target_r, tinit, tfinal, deltaT, total_step, matrices):
    theirs = PeftRankAllocator.__new__(PeftRankAllocator)  # the schedule needs only these attributes
    theirs.peft_config = peft_config(init_r, target_r, tinit, tfinal, deltaT, total_step)
    theirs.init_bgt, theirs.target_bgt = init_r * matrices, target_r * matrices
    ours = AdaLoraConfig(init_r=init_r, target_r=target_r, tinit=tinit, tfinal=tfinal, deltaT=deltaT,
                         total_step=total_step)
    for step in range(total_step + 3):
        assert budget_schedule(step, ours, matrices) == theirs.budget_schedule(step), f"step {step}"
    # the shape of the schedule: flat, then falling to the target, then flat
    assert budget_schedule(0, ours, matrices)[0] == init_r * matrices
    assert budget_schedule(total_step - tfinal, ours, matrices)[0] == target_r * matrices


def test_schedule_defaults_and_errors():
    config = AdaLoraConfig(total_step=100)
    assert budget_schedule(10, config) == (12, False)  # tinit defaults to 10% of total_step
    assert budget_schedule(81, config) == (8, True)  # tfinal defaults to 20%: the final phase
    with pytest.raises(ValueError, match="total_step"):
        budget_schedule(0, AdaLoraConfig())
    with pytest.raises(ValueError, match="no budget phase"):
        budget_schedule(0, AdaLoraConfig(total_step=10, tinit=5, tfinal=5))


def one_layer(r=2, d_in=3, d_out=3):
    layer = SVDLinear(torch.nn.Linear(d_in, d_out), r=r, alpha=float(r))
    model = torch.nn.Sequential()
    model.add_module("proj", layer)
    return model, layer


def test_orthogonality_regularizer_hand_computed():
    model, layer = one_layer()
    with torch.no_grad():
        layer.lora_A.copy_(torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0]]))  # A Aᵀ - I = diag(0, 3)
        layer.lora_B.copy_(torch.tensor([[1.0, 1.0], [0.0, 0.0], [0.0, 0.0]]))  # Bᵀ B - I = [[0, 1], [1, 0]]
    # squared (the paper): (3² + (√2)²) / 2 matrices; unsquared (peft): (3 + √2) / 2
    assert orthogonality_regularizer(model, squared=True).item() == pytest.approx((9 + 2) / 2, rel=1e-6)
    assert orthogonality_regularizer(model, squared=False).item() == pytest.approx((3 + math.sqrt(2)) / 2, rel=1e-6)
    with torch.no_grad():  # orthonormal rows and columns: nothing to penalise
        layer.lora_A.copy_(torch.eye(2, 3))
        layer.lora_B.copy_(torch.eye(3, 2))
    assert orthogonality_regularizer(model, squared=True).item() == pytest.approx(0.0, abs=1e-7)


def test_masked_triplets_contribute_nothing():
    torch.manual_seed(0)
    model, layer = one_layer(r=4, d_in=6, d_out=5)
    with torch.no_grad():
        layer.lora_E.normal_()
        layer.rank_mask.copy_(torch.tensor([True, False, True, False]))
        layer.lora_E.masked_fill_(~layer.rank_mask.view(-1, 1), 0.0)  # what pruning does
    x = torch.randn(7, 6)
    with torch.no_grad():
        out = model(x)
        keep = layer.rank_mask
        by_hand = (layer.base_layer(x) + x @ (layer.lora_A[keep] * layer.lora_E[keep]).T @ layer.lora_B[:, keep].T
                   * layer.scaling)
        torch.testing.assert_close(out, by_hand, rtol=0, atol=1e-6)
        layer.lora_A[~keep] += 5.0  # the pruned directions may change freely: the output does not
        layer.lora_B[:, ~keep] -= 3.0
        torch.testing.assert_close(model(x), out, rtol=0, atol=1e-6)
        layer.lora_A[keep] += 0.5  # while a kept direction does change it (the check can fail)
        assert not torch.allclose(model(x), out, atol=1e-4)
    assert rank_pattern(model) == {"proj": 2}
    assert kept_parameters(model) == 2 * (6 + 5 + 1)  # two triplets: a column of P, a λ, a row of Q


def test_final_kept_rank_equals_budget_after_training(fresh_base):
    model, tokenizer = fresh_base
    steps, config = 12, dict(init_r=4, target_r=2, tinit=2, tfinal=3, total_step=12,
                             target_modules=["q_proj", "v_proj", "down_proj"])
    apply_method(model, "adalora", **config)
    apply_method(model, "adalora", **config)  # idempotent: one hook, same layers
    assert len(model_hooks(model)) == 1 and len(adalora_layers(model)) == 12
    examples = world.get_task("addition").train_examples(64)
    train(model, tokenizer, examples, TrainConfig(steps=steps, batch_size=4, lr=1e-2, warmup=2), progress=False)
    allocator = get_rank_allocator(model)
    kept = rank_pattern(model)
    assert sum(kept.values()) == 2 * len(kept)  # target_r per matrix on average
    assert len(set(kept.values())) > 1, "ranks should differ between layers"
    # every allocation met its budget, and the budgets followed the schedule
    for step, budget, pattern in allocator.history:
        assert sum(pattern.values()) == budget == budget_schedule(step, allocator.config, len(kept))[0]
    for layer in adalora_layers(model).values():  # pruned singular values stay at zero after the last step
        assert torch.all(layer.lora_E[~layer.rank_mask] == 0) and torch.all(layer.lora_E[layer.rank_mask] != 0)


def tiny_llama():
    return conftest.tiny_llama(vocab_size=100, max_position_embeddings=32, attention_bias=False, mlp_bias=False,
                               tie_word_embeddings=False)


@pytest.mark.parametrize("deltaT", [1, 2])
def test_same_triplets_kept_as_peft(deltaT):
    """Same initial parameters, same gradients every step: same masks, same Λ, same outputs and loss."""
    torch.manual_seed(0)
    base = tiny_llama()
    targets = ["q_proj", "v_proj", "up_proj"]
    schedule = dict(init_r=4, target_r=2, tinit=1, tfinal=2, deltaT=deltaT, total_step=10)
    theirs = peft.get_peft_model(copy.deepcopy(base), peft_config(**schedule, lora_alpha=4, target_modules=targets))
    ours = apply_method(copy.deepcopy(base), "adalora", **schedule, alpha=4.0, target_modules=targets,
                        orth_squared=False)
    their_params = dict(theirs.named_parameters())
    our_params = {n: p for n, p in ours.named_parameters() if p.requires_grad}
    to_peft = {n: "base_model.model." + n + ".default" for n in our_params}  # the state dicts map one to one
    assert sorted(to_peft.values()) == sorted(n for n, p in their_params.items() if p.requires_grad)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in our_params.items():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
            their_params[to_peft[name]].copy_(p)
    ids = torch.randint(0, 100, (2, 8), generator=gen)
    # the same forward, and peft's loss = ours + 0.5 * the unsquared regularizer (added in AdaLoraModel.forward;
    # the config here has no task_type, so get_peft_model returns a plain PeftModel whose forward skips it:
    # we call the AdaLoraModel directly)
    out_theirs = theirs.base_model(input_ids=ids, labels=ids)
    out_ours = ours(input_ids=ids, labels=ids)
    torch.testing.assert_close(out_ours.logits, out_theirs.logits, rtol=0, atol=1e-5)
    reg = orthogonality_regularizer(ours, squared=False)
    assert out_theirs.loss.item() == pytest.approx((out_ours.loss + 0.5 * reg).item(), rel=1e-5)
    allocator = get_rank_allocator(ours)
    for step in range(schedule["total_step"]):
        with torch.no_grad():
            for name, p in our_params.items():  # one fake optimizer step with a shared gradient
                grad = torch.randn(p.shape, generator=gen)
                p.grad, their_params[to_peft[name]].grad = grad.clone(), grad.clone()
                p.sub_(0.05 * grad)
                their_params[to_peft[name]].sub_(0.05 * grad)
        theirs.base_model.update_and_allocate(step)
        allocator.update_and_allocate(ours, step)
        for name, layer in adalora_layers(ours).items():
            their_E = their_params[to_peft[name + ".lora_E"]]
            assert torch.equal(layer.lora_E, their_E), f"step {step}, {name}"
    their_pattern = theirs.peft_config["default"].rank_pattern
    for name, layer in adalora_layers(ours).items():
        assert layer.rank_mask.tolist() == their_pattern[f"{name}.lora_E.default"], name  # keys without the prefix
    kept = rank_pattern(ours)
    assert sum(kept.values()) == 2 * len(kept) and len(set(kept.values())) > 1


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_identity_at_init_and_merge(arch):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = tiny_llama() if arch == "llama" else GPT2LMHeadModel(
        GPT2Config(vocab_size=100, n_embd=32, n_layer=2, n_head=4, n_positions=32))
    model.eval()  # GPT-2 has dropout
    ids = torch.randint(0, 100, (2, 8))
    before = model(input_ids=ids).logits.detach()
    apply_method(model, "adalora", total_step=10)  # every linear layer (GPT-2: Conv1D) but the output head
    assert "lm_head" not in " ".join(adalora_layers(model))
    torch.testing.assert_close(model(input_ids=ids).logits, before, rtol=0, atol=1e-6)  # Λ = 0: the base exactly
    with torch.no_grad():
        for layer in adalora_layers(model).values():
            layer.lora_E.normal_()
        unmerged = model(input_ids=ids).logits
        for layer in adalora_layers(model).values():
            layer.merge()
        torch.testing.assert_close(model(input_ids=ids).logits, unmerged, rtol=1e-4, atol=1e-4)
        assert not torch.allclose(unmerged, before, atol=1e-3)
