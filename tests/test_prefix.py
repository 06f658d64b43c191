"""Prefix tuning and prompt tuning: equal to peft with the same tensors, padding-safe, generation, folding
the reparameterization MLP, only the virtual tokens train, and the wrappers work in peftlab.train/evaluate.

Tiny Llama (grouped-query attention) and GPT-2 models built from configs, plus the committed tiny base.
Run: ``OMP_NUM_THREADS=1 .venv/bin/pytest tests/test_prefix.py``. CPU only, under a minute; needs peft.
"""
import copy
import warnings

import conftest
import pytest
import torch

from peftlab import apply_method, count_parameters, evaluate, train, world
from peftlab.methods import remove_method
from peftlab.methods.prefix import PrefixTuningModel, PromptTuningModel, kv_shape
from peftlab.train import TrainConfig

peft = pytest.importorskip("peft")

P = 5  # virtual tokens


def tiny_llama():
    return conftest.tiny_llama(vocab_size=100, intermediate_size=64, max_position_embeddings=64, attention_bias=False,
                               mlp_bias=False, tie_word_embeddings=False)


def tiny_gpt2():
    return conftest.tiny_gpt2(vocab_size=100, n_positions=64, resid_pdrop=0.1, embd_pdrop=0.1, attn_pdrop=0.1)


MODELS = {"llama": tiny_llama, "gpt2": tiny_gpt2}


def base_model(arch):
    torch.manual_seed(0)
    return MODELS[arch]().eval()


def batch(seed=0):
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 100, (3, 8), generator=gen)
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0  # right padding, as peftlab.data.collate makes it
    return ids, mask


def peft_pair(arch, reparameterize):
    """peft's PrefixTuning and peftlab's prefix on copies of one model, holding the same prefix tensors."""
    base = base_model(arch)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = peft.get_peft_model(copy.deepcopy(base), peft.PrefixTuningConfig(
            task_type="CAUSAL_LM", num_virtual_tokens=P, prefix_projection=reparameterize))
    ours = apply_method(copy.deepcopy(base), "prefix", num_virtual_tokens=P, reparameterize=reparameterize)
    encoder = reference.prompt_encoder["default"]
    with torch.no_grad():
        if reparameterize:
            ours.reparam.embedding.copy_(encoder.embedding.weight)
            ours.reparam.mlp.load_state_dict(encoder.transform.state_dict())
        else:
            encoder.embedding.weight.normal_()  # peft may start from zeros; any shared tensor will do
            ours.prefix.copy_(encoder.embedding.weight)
    return base, reference, ours


