"""LoRA adapters as free functions, for every strategy that trains them: `lora`, and the
preference strategies (`dpo`, `simpo`, `kto`) with `train.settings.lora` set.

    settings = LoraSettings(rank=8)
    options = qlora_load_options(settings, "float32")   # from_pretrained options (QLoRA)
    model = add_lora(model, settings)                    # a PeftModel: adapters train, base frozen
    save_adapter(model, tokenizer, out_dir, settings)    # the adapter alone, safetensors
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

# peft 0.21 still calls a transformers 5 API that warns on every model load.
warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing", category=FutureWarning)

# Attention projections per architecture (the usual, cheap choice); "all-linear" adds the MLP.
DEFAULT_TARGETS = {
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "mistral": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "qwen2": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "gpt2": ["c_attn", "c_proj"],
}


class LoraSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    rank: int = Field(
        8,
        ge=1,
        le=1024,
        description="Rank of the update: higher fits more, costs more, overfits small data sooner.",
    )
    alpha: float = Field(
        16.0, gt=0, description="The update is scaled by alpha / rank; 2x rank is usual."
    )
    dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the adapters' input.")
    target_modules: list[str] | Literal["all-linear"] | None = Field(
        None,
        description=(
            "Layers that get adapters: a list of module names; 'all-linear' (every linear "
            "layer but the output head); null: the attention projections of known "
            "architectures (llama, mistral, qwen2, gpt2), else all linear layers."
        ),
    )
    merge_export: bool = Field(
        False,
        description="Also write base and adapter merged into one checkpoint (merged/ beside it).",
    )
    quantize_4bit: bool = Field(
        False,
        description=(
            "QLoRA: the frozen base's linear layers load as 4-bit nf4 (double quantisation, "
            "computing in model.dtype), about a quarter of bfloat16's memory for the base, at "
            "some quality and speed (dequantising each layer per step). The registered "
            "adapter applies to the unquantised base. Needs bitsandbytes (tuneforge[qlora])."
        ),
    )

    @model_validator(mode="after")
    def _qlora_has_bitsandbytes(self) -> LoraSettings:
        if self.quantize_4bit:
            from importlib.util import find_spec

            if find_spec("bitsandbytes") is None:
                raise ValueError(
                    "quantize_4bit (QLoRA) needs bitsandbytes: pip install 'tuneforge[qlora]'"
                )
        return self


def target_modules(model: Any, setting: list[str] | str | None) -> list[str] | str:
    if setting is not None:
        return setting
    return DEFAULT_TARGETS.get(model.config.model_type, "all-linear")


def qlora_load_options(settings: LoraSettings, dtype: str) -> dict[str, Any]:
    """From_pretrained options for the base: its 4-bit nf4 quantization under QLoRA
    (`quantize_4bit`), computing in `dtype` (`model.dtype`); none otherwise."""
    if not settings.quantize_4bit:
        return {}
    import logging

    import torch
    from transformers import BitsAndBytesConfig

    # On the CPU it notes once that an optional kernels package would be faster: noise.
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)

    compute = torch.float32 if dtype in ("auto", "float32") else getattr(torch, dtype)
    config = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute,
    )
    return {"quantization_config": config}


def add_lora(model: Any, settings: LoraSettings) -> Any:
    """The model wrapped with fresh LoRA adapters (a PeftModel): only they train."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if getattr(model, "is_loaded_in_4bit", False):
        # Norms and embeddings to float32 for stable training; checkpointing is the loop's
        # (train.gradient_checkpointing), not switched on here behind its back.
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)

    config = LoraConfig(
        r=settings.rank,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=target_modules(model, settings.target_modules),
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)


def save_adapter(model: Any, tokenizer: Any, out_dir: Path, settings: LoraSettings) -> None:
    """Writes the adapter (adapter_config.json + adapter_model.safetensors) and the tokenizer;
    with `merge_export`, base and adapter merged into one checkpoint under `merged/` too."""
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    if settings.merge_export:
        merged = model.merge_and_unload()
        merged.save_pretrained(out_dir / "merged")
        tokenizer.save_pretrained(out_dir / "merged")
