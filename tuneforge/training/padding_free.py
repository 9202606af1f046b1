"""Padding-free training batches: a step computes on real tokens only.

The usual dynamic padding (`tuneforge.batching.collate`, and what `transformers.Trainer` does)
right-pads every example to the longest in its batch. Every linear layer then also multiplies the
padding: 17-24% of the tokens computed on the bundled data. Here the batch's examples are laid end
to end in one row instead, with positions restarting at 0 for each example, so embeddings,
projections, MLPs and the output head see real tokens only.

Attention must not cross from one example into the next. For that the model's attention
implementation is swapped for `attention_forward` below, which scatters queries, keys and values
back into a padded `(examples, heads, longest, head_dim)` block for just the attention product
(a few percent of a step for short examples), runs PyTorch's `scaled_dot_product_attention`
with `is_causal=True` (right padding sits after every real token, so causal attention never sees
it and needs no mask), and gathers the real positions back. Only the training forward passes
the example layout (`tuneforge_slots`); any other call (evaluation, generation) is the stock SDPA
attention, unchanged.

The loss is the same sum over the same trained tokens as the padded batch; gradients agree to
float rounding (tests/training/test_padding_free.py). Models qualify when they are transformers'
own code of a verified architecture (`VERIFIED`) using its attention interface; a sliding window
shorter than `max_length` does not qualify (the padded attention here has no window). Anything
else trains with padded batches, as before.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from tuneforge.batching import IGNORE_INDEX, Example
from tuneforge.training.architectures import VERIFIED, library_code, transformers_model

ATTENTION = "tuneforge_padding_free"


def attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """Attention for one row of examples laid end to end (`tuneforge_slots` given), else SDPA.

    `query` is `(1, heads, tokens, head_dim)`; `tuneforge_slots[i]` is where token i sits in the
    padded `(examples x longest)` layout, `tuneforge_shape` is `(examples, longest)`.
    """
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    slots = kwargs.pop("tuneforge_slots", None)
    shape = kwargs.pop("tuneforge_shape", None)
    if slots is None:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    rows, width = shape
    # Attention variants this function does not implement: refuse rather than compute wrong.
    extras = [k for k in ("softcap", "s_aux", "position_bias") if kwargs.get(k) is not None]
    if kwargs.get("is_causal") is False or not getattr(module, "is_causal", True):
        extras.append("non-causal attention")
    window = kwargs.get("sliding_window")
    if extras or (window is not None and window < width):
        raise NotImplementedError(f"padding-free attention: {extras or 'sliding window'}")

    def padded(states: torch.Tensor) -> torch.Tensor:
        heads, dim = states.shape[1], states.shape[3]
        flat = states[0].transpose(0, 1)  # (tokens, heads, head_dim)
        block = flat.new_zeros(rows * width, heads, dim).index_copy(0, slots, flat)
        return block.view(rows, width, heads, dim).transpose(1, 2)

    q, k, v = padded(query), padded(key), padded(value)
    grouped = q.shape[1] != k.shape[1]  # fewer key/value heads than query heads
    out = torch.nn.functional.scaled_dot_product_attention(
        q, k, v, dropout_p=dropout, scale=scaling, is_causal=True, enable_gqa=grouped
    )
    heads, dim = out.shape[1], out.shape[3]
    out = out.transpose(1, 2).reshape(rows * width, heads, dim).index_select(0, slots)
    return out.unsqueeze(0), None  # (1, tokens, heads, head_dim), as transformers expects


def _mask(**kwargs: Any) -> torch.Tensor | None:
    """The SDPA mask, except for a padding-free row (no attention mask given): no mask at all.
    Without this, transformers would spot the restarting positions and build a tokens x tokens
    block mask that `attention_forward` does not need."""
    from transformers.masking_utils import sdpa_mask

    if kwargs.get("attention_mask") is None:
        return None
    return sdpa_mask(**kwargs)


def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(ATTENTION, attention_forward)
    AttentionMaskInterface.register(ATTENTION, _mask)


def unsupported_reason(model: Any, max_length: int) -> str | None:
    """Why this model cannot train padding-free (None: it can)."""
    inner = transformers_model(model)
    config = inner.config
    if not library_code(inner):
        return f"{type(inner).__name__} is custom model code, not transformers' own"
    if config.model_type not in VERIFIED:
        return f"model type {config.model_type!r} is not verified for padding-free batches"
    if not inner._can_set_attn_implementation():
        return f"{type(inner).__name__} cannot swap its attention implementation"
    if getattr(config, "_attn_implementation", None) not in ("sdpa", "eager", ATTENTION):
        return f"attention implementation {config._attn_implementation!r} was chosen"
    if "position_ids" not in inspect.signature(inner.forward).parameters:
        return f"{type(inner).__name__}.forward takes no position_ids"
    if not takes_logits_to_keep(model):
        return f"{type(inner).__name__}.forward takes no logits_to_keep"
    if getattr(config, "attn_logit_softcapping", None) is not None:
        return "its attention caps logits (softcapping)"
    window = getattr(config, "sliding_window", None)
    if window is not None and window < max_length:
        return f"its sliding attention window ({window}) is shorter than train.max_length"
    return None


def takes_logits_to_keep(model: Any) -> bool:
    """Whether the model can compute the output head on chosen positions only, given as a
    boolean mask: transformers' own models do (`slice_logits_to_keep`); custom model code
    written for older versions takes the argument but slices with it in ways a mask breaks."""
    inner = transformers_model(model)
    parameters = inspect.signature(inner.forward).parameters
    return library_code(inner) and "logits_to_keep" in parameters


@contextmanager
def attention(model: Any) -> Iterator[None]:
    """Swaps in `attention_forward` for the block; the saved config never names it."""
    inner = transformers_model(model)
    before = inner.config._attn_implementation
    _register()
    try:
        inner.set_attn_implementation(ATTENTION)
        # transformers only logs a warning when it cannot swap: attention would then run across
        # the examples of the row. Never train like that.
        if inner.config._attn_implementation != ATTENTION:
            raise RuntimeError(f"{type(inner).__name__} did not take the padding-free attention")
        yield
    finally:
        inner.set_attn_implementation(before)


def row_multiple(precision: str) -> int:
    """What a padding-free row's length is rounded up to (see `collate_flat`).

    Under bf16 on CPUs, oneDNN compiles and caches a kernel for every new matrix shape, and a
    padding-free row has a new length nearly every step: +200-260 MB of cached kernels on the
    benchmark. Rounding up to a multiple of 16 tokens bounds the shapes (memory back to the
    padded run's, speed unchanged within noise); fp32 needs no rounding.
    """
    return 16 if precision == "bf16" else 1


def collate_flat(examples: list[Example], multiple: int = 1, pad_id: int = 0) -> dict[str, Any]:
    """One row of the examples' real tokens, positions restarting per example.

    Each example's first label is set to IGNORE_INDEX: it is the target of the previous example's
    last token, which a padded batch never trains (and a first token is never a target anyway).

    With `multiple`, the row is filled up to a multiple of that many tokens with `pad_id`, as
    one more example that trains nothing and that no other example attends to: fewer distinct
    shapes from step to step.
    """
    tail = -sum(len(e.input_ids) for e in examples) % multiple
    if tail:
        examples = [*examples, Example([pad_id] * tail, [IGNORE_INDEX] * tail)]
    width = max(len(e.input_ids) for e in examples)
    input_ids: list[int] = []
    labels: list[int] = []
    positions: list[int] = []
    slots: list[int] = []
    for row, e in enumerate(examples):
        n = len(e.input_ids)
        input_ids += e.input_ids
        labels += [IGNORE_INDEX, *e.labels[1:]]
        positions += range(n)
        slots += range(row * width, row * width + n)
    return {
        "input_ids": torch.tensor([input_ids]),
        "labels": torch.tensor([labels]),
        "position_ids": torch.tensor([positions]),
        "tuneforge_slots": torch.tensor(slots),
        "tuneforge_shape": (len(examples), width),
    }
