"""`simpo` strategy: SimPO (Meng et al. 2024), preference pairs without a reference model.

The implicit reward is the answer's *mean* log-probability per token, scaled by `beta`; the
loss asks the chosen answer's to beat the rejected one's by at least `gamma`:
-log sigmoid(beta x (mean logp chosen - mean logp rejected) - gamma). No reference model: no
second forward pass and no reference memory, at the price of nothing holding the model near
where it started but the data (use fewer steps or a lower learning rate than for dpo).
Averaging per token removes DPO's pull towards longer answers. The formula is TRL's CPO
trainer's `loss_type="simpo"` with `cpo_alpha=0` (its SimPO).

    tuneforge run deployments/presets/tiny-cpu-dpo.yaml --set train.strategy=simpo \
        --set train.settings.beta=2.0
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from pydantic import BaseModel, Field

from tuneforge.plugins import PreferenceLogps, PreferenceSettings, PreferenceStrategy

if TYPE_CHECKING:  # torch loads when a loss runs, not when strategies are listed
    import torch


class SimpoSettings(PreferenceSettings):
    beta: float = Field(
        2.0,
        gt=0,
        description=(
            "Scale of the per-token reward (the paper uses 2.0-2.5): larger sharpens the "
            "preference, with no reference to hold the model back."
        ),
    )
    gamma: float = Field(
        0.5,
        ge=0,
        description=(
            "Target reward margin (in the reward's units, beta x nats per token): the chosen "
            "answer must win by this much before a pair stops pulling. 0 reduces to a "
            "length-normalised, reference-free DPO."
        ),
    )


def simpo_losses(logps: PreferenceLogps, beta: float, gamma: float) -> torch.Tensor:
    """Each pair's SimPO loss."""
    import torch

    mean = logps.policy / logps.tokens.clamp(min=1)
    margin = mean[:, 0] - mean[:, 1]
    return -torch.nn.functional.logsigmoid(beta * margin - gamma)


class SimpoStrategy(PreferenceStrategy):
    name: ClassVar[str] = "simpo"
    description: ClassVar[str] = (
        "SimPO on preference pairs: length-normalised reward with a margin, no reference "
        "model; full weights or LoRA."
    )
    Settings: ClassVar[type[BaseModel]] = SimpoSettings
    needs_reference: ClassVar[bool] = False

    def __init__(self, settings: SimpoSettings) -> None:
        self.settings = settings

    def loss(self, logps: PreferenceLogps) -> torch.Tensor:
        return simpo_losses(logps, self.settings.beta, self.settings.gamma)
