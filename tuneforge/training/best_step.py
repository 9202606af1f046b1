"""Periodic evaluation during training, and keeping the best step's weights (`train.eval_every`).

The training loop asks `due(step)`, calls `evaluate` then, and before saving `restore`s the
best step's trainable weights; a checkpoint carries them (`weights`) so a resumed run keeps
the best step found before the crash (`resume`).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from tuneforge.plugins.exact_match import ExactMatch
from tuneforge.prompts import split_turns
from tuneforge.records import is_text
from tuneforge.serving import generate_answers
from tuneforge.training.losses import response_loss


def exact_match(records: list[dict[str, Any]], answers: list[str]) -> float:
    """The share of `answers` equal to their record's expected answer (the `exact_match`
    evaluator's score, averaged)."""
    metric = ExactMatch(ExactMatch.Settings())
    scores = [metric.score(split_turns(r)[1], a, r) for r, a in zip(records, answers, strict=True)]
    return sum(scores) / len(scores)


class BestStep:
    """Scores the model every `every` steps on held-back records, and keeps a copy of the
    trainable weights of the best step so that step is what gets saved.

    Best means the highest greedy exact match, ties broken by the lower eval loss (on small
    data exact match is often tied, at 0.0 early on, and the first of equals is not the one
    to keep); raw-text records have no answer to match, so there it is the eval loss alone.
    Only trainable parameters are copied (for LoRA: the adapters alone), so this costs little
    memory. With `every == 0` or no records it does nothing and the last step is kept.
    """

    def __init__(
        self, records: list[dict[str, Any]], tokenizer: Any, every: int, max_length: int
    ) -> None:
        self.records, self.tokenizer, self.every = records, tokenizer, every
        self.max_length = max_length
        self.chat = [r for r in records if not is_text(r)]
        self.best_score, self.best_step = -1.0, 0
        self.best_loss = math.inf
        self.history: list[tuple[int, float | None, float]] = []  # step, exact match, loss
        self._weights: dict[str, torch.Tensor] = {}

    def due(self, step: int, last: bool) -> bool:
        return bool(self.records and self.every) and (step % self.every == 0 or last)

    def evaluate(self, model: Any, step: int) -> dict[str, float]:
        model.eval()
        loss = response_loss(model, self.tokenizer, self.records, self.max_length, bs=48)
        value = None
        if self.chat:
            answers = generate_answers(model, self.tokenizer, self.chat, max_new_tokens=24, bs=48)
            value = exact_match(self.chat, answers)
        model.train()
        self.history.append((step, value, loss))
        # >=: of two steps scoring exactly the same, the later one (trained longer) is kept.
        if (value or 0.0, -loss) >= (self.best_score, -self.best_loss):
            self.best_score, self.best_loss, self.best_step = value or 0.0, loss, step
            self._weights = {
                n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad
            }
        scores = {"train.eval_loss": loss}
        return scores | ({"train.eval_exact_match": value} if value is not None else {})

    def resume(
        self, step: int, score: float, loss: float, weights: dict[str, torch.Tensor]
    ) -> None:
        """Takes back the best step found before a crash (from a training checkpoint)."""
        self.best_step, self.best_score, self.best_loss = step, score, loss
        self._weights = weights

    @property
    def weights(self) -> dict[str, torch.Tensor]:
        return self._weights

    def restore(self, model: Any) -> None:
        """Puts the best step's weights back (a no-op when the last step was the best)."""
        with torch.no_grad():
            for name, param in model.named_parameters():
                if name in self._weights:
                    param.copy_(self._weights[name])