def greedy(model, ids, n):
    """Greedy decoding by full forward passes, no cache: the ground truth for generate."""
    for _ in range(n):
        ids = torch.cat([ids, model(input_ids=ids).logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return ids


@pytest.mark.parametrize("reparameterize", [False, True])
@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_prefix_equals_peft(arch, reparameterize):
    base, reference, ours = peft_pair(arch, reparameterize)
    ids, mask = batch()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = reference(input_ids=ids, attention_mask=mask).logits
        got = ours(input_ids=ids, attention_mask=mask).logits
        plain = base(input_ids=ids, attention_mask=mask).logits
    diff = (got - expected).abs().max().item()
    print(f"{arch} reparameterize={reparameterize}: max |peftlab - peft| = {diff:.2e}")
    assert got.shape == expected.shape == ids.shape + (100,)
    assert diff < 1e-5  # fp32, same tensors, same attention: only summation order may differ
    assert (got - plain).abs().max() > 1e-3  # the prefix does change the output
    trainable = sum(p.numel() for p in reference.parameters() if p.requires_grad)
    assert count_parameters(ours).trainable == trainable


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_prompt_equals_peft(arch):
    base = base_model(arch)
    reference = peft.get_peft_model(copy.deepcopy(base), peft.PromptTuningConfig(task_type="CAUSAL_LM",
                                                                                 num_virtual_tokens=P))
    ours = apply_method(copy.deepcopy(base), "prompt", num_virtual_tokens=P)
    with torch.no_grad():
        ours.prompt.copy_(reference.prompt_encoder["default"].embedding.weight)
    ids, mask = batch(1)
    labels = ids.masked_fill(mask == 0, -100)
    with torch.no_grad():
        expected = reference(input_ids=ids, attention_mask=mask, labels=labels)
        got = ours(input_ids=ids, attention_mask=mask, labels=labels)
    assert got.logits.shape == ids.shape + (100,)  # the P virtual positions are stripped
    torch.testing.assert_close(got.logits, expected.logits[:, P:], rtol=0, atol=1e-5)
    torch.testing.assert_close(got.loss, expected.loss, rtol=0, atol=1e-5)


@pytest.mark.parametrize("method", ["prefix", "prompt"])
@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_padded_batch_equals_unpadded(arch, method):
    model = apply_method(base_model(arch), method, num_virtual_tokens=P)
    ids, mask = batch(2)
    with torch.no_grad():
        padded = model(input_ids=ids, attention_mask=mask).logits
        for row in range(len(ids)):
            n = int(mask[row].sum())
            alone = model(input_ids=ids[row:row + 1, :n]).logits
            torch.testing.assert_close(padded[row:row + 1, :n], alone, rtol=0, atol=1e-5)


@pytest.mark.parametrize("method", ["prefix", "prompt"])
@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_generate_matches_greedy_forward(arch, method):
    options = {"reparameterize": False} if method == "prefix" else {"init": "random"}  # a prefix that matters
    model = apply_method(base_model(arch), method, num_virtual_tokens=P, **options)
    ids, _ = batch(3)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        generated = model.generate(ids, max_new_tokens=5, do_sample=False)
        expected = greedy(model, ids, 5)
        without = greedy(model.base_model, ids, 5)
    eos = model.generation_config.eos_token_id
    for row in range(len(ids)):  # generate stops a row at its first eos; the greedy loop goes on
        stops = [t for t in range(ids.shape[1], expected.shape[1]) if expected[row, t] == eos]
        end = stops[0] + 1 if stops else expected.shape[1]
        assert torch.equal(generated[row, :end], expected[row, :end])
    assert not torch.equal(generated, without)  # the virtual tokens steered the generation


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_fold_keeps_outputs_and_drops_the_mlp(arch):
    model = apply_method(base_model(arch), "prefix", num_virtual_tokens=P, reparameterize=True)
    n_layers, n_kv_heads, head_dim = kv_shape(model)
    ids, mask = batch(4)
    with torch.no_grad():
        before = model(input_ids=ids, attention_mask=mask).logits
        training_size = count_parameters(model).trainable
        model.fold()
        after = model(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(after, before, rtol=0, atol=1e-6)
    assert model.reparam is None and model.prefix.shape == (P, n_layers * 2 * n_kv_heads * head_dim)
    assert count_parameters(model).trainable == model.prefix.numel() < training_size
    folded = model.prefix.detach().clone()
    model.fold()  # folding twice changes nothing
    assert model.reparam is None and torch.equal(model.prefix, folded)
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids, attention_mask=mask).logits, after)


@pytest.mark.parametrize("method", ["prefix", "prompt"])
def test_only_virtual_tokens_receive_gradients(method):
    model = apply_method(base_model("llama"), method, num_virtual_tokens=P)
    ids, mask = batch(5)
    model(input_ids=ids, attention_mask=mask, labels=ids.masked_fill(mask == 0, -100)).loss.backward()
    for name, param in model.named_parameters():
        if name.startswith("base_model."):
            assert not param.requires_grad and param.grad is None, name
        else:
            assert param.grad is not None and param.grad.abs().sum() > 0, name


def test_idempotent_apply():
    model = apply_method(base_model("llama"), "prefix", num_virtual_tokens=P)
    assert apply_method(model, "prefix", num_virtual_tokens=P) is model
    with pytest.raises(ValueError, match="remove_method"):
        apply_method(model, "prefix", num_virtual_tokens=P + 1)
    other = apply_method(remove_method(model), "prefix", num_virtual_tokens=P + 1)
    assert isinstance(other, PrefixTuningModel) and not isinstance(other.base_model, PrefixTuningModel)
    prompt = apply_method(remove_method(other), "prompt", num_virtual_tokens=P)
    assert isinstance(prompt, PromptTuningModel) and apply_method(prompt, "prompt", num_virtual_tokens=P) is prompt
    assert not isinstance(prompt.base_model, (PrefixTuningModel, PromptTuningModel))


def test_wrappers_work_in_train_and_evaluate(fresh_base):
    base, tokenizer = fresh_base
    task = world.get_task("addition")
    examples = task.train_examples(16, seed=0)
    for method in ("prefix", "prompt"):
        model = apply_method(base, method)
        params_before = [p.detach().clone() for p in model.parameters() if p.requires_grad]
        result = train(model, tokenizer, examples, TrainConfig(steps=2, batch_size=4, lr=1e-2), progress=False)
        assert all(torch.isfinite(torch.tensor(result.losses)))
        params_after = [p for p in model.parameters() if p.requires_grad]
        assert any(not torch.equal(a, b) for a, b in zip(params_before, params_after))
        # evaluation goes through the wrapper: its answers are the wrapper's generate, its perplexity the wrapper's
        by_generate = []
        for ex in examples[:4]:
            ids = torch.tensor([[tokenizer.bos_token_id] + tokenizer.encode(ex.prompt, add_special_tokens=False)])
            target = tokenizer.encode(ex.target, add_special_tokens=False)
            out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=len(target),
                                 do_sample=False, pad_token_id=tokenizer.pad_token_id)
            by_generate.append(out[0, ids.shape[1]:].tolist() == target)
        assert evaluate.exact_match(model, tokenizer, examples[:4]) == pytest.approx(sum(by_generate) / 4)
        sentence = ["A short English sentence."]
        assert evaluate.perplexity(model, tokenizer, sentence) != evaluate.perplexity(model.base_model, tokenizer, sentence)
        base = model.base_model
    assert count_parameters(base).trainable == 0  # the base stayed frozen throughout

