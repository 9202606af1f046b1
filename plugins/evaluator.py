"""The contract every evaluation metric fulfils, built-in or third-party.

An evaluator is a class registered under the `tuneforge.evaluators` entry-point group:

    [project.entry-points.'tuneforge.evaluators']
    json_valid = "my_package.metrics:JsonValid"

Evaluation generates one greedy answer per eval row; an evaluator scores each answer against
the expected one. The evaluation owns the rest: the mean over all rows, per task family, for
held-in and held-out families and named groups (`<name>`, `<name>.<task>`, `<name>.held_out`,
...), the per-row values the promotion gate's paired test reads, the MLflow metrics.
`registry.metric` can name any of them (`registry.metric: json_valid.held_out`).

A second kind, `BenchmarkEvaluator` (below), scores the model itself on tasks of its own (the
built-in `lm_eval` runs lm-evaluation-harness tasks): configured under `evaluation.benchmarks`,
logged as `bench.<task>.<metric>`, and guarded against regressions by `registry.guards`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
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


@dataclass(frozen=True)
class BenchmarkResult:
    """What a benchmark evaluator found on one model.

    Attributes:
        metrics: `task.metric` -> the task's score (e.g. `guard_uppercase.exact_match`);
            tuneforge logs them as `<label>.bench.<task>.<metric>`.
        higher_is_better: `task.metric` -> its direction, for each of `metrics`.
        samples: one row per scored document and metric, for the paired test of a guard and
            for inspection: `{"metric": "task.metric", "doc_id": 3, "value": 1.0, ...}` (any
            other keys, e.g. the target and the response, are kept as they are).
    """

    metrics: dict[str, float]
    higher_is_better: dict[str, bool]
    samples: list[dict[str, Any]] = field(default_factory=list)


@runtime_checkable
class BenchmarkEvaluator(Protocol):
    """An evaluator that scores the model itself on tasks of its own (a benchmark harness),
    not each answer to the eval split: what a retrain must not forget, checked by the
    promotion gate's guards (`registry.guards`). Subclass it: that is how tuneforge tells the
    two kinds of evaluator apart. Instances are built as `Evaluator(settings)`, from
    `evaluation.benchmarks.<name>`, validated by its `Settings`."""

    name: ClassVar[str]
    description: ClassVar[str]
    Settings: ClassVar[type[BaseModel]]

    def metrics(self) -> dict[str, bool]:
        """Every metric `evaluate` will report, `task.metric` -> whether higher is better.
        Called when a run's config is checked, before any training: a task, file or metric
        that does not exist raises a ValueError in one line naming it and what exists."""
        ...

    def evaluate(self, model: Any, tokenizer: Any) -> BenchmarkResult:
        """Scores the model (in memory, in evaluation mode) on the configured tasks."""
        ...


def is_benchmark(cls: type) -> bool:
    """Whether an evaluator class scores the model (a `BenchmarkEvaluator`) rather than
    answers (an `Evaluator`)."""
    return isinstance(cls, type) and BenchmarkEvaluator in cls.__mro__
