"""`instruction` strategy: FLAN-style instruction tuning, loss on the response only.

Each example's user turn is wrapped in one of several instruction templates, picked per example
(deterministically, from the row number and `seed`), then rendered through the model's chat
template when it has one. Phrasing the same request many ways is what lets instruction tuning
generalise to instructions the model never saw. Prompt tokens get label -100: the model learns
to answer, not to reproduce questions.

Optionally only the top `train_top_layers` decoder layers train ("adapt a part, keep the rest"):
cheaper and less forgetful, but it needs a base that already knows something.

    tuneforge run deployments/presets/tiny-cpu-instruction.yaml
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, field_validator

from tuneforge.plugins import Example, TuningStrategy, tokenize_prompt_responses

DEFAULT_TEMPLATES = (
    "{prompt}",
    "Instruction: {prompt}",
    "{prompt}\n\nAnswer briefly.",
    "Task: {prompt}\n\nRespond with the answer only.",
)


class InstructionSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    templates: list[str] = Field(
        default_factory=lambda: list(DEFAULT_TEMPLATES),
        min_length=1,
        description=(
            "Wrappers around the user's request, each with a {prompt} placeholder; one is drawn "
            "per example. More phrasings teach the task rather than the template; '{prompt}' "
            "alone keeps the evaluation format in the mix."
        ),
    )
    train_top_layers: int | None = Field(
        None,
        ge=1,
        description=(
            "Train only the top N decoder layers and the final norm (embeddings and lower "
            "layers stay bit-identical): cheaper, forgets less, learns less. null: every layer."
        ),
    )
    seed: int = Field(0, description="Seed of the template draw.")

    @field_validator("templates")
    @classmethod
    def _templates_have_prompt(cls, templates: list[str]) -> list[str]:
        for template in templates:
            if "{prompt}" not in template:
                raise ValueError(f"template {template!r} has no {{prompt}} placeholder")
        return templates


def decoder_layers(model: Any) -> Any:
    """The model's stack of decoder layers (the ModuleList as long as `num_hidden_layers`)."""
    import torch

    n = model.config.num_hidden_layers
    for _, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == n:
            return module
    raise ValueError(f"cannot find the {n} decoder layers of {type(model).__name__}")


def final_norm(model: Any) -> Any | None:
    """The normalization applied after the last decoder layer, when the model names it `norm`."""
    base = getattr(model, "model", None)
    return getattr(base, "norm", None)


class InstructionStrategy(TuningStrategy):
    name: ClassVar[str] = "instruction"
    description: ClassVar[str] = (
        "Instruction tuning: varied instruction templates, loss on the response only; "
        "optionally only the top N layers train."
    )
    Settings: ClassVar[type[BaseModel]] = InstructionSettings

    def __init__(self, settings: InstructionSettings) -> None:
        self.settings = settings

    def prepare_model(self, model: Any) -> Any:
        top = self.settings.train_top_layers
        if top is None:
            return model.requires_grad_(True)
        layers = decoder_layers(model)
        if top > len(layers):
            raise ValueError(f"train_top_layers={top} but the model has {len(layers)} layers")
        model.requires_grad_(False)
        for layer in layers[-top:]:
            layer.requires_grad_(True)
        norm = final_norm(model)
        if norm is not None:
            norm.requires_grad_(True)
        return model

    def template_for(self, record: dict[str, Any]) -> str:
        key = f"{self.settings.seed}:{record['row']}".encode()
        index = int.from_bytes(hashlib.sha256(key).digest()[:4], "big")
        return self.settings.templates[index % len(self.settings.templates)]

    def build_example(self, record: dict[str, Any], tokenizer: Any, max_length: int) -> Example:
        phrased = [self._phrased(record)]
        return tokenize_prompt_responses(phrased, tokenizer, max_length, train_prompt=False)[0]

    def build_examples(
        self, records: list[dict[str, Any]], tokenizer: Any, max_length: int
    ) -> list[Example]:
        templated = [self._phrased(r) for r in records]
        return tokenize_prompt_responses(templated, tokenizer, max_length, train_prompt=False)

    def _phrased(self, record: dict[str, Any]) -> dict[str, Any]:
        """The record with its last user turn put in the row's template."""
        template = self.template_for(record)
        messages = [dict(m) for m in record["messages"]]
        last_user = max(i for i, m in enumerate(messages) if m["role"] == "user")
        messages[last_user]["content"] = template.replace(
            "{prompt}", messages[last_user]["content"]
        )
        return {**record, "messages": messages}

    def save(self, model: Any, tokenizer: Any, out_dir: Path) -> None:
        model.save_pretrained(out_dir)
        tokenizer.save_pretrained(out_dir)
