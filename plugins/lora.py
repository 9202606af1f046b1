"""`lora` strategy: PEFT LoRA adapters on a frozen base, loss on the response only.

Only the low-rank adapter matrices train, so optimizer state and the saved artifact are tiny
and the base stays bit-identical. LoRA adapts what the base already knows: on a randomly
initialised base it learns next to nothing, so start from a trained model (a local checkpoint
or `models:/NAME@champion`). QLoRA (`quantize_4bit: true`) loads the frozen base in 4 bits
(nf4 with double quantisation, through bitsandbytes: `pip install tuneforge[qlora]`), on CUDA
and on the CPU, and trains float32 adapters on it.

    tuneforge run deployments/presets/tiny-cpu-lora.yaml
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel

from tuneforge.plugins import (
    Capabilities,
    Example,
    LoraSettings,
    TuningStrategy,
    add_lora,
    qlora_load_options,
    save_adapter,
    tokenize_prompt_response,
    tokenize_prompt_responses,
)


class LoraStrategy(TuningStrategy):
    name: ClassVar[str] = "lora"
    description: ClassVar[str] = (
        "LoRA: low-rank adapters on a frozen base, loss on the response only; "
        "saves the adapter alone."
    )
    Settings: ClassVar[type[BaseModel]] = LoraSettings
    # Raw text (data.schema: text) trains causal-LM loss on every token, in blocks.
    capabilities: ClassVar[Capabilities] = Capabilities(chat=True, text=True)

    def __init__(self, settings: LoraSettings) -> None:
        self.settings = settings

    def load_options(self, dtype: str) -> dict[str, Any]:
        """From_pretrained options for the base: its 4-bit quantization under QLoRA."""
        return qlora_load_options(self.settings, dtype)

    def prepare_model(self, model: Any) -> Any:
        return add_lora(model, self.settings)

    def build_example(self, record: dict[str, Any], tokenizer: Any, max_length: int) -> Example:
        return tokenize_prompt_response(record, tokenizer, max_length, train_prompt=False)

    def build_examples(
        self, records: list[dict[str, Any]], tokenizer: Any, max_length: int
    ) -> list[Example]:
        return tokenize_prompt_responses(records, tokenizer, max_length, train_prompt=False)

    def save(self, model: Any, tokenizer: Any, out_dir: Path) -> None:
        save_adapter(model, tokenizer, out_dir, self.settings)
