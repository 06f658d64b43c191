"""The probe: one real training step, its bytes counted tensor by tensor (and, on CUDA, the peak)."""
from __future__ import annotations

import torch

from ..utils import unique_parameters
from .breakdown import MemoryBreakdown



def _tensor_bytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def weight_bytes(model) -> int:
    """Bytes of the parameters (each shared tensor once), plus a 4-bit weight's quantization state."""
    total = 0
    for p in unique_parameters(model):
        total += _tensor_bytes(p)
        state = getattr(p, "quant_state", None)  # bitsandbytes Params4bit: absmax, nested scales
        if state is not None:
            for t in (getattr(state, "absmax", None), getattr(getattr(state, "state2", None), "absmax", None)):
                if torch.is_tensor(t):
                    total += _tensor_bytes(t)
    for module in model.modules():  # peftlab's 4-bit layers keep the packed weight in buffers, not parameters
        stored = getattr(module, "stored_bytes", None)
        if callable(stored):
            total += stored()
    return total


def adamw_8bit(model_or_params, lr: float = 1e-3, weight_decay: float = 0.0, **kwargs) -> torch.optim.Optimizer:
    """bitsandbytes' 8-bit AdamW over the trainable parameters (Dettmers et al. 2022, "8-bit Optimizers
    via Block-wise Quantization"): both Adam states stored as 1 byte each with one fp32 absmax per block
    of 256 values (``ADAM8BIT_STATE_BYTES``), dequantized for each update and quantized again.

    Pass it to ``measure_training_memory(..., optimizer=adamw_8bit(model))`` to see its state bytes next
    to fp32 AdamW's. bitsandbytes keeps 32-bit states for tensors under ``min_8bit_size`` (4096)
    values; that is its default and kept here. The paged variant (``bnb.optim.PagedAdamW8bit``, states in
    CUDA unified memory that can spill to the CPU) needs a GPU.
    """
    try:
        import bitsandbytes as bnb
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("8-bit AdamW needs bitsandbytes (pip install bitsandbytes)") from err
    params = model_or_params.parameters() if isinstance(model_or_params, torch.nn.Module) else model_or_params
    trainable = [p for p in params if p.requires_grad]
    return bnb.optim.AdamW8bit(trainable, lr=lr, weight_decay=weight_decay, **kwargs)


def optimizer_state_bytes(optimizer: torch.optim.Optimizer, local=None) -> int:
    """Bytes of the optimizer's per-parameter state tensors, each tensor once (the one count of them:
    the training loop, the probe and ``peftlab.distributed`` all use it).

    The ``step`` counters (one scalar per parameter tensor) are left out: they are not bytes per
    parameter, and the estimator does not count them. ``local`` maps a state tensor to the part this
    process holds (a DTensor's local shard under FSDP2). Tensors are counted by their elements, not
    their storages: under DDP a state's storage may not expose a data pointer.
    """
    seen: dict[int, int] = {}
    for state in optimizer.state.values():
        for key, value in state.items():
            if key != "step" and torch.is_tensor(value) and value.numel():
                part = local(value) if local is not None else value
                seen.setdefault(id(value), part.numel() * part.element_size())
    return sum(seen.values())


