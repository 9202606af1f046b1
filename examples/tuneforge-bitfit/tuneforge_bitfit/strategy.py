"""`bitfit` strategy: only the bias terms train (Ben Zaken et al., 2022), every weight matrix
stays frozen.

Llama-style models have no bias parameters at all, so plain BitFit would train nothing there.
With `include_norms` (the default) the normalization weights train as well: an RMSNorm weight is
a per-channel scale, the multiplicative counterpart of a bias and the closest thing such a model
has. With `include_norms: false` and a model without biases nothing would train, and
`prepare_model` refuses with a ValueError instead of silently running a no-op.

A tiny fraction of the parameters trains (about 0.1% of a 7B model), so optimizer state and the
tuned diff are small; expect it to adapt a capable base to a format or task, not to teach a
randomly initialised model much. The saved checkpoint is complete (all weights), so it loads and
registers like the output of `full`. Select it with:

    tuneforge run deployments/presets/tiny-cpu.yaml --set train.strategy=bitfit
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import torch
from pydantic import BaseModel, ConfigDict, Field

from tuneforge.plugins import Capabilities, Example, TuningStrategy, tokenize_prompt_response

_NORM_TYPES = (
    torch.nn.LayerNorm,
    torch.nn.GroupNorm,
    torch.nn.RMSNorm,
    torch.nn.modules.batchnorm._BatchNorm,
)


class BitFitSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    include_norms: bool = Field(
        True,
        description=(
            "Also train the weights of normalization layers (LayerNorm, RMSNorm, ...). Needed "
            "for models without biases (Llama, Mistral, Qwen); a few thousand parameters a layer."
        ),
    )
    train_prompt: bool = Field(
        False,
        description=(
            "Loss on the prompt tokens too, not only on the response. With so few trainable "
            "parameters the capacity is better spent on the answers."
        ),
    )


def is_norm(module: torch.nn.Module) -> bool:
    """True for normalization layers, including model-specific ones such as `LlamaRMSNorm`,
    which subclass `nn.Module` directly and are recognised by their class name."""
    return isinstance(module, _NORM_TYPES) or type(module).__name__.lower().endswith("norm")


def bitfit_parameters(model: torch.nn.Module, include_norms: bool) -> dict[str, torch.nn.Parameter]:
    """The parameters BitFit trains, by name: every module's own `bias`, and with
    `include_norms` every parameter of a normalization layer."""
    selected: dict[str, torch.nn.Parameter] = {}
    for module_name, module in model.named_modules():
        prefix = f"{module_name}." if module_name else ""
        for name, param in module.named_parameters(recurse=False):
            if name == "bias" or (include_norms and is_norm(module)):
                selected[prefix + name] = param
    return selected


class BitFitStrategy(TuningStrategy):  # the contract, with its optional members' defaults
    name: ClassVar[str] = "bitfit"
    description: ClassVar[str] = (
        "BitFit: only biases (and, by default, normalization weights) train; response-only loss."
    )
    Settings: ClassVar[type[BaseModel]] = BitFitSettings
    # Prompt/response records, and raw text (data.schema: text), which the training loop
    # tokenizes itself; check_strategy exercises both.
    capabilities: ClassVar[Capabilities] = Capabilities(chat=True, text=True)

    def __init__(self, settings: BitFitSettings) -> None:
        self.settings = settings

    def prepare_model(self, model: Any) -> Any:
        targets = bitfit_parameters(model, self.settings.include_norms)
        if not targets:
            what = "bias or normalization" if self.settings.include_norms else "bias"
            hint = "" if self.settings.include_norms else " (set include_norms: true)"
            raise ValueError(
                f"bitfit: {type(model).__name__} has no {what} parameters, so nothing would "
                f"train{hint}"
            )
        model.requires_grad_(False)
        for param in targets.values():
            param.requires_grad_(True)
        return model

    def build_example(self, record: dict[str, Any], tokenizer: Any, max_length: int) -> Example:
        return tokenize_prompt_response(
            record, tokenizer, max_length, train_prompt=self.settings.train_prompt
        )

    def save(self, model: Any, tokenizer: Any, out_dir: Path) -> None:
        # A complete checkpoint (safetensors, transformers' default), not a diff of the
        # trained vectors: it loads, evaluates and registers like any other model.
        model.save_pretrained(out_dir)
        tokenizer.save_pretrained(out_dir)
