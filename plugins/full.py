"""`full` strategy: every weight trains, causal-LM loss on every token of the formatted example.

The most expressive and the most expensive option: optimizer state is twice the model size, and
the tuned model is a complete copy. Use it for continued training / domain adaptation, or when
the base is small. Select it with `train.strategy: full`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

from tuneforge.plugins import Example, tokenize_prompt_response


class FullSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    gradient_checkpointing: bool = Field(
        False,
        description=(
            "Recompute activations in the backward pass instead of storing them: roughly a "
            "third more compute for much less activation memory. Worth it for long sequences."
        ),
    )


class FullStrategy:
    name: ClassVar[str] = "full"
    description: ClassVar[str] = "Full fine-tuning: all weights train, loss on every token."
    Settings: ClassVar[type[BaseModel]] = FullSettings
    # Raw text (data.schema: text) trains causal-LM loss on every token, in blocks.
    trains_text: ClassVar[bool] = True

    def __init__(self, settings: FullSettings) -> None:
        self.settings = settings

    def prepare_model(self, model: Any) -> Any:
        model.requires_grad_(True)
        if self.settings.gradient_checkpointing:
            model.gradient_checkpointing_enable()
        return model

    def build_example(self, record: dict[str, Any], tokenizer: Any, max_length: int) -> Example:
        return tokenize_prompt_response(record, tokenizer, max_length, train_prompt=True)

    def save(self, model: Any, tokenizer: Any, out_dir: Path) -> None:
        model.save_pretrained(out_dir)
        tokenizer.save_pretrained(out_dir)
