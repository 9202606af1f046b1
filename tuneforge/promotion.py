"""The promotion gate: whether a tuned model may take the `champion` alias, from its scores and
those of its base and the current champion on the same eval rows.

    alias, reason = decide(tuned, base, champion, registry_config)

A version becomes champion when there is none yet or when it beats both the base (by
`registry.min_improvement_over_base`) and the champion (by `registry.min_improvement`) on
`registry.metric`, and passes the paired checks against the base (`paired_gate`:
`registry.min_correct` rows answered exactly, a one-sided exact sign test at
`registry.max_p_value`); otherwise it is challenger. Plain functions: the registering task
reads the scores and moves the alias.
"""

from __future__ import annotations

import math
from typing import Any

from tuneforge import lineage
from tuneforge.config import RegistryConfig


def _gain(candidate: float, reference: float, higher_is_better: bool) -> float:
    return candidate - reference if higher_is_better else reference - candidate


def decide(
    candidate: float,
    base: float | None,
    champion: float | None,
    cfg: RegistryConfig,
    paired_failure: str | None = None,
) -> tuple[bool, str]:
    """Whether the candidate should become champion, and why (one sentence).

    It must beat the base by more than `min_improvement_over_base`, pass the paired checks
    against the base (`paired_failure`: `registry.min_correct`, `registry.max_p_value`), and
    beat the current champion (if any) by more than `min_improvement`, on `tuned.<metric>` in
    the configured direction.
    """
    metric, up = cfg.metric, cfg.higher_wins
    if base is not None and _gain(candidate, base, up) <= cfg.min_improvement_over_base:
        margin = (
            f" by more than {cfg.min_improvement_over_base}"
            if cfg.min_improvement_over_base
            else ""
        )
        return False, f"{metric}={candidate:.4f} does not beat the base's {base:.4f}{margin}"
    if paired_failure:
        return False, f"{metric}={candidate:.4f} beats the base, but {paired_failure}"
    if champion is None:
        return True, f"no current champion; {metric}={candidate:.4f}"
    if _gain(candidate, champion, up) <= cfg.min_improvement:
        margin = f" by more than {cfg.min_improvement}" if cfg.min_improvement else ""
        return False, f"{metric}={candidate:.4f} does not beat champion's {champion:.4f}{margin}"
    return True, f"{metric}={candidate:.4f} beats champion's {champion:.4f}"


def _subset(rows: list[dict[str, Any]], metric: str) -> list[dict[str, Any]]:
    """The rows `metric` is computed on: all, a task family's, held-in / held-out ones, or an
    `evaluation.groups` group's."""
    _, _, narrowed = metric.partition(".")
    if not narrowed:
        return rows
    if narrowed in ("held_in", "held_out"):
        return [r for r in rows if r.get("held_out") == (narrowed == "held_out")]
    if any(narrowed in r.get("groups", ()) for r in rows):
        return [r for r in rows if narrowed in r.get("groups", ())]
    return [r for r in rows if lineage.metric_safe(r.get("task") or "untagged") == narrowed]


def sign_test_p(wins: int, losses: int) -> float:
    """One-sided exact sign test: the chance of at least `wins` of `wins + losses` differing
    rows going the candidate's way if neither model were better. On per-row exact match this
    is McNemar's exact test."""
    n = wins + losses
    return sum(math.comb(n, k) for k in range(wins, n + 1)) / 2**n if n else 1.0


def paired_gate(
    base_rows: list[dict[str, Any]], tuned_rows: list[dict[str, Any]], cfg: RegistryConfig
) -> str | None:
    """Why the candidate fails `registry.min_correct` or `registry.max_p_value` against the
    base on the same eval rows, or None when it passes (or neither is asked for)."""
    tuned = _subset(tuned_rows, cfg.metric)
    base = {r["row"]: r for r in _subset(base_rows, cfg.metric)}
    answered = [r for r in tuned if "exact" in r]  # raw text has no answers to count
    if cfg.min_correct and answered:
        correct = sum(bool(r["exact"]) for r in answered)
        if correct < cfg.min_correct:
            return (
                f"only {correct} of {len(answered)} eval rows answered exactly "
                f"(registry.min_correct={cfg.min_correct})"
            )
    if cfg.max_p_value is None:
        return None
    family = cfg.metric.split(".", 1)[0]
    # Per row: `exact` for exact match, the evaluator's own value, or the loss (both losses).
    key = {"exact_match": "exact", "eval_loss": "loss", "perplexity": "loss"}.get(family, family)
    sign = 1 if cfg.higher_wins else -1
    wins = losses = 0
    for row in tuned:
        other = base.get(row["row"])
        if other is None or row.get(key) is None or other.get(key) is None:
            continue
        difference = sign * (float(row[key]) - float(other[key]))
        wins += difference > 0
        losses += difference < 0
    p = sign_test_p(wins, losses)
    if p > cfg.max_p_value:
        return (
            f"not significantly better than the base on {len(tuned)} eval rows (sign test on "
            f"per-row {key}: {wins} better, {losses} worse, p={p:.3g} > "
            f"registry.max_p_value={cfg.max_p_value:g})"
        )
    return None
