"""The promotion gate: whether a tuned model may take the `champion` alias, from its scores and
those of its base and the current champion on the same eval rows.

    alias, reason = decide(tuned, base, champion, registry_config)

A version becomes champion when there is none yet or when it beats both the base (by
`registry.min_improvement_over_base`) and the champion (by `registry.min_improvement`) on
`registry.metric`, and passes the paired checks against the base (`paired_gate`:
`registry.min_correct` rows answered exactly, a one-sided exact sign test at
`registry.max_p_value`); otherwise it is challenger. And it must not lose what the guards
watch (`check_guards`: `registry.guards`, each metric's drop against the champion, else the
base, with a paired sign test on the same rows). Plain functions: the registering task reads
the scores and moves the alias.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from tuneforge import lineage
from tuneforge.config import RegistryConfig, higher_is_better


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
    key = _row_key(cfg.metric)
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


@dataclass(frozen=True)
class GuardResult:
    """One `registry.guards` entry checked: the tuned model's score on a metric it must not
    lose against the reference's (the champion's, else the base's) on the same rows."""

    metric: str
    max_drop: float
    against: str  # "champion v3" or "the base"
    tuned: float | None  # None: the tuned model has no such score
    reference: float | None
    higher_is_better: bool
    worse: int = 0  # rows (documents) where the tuned model scores worse
    better: int = 0
    p_value: float | None = None  # one-sided sign test that the tuned model is worse

    @property
    def drop(self) -> float | None:
        """How much the tuned model lost, in the metric's direction (negative: it gained)."""
        if self.tuned is None or self.reference is None:
            return None
        return _gain(self.reference, self.tuned, self.higher_is_better)

    @property
    def passed(self) -> bool:
        drop = self.drop
        return drop is not None and drop <= self.max_drop

    def describe(self) -> str:
        """`guard bench.x.acc: 0.4200 against champion v3's 0.9100 (drop 0.4900 > 0.05;
        paired: 23 of 30 rows worse, 1 better, p=1.2e-06)`."""
        if self.drop is None:
            missing = "the tuned model" if self.tuned is None else self.against
            return f"guard {self.metric}: not scored for {missing}"
        limit = ">" if self.drop > self.max_drop else "<="
        paired = ""
        if self.p_value is not None:
            paired = (
                f"; paired: {self.worse} rows worse, {self.better} better, p={self.p_value:.3g}"
            )
        return (
            f"guard {self.metric}: {self.tuned:.4f} against {self.against}'s "
            f"{self.reference:.4f} (drop {self.drop:.4f} {limit} {self.max_drop:g}{paired})"
        )

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "drop": self.drop, "passed": self.passed}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GuardResult:
        """Rebuilds a result from `as_dict()` (a version's `tuneforge.guards` tag)."""
        return cls(**{k: v for k, v in data.items() if k not in ("drop", "passed")})


def check_guards(
    guards: dict[str, float],
    tuned: dict[str, float],
    reference: dict[str, float],
    against: str,
    tuned_rows: list[dict[str, Any]],
    reference_rows: list[dict[str, Any]],
) -> list[GuardResult]:
    """Each guard (`metric -> max_drop`) on the tuned model's metrics against the reference's,
    both scored on this run's data. `*_rows` are the per-row scores evaluation wrote: a row per
    eval record (`<label>_scores.jsonl`) and a row per benchmark sample, whose own
    `higher_is_better` gives a benchmark metric's direction (`<label>_bench.jsonl`)."""
    results = []
    for metric, max_drop in guards.items():
        if metric.startswith(f"{lineage.BENCH}."):
            mine = [r for r in tuned_rows if r.get("metric") == metric]
            theirs = {r["doc_id"]: r for r in reference_rows if r.get("metric") == metric}
            up = bool(mine[0]["higher_is_better"]) if mine else True
            pairs = [
                (r["value"], theirs[r["doc_id"]]["value"]) for r in mine if r["doc_id"] in theirs
            ]
        else:
            up = higher_is_better(metric)
            key = _row_key(metric)
            mine = [r for r in _subset(tuned_rows, metric) if "row" in r]
            theirs = {r["row"]: r for r in _subset(reference_rows, metric) if "row" in r}
            pairs = [
                (r[key], theirs[r["row"]][key])
                for r in mine
                if r["row"] in theirs
                and r.get(key) is not None
                and theirs[r["row"]].get(key) is not None
            ]
        sign = 1 if up else -1
        differences = [sign * (float(a) - float(b)) for a, b in pairs]
        worse = sum(d < 0 for d in differences)
        better = sum(d > 0 for d in differences)
        results.append(
            GuardResult(
                metric,
                max_drop,
                against,
                tuned.get(metric),
                reference.get(metric),
                up,
                worse,
                better,
                sign_test_p(worse, better) if pairs else None,
            )
        )
    return results


def _row_key(metric: str) -> str:
    """The per-row field an eval metric is the mean of: `exact` for exact match, `loss` for
    both losses, else the evaluator's own name."""
    family = metric.split(".", 1)[0]
    return {"exact_match": "exact", "eval_loss": "loss", "perplexity": "loss"}.get(family, family)
