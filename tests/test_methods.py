"""The methods registry and full fine-tuning: uniform interface, clear errors, idempotent apply.
CPU only, seconds."""
import pytest

from peftlab import METHODS, apply_method, count_parameters, get_method
from peftlab.methods import remove_method


def test_unknown_method_lists_known():
    with pytest.raises(KeyError) as err:
        get_method("lora-but-misspelled")
    for name in METHODS:
        assert name in str(err.value)


def test_unknown_option_lists_known():
    with pytest.raises(TypeError, match="train_embeddings"):
        get_method("full").config(rank=8)


# The surveys' taxonomy (Lialin et al. 2023, "Scaling Down to Scale Up", Fig. 2; Han et al. 2024, "Parameter-
# Efficient Fine-Tuning for Large Models: A Comprehensive Survey", Fig. 3): adapters and soft prompts add
# parameters, BitFit and masks select existing ones, LoRA-like methods reparameterize the update (QLoRA is LoRA
# on a quantized base); full fine-tuning and the untouched base are the baselines of every comparison.
SURVEY_FAMILIES = {"additive": {"houlsby", "pfeiffer", "prefix", "prompt", "fusion"},
                   "selective": {"bitfit", "fisher", "random_mask"},
                   "reparameterization": {"lora", "qlora", "adalora"}}


def test_every_method_has_a_complete_entry():
    assert {"full", "base"} <= set(METHODS)
    for name, method in METHODS.items():
        expected = next((f for f, names in SURVEY_FAMILIES.items() if name in names), None)
        assert method.family == (expected or method.family) and method.family in (
            *SURVEY_FAMILIES, "hybrid", "baseline", "reference"), (name, method.family)
        assert method.description and (method.lr > 0 if method.trains else method.lr == 0)
        method.config()  # defaults construct
    with pytest.raises(TypeError, match="not both"):
        get_method("lora").apply(None, get_method("lora").config(), r=4)


def test_full_trains_everything_base_nothing(fresh_base):
    model, _ = fresh_base
    model.requires_grad_(False)
    apply_method(model, "full")
    counts = count_parameters(model)
    assert counts.trainable == counts.total > 0
    apply_method(model, "full")  # idempotent
    assert count_parameters(model) == counts
    with pytest.raises(ValueError, match="remove_method"):
        apply_method(model, "base")
    model = remove_method(model)  # the flags as they were before: all frozen
    assert count_parameters(model).trainable == 0
    apply_method(model, "base")
    assert count_parameters(model).trainable == 0


def test_full_without_embeddings(fresh_base):
    model, _ = fresh_base
    apply_method(model, "full", train_embeddings=False)
    counts = count_parameters(model)
    emb = model.get_input_embeddings().weight
    assert not emb.requires_grad
    assert counts.trainable == counts.total - emb.numel()


def test_count_parameters_counts_tied_weights_once(tiny_base):
    model, _ = tiny_base
    assert model.get_input_embeddings().weight is model.get_output_embeddings().weight
    assert count_parameters(model).total == model.num_parameters()
    # a hand-made case: one Linear registered twice holds 3*2+2 = 8 parameters, not 16 (as a
    # state_dict or named_parameters(remove_duplicate=False) count would say)
    import torch

    shared = torch.nn.Linear(3, 2)
    twice = torch.nn.ModuleDict({"a": shared, "b": shared})
    assert count_parameters(twice).total == 8
    shared.bias.requires_grad_(False)
    assert count_parameters(twice).trainable == 6
