"""`full` strategy: every weight trains, causal-LM loss on every token of the formatted example.

The most expressive and the most expensive option: optimizer state is twice the model size, and
the tuned model is a complete copy. Use it for continued training / domain adaptation, or when
the base is small. Select it with `train.strategy: full`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, model_validator

from tuneforge.plugins import (
    Capabilities,
    Example,
    TuningStrategy,
    tokenize_prompt_response,
    tokenize_prompt_responses,
)


class FullSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _checkpointing_moved(cls, data: Any) -> Any:
        if isinstance(data, dict) and "gradient_checkpointing" in data:
            raise ValueError(
                "gradient_checkpointing is now train.gradient_checkpointing (every strategy)"
            )
        return data


class FullStrategy(TuningStrategy):
    name: ClassVar[str] = "full"
    description: ClassVar[str] = "Full fine-tuning: all weights train, loss on every token."
    Settings: ClassVar[type[BaseModel]] = FullSettings
    # Raw text (data.schema: text) trains causal-LM loss on every token, in blocks.
    capabilities: ClassVar[Capabilities] = Capabilities(chat=True, text=True)

    def __init__(self, settings: FullSettings) -> None:
        self.settings = settings

    def prepare_model(self, model: Any) -> Any:
        model.requires_grad_(True)
        return model

    def build_example(self, record: dict[str, Any], tokenizer: Any, max_length: int) -> Example:
        return tokenize_prompt_response(record, tokenizer, max_length, train_prompt=True)

    def build_examples(
        self, records: list[dict[str, Any]], tokenizer: Any, max_length: int
    ) -> list[Example]:
        return tokenize_prompt_responses(records, tokenizer, max_length, train_prompt=True)

    def save(self, model: Any, tokenizer: Any, out_dir: Path) -> None:
        model.save_pretrained(out_dir)
        tokenizer.save_pretrained(out_dir)
