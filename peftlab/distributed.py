"""Beyond one GPU: every method under DDP or FSDP2, launched by ``torchrun``, its bytes measured per rank.

Data parallelism over N processes ("ranks") gives each rank 1/N of every batch. Two ways to keep
the ranks' models identical, both in PyTorch itself:

- **DDP** (Li et al. 2020, "PyTorch Distributed: Experiences on Accelerating Data Parallel
  Training"): every rank holds the whole model, gradients and optimizer state; after backward the
  gradients are *all-reduced*, g = (1/N) sum_r g_r, so every rank takes the same step. That is ZeRO
  stage 0.
- **FSDP2** (``torch.distributed.fsdp.fully_shard``; Zhao et al. 2023, "PyTorch FSDP"; the ZeRO
  idea of Rajbhandari et al. 2020): every parameter is cut along dim 0 into N shards and each rank
  keeps one, with its gradient and optimizer state. Before a block's forward its parameters are
  *all-gathered*; after backward the gradients are *reduce-scattered*, each rank receiving the
  averaged gradient of its own shard. ``reshard_after_forward=True`` frees the gathered weights
  after forward and gathers them again for backward (the ZeRO-3 analogue); ``False`` keeps them
  from forward to backward (the ZeRO-2 analogue: full weights held during the step, sharded
  gradients and optimizer state). FSDP2 shards parameter by parameter, so a frozen base and a
  small trainable adapter live side by side (FSDP1's flat parameters could not mix them).

The pieces: ``setup`` (process group and device from torchrun's environment: CUDA/nccl or
CPU/gloo), ``wrap`` (a method's model in DDP or FSDP2, inside ``DataParallelLM``, which gives each
rank its rows of the global batch and normalizes the loss by the global number of target tokens,
so N ranks take exactly the single-process step), ``unsharded`` / ``full_state_dict`` (whole
tensors again, for saving: ``save_lora`` works inside ``with unsharded(model)``), ``LocalBytes`` (a
training hook that measures the bytes each rank holds, from its local shards), ``estimate_per_rank``
(the ZeRO estimator's figures for the same stage), and ``main``, run by ``torchrun``::

    torchrun --standalone --nproc_per_node=2 -m peftlab.distributed --method lora
    python -m peftlab distributed --method lora --nproc 2        # the same, launched for you

The course's training loop (``peftlab.train.train``) runs unchanged: it finds the method's hooks
through the wrappers (``peftlab.state.unwrap_model``). Hooks read whole tensors (the sparse mask,
AdaLoRA's global ranking of triplets), which a shard is not; so under FSDP2 a hooked method's
*trainable* parameters stay whole on every rank, their gradients all-reduced as DDP does, and only
the frozen base is sharded.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from .data import IGNORE_INDEX
from .distributed_bytes import BYTE_ROWS, STRATEGIES, LocalBytes, estimate_per_rank, format_rank_table  # noqa: F401
from .methods import RunContext, get_method
from .methods.lora import lora_layers, save_lora
from .models import load_base
from .state import model_hooks, unwrap_model
from .train import train
from .utils import count_parameters, set_seed, unique_parameters
from .world import get_task

#: strategy -> (ZeRO stage it is the analogue of, what each rank holds)


@dataclass(frozen=True)
class Dist:
    rank: int
    world_size: int
    device: torch.device
    backend: str


def setup(device: str | None = None) -> Dist:
    """Join the process group ``torchrun`` describes (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``...).

    CUDA (one GPU per rank, ``LOCAL_RANK``) with nccl when there is a GPU, else the CPU with gloo.
    Outside torchrun this is a group of one, so the same code runs in a plain process.
    """
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if device is None:
        device = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        if "RANK" not in os.environ:  # a plain process: a group of one on a free local port
            os.environ.update(RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()))
        dist.init_process_group(backend, device_id=device if device.type == "cuda" else None)
    return Dist(dist.get_rank(), dist.get_world_size(), device, backend)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def transformer_blocks(model: nn.Module) -> nn.ModuleList:
    """The decoder layers (the longest ``nn.ModuleList``): each becomes one FSDP2 unit."""
    lists = [m for m in model.modules() if isinstance(m, nn.ModuleList)]
    if not lists:
        raise ValueError(f"{type(model).__name__} has no nn.ModuleList of layers to shard block by block")
    return max(lists, key=len)


class DataParallelLM(nn.Module):
    """A DDP or FSDP2 model that takes the *global* batch and runs this rank's rows of it.

    Every rank draws the same global batch (same seed) and keeps rows ``rank*b/N ... (rank+1)*b/N``,
    padded as in the single-process batch. A causal LM's loss is a mean over target tokens, and ranks
    hold different numbers of them, so the mean of the ranks' means is not the global mean. Instead
    each rank's loss is its *sum* over target tokens times N / (targets in the global batch): the
    average DDP and FSDP2 take over ranks is then exactly the single-process loss's gradient.
    The returned loss is the global mean (all-reduced), for logging.
    """

    def __init__(self, module: nn.Module, strategy: str, world: Dist, replicated: list | None = None):
        super().__init__()
        self.module, self.strategy, self.world = module, strategy, world
        self.replicated = replicated or []  # whole on every rank under FSDP2 (a hooked method's trainable parameters)
        self.sync = True  # all-reduce the replicated parameters' gradients (break_gradient_sync turns it off)
        for param in self.replicated:
            param.register_post_accumulate_grad_hook(self._all_reduce_grad)

    def _all_reduce_grad(self, param: nn.Parameter) -> None:
        # right after backward accumulates it, as DDP does: before clipping, hooks and the optimizer see it
        if self.sync and self.world.world_size > 1:
            dist.all_reduce(param.grad)
        param.grad.div_(self.world.world_size)

    def forward(self, input_ids, attention_mask=None, labels=None, **kwargs):
        n, rank = self.world.world_size, self.world.rank
        if input_ids.shape[0] % n:
            raise ValueError(f"the global batch ({input_ids.shape[0]} rows) must divide evenly over {n} ranks")
        rows = slice(rank * input_ids.shape[0] // n, (rank + 1) * input_ids.shape[0] // n)
        local = {"input_ids": input_ids[rows]}
        if attention_mask is not None:
            local["attention_mask"] = attention_mask[rows]
        if labels is None:
            return self.module(**local, **kwargs)
        targets = (labels[:, 1:] != IGNORE_INDEX).sum()  # the loss predicts token t+1 from tokens <= t
        out = self.module(**local, labels=labels[rows], num_items_in_batch=targets / n, **kwargs)
        logged = out.loss.detach().clone()
        if n > 1:
            dist.all_reduce(logged)
        out.loss = out.loss + (logged / n - out.loss.detach())  # value: the global mean; gradient: this rank's
        return out


def wrap(model: nn.Module, strategy: str = "ddp", world: Dist | None = None) -> DataParallelLM:
    """Put a method's model (after ``apply_method``) on this rank's device, in DDP or FSDP2.

    ``strategy``: ``ddp``, ``fsdp-zero2`` (``reshard_after_forward=False``) or ``fsdp-zero3``
    (``True``). FSDP2 shards each transformer block as one unit, then the rest (embeddings, final
    norm, head) as the root. ``gradient_as_bucket_view=True`` lets DDP's gradients live inside its
    all-reduce buckets instead of beside them (otherwise each rank holds the gradients twice).
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; strategies: {', '.join(STRATEGIES)}")
    world = world or setup()
    model.to(world.device)
    if strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [world.device.index] if world.device.type == "cuda" else None
        return DataParallelLM(DDP(model, device_ids=ids, gradient_as_bucket_view=True), strategy, world)
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    # a method's hooks read whole tensors: keep its trainable parameters whole (FSDP ignores them), shard the rest
    replicated = unique_parameters(model, trainable_only=True) if has_hooks(model) else []
    mesh = init_device_mesh(world.device.type, (world.world_size,))
    reshard = STRATEGIES[strategy][0] == 3
    for block in transformer_blocks(model):
        fully_shard(block, mesh=mesh, reshard_after_forward=reshard, ignored_params=set(replicated))
    fully_shard(model, mesh=mesh, reshard_after_forward=reshard, ignored_params=set(replicated))
    return DataParallelLM(model, strategy, world, replicated)