def probe_training_step(model, batch: dict, optimizer: torch.optim.Optimizer | None = None, *,
                        mixed_precision: bool = False, loss_fn=None, label: str = "probe") -> MemoryBreakdown:
    """Run one real training step (forward, backward, optimizer step) and count its bytes.

    - weights: every parameter (shared ones once);
    - gradients: every ``.grad`` after backward;
    - optimizer: the optimizer's state tensors after the step (``optimizer_state_bytes``);
    - activations: every tensor autograd saves for backward, caught by
      ``torch.autograd.graph.saved_tensors_hooks`` and counted by its storage, once per storage
      (views share a storage; parameters' storages are weights, not activations);
    - peak, on CUDA: ``torch.cuda.max_memory_allocated`` over the step (it also sees temporaries).

    ``optimizer`` defaults to the training loop's AdamW over the trainable parameters. The model is
    updated by the step (use ``measure_training_memory`` to leave it unchanged).
    """
    from ..train import TrainConfig, make_optimizer
    from ..utils import get_autocast_dtype

    params = unique_parameters(model)
    param_storages = {p.untyped_storage().data_ptr() for p in params}
    optimizer = optimizer if optimizer is not None else make_optimizer(model, TrainConfig())
    device = params[0].device
    batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
    saved: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        try:
            storage = tensor.untyped_storage()
        except (RuntimeError, NotImplementedError):  # tensors without a storage (e.g. sparse) are not counted
            return tensor
        ptr = storage.data_ptr()
        if ptr not in param_storages and ptr not in saved:
            saved[ptr] = storage.nbytes()
        return tensor

    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    amp_dtype = get_autocast_dtype(device) if mixed_precision else None
    model.train()
    optimizer.zero_grad(set_to_none=True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            loss = loss_fn(model, batch) if loss_fn is not None else model(**batch).loss
    activations = sum(saved.values())
    loss.backward()
    gradients = sum(_tensor_bytes(p.grad) for p in params if p.grad is not None)
    optimizer.step()
    peak = None
    if cuda:
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device)
    state = optimizer_state_bytes(optimizer)
    optimizer.zero_grad(set_to_none=True)
    trainable = sum(p.numel() for p in params if p.requires_grad)
    return MemoryBreakdown(label, weights=weight_bytes(model), gradients=gradients, optimizer=state,
                           activations=activations, peak=peak, trainable=trainable,
                           params=sum(p.numel() for p in params),
                           notes={"tokens": int(batch["input_ids"].numel()) if "input_ids" in batch else None})


def measure_training_memory(model, tokenizer_or_batch, examples=None, *, batch_size: int = 16,
                            max_length: int = 256, optimizer: torch.optim.Optimizer | None = None,
                            mixed_precision: bool = False, seed: int = 0, label: str = "measured") -> MemoryBreakdown:
    """Measured bytes of one training step of ``model`` as it stands, leaving it as it was.

    Call it after a method's ``apply`` and before training. ``tokenizer_or_batch`` is either a batch
    (a dict with ``input_ids``, ``attention_mask``, ``labels``) or a tokenizer, with ``examples``
    (``peftlab.world.Example``) from which the first shuffled batch of ``batch_size`` is made, exactly
    as the training loop would. The trainable weights are restored after the step, gradients cleared,
    a throw-away optimizer (default: the loop's AdamW) used, and the random state left untouched.
    Training hooks (``model.peftlab_hooks``) are not called. A model with nothing trainable gets its
    weights only. Pass ``mixed_precision=True`` to run the step under the loop's autocast (GPU).
    ``result.as_columns()`` gives ``weight_bytes``, ``grad_bytes``, ``optimizer_bytes``,
    ``activation_bytes``, ``step_bytes``, ``peak_bytes`` (None off CUDA).
    """
    from ..data import batches

    if isinstance(tokenizer_or_batch, dict):
        batch = tokenizer_or_batch
    else:
        if not examples:
            raise ValueError("measure_training_memory needs examples with a tokenizer (or pass a batch dict)")
        batch = next(batches(tokenizer_or_batch, examples, batch_size, seed=seed, max_length=max_length))
    trainable = [p for p in unique_parameters(model) if p.requires_grad]
    if not trainable:  # nothing trains (the untouched base): only the weights are held
        params = unique_parameters(model)
        return MemoryBreakdown(label, weights=weight_bytes(model), trainable=0,
                               params=sum(p.numel() for p in params), notes={"nothing trains": True})
    snapshot = [p.detach().clone() for p in trainable]
    was_training = model.training
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    try:
        with torch.random.fork_rng(devices=devices):
            result = probe_training_step(model, batch, optimizer, mixed_precision=mixed_precision, label=label)
    finally:
        with torch.no_grad():
            for p, saved in zip(trainable, snapshot):
                p.copy_(saved)
                p.grad = None
        model.train(was_training)
    return result
