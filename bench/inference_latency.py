"""Per-token generation latency of the base model and of each additive method, side by side in one run.

Checks a common claim, "adapter-based methods introduce additional computational steps, slightly
slowing down inference" (a row of the claims ledger: lecture 13, ``python -m peftlab claims``, which
also times QLoRA and AdapterFusion and a larger batch). Variants, each a copy of the same base:

- ``base``: the model as pretrained;
- ``lora (unmerged)``: LoRA on every linear layer, the update B @ A computed beside each weight;
- ``lora (merged)``: the same LoRA folded into the weights (``merge_lora``), the layers still wrapped;
- ``lora (unloaded)``: merged and unwrapped (``merge_and_unload``): the base's exact modules;
- ``houlsby``: two bottleneck adapters per layer; ``pfeiffer``: one per layer;
- ``prefix``: prefix tuning (folded, P virtual tokens in every layer's cache);
- ``prompt``: prompt tuning (P extra input positions).

Per-token latency = (time to generate N tokens - time to generate 1 token) / (N - 1): the prefill of
the prompt cancels and what is left is the cost of one decoding step. Batch size 1 (an interactive
user), greedy, every run forced to the same length. Rounds visit the variants in a rotating order, so
a machine that gets busier or quieter affects all alike; each figure is the median over rounds and is
printed as a ratio to the base's median from the same run.

    python bench/inference_latency.py                       # tiny base, then a larger Llama config
    python bench/inference_latency.py --models tiny --new-tokens 32 --rounds 7

Set OMP_NUM_THREADS on a shared CPU; the printed numbers are the ones to quote.
"""
from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from peftlab import apply_method, count_parameters, get_device, load_base, set_seed  # noqa: E402


def larger_llama():
    """A Llama config about 10x the tiny base (8 layers, width 512), random weights: no download."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=2048, hidden_size=512, intermediate_size=1376, num_hidden_layers=8,
                         num_attention_heads=8, num_key_value_heads=8, max_position_embeddings=512,
                         attention_bias=True, mlp_bias=True, bos_token_id=0, eos_token_id=0, pad_token_id=1)
    return LlamaForCausalLM(config).eval()


def build_variants(base, prefix_tokens: int) -> dict[str, torch.nn.Module | str]:
    """name -> model (or a string saying why the row is skipped)."""
    variants: dict[str, torch.nn.Module | str] = {"base": base}
    try:
        from peftlab.methods.lora import merge_and_unload, merge_lora
    except ImportError as err:  # LoRA lands in its own module; the other rows do not depend on it
        for name in ("lora (unmerged)", "lora (merged)", "lora (unloaded)"):
            variants[name] = f"skipped: peftlab.methods.lora unavailable ({err})"
    else:
        unmerged = apply_method(copy.deepcopy(base), "lora")
        with torch.no_grad():  # a trained-looking B, so merging changes the weights
            for name, param in unmerged.named_parameters():
                if "lora_B" in name:
                    param.normal_(std=0.01)
        variants["lora (unmerged)"] = unmerged
        variants["lora (merged)"] = merge_lora(copy.deepcopy(unmerged))  # merged, still inside the LoRA layers
        variants["lora (unloaded)"] = merge_and_unload(copy.deepcopy(unmerged))  # plain layers: the base's shapes
    for name in ("houlsby", "pfeiffer"):
        variants[name] = apply_method(copy.deepcopy(base), name)
    variants["prefix"] = apply_method(copy.deepcopy(base), "prefix", num_virtual_tokens=prefix_tokens).fold()
    variants["prompt"] = apply_method(copy.deepcopy(base), "prompt", num_virtual_tokens=prefix_tokens)
    for model in variants.values():
        if isinstance(model, torch.nn.Module):
            model.eval()
    return variants


@torch.inference_mode()
def generate_seconds(model, input_ids, n_new: int) -> float:
    device = input_ids.device
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    model.generate(input_ids, attention_mask=torch.ones_like(input_ids), max_new_tokens=n_new, min_new_tokens=n_new,
                   do_sample=False, pad_token_id=1)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def per_token_latency(variants: dict, input_ids, n_new: int, rounds: int) -> dict[str, float]:
    """Median seconds per decoding step of every runnable variant, rounds interleaved."""
    runnable = [name for name, m in variants.items() if isinstance(m, torch.nn.Module)]
    for name in runnable:  # warm-up: first calls allocate and dispatch
        generate_seconds(variants[name], input_ids, 2)
    samples: dict[str, list[float]] = {name: [] for name in runnable}
    for r in range(rounds):
        order = runnable[r % len(runnable):] + runnable[:r % len(runnable)]
        for name in order:
            full = generate_seconds(variants[name], input_ids, n_new)
            one = generate_seconds(variants[name], input_ids, 1)
            samples[name].append((full - one) / (n_new - 1))
    return {name: statistics.median(s) for name, s in samples.items()}


def run(model_name: str, args, device) -> None:
    set_seed(0)
    if model_name == "tiny":
        base, _ = load_base("tiny", device=device)
    elif model_name == "larger":
        base = larger_llama().to(device)
    else:
        base, _ = load_base(model_name, device=device)
    base.eval()
    variants = build_variants(base, args.prefix_tokens)
    vocab = base.get_input_embeddings().num_embeddings
    input_ids = torch.randint(2, vocab, (1, args.prompt_len), device=device)
    latency = per_token_latency(variants, input_ids, args.new_tokens, args.rounds)
    total = count_parameters(base).total
    print(f"\n{model_name}: {total / 1e6:.1f}M parameters, prompt {args.prompt_len} tokens, {args.new_tokens} new "
          f"tokens, batch 1, {args.rounds} rounds, device {device}, torch threads {torch.get_num_threads()}")
    print(f"{'variant':<18}{'ms/token':>10}{'vs base':>10}{'extra params':>14}")
    for name, model in variants.items():
        if not isinstance(model, torch.nn.Module):
            print(f"{name:<18}{model}")
            continue
        extra = count_parameters(model).total - total
        print(f"{name:<18}{1e3 * latency[name]:>10.3f}{latency[name] / latency['base']:>9.2f}x{extra:>14,}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="tiny,larger", help="comma-separated: tiny, larger, or a model folder")
    parser.add_argument("--prompt-len", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--prefix-tokens", type=int, default=10, help="virtual tokens of prefix and prompt tuning")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    device = get_device()
    print("command: python bench/inference_latency.py " + " ".join(argv if argv is not None else sys.argv[1:]))
    for model_name in args.models.split(","):
        run(model_name.strip(), args, device)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
