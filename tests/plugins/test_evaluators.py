"""Evaluator plugins: the built-ins through the `tuneforge.evaluators` entry points, their
conformance, configuration checked up front, and any evaluator aggregated like the built-ins."""

from __future__ import annotations

from typing import Any, ClassVar

import pytest
from pydantic import BaseModel, ConfigDict

from tests.conftest import PRESET
from tuneforge.config import ConfigError, load_config
from tuneforge.evaluation import EvaluatorError, score
from tuneforge.plugins import discovery
from tuneforge.plugins.exact_match import ExactMatch
from tuneforge.plugins.rouge_l import RougeL
from tuneforge.plugins.testing import check_evaluator


class _Settings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Shorter:
    """Test evaluator: 1 when the answer is no longer than the expected one; batch-scored."""

    name: ClassVar[str] = "shorter"
    description: ClassVar[str] = "answer no longer than expected"
    Settings: ClassVar[type[BaseModel]] = _Settings
    higher_is_better: ClassVar[bool] = True

    def __init__(self, settings: _Settings) -> None:
        self.settings = settings

    def score(self, expected: str, answer: str, record: dict[str, Any]) -> float:
        return float(len(answer) <= len(expected))

    def score_batch(self, expected: list[str], answers: list[str], records: list) -> list[float]:
        return [self.score(e, a, r) for e, a, r in zip(expected, answers, records, strict=True)]


class Broken(Shorter):
    def score(self, expected: str, answer: str, record: dict[str, Any]) -> float:
        raise KeyError("no model loaded")

    score_batch = None  # type: ignore[assignment]


def _record(row: int, task: str, answer: str) -> dict:
    return {
        "row": row,
        "task": task,
        "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": answer}],
    }


def test_builtins_are_registered_through_the_entry_point_group_and_keep_the_contract():
    found = discovery.discover_evaluators().plugins
    assert found["exact_match"].cls is ExactMatch and found["rouge_l"].cls is RougeL
    assert found["exact_match"].package == "tuneforge"
    for cls in (ExactMatch, RougeL, Shorter):
        check_evaluator(cls)


def test_the_check_names_what_an_evaluator_gets_wrong():
    class Backwards(Shorter):
        def score(self, expected: str, answer: str, record: dict[str, Any]) -> float:
            return float(answer != expected)

        score_batch = None  # type: ignore[assignment]

    with pytest.raises(AssertionError, match=r"scores 0\.0, worse than an empty answer"):
        check_evaluator(Backwards)
    with pytest.raises(AssertionError, match="returned bool, not a number"):

        class Boolean(Backwards):
            def score(self, expected: str, answer: str, record: dict[str, Any]) -> float:
                return answer == expected  # type: ignore[return-value]

        check_evaluator(Boolean)


def test_any_evaluator_is_aggregated_per_family_and_held_out_and_kept_per_row():
    records = [_record(1, "a", "X"), _record(2, "b", "Y"), _record(3, "c", "Z")]
    evaluators = [
        ("exact_match", ExactMatch(ExactMatch.Settings())),
        ("shorter", Shorter(_Settings())),
    ]
    metrics, rows = score(records, ["X", "too long", "Z"], ["c"], evaluators=evaluators)
    assert metrics["shorter"] == pytest.approx(2 / 3) and metrics["shorter.b"] == 0.0
    assert metrics["shorter.held_out"] == 1.0 and metrics["exact_match.held_in"] == 0.5
    assert "rouge_l" not in metrics  # only what was asked for
    assert [r["shorter"] for r in rows] == [1.0, 0.0, 1.0] and rows[0]["exact"] is True


def test_a_failing_evaluator_is_one_line_naming_it(monkeypatch):
    info = discovery.PluginInfo("broken", Broken, "pkg-x", "1.2", "x:Broken", "evaluator")
    monkeypatch.setattr(discovery, "evaluator_info", lambda name: info)
    with pytest.raises(
        EvaluatorError, match=r"^evaluator 'broken' \(pkg-x 1.2\): score: 'no model"
    ):
        score([_record(1, "a", "X")], ["X"], evaluators=[("broken", Broken(_Settings()))])


@pytest.mark.parametrize(
    ("overrides", "phrase"),
    [
        (
            ["evaluation.metrics=[bleu]"],
            "unknown evaluator 'bleu'; available: exact_match, rouge_l",
        ),
        (
            ["registry.metric=bleu"],
            "unknown metric 'bleu'; use one of eval_loss, perplexity, preference_accuracy, "
            "reward_accuracy, reward_margin, exact_match",
        ),
        (
            ["evaluation.metrics=[]", "registry.metric=rouge_l"],
            "rouge_l is not scored; add it to evaluation.metrics",
        ),
        (
            ["evaluation.metric_settings={rouge_l: {x: 1}}"],
            "evaluation.metric_settings.rouge_l.x: unknown key",
        ),
        (
            ["evaluation.metric_settings={json: {}}"],
            "metric_settings.json: not among the scored metrics",
        ),
    ],
)
def test_evaluation_metrics_are_checked_before_any_work(overrides, phrase):
    with pytest.raises(ConfigError) as info:
        load_config(PRESET, overrides)
    assert phrase in str(info.value) and "\n" not in str(info.value)


def test_the_gate_reads_a_plugin_metrics_per_row_values_and_direction():
    from tuneforge.config import RegistryConfig
    from tuneforge.promotion import paired_gate

    base = [{"row": i, "exact": False, "rouge_l": 0.1} for i in range(8)]
    tuned = [{**r, "rouge_l": 0.9} for r in base]
    gate = RegistryConfig(metric="rouge_l", max_p_value=0.05)
    assert paired_gate(base, tuned, gate) is None  # 8 wins, 0 losses: p = 1/256
    assert "8 better" not in (paired_gate(tuned, base, gate) or "")
    assert "0 better, 8 worse" in paired_gate(tuned, base, gate)
