"""`rouge_l` evaluator: ROUGE-L F1, the longest common subsequence of words between answer and
expected (Google's `rouge-score` package): partial credit where exact match gives none."""

from __future__ import annotations

from functools import cached_property
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict


class RougeLSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RougeL:
    name: ClassVar[str] = "rouge_l"
    description: ClassVar[str] = "ROUGE-L F1: longest common subsequence of words."
    Settings: ClassVar[type[BaseModel]] = RougeLSettings
    higher_is_better: ClassVar[bool] = True

    def __init__(self, settings: RougeLSettings) -> None:
        self.settings = settings

    @cached_property
    def _scorer(self) -> Any:
        from rouge_score import rouge_scorer

        return rouge_scorer.RougeScorer(["rougeL"])

    def score(self, expected: str, answer: str, record: dict[str, Any]) -> float:
        return self._scorer.score(expected, answer)["rougeL"].fmeasure
