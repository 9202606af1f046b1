"""The promotion gate's paired checks against the base (tuneforge/promotion.py): a minimum of
exactly answered eval rows and an exact sign test on the rows where base and tuned differ."""

from __future__ import annotations

from math import comb

import pytest

from tuneforge.config import RegistryConfig
from tuneforge.promotion import decide, paired_gate, sign_test_p


def _rows(exact: list[int], loss: list[float] | None = None, held_out=None) -> list[dict]:
    rows = []
    for i, hit in enumerate(exact):
        row = {"row": i + 1, "task": "t", "exact": bool(hit), "rouge_l": float(hit)}
        row["loss"] = loss[i] if loss else 1.0
        if held_out is not None:
            row["held_out"] = held_out[i]
        rows.append(row)
    return rows


def test_sign_test_is_the_exact_binomial_tail():
    assert sign_test_p(0, 0) == 1.0
    assert sign_test_p(5, 0) == 1 / 32
    assert sign_test_p(7, 3) == pytest.approx(sum(comb(10, k) for k in range(7, 11)) / 1024)
    assert sign_test_p(3, 7) > 0.9


def test_one_right_answer_in_240_is_not_enough():
    base, tuned = _rows([0] * 240), _rows([1] + [0] * 239)
    cfg = RegistryConfig(min_correct=5)

    reason = paired_gate(base, tuned, cfg)

    assert reason == "only 1 of 240 eval rows answered exactly (registry.min_correct=5)"
    promote, why = decide(1 / 240, 0.0, None, cfg, reason)
    assert not promote and why.startswith("exact_match=0.0042 beats the base, but only 1 of 240")


def test_a_win_on_few_rows_is_not_significant_and_a_clear_one_is():
    cfg = RegistryConfig(max_p_value=0.05)
    base = _rows([0] * 40)

    small = paired_gate(base, _rows([1, 1, 1] + [0] * 37), cfg)  # p = 1/8
    clear = paired_gate(base, _rows([1] * 8 + [0] * 32), cfg)  # p = 1/256

    assert small is not None and "3 better, 0 worse, p=0.125 > registry.max_p_value=0.05" in small
    assert clear is None


def test_rows_both_models_get_right_or_wrong_do_not_count():
    cfg = RegistryConfig(max_p_value=0.05)
    base = _rows([1] * 30 + [0] * 10)
    tuned = _rows([1] * 30 + [1] * 5 + [0] * 5)  # 5 better, none worse: p = 1/32

    assert paired_gate(base, tuned, cfg) is None


def test_a_loss_metric_is_tested_on_per_row_loss():
    cfg = RegistryConfig(metric="eval_loss", max_p_value=0.05, min_correct=5)
    base = _rows([0] * 10, loss=[3.0] * 10)
    tuned = _rows([0] * 10, loss=[2.0] * 9 + [4.0])  # 9 better, 1 worse: p = 11/1024

    assert paired_gate(base, tuned, cfg) == (
        "only 0 of 10 eval rows answered exactly (registry.min_correct=5)"
    )
    assert paired_gate(base, tuned, RegistryConfig(metric="eval_loss", max_p_value=0.05)) is None


def test_raw_text_has_no_answers_to_count():
    text = [{"row": i, "task": None, "loss": 2.0} for i in range(10)]
    base = [dict(r, loss=3.0) for r in text]

    assert paired_gate(base, text, RegistryConfig(metric="eval_loss", min_correct=5)) is None


def test_a_narrowed_metric_tests_its_own_rows():
    held_out = [True] * 10 + [False] * 30
    base = _rows([0] * 40, held_out=held_out)
    tuned = _rows([0] * 10 + [1] * 30, held_out=held_out)  # wins only on held-in rows
    cfg = RegistryConfig(metric="exact_match.held_out", max_p_value=0.05)

    reason = paired_gate(base, tuned, cfg)

    assert reason is not None and "on 10 eval rows" in reason and "0 better, 0 worse" in reason
    held_in = RegistryConfig(metric="exact_match.held_in", max_p_value=0.05, min_correct=5)
    assert paired_gate(base, tuned, held_in) is None
