"""QLoRA: the 4-bit layer against bitsandbytes Linear4bit + peft LoRA, and the method on the tiny base.

Run: ``pytest tests/test_qlora.py`` (CPU only, ~15 s). Needs bitsandbytes and peft.

peft wraps ``bnb.nn.Linear4bit`` on the CPU (``peft.tuners.lora.bnb.Linear4bit``) when the model says
it is loaded in 4 bits. bitsandbytes' Linear4bit switches to a bf16 AVX-512 kernel in eval mode without
gradients; the comparison runs in train mode (dropout 0), where bitsandbytes dequantizes to fp32 and
calls ``F.linear``, as we do: outputs are then bit-identical.
"""
import pytest
import torch
from torch import nn

from peftlab.methods.qlora import Linear4bit, QLoraLayer, from_bnb, qlora_layers

bnb = pytest.importorskip("bitsandbytes")
peft = pytest.importorskip("peft")


class OneLayer(nn.Module):
    def __init__(self, d_in, d_out):
        super().__init__()
        self.proj = nn.Linear(d_in, d_out)

    def forward(self, x):
        return self.proj(x)


def _bnb_peft(linear: nn.Linear, r=8, alpha=16):
    """bitsandbytes Linear4bit (nf4, double quant, fp32 compute) holding ``linear``, wrapped by peft's LoRA."""
    model = OneLayer(linear.in_features, linear.out_features)
    q = bnb.nn.Linear4bit(linear.in_features, linear.out_features, bias=True, compute_dtype=torch.float32,
                          compress_statistics=True, quant_type="nf4")
    q.weight = bnb.nn.Params4bit(linear.weight.data.clone(), requires_grad=False, quant_type="nf4",
                                 compress_statistics=True)
    q.bias = nn.Parameter(linear.bias.data.clone(), requires_grad=False)
    model.proj = q.to("cpu")  # quantizes
    model.is_loaded_in_4bit = True  # what peft checks to dispatch its bitsandbytes LoRA layer
    return peft.get_peft_model(model, peft.LoraConfig(r=r, lora_alpha=alpha, target_modules=["proj"]))


@pytest.mark.parametrize("d_in, d_out", [(128, 48), (65, 37)])
def test_qlora_layer_equals_bnb_linear4bit_plus_peft(d_in, d_out):
    torch.manual_seed(0)
    linear = nn.Linear(d_in, d_out)
    peft_model = _bnb_peft(linear)
    peft_layer = peft_model.base_model.model.proj
    assert type(peft_layer).__module__.endswith("lora.bnb")  # peft's own bitsandbytes wrapper
    with torch.no_grad():
        peft_layer.lora_B["default"].weight.normal_()  # B = 0 at init would hide the LoRA path

    ours = QLoraLayer(Linear4bit.from_linear(linear), r=8, alpha=16)
    bnb_weight = peft_layer.base_layer.weight
    assert torch.equal(ours.base_layer.weight_packed, bnb_weight.data.reshape(-1))  # same 4-bit numbers...
    ours.base_layer.set_quantized(from_bnb(bnb_weight.data, bnb_weight.quant_state))  # ...and exactly the same state
    ours.lora_A.weight.data.copy_(peft_layer.lora_A["default"].weight)
    ours.lora_B.weight.data.copy_(peft_layer.lora_B["default"].weight)

    x = torch.randn(4, 5, d_in)
    peft_model.train()
    expected = peft_model(x)
    got = ours(x)
    assert torch.allclose(got, expected, rtol=0, atol=1e-6), (got - expected).abs().max()  # measured: 0.0


def test_linear4bit_matches_dequantized_linear_and_backward():
    torch.manual_seed(1)
    linear = nn.Linear(96, 40)
    q = Linear4bit.from_linear(linear)
    x = torch.randn(3, 96, requires_grad=True)
    weight = q.weight  # dequantized
    assert weight.shape == (40, 96) and (weight - linear.weight).abs().max() < 0.2 * linear.weight.abs().max()
    y = q(x)
    assert torch.allclose(y, nn.functional.linear(x, weight, linear.bias), atol=1e-6)
    y.sum().backward()  # the gradient reaches the input through the re-dequantized weight
    assert torch.allclose(x.grad, weight.sum(0).expand(3, -1), atol=1e-5)
    assert not any(p.requires_grad for p in q.parameters())
    assert q.stored_bytes() == 96 * 40 // 2 + 60 + 4 + 4  # packed + 8-bit absmax + one absmax2 + offset


def test_apply_qlora_on_tiny_base(tiny_base):
    import copy

    from peftlab import apply_method
    from peftlab.memory import adamw_8bit, measure_training_memory, weight_bytes

    model, tokenizer = copy.deepcopy(tiny_base[0]), tiny_base[1]
    before = weight_bytes(model)
    apply_method(model, "qlora")
    apply_method(model, "qlora")  # idempotent: layers already wrapped are kept
    layers = qlora_layers(model)
    assert layers and all(isinstance(m.base_layer, Linear4bit) for m in layers.values())
    assert all("lora_" in n for n, p in model.named_parameters() if p.requires_grad)
    quantized = sum(m.base_layer.stored_bytes() for m in layers.values())
    assert weight_bytes(model) < before and quantized > 0
    batch = dict(tokenizer(["Alice was born in Paris."] * 2, return_tensors="pt"))
    batch["labels"] = batch["input_ids"].clone()
    fp32 = measure_training_memory(model, batch)
    int8 = measure_training_memory(model, batch, optimizer=adamw_8bit(model))
    assert int8.optimizer < fp32.optimizer  # 8-bit states (bitsandbytes keeps fp32 for tensors < 4096 values)
    assert fp32.weights == weight_bytes(model)
    loss = model(**batch).loss
    loss.backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if "lora_B" in n)


def test_merge_requantizes_with_warning():
    torch.manual_seed(2)
    layer = QLoraLayer(Linear4bit.from_linear(nn.Linear(64, 32)), r=4, alpha=8)
    nn.init.normal_(layer.lora_B.weight, std=0.1)
    x = torch.randn(2, 64)
    unmerged = layer(x)
    with pytest.warns(UserWarning, match="re-quantizes"):
        layer.merge()
    merged = layer(x)
    assert layer.merged and (merged - unmerged).abs().max() < 0.25 * unmerged.abs().max()  # rounded to 4 bits


def test_parameter_count_includes_the_quantized_weights():
    """The 4-bit weights live in buffers; counted as frozen, QLoRA's totals equal LoRA's."""
    from peftlab import apply_method, load_base
    from peftlab.utils import count_parameters

    qlora = count_parameters(apply_method(load_base("tiny")[0], "qlora"))
    lora = count_parameters(apply_method(load_base("tiny")[0], "lora"))
    assert qlora == lora and qlora.trainable < 0.05 * qlora.total
