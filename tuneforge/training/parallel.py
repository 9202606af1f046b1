"""How a model is spread over the processes of a torch.distributed run: DDP or FSDP.

DDP keeps a full replica of the weights, gradients and optimizer state on every process and
averages gradients after backward: the fastest choice whenever the model fits on one device.
FSDP (PyTorch's `fully_shard`) splits all three across processes and gathers each decoder
layer's weights only while that layer runs: per-device memory drops to about 1/N of the
replica, paid for with an all-gather per layer in forward and backward.

Both average gradients over ranks, so the token-mean loss scaling in `losses.py` gives
the same gradients as one process under either.
"""

from __future__ import annotations

from typing import Any

import torch

from tuneforge.training.architectures import transformers_model

# torch.distributed's FSDP and checkpoint modules are imported where they are used: together
# they cost about 1.4 s of start-up in every process that imports the training engine, and
# only distributed runs need them.


def wrap(model: Any, parallel: str) -> Any:
    """Wraps `model` for the current process group; returns what the training loop calls."""
    if parallel == "ddp":
        return torch.nn.parallel.DistributedDataParallel(model)
    from torch.distributed.fsdp import fully_shard

    # One FSDP unit per transformer block (the classes transformers never splits across
    # devices), then the root for embeddings, final norm and head.
    blocks = set(getattr(transformers_model(model), "_no_split_modules", None) or [])
    for module in model.modules():
        if type(module).__name__ in blocks:
            fully_shard(module)
    fully_shard(model)
    return model


def full_state_dict(model: Any, parallel: str) -> dict[str, torch.Tensor] | None:
    """The unsharded weights on CPU, for saving; a collective every rank must call under FSDP.

    None for DDP, whose module already holds full weights.
    """
    if parallel == "ddp":
        return None
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(
        model, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
    )