def has_hooks(model: nn.Module) -> bool:
    """Does the method attach training hooks (``peftlab.train.attach_hook``)?"""
    return bool(model_hooks(model))


# ---- whole tensors again -----------------------------------------------------------------------------

def _fsdp_modules(model: nn.Module) -> list[nn.Module]:
    from torch.distributed.fsdp import FSDPModule

    return [m for m in unwrap_model(model).modules() if isinstance(m, FSDPModule)]


@contextlib.contextmanager
def unsharded(model: nn.Module):
    """Inside, the model (unwrapped) has its whole parameters registered: every rank all-gathers.

    Call it on every rank. ``save_lora(model, folder)`` and ``dict(model.named_parameters())`` see
    plain full tensors inside; afterwards the shards are back. DDP's model is whole already.
    """
    fsdp = _fsdp_modules(model)
    for m in fsdp:
        m.unshard()
    try:
        yield unwrap_model(model)
    finally:
        for m in fsdp:
            m.reshard()


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter by name (no wrapper prefix), whole, on the CPU. A collective: call it on every rank."""
    with unsharded(model) as inner:
        seen, state = set(), {}
        for name, p in inner.named_parameters():
            if id(p) not in seen:
                seen.add(id(p))
                state[name] = p.detach().to("cpu", copy=True)
    return state


# ---- a deliberately broken synchronization --------------------------------------------------------------

class _LocalOnlyReduceScatter:
    """FSDP2's reduce-scatter without the reduction: each rank keeps its own gradient's shard."""

    def allocate(self, size, *, dtype, device):
        return torch.empty(*size, dtype=dtype, device=device)

    def __call__(self, output_tensor, input_tensor, group, op, async_op=False):
        rank, n = dist.get_rank(group), dist.get_world_size(group)
        output_tensor.copy_(input_tensor.view(n, -1)[rank])
        if op == dist.ReduceOp.AVG:
            output_tensor.div_(n)
        return None


def _no_all_reduce(state, bucket):
    """A DDP communication hook that skips the all-reduce (keeps its division by N)."""
    future = torch.futures.Future()
    future.set_result(bucket.buffer().div_(dist.get_world_size()))
    return future


def break_gradient_sync(model: DataParallelLM) -> DataParallelLM:
    """Skip the gradient collective (DDP's all-reduce, FSDP2's reduce-scatter's sum), to see what it does.

    Each rank then steps with the gradient of its own rows only, and the ranks drift apart.
    The tests use it to show that they fail without synchronization.
    """
    if model.strategy == "ddp":
        model.module.register_comm_hook(None, _no_all_reduce)
    else:
        for m in _fsdp_modules(model):
            m.set_custom_reduce_scatter(_LocalOnlyReduceScatter())
        model.sync = False
    return model


# ---- one run: train a method on N ranks, measure, compare -----------------------------------------------

@dataclass
class RunConfig:
    method: str = "lora"  # a registered method (python -m peftlab methods)
    strategy: str = "ddp"  # ddp, fsdp-zero2 or fsdp-zero3
    steps: int = 4  # optimizer steps
    batch_size: int = 8  # global batch: every rank runs batch_size / N rows
    lr: float | None = None  # default: the method's learning rate in the registry
    task: str = "new_people"  # target task (peftlab.world.TASKS)
    seed: int = 0
    dtype: str = "float32"  # float64 makes rounding noise negligible (see test_distributed.py)
    options: dict = field(default_factory=dict)  # the method's config overrides


def method_model(cfg: RunConfig):
    """``(model, tokenizer, train config, examples)`` of a run, before any wrapping: the single-process reference uses it too."""
    method = get_method(cfg.method)
    model, tokenizer = load_base("tiny", dtype=getattr(torch, cfg.dtype))
    examples = get_task(cfg.task).train_examples(4 * cfg.batch_size * cfg.steps, seed=cfg.seed)
    # the examples too, as compare passes them: the Fisher mask sums its scores over them
    context = RunContext(task=cfg.task, examples=examples, tokenizer=tokenizer, total_steps=cfg.steps, seed=cfg.seed)
    set_seed(cfg.seed)  # the method's random initialization (LoRA's A) is the same on every rank
    # the returned model: prefix and prompt tuning return a wrapper that holds their trainable parameters
    model = method.apply(model, context=context, **cfg.options)
    # the method's own train options (full_wd's weight decay, full_replay's replay) come with its config
    train_cfg = method.train_config(lr=cfg.lr, steps=cfg.steps, batch_size=cfg.batch_size, seed=cfg.seed,
                                    warmup=min(10, cfg.steps), mixed_precision=True)
    return model, tokenizer, train_cfg, examples


def run(cfg: RunConfig, world: Dist | None = None, break_sync: bool = False) -> dict:
    """Train ``cfg.method`` with ``cfg.strategy`` on every rank (call it on every rank); per-rank bytes and the final weights.

    Returns (on every rank) ``measured`` and ``estimate`` (bytes by bucket for this rank), the loss
    curve, and ``state``: the whole trained weights (``full_state_dict``).
    """
    world = world or setup()
    cuda = world.device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(world.device)
    model, tokenizer, train_cfg, examples = method_model(cfg)
    counts = count_parameters(model)
    parallel = wrap(model, cfg.strategy, world)
    if break_sync:
        break_gradient_sync(parallel)
    probe = LocalBytes()
    result = train(parallel, tokenizer, examples, train_cfg, hooks=[probe], progress=False)
    measured = probe.breakdown(cfg.strategy, label=f"rank {world.rank} measured")
    estimate = estimate_per_rank(counts.trainable, counts.total - counts.trainable, cfg.strategy, world.world_size,
                                 replicated=bool(parallel.replicated), label=f"ZeRO-{STRATEGIES[cfg.strategy][0]} estimate")
    return {"rank": world.rank, "world_size": world.world_size, "strategy": cfg.strategy, "method": cfg.method,
            "measured": measured, "estimate": estimate, "losses": result.losses, "model": parallel,
            "seconds_per_step": result.seconds_per_step,
            "cuda_peak": torch.cuda.max_memory_allocated(world.device) if cuda else None,
            "state": full_state_dict(parallel)}


def main(argv: list[str] | None = None) -> int:
    """The torchrun entry point: train, print the per-rank tables on rank 0, optionally save what the tests check."""
    parser = argparse.ArgumentParser(prog="torchrun --standalone --nproc_per_node=N -m peftlab.distributed")
    parser.add_argument("--method", default="lora", help="registered method(s), comma-separated")
    parser.add_argument("--strategy", default="all", help="ddp, fsdp-zero2, fsdp-zero3, comma-separated, or all")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=8, help="global batch (divisible by the number of ranks)")
    parser.add_argument("--task", default="new_people")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"], help="weights' dtype")
    parser.add_argument("--options", default="{}", help="JSON of method config overrides, by method name")
    parser.add_argument("--out", default=None, help="folder for each run's weights and bytes (for tests)")
    parser.add_argument("--save-lora", action="store_true",
                        help="also save the LoRA adapters of methods with LoRA layers, from the sharded model, to --out")
    parser.add_argument("--break-sync", action="store_true", help="skip the gradient collective (to watch tests fail)")
    args = parser.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    world = setup()
    strategies = list(STRATEGIES) if args.strategy == "all" else [s.strip() for s in args.strategy.split(",")]
    options = json.loads(args.options)
    for method in [m.strip() for m in args.method.split(",")]:
        if not get_method(method).trains:  # the untouched reference row: no gradient, nothing to synchronize
            if world.rank == 0:
                print(f"{method} trains no parameter ({get_method(method).description}): nothing to distribute\n",
                      flush=True)
            continue
        for strategy in strategies:
            cfg = RunConfig(method=method, strategy=strategy, steps=args.steps, batch_size=args.batch_size,
                            task=args.task, dtype=args.dtype, options=options.get(method, {}))
            result = run(cfg, world, break_sync=args.break_sync)
            gathered = [None] * world.world_size
            summary = {k: result[k] for k in ("rank", "world_size", "strategy", "method", "measured", "estimate", "losses",
                                              "seconds_per_step", "cuda_peak")}
            summary["dtype"] = args.dtype
            dist.all_gather_object(gathered, summary)
            if args.out:
                out = Path(args.out) / f"{method}-{strategy}"
                out.mkdir(parents=True, exist_ok=True)
                if args.save_lora:
                    with unsharded(result["model"]) as inner:
                        if world.rank == 0 and lora_layers(inner):  # the methods with LoRA layers: lora, qlora
                            save_lora(inner, out / "adapter")
                # every rank writes its own copy of the whole weights: the tests check that the ranks agree
                torch.save(result["state"], out / f"state-rank{world.rank}.pt")
                if world.rank == 0:
                    rows = [{"rank": g["rank"], **{f"measured_{b}": getattr(g["measured"], b) for b in BYTE_ROWS},
                             **{f"estimate_{b}": getattr(g["estimate"], b) for b in BYTE_ROWS},
                             "notes": g["measured"].notes, "losses": g["losses"],
                             "seconds_per_step": g["seconds_per_step"], "cuda_peak": g["cuda_peak"]} for g in gathered]
                    (out / "ranks.json").write_text(json.dumps(rows, indent=1) + "\n")
            if world.rank == 0:
                print(format_rank_table(gathered) + "\n", flush=True)
            dist.barrier()
    dist.destroy_process_group()
    return 0


def torchrun_command(nproc: int, args: list[str]) -> list[str]:
    """``torchrun --standalone --nproc_per_node=N -m peftlab.distributed ARGS`` with this Python."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            "-m", "peftlab.distributed", *args]


def launch(nproc: int, args: list[str], capture: bool = False, timeout: float | None = None) -> subprocess.CompletedProcess:
    """Run ``main`` under torchrun with ``nproc`` processes (one CPU thread each unless OMP_NUM_THREADS says otherwise).

    torchrun and its ranks run in a session of their own, so a timeout stops all of them, not only torchrun.
    """
    import signal

    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), "PYTHONUNBUFFERED": "1"}
    pipe = subprocess.PIPE if capture else None
    command = torchrun_command(nproc, args)
    with subprocess.Popen(command, env=env, stdout=pipe, stderr=pipe, text=True, start_new_session=True) as process:
        try:
            stdout, stderr = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
            raise
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


if __name__ == "__main__":
    sys.exit(main())
