"""Evaluation: exact match scoring and the metrics of a real (tiny) model."""

from __future__ import annotations

import math

import pytest

from tasks.evaluate import evaluate_records, generate_answers, score
from tasks.model_source import load_pretrained
from tuneforge.config import EvalConfig


def _record(row: int, task: str, answer: str) -> dict:
    return {
        "row": row,
        "task": task,
        "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": answer}],
    }


def test_score_counts_exact_matches_overall_and_per_task():
    records = [_record(1, "a", "X"), _record(2, "a", "Y"), _record(3, "b", "Z")]
    metrics, rows = score(records, [" X\n", "nope", "Z"])
    assert metrics == {
        "exact_match": pytest.approx(2 / 3),
        "exact_match.a": 0.5,
        "exact_match.b": 1.0,
    }
    assert [r["exact"] for r in rows] == [True, False, True]
    assert rows[1] == {"row": 2, "task": "a", "expected": "Y", "answer": "nope", "exact": False}


def test_evaluate_records_reports_loss_perplexity_and_match(tiny_model_dir, bundled_records):
    cfg = EvalConfig(max_examples=12, max_new_tokens=4, batch_size=5)
    metrics, rows = evaluate_records(tiny_model_dir, bundled_records, cfg, max_length=64)
    assert metrics["examples"] == 12 and len(rows) == 12
    # An untrained model over a ~380-token vocabulary: loss near ln(vocab), nothing right.
    assert 4.0 < metrics["eval_loss"] < 7.0
    assert metrics["perplexity"] == pytest.approx(math.exp(metrics["eval_loss"]))
    assert metrics["exact_match"] == 0.0


def test_batched_generation_equals_one_at_a_time(tiny_model_dir, bundled_records):
    # Left padding must not change what the model generates.
    model, tokenizer = load_pretrained(tiny_model_dir)
    records = bundled_records[:6]
    batched = generate_answers(model, tokenizer, records, max_new_tokens=5, bs=6)
    single = [generate_answers(model, tokenizer, [r], max_new_tokens=5, bs=1)[0] for r in records]
    assert batched == single
