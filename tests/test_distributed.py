"""DDP and FSDP2 under torchrun: 2 gloo processes on the CPU train exactly as one process does.

Three torchrun launches (``peftlab.distributed``, 2 ranks, 4 steps, a global batch of 8) are compared
with single-process training (``peftlab.train.train``, same global batches, one thread like each rank):

- float64 runs of full fine-tuning, LoRA and two hooked methods (the sparse mask, AdaLoRA's rank
  allocator) under DDP and FSDP2 (both ``reshard_after_forward`` settings): every rank's weights
  equal the single-process weights within 1e-6 (measured: about 1e-14), frozen weights are
  unchanged bit for bit. Why float64: in float32 the key projection's bias has a gradient that is
  zero in exact arithmetic (softmax ignores a shift shared by all keys) and rounding noise in
  practice; AdamW divides it by its own size, so summing the batch in another order moves that bias
  by up to 1e-5. In float64 the noise is far below AdamW's epsilon.
- float32 runs, launched by ``python -m peftlab distributed``: the bytes of parameters, gradients and
  optimizer state each rank holds (from its local shards) equal the estimator's per-rank ZeRO figures
  exactly (for AdaLoRA under FSDP2, whose hooks keep the trainable parameters whole: stage 0 for those,
  the strategy's stage for the frozen base); a LoRA adapter saved from the sharded model loads in
  Hugging Face peft.
- the float64 runs again with the gradient collective skipped (``break_gradient_sync``): the equality
  check fails, so it can fail.

Run: ``.venv/bin/python -m pytest tests/test_distributed.py -n 0``. CPU only (gloo); about a minute
and a half to three minutes on a 2-core CPU. Each launch starts two Python processes.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from peftlab.distributed import STRATEGIES, RunConfig, launch, method_model
from peftlab.train import train

N_RANKS = 2
STEPS, BATCH = 4, 8
TOLERANCE = 1e-6  # max |weight difference| after STEPS steps (float64: about 1e-14 is measured)
HOOKED = ("random_mask", "adalora")  # their training hooks read whole tensors
EQUAL_CASES = [(m, s) for m in ("full", "lora") + HOOKED for s in STRATEGIES]
BYTE_CASES = [(m, s) for m in ("full", "lora", "adalora") for s in STRATEGIES]
BROKEN_CASES = [("full", "ddp"), ("lora", "ddp"), ("lora", "fsdp-zero3"), ("adalora", "fsdp-zero3")]


def _torchrun(args: list[str]) -> subprocess.CompletedProcess:
    result = launch(N_RANKS, args + ["--steps", str(STEPS), "--batch-size", str(BATCH)], capture=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return result


@pytest.fixture(scope="module")
def float64_runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("float64")
    _torchrun(["--method", "full,lora," + ",".join(HOOKED), "--strategy", "all", "--dtype", "float64", "--out", str(out)])
    return out


@pytest.fixture(scope="module")
def broken_runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("broken")
    for method in dict.fromkeys(m for m, _ in BROKEN_CASES):
        strategies = ",".join(s for m, s in BROKEN_CASES if m == method)
        _torchrun(["--method", method, "--strategy", strategies, "--dtype", "float64", "--out", str(out),
                   "--break-sync"])
    return out


@pytest.fixture(scope="module")
def float32_runs(tmp_path_factory):
    """Launched through the command line, as a student would: its printed tables are checked too."""
    out = tmp_path_factory.mktemp("float32")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "peftlab", "distributed", "--method", "full,lora,adalora", "--nproc", str(N_RANKS),
           "--steps", str(STEPS), "--batch-size", str(BATCH), "--out", str(out), "--save-lora"]
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return out, result.stdout


_REFERENCES: dict = {}


def reference(method: str, dtype: str):
    """Single-process training on the same global batches: ``(initial weights, trained weights, frozen names)``."""
    key = (method, dtype)
    if key not in _REFERENCES:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # as each rank runs: another thread count sums in another order
        try:
            model, tokenizer, cfg, examples = method_model(RunConfig(method=method, steps=STEPS, batch_size=BATCH,
                                                                     dtype=dtype))
            initial = {n: p.detach().clone() for n, p in model.named_parameters()}
            frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
            train(model, tokenizer, examples, cfg, progress=False)
        finally:
            torch.set_num_threads(threads)
        trained = {n: p.detach().clone() for n, p in model.named_parameters()}
        _REFERENCES[key] = initial, trained, frozen
    return _REFERENCES[key]


def rank_states(folder, method: str, strategy: str) -> list[dict[str, torch.Tensor]]:
    return [torch.load(folder / f"{method}-{strategy}" / f"state-rank{r}.pt") for r in range(N_RANKS)]


def max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert set(a) == set(b), set(a) ^ set(b)
    return max((a[n] - b[n]).abs().max().item() for n in a)


def assert_equal_to_single_process(folder, method: str, strategy: str, dtype: str = "float64") -> None:
    initial, trained, _ = reference(method, dtype)
    assert max_difference(initial, trained) > 100 * TOLERANCE  # training moved the weights: equality means something
    for rank, state in enumerate(rank_states(folder, method, strategy)):
        diff = max_difference(state, trained)
        assert diff <= TOLERANCE, f"rank {rank}: weights differ from single-process training by {diff:.3g}"


@pytest.mark.parametrize("method,strategy", EQUAL_CASES, ids=[f"{m}-{s}" for m, s in EQUAL_CASES])
def test_equal_to_single_process_training(float64_runs, method, strategy):
    assert_equal_to_single_process(float64_runs, method, strategy)


@pytest.mark.parametrize("method,strategy", EQUAL_CASES, ids=[f"{m}-{s}" for m, s in EQUAL_CASES])
def test_frozen_weights_unchanged(float64_runs, method, strategy):
    initial, _, frozen = reference(method, "float64")
    if method == "full":
        assert not frozen
        return
    assert frozen
    for state in rank_states(float64_runs, method, strategy):
        assert all(torch.equal(state[n], initial[n]) for n in frozen)


@pytest.mark.parametrize("method,strategy", BROKEN_CASES, ids=[f"{m}-{s}" for m, s in BROKEN_CASES])
def test_broken_gradient_sync_fails_the_equality(broken_runs, method, strategy):
    with pytest.raises(AssertionError, match="differ from single-process training"):
        assert_equal_to_single_process(broken_runs, method, strategy)
    if strategy == "ddp" or method in HOOKED:  # replicas stepped with their own gradients: they drifted apart
        states = rank_states(broken_runs, method, strategy)
        assert max_difference(states[0], states[1]) > 10 * TOLERANCE


@pytest.mark.parametrize("method,strategy", BYTE_CASES, ids=[f"{m}-{s}" for m, s in BYTE_CASES])
def test_bytes_per_rank_equal_the_estimator(float32_runs, method, strategy):
    out, _ = float32_runs
    ranks = json.loads((out / f"{method}-{strategy}" / "ranks.json").read_text())
    assert len(ranks) == N_RANKS
    for rank in ranks:
        for bucket in ("weights", "gradients", "optimizer"):
            assert rank[f"measured_{bucket}"] == rank[f"estimate_{bucket}"], (rank["rank"], bucket)
            assert rank[f"measured_{bucket}"] > 0
        # FSDP2's ZeRO-2 analogue holds whole weights during the step, and between steps 1/N of them
        if method != "adalora":
            shards = rank["notes"]["local shards of the weights"]
            assert shards == (rank["estimate_weights"] // N_RANKS if strategy == "fsdp-zero2" else rank["estimate_weights"])


def test_command_prints_measured_and_estimated_bytes_per_rank(float32_runs):
    _, stdout = float32_runs
    for strategy, (stage, _) in STRATEGIES.items():
        assert f"lora with {strategy} on {N_RANKS} ranks" in stdout
        assert f"ZeRO-{stage} estimate" in stdout
    rows = [line.split() for line in stdout.splitlines() if line[:1].isdigit()]
    assert len(rows) == 3 * len(STRATEGIES) * N_RANKS * 3  # methods x strategies x ranks x buckets
    assert all(row[-1] == "yes" for row in rows)


@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_lora_saved_from_sharded_model_loads_in_peft(float32_runs, strategy):
    import peft

    from peftlab import load_base
    from peftlab.methods.lora import apply_lora, LoraConfig

    out, _ = float32_runs
    state = rank_states(out, "lora", strategy)[0]
    ours, _ = load_base("tiny")
    apply_lora(ours, LoraConfig())
    missing, unexpected = ours.load_state_dict(state, strict=False)
    assert missing == ["lm_head.weight"] and not unexpected  # the head is tied to the embedding: saved once
    theirs = peft.PeftModel.from_pretrained(load_base("tiny")[0], out / f"lora-{strategy}" / "adapter").eval()
    ids = torch.randint(2, 2048, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(theirs(input_ids=ids).logits, ours.eval()(input_ids=ids).logits, atol=1e-5, rtol=0)
