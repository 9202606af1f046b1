"""`kto` strategy: KTO (Ethayarajh et al. 2024) on unpaired good/bad feedback.

Feedback a deployed model collects is mostly a thumbs up or down on one answer, not a pair.
KTO learns from that directly: a good answer's implicit reward (beta x log(policy /
reference)) is pushed above a reference point, a bad one's below it. The reference point is
the batch's KL estimate: the mean log-ratio, clamped at 0 and not backpropagated, of answers
given to prompts they do not belong to (each row's prompt with another row's answer; the
training loop builds them). With z that estimate:

    good: w_good x (1 - sigmoid(beta x (log-ratio - z)))
    bad:  w_bad  x (1 - sigmoid(beta x (z - log-ratio)))

the formula of TRL's `KTOTrainer` (`loss_type="kto"`, before TRL 1.16 dropped the trainer).
Weight the rarer label up so that w_good x n_good is within about 1 to 4/3 of w_bad x n_bad
(the paper's advice).

    tuneforge run deployments/presets/tiny-cpu-dpo.yaml --set train.strategy=kto \
        --set data.path=data/feedback.jsonl
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from pydantic import BaseModel, Field

from tuneforge.plugins import (
    Capabilities,
    PreferenceLogps,
    PreferenceSettings,
    PreferenceStrategy,
)

if TYPE_CHECKING:  # torch loads when a loss runs, not when strategies are listed
    import torch


class KtoSettings(PreferenceSettings):
    desirable_weight: float = Field(
        1.0, gt=0, description="Weight of a good answer's loss (w_good)."
    )
    undesirable_weight: float = Field(
        1.0, gt=0, description="Weight of a bad answer's loss (w_bad)."
    )


def kto_losses(
    logps: PreferenceLogps, beta: float, desirable_weight: float, undesirable_weight: float
) -> torch.Tensor:
    """Each feedback row's KTO loss; column 1 of `logps` holds the mismatched answers."""
    import torch

    assert logps.label is not None, "KTO needs labelled feedback"
    ratios = logps.logratios
    kl = ratios[:, 1].mean().clamp(min=0).detach()
    good = desirable_weight * (1 - torch.sigmoid(beta * (ratios[:, 0] - kl)))
    bad = undesirable_weight * (1 - torch.sigmoid(beta * (kl - ratios[:, 0])))
    return torch.where(logps.label, good, bad)


class KtoStrategy(PreferenceStrategy):
    name: ClassVar[str] = "kto"
    description: ClassVar[str] = (
        "KTO on unpaired good/bad feedback (prompt, completion, label) against a frozen "
        "reference; full weights or LoRA."
    )
    Settings: ClassVar[type[BaseModel]] = KtoSettings
    capabilities: ClassVar[Capabilities] = Capabilities(chat=False, feedback=True)

    def __init__(self, settings: KtoSettings) -> None:
        self.settings = settings

    def loss(self, logps: PreferenceLogps) -> torch.Tensor:
        s = self.settings
        return kto_losses(logps, s.beta, s.desirable_weight, s.undesirable_weight)
