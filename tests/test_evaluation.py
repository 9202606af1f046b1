"""Evaluation: exact match scoring and the metrics of a real (tiny) model."""

from __future__ import annotations

import math

import pytest

from tuneforge.config import EvalConfig
from tuneforge.evaluation import evaluate_records, score
from tuneforge.models import load_pretrained
from tuneforge.serving import generate_answers


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
        "rouge_l": pytest.approx(2 / 3),
        "rouge_l.a": 0.5,
        "rouge_l.b": 1.0,
    }
    assert [r["exact"] for r in rows] == [True, False, True]
    assert rows[1] == {
        "row": 2,
        "task": "a",
        "prompt": "q",
        "expected": "Y",
        "answer": "nope",
        "exact": False,
        "rouge_l": 0.0,
    }


def test_rouge_l_gives_partial_credit_for_word_overlap():
    metrics, _ = score([_record(1, "a", "egg ring fork")], ["egg fork"])
    assert metrics["exact_match"] == 0.0
    assert metrics["rouge_l"] == pytest.approx(0.8)  # LCS 2 words: P=1, R=2/3


def test_held_out_families_are_reported_apart_from_held_in_ones():
    records = [_record(1, "a", "X"), _record(2, "b", "Y"), _record(3, "c", "Z")]
    metrics, _ = score(records, ["X", "Y", "no"], holdout_tasks=["c"])
    assert metrics["exact_match.held_in"] == 1.0
    assert metrics["exact_match.held_out"] == 0.0
    assert metrics["exact_match"] == pytest.approx(2 / 3)


def test_named_groups_of_families_are_reported_and_gate_on_their_rows():
    from tuneforge.config import RegistryConfig
    from tuneforge.promotion import paired_gate

    records = [_record(1, "a", "X"), _record(2, "b", "Y"), _record(3, "c", "Z")]
    metrics, _ = score(records, ["X", "no", "Z"], ["b", "c"], groups={"unseen": ["b", "c"]})
    assert metrics["exact_match.unseen"] == 0.5 == metrics["exact_match.held_out"]
    assert "exact_match.unseen" in metrics and "rouge_l.unseen" in metrics
    # The gate's rows for exact_match.unseen are the group's: rows 2 and 3, not row 1.
    base = [{"row": i, "exact": False, "groups": g} for i, g in ((1, []), (2, ["u"]), (3, ["u"]))]
    tuned = [{**r, "exact": r["row"] == 1} for r in base]
    gate = RegistryConfig(metric="exact_match.u", min_correct=1, max_p_value=None)
    assert "only 0 of 2 eval rows" in paired_gate(base, tuned, gate)


def test_evaluate_records_reports_loss_perplexity_and_match(tiny_model_dir, bundled_records):
    cfg = EvalConfig(max_examples=12, max_new_tokens=4, batch_size=5)
    scores = evaluate_records(tiny_model_dir, bundled_records, cfg, max_length=64)
    metrics, rows = scores.metrics, scores.rows
    assert scores.bench_rows == []  # no evaluation.benchmarks
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


def test_capped_evaluation_covers_every_family_even_when_sorted():
    from tuneforge.records import spread

    records = [_record(i, "a", "x") for i in range(10)] + [
        _record(10 + i, "b", "y") for i in range(3)
    ]
    picked = spread(records, 6)
    assert [r["task"] for r in picked] == ["a", "b", "a", "b", "a", "b"]
    assert [r["row"] for r in picked if r["task"] == "a"] == [0, 1, 2]  # source order kept
    assert spread(records, 100) and len(spread(records, 100)) == 13


def test_task_names_are_made_safe_for_metric_keys():
    metrics, _ = score([_record(1, "Q&A?", "x"), _record(2, "b", "y")], ["x", "y"])
    assert metrics["exact_match.Q_A_"] == 1.0


def test_record_losses_are_the_same_with_the_head_in_chunks(
    tiny_model_dir, bundled_records, monkeypatch
):
    from tuneforge.models import load_pretrained
    from tuneforge.training import losses

    model, tokenizer = load_pretrained(tiny_model_dir)
    records = bundled_records[:12]
    monkeypatch.setattr(losses, "EVAL_CHUNK", 7)  # several chunks per batch
    chunked = losses.record_losses(model, tokenizer, records, 64, 5)
    monkeypatch.setattr(losses, "chunk_unsupported", lambda model: "whole logits")
    whole = losses.record_losses(model, tokenizer, records, 64, 5)
    assert [n for _, n in chunked] == [n for _, n in whole] and all(n for _, n in whole)
    assert [s for s, _ in chunked] == pytest.approx([s for s, _ in whole], rel=1e-5)
