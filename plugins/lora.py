"""`lora` strategy: PEFT LoRA adapters on a frozen base, loss on the response only.

Only the low-rank adapter matrices train, so optimizer state and the saved artifact are tiny
and the base stays bit-identical. LoRA adapts what the base already knows: on a randomly
initialised base it learns next to nothing, so start from a trained model (a local checkpoint
or `models:/NAME@champion`). QLoRA (`quantize_4bit`) is not supported yet and is refused when
the config is validated.

    tuneforge run deployments/presets/tiny-cpu-lora.yaml
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from tuneforge.plugins import Example, tokenize_prompt_response

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
    # Not available yet: refused at config time rather than silently training in full
    # precision (issue 15 builds it).
    quantize_4bit: bool = Field(
        False, description="QLoRA: a 4-bit base through bitsandbytes (not supported yet)."
    )

    @model_validator(mode="after")
    def _qlora_is_refused(self) -> LoraSettings:
        if self.quantize_4bit:
            import torch

            if not torch.cuda.is_available():
                raise ValueError("quantize_4bit (QLoRA) needs a CUDA GPU; none is available here")
            raise ValueError("quantize_4bit (QLoRA): 4-bit loading is not supported yet")
        return self


def target_modules(model: Any, setting: list[str] | str | None) -> list[str] | str:
    if setting is not None:
        return setting
    return DEFAULT_TARGETS.get(model.config.model_type, "all-linear")


class LoraStrategy:
    name: ClassVar[str] = "lora"
    description: ClassVar[str] = (
        "LoRA: low-rank adapters on a frozen base, loss on the response only; "
        "saves the adapter alone."
    )
    Settings: ClassVar[type[BaseModel]] = LoraSettings
    # Raw text (data.schema: text) trains causal-LM loss on every token, in blocks.
    trains_text: ClassVar[bool] = True

    def __init__(self, settings: LoraSettings) -> None:
        self.settings = settings

    def prepare_model(self, model: Any) -> Any:
        from peft import LoraConfig, get_peft_model

        config = LoraConfig(
            r=self.settings.rank,
            lora_alpha=self.settings.alpha,
            lora_dropout=self.settings.dropout,
            target_modules=target_modules(model, self.settings.target_modules),
            task_type="CAUSAL_LM",
        )
        return get_peft_model(model, config)

    def build_example(self, record: dict[str, Any], tokenizer: Any, max_length: int) -> Example:
        return tokenize_prompt_response(record, tokenizer, max_length, train_prompt=False)

    def save(self, model: Any, tokenizer: Any, out_dir: Path) -> None:
        model.save_pretrained(out_dir)  # adapter_config.json + adapter_model.safetensors
        tokenizer.save_pretrained(out_dir)
        if self.settings.merge_export:
            merged = model.merge_and_unload()
            merged.save_pretrained(out_dir / "merged")
            tokenizer.save_pretrained(out_dir / "merged")
