"""`dpo` strategy: Direct Preference Optimization on preference pairs.

The model learns to raise the chosen answer's log-probability relative to the rejected one's,
both measured against a frozen reference (the model it starts from), so it moves only as far
as `beta` lets it: no reward model, no sampling. `loss_type` picks the published variant:

- `sigmoid` (DPO, Rafailov et al. 2023): -log sigmoid(beta x margin), margin = (chosen's
  log-ratio) - (rejected's log-ratio), each log(policy / reference) summed over the answer;
- `ipo` (Azar et al. 2023): (margin / tokens - 1 / (2 beta))^2, on per-token log-ratios
  (length-normalised as TRL does, so beta means the same at any answer length); it does not
  push the margin to infinity on deterministic preferences;
- `hinge` (SLiC, Zhao et al. 2023): max(0, 1 - beta x margin).

Full weights or LoRA/QLoRA (`lora`); start from a model that already answers (an instruction-
tuned version: `model.source: models:/NAME@champion`), as DPO sharpens preferences, it does not
teach the task. deployments/pipelines/sft-dpo.yaml does both in turn.

    tuneforge run deployments/presets/tiny-cpu-dpo.yaml
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, Literal

from pydantic import BaseModel, Field

from tuneforge.plugins import PreferenceLogps, PreferenceSettings, PreferenceStrategy

if TYPE_CHECKING:  # torch loads when a loss runs, not when strategies are listed
    import torch


class DpoSettings(PreferenceSettings):
    loss_type: Literal["sigmoid", "ipo", "hinge"] = Field(
        "sigmoid",
        description=(
            "sigmoid: DPO's logistic loss (the usual choice); ipo: squared, length-normalised, "
            "stops at a margin of 1/(2 beta) instead of pushing on (noisy or deterministic "
            "preferences overfit less); hinge: SLiC's, zero past a margin of 1/beta."
        ),
    )


def dpo_losses(logps: PreferenceLogps, beta: float, loss_type: str) -> torch.Tensor:
    """Each pair's DPO-family loss (see the module docstring for the formulas)."""
    import torch

    ratios = logps.logratios
    if loss_type == "ipo":
        per_token = ratios / logps.tokens.clamp(min=1)
        margin = per_token[:, 0] - per_token[:, 1]
        return (margin - 1 / (2 * beta)) ** 2
    margin = ratios[:, 0] - ratios[:, 1]
    if loss_type == "hinge":
        return torch.relu(1 - beta * margin)
    return -torch.nn.functional.logsigmoid(beta * margin)


class DpoStrategy(PreferenceStrategy):
    name: ClassVar[str] = "dpo"
    description: ClassVar[str] = (
        "DPO on preference pairs (sigmoid, ipo or hinge loss) against a frozen reference; "
        "full weights or LoRA."
    )
    Settings: ClassVar[type[BaseModel]] = DpoSettings

    def __init__(self, settings: DpoSettings) -> None:
        self.settings = settings

    def loss(self, logps: PreferenceLogps) -> torch.Tensor:
        return dpo_losses(logps, self.settings.beta, self.settings.loss_type)
