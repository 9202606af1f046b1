"""The output head and cross-entropy over the trained positions, a chunk at a time.

At a real vocabulary the logits dominate training memory: 2,048 trained tokens x 151,936
(Qwen2) x 4 bytes is 1.2 GB of float32 logits, and as much again for their gradient, more than
the activations of the whole 0.5B model. Here the decoder runs once, and the head and the loss
run on `train.loss_chunk_tokens` trained positions at a time under activation checkpointing:
each chunk's logits are recomputed in the backward pass instead of kept, so peak memory holds
one chunk's logits, not all of them. The loss is the same sum (float rounding aside); the
price is the head's matrix product once more in the backward pass. Evaluation scores its
per-token losses the same way, a chunk at a time (`token_losses`, no gradient).

Only for transformers' own code of the architectures whose head is a plain projection
(`architectures.VERIFIED`, no logit softcapping or scaling) and adapters that do not add
tokens; any other model computes its logits as before (`chunk_unsupported`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.checkpoint import checkpoint

from tuneforge.training.architectures import VERIFIED, library_code, transformers_model


def chunk_unsupported(model: Any) -> str | None:
    """Why this model's loss cannot be computed in chunks here (None: it can)."""
    inner = transformers_model(model)
    config = inner.config
    if not library_code(inner) or config.model_type not in VERIFIED:
        return f"{type(inner).__name__} is not verified for a chunked output head"
    for scaled in ("final_logit_softcapping", "logit_scale", "logits_scaling"):
        if getattr(config, scaled, None) not in (None, 1, 1.0):
            return f"its output head applies {scaled}"
    peft = getattr(model, "peft_config", {}).get("default")
    if peft is not None and peft.is_prompt_learning:
        return "its adapter adds virtual tokens to the input"
    return None


def _head_loss(
    head: torch.nn.Module, hidden: torch.Tensor, targets: torch.Tensor, reduction: str = "sum"
) -> torch.Tensor:
    logits = head(hidden).float()
    return torch.nn.functional.cross_entropy(logits, targets, reduction=reduction)


def _kept_hidden(model: Any, inputs: dict[str, Any], keep: torch.Tensor) -> tuple[Any, Any]:
    """The decoder's last hidden states at the positions `keep` selects, and the head."""
    inner = transformers_model(model)
    body = {k: v for k, v in inputs.items() if k != "logits_to_keep"}
    return inner.base_model(**body).last_hidden_state[keep], inner.get_output_embeddings()


def chunked_head_loss(
    model: Any, inputs: dict[str, Any], keep: torch.Tensor, targets: torch.Tensor, chunk: int
) -> torch.Tensor:
    """The summed cross-entropy of `targets` at the positions `keep` selects, with the head
    applied `chunk` positions at a time (one piece when they fit in one chunk)."""
    hidden, head = _kept_hidden(model, inputs, keep)
    if hidden.size(0) <= chunk:
        return _head_loss(head, hidden, targets)
    total = hidden.new_zeros((), dtype=torch.float32)
    for part, wanted in zip(hidden.split(chunk), targets.split(chunk), strict=True):
        total = total + checkpoint(_head_loss, head, part, wanted, use_reentrant=False)
    return total


def token_losses(
    model: Any, inputs: dict[str, Any], keep: torch.Tensor, targets: torch.Tensor, chunk: int
) -> torch.Tensor:
    """The cross-entropy of each of `targets` at the positions `keep` selects, the head
    applied `chunk` positions at a time (for evaluation: no gradient is kept)."""
    hidden, head = _kept_hidden(model, inputs, keep)
    parts = zip(hidden.split(chunk), targets.split(chunk), strict=True)
    return torch.cat([_head_loss(head, h, y, "none") for h, y in parts])
