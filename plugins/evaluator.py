"""The contract every evaluation metric fulfils, built-in or third-party.

An evaluator is a class registered under the `tuneforge.evaluators` entry-point group:

    [project.entry-points.'tuneforge.evaluators']
    json_valid = "my_package.metrics:JsonValid"

Evaluation generates one greedy answer per eval row; an evaluator scores each answer against
the expected one. The evaluation owns the rest: the mean over all rows, per task family, for
held-in and held-out families and named groups (`<name>`, `<name>.<task>`, `<name>.held_out`,
...), the per-row values the promotion gate's paired test reads, the MLflow metrics.
`registry.metric` can name any of them (`registry.metric: json_valid.held_out`).
"""

from __future__ import annotations

from typing import Any, ClassVar, Protocol, runtime_checkable

from pydantic import BaseModel


@runtime_checkable
class Evaluator(Protocol):
    """What an evaluator provides. Instances are built as `Evaluator(settings)`."""

    name: ClassVar[str]
    description: ClassVar[str]
    # Its own pydantic settings, validated from `evaluation.metric_settings.<name>` before any
    # model is built. Use `extra="forbid"`.
    Settings: ClassVar[type[BaseModel]]
    # Whether a larger score is better: the direction of the promotion gate on this metric.
    higher_is_better: ClassVar[bool]
    # Optional, not part of the checked members: `score_batch(self, expected: list[str],
    # answers: list[str], records: list[dict]) -> list[float]` scores a whole batch at once (a
    # classifier, a remote checker); when present, evaluation calls it instead of `score`.

    def score(self, expected: str, answer: str, record: dict[str, Any]) -> float:
        """One generated `answer` against the `expected` one (`record` is the validated eval
        row, `{"row", "task", "messages"}`): a finite number, usually in [0, 1]."""
        ...
