"""`exact_match` evaluator: 1 when the answer equals the expected one after trimming
surrounding whitespace, else 0. Always scored: the promotion gate's `registry.min_correct`
counts its rows, and periodic evaluation during training keeps the best step by it."""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict


class ExactMatchSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ExactMatch:
    name: ClassVar[str] = "exact_match"
    description: ClassVar[str] = "1 if the answer equals the expected one (trimmed), else 0."
    Settings: ClassVar[type[BaseModel]] = ExactMatchSettings
    higher_is_better: ClassVar[bool] = True

    def __init__(self, settings: ExactMatchSettings) -> None:
        self.settings = settings

    def score(self, expected: str, answer: str, record: dict[str, Any]) -> float:
        return float(answer.strip() == expected.strip())
