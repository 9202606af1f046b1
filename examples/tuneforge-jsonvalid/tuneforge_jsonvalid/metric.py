"""`json_valid`: 1 when the generated answer is valid JSON (an object with `required_keys`,
when some are given), else 0. For models that must answer in JSON: a tool call, a form."""

from __future__ import annotations

import json
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field


class JsonValidSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    required_keys: list[str] = Field(
        [],
        description=(
            "Keys the answer must have (then only a JSON object passes). Empty: any valid "
            "JSON value passes, a bare number or string included."
        ),
    )


class JsonValid:
    name: ClassVar[str] = "json_valid"
    description: ClassVar[str] = "1 if the answer parses as JSON (with required_keys), else 0."
    Settings: ClassVar[type[BaseModel]] = JsonValidSettings
    higher_is_better: ClassVar[bool] = True

    def __init__(self, settings: JsonValidSettings) -> None:
        self.settings = settings

    def score(self, expected: str, answer: str, record: dict[str, Any]) -> float:
        try:
            value = json.loads(answer)
        except ValueError:
            return 0.0
        keys = self.settings.required_keys
        if keys and not (isinstance(value, dict) and all(k in value for k in keys)):
            return 0.0
        return 1.0
