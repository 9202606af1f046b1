"""The `lm_eval` benchmark evaluator (plugins/harness.py): lm-evaluation-harness tasks from
local files on a model in memory, offline; the bundled guard suite (deployments/benchmarks)."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest

from tests.conftest import REPO
from tuneforge.plugins.evaluator import BenchmarkEvaluator, BenchmarkResult
from tuneforge.plugins.harness import HarnessSettings, LmEvalHarness

SUITE = REPO / "deployments" / "benchmarks"
GUARDS = {
    "guard_uppercase.exact_match": True,
    "guard_first_letter.exact_match": True,
    "guard_antonym.acc": True,
}


def _harness(**settings) -> LmEvalHarness:
    return LmEvalHarness(HarnessSettings(**{"path": str(SUITE), **settings}))


def test_the_bundled_suite_lists_its_metrics_with_their_direction():
    assert isinstance(_harness(), BenchmarkEvaluator)
    assert _harness().metrics() == GUARDS
    assert _harness(tasks=["guard_antonym"]).metrics() == {"guard_antonym.acc": True}


def test_the_bundled_suite_data_is_what_its_generator_writes(tmp_path):
    from tuneforge.guard_suite import write_guard_suite

    written = write_guard_suite(tmp_path)
    assert written == {"uppercase.jsonl": 60, "first_letter.jsonl": 60, "antonym.jsonl": 60}
    for name in written:
        assert (tmp_path / "data" / name).read_bytes() == (SUITE / "data" / name).read_bytes()


@pytest.fixture(scope="module")
def scored(tiny_model_dir) -> BenchmarkResult:
    from tuneforge.models import load_pretrained

    model, tokenizer = load_pretrained(tiny_model_dir)
    return _harness(limit=12).evaluate(model.eval(), tokenizer)


def test_a_model_in_memory_is_scored_on_every_task_with_a_row_per_document(scored):
    assert set(scored.metrics) == set(GUARDS) and scored.higher_is_better == GUARDS
    assert all(0.0 <= v <= 1.0 and math.isfinite(v) for v in scored.metrics.values())
    for metric in GUARDS:
        rows = [r for r in scored.samples if r["metric"] == metric]
        assert sorted(r["doc_id"] for r in rows) == list(range(12))  # limit: the first 12
        mean = sum(r["value"] for r in rows) / len(rows)
        assert mean == pytest.approx(scored.metrics[metric])  # the score is the rows' mean
    upper = next(r for r in scored.samples if r["metric"] == "guard_uppercase.exact_match")
    assert upper["target"].isupper() and "response" in upper


def test_the_harness_keeps_the_benchmark_evaluator_contract(tiny_model_dir):
    from tuneforge.plugins.testing import check_benchmark_evaluator

    settings = {"path": str(SUITE), "limit": 4}
    check_benchmark_evaluator(LmEvalHarness, tiny_model_dir, settings)
    with pytest.raises(AssertionError, match=r"must subclass tuneforge\.plugins\.BenchmarkEval"):
        check_benchmark_evaluator(
            type("Plain", (), dict(vars(LmEvalHarness))), tiny_model_dir, settings
        )


def test_the_same_model_scores_the_same_twice(tiny_model_dir, scored):
    from tuneforge.models import load_pretrained

    model, tokenizer = load_pretrained(tiny_model_dir)
    again = _harness(limit=12).evaluate(model.eval(), tokenizer)
    assert again.metrics == scored.metrics
    assert [r["value"] for r in again.samples] == [r["value"] for r in scored.samples]


def test_data_files_are_read_relative_to_the_task_file_from_anywhere(tmp_path, monkeypatch):
    moved = tmp_path / "suite"
    shutil.copytree(SUITE, moved)
    monkeypatch.chdir(tmp_path)  # relative to here, data/ would not exist
    assert LmEvalHarness(HarnessSettings(path=str(moved))).metrics() == GUARDS


def test_an_unknown_task_is_refused_naming_those_there():
    with pytest.raises(ValueError, match=r"tasks: guard_nope not in .*benchmarks \(tasks there: "):
        _harness(tasks=["guard_nope", "guard_antonym"]).metrics()


def test_a_missing_data_file_is_refused_naming_it(tmp_path):
    shutil.copytree(SUITE, tmp_path / "suite")
    (tmp_path / "suite" / "data" / "antonym.jsonl").unlink()
    with pytest.raises(ValueError, match=r"antonym\.jsonl"):
        LmEvalHarness(HarnessSettings(path=str(tmp_path / "suite"))).metrics()


def test_a_missing_path_or_a_folder_without_tasks_is_refused(tmp_path):
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="no such task file or folder"):
        HarnessSettings(path=str(tmp_path / "nowhere"))
    with pytest.raises(ValueError, match="no harness task files"):
        LmEvalHarness(HarnessSettings(path=str(tmp_path))).metrics()


def test_a_task_file_alone_works_and_a_broken_one_is_named(tmp_path):
    single = LmEvalHarness(HarnessSettings(path=str(SUITE / "guard_antonym.yaml")))
    assert single.metrics() == {"guard_antonym.acc": True}
    broken = tmp_path / "broken.yaml"
    broken.write_text("task: [unclosed\n")
    with pytest.raises(ValueError, match=r"broken.yaml: not a readable task file"):
        LmEvalHarness(HarnessSettings(path=str(broken))).metrics()


def test_the_evaluator_is_registered_as_one_that_scores_the_model():
    from typer.testing import CliRunner

    from tuneforge.cli import app

    done = CliRunner().invoke(app, ["evaluators", "--json"])
    assert done.exit_code == 0, done.output
    listed = {e["name"]: e for e in json.loads(done.stdout.strip().splitlines()[-1])}
    assert listed["lm_eval"]["scores"] == "model" and listed["exact_match"]["scores"] == "answers"
    assert set(listed["lm_eval"]["settings"]) >= {"path", "tasks", "limit", "num_fewshot"}


def test_the_cli_scores_a_checkpoint_on_benchmarks_alone(tiny_model_dir):
    from typer.testing import CliRunner

    from tuneforge.cli import app

    args = ["evaluate", str(tiny_model_dir), "--benchmarks", str(SUITE), "--limit", "5"]
    done = CliRunner().invoke(app, [*args, "--task", "guard_antonym", "--json"])
    assert done.exit_code == 0, done.output
    assert list(json.loads(done.stdout.strip().splitlines()[-1])) == ["bench.guard_antonym.acc"]
    wrong = CliRunner().invoke(app, [*args, "--task", "guard_nope", "--json"])
    assert wrong.exit_code == 2
    assert json.loads(wrong.stdout.strip().splitlines()[-1])["error"].startswith(
        "--task: guard_nope not in"
    )


def test_the_suite_files_are_template_sized_and_described():
    for task in SUITE.glob("*.yaml"):
        text = task.read_text()
        assert text.startswith("# ") and "tuneforge evaluate" in text  # says how to run it
    assert sum(1 for _ in Path(SUITE / "data").glob("*.jsonl")) == 3
