"""Which model code the engine's fast paths (padding-free batches, the chunked output head)
are verified on, and how to reach transformers' own model inside a wrapper."""

from __future__ import annotations

from typing import Any

# Architectures whose padding-free loss and gradients, and chunked-head loss, are tested equal
# to padded batches and whole logits (tests/training/test_padding_free.py). Others may carry
# features these paths do not implement (chunked attention, mask overlays for image tokens,
# scaled logits, ...): they train padded, with whole logits.
VERIFIED = frozenset({"llama", "mistral", "qwen2", "qwen3", "gpt2", "phi3", "gemma"})


def transformers_model(model: Any) -> Any:
    """The `PreTrainedModel` inside a PEFT (or DDP/FSDP-unwrapped) wrapper, or the model."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def library_code(inner: Any) -> bool:
    """Whether `inner` is transformers' own code (not a checkpoint's custom code)."""
    return type(inner).__module__.startswith("transformers.")
