"""Score a model on validated records: loss, perplexity, and every evaluator on greedy answers.

The same function scores the base, the tuned model and the champion, so they are comparable:
- `eval_loss` is the mean cross-entropy over response tokens given the prompt (the part a user
  cares about; prompt tokens are not scored), `perplexity` is its exponential;
- `exact_match` is the share of greedy generations equal to the expected answer after trimming
  surrounding whitespace, overall and per task family (`exact_match.<task>`); every other
  evaluator in `evaluation.metrics` (ROUGE-L by default, plugins through the evaluator entry
  points) is aggregated the same way.

    scores = evaluate_records(model_dir, records, EvalConfig(), max_length=128)
    scores.metrics, scores.rows, scores.bench_rows
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuneforge.config import EvalConfig
from tuneforge.errors import first_line
from tuneforge.lineage import BENCH, metric_safe
from tuneforge.models import load_pretrained, pick_device
from tuneforge.prompts import split_turns
from tuneforge.records import is_text, spread
from tuneforge.serving import generate_answers
from tuneforge.training.losses import record_losses


class EvaluatorError(ValueError):
    """An evaluator plugin failed: one line naming it and its distribution."""


def build_evaluators(cfg: EvalConfig | None = None) -> list[tuple[str, Any]]:
    """`(name, evaluator)` for each metric `cfg` scores (`exact_match`, then
    `evaluation.metrics`; by default `rouge_l`), built with its settings."""
    from tuneforge.plugins.discovery import evaluator_info

    built = []
    for name, settings in (cfg or EvalConfig()).evaluator_settings().items():
        info = evaluator_info(name)
        try:
            built.append((name, info.cls(settings)))
        except Exception as exc:  # third-party code: say whose
            raise EvaluatorError(f"{info.label}: building it: {exc}") from exc
    return built


def _values(
    name: str, evaluator: Any, expected: list[str], answers: list[str], records: list[dict]
) -> list[float]:
    """One evaluator's score of every answer (its `score_batch` when it has one)."""
    try:
        batch = getattr(evaluator, "score_batch", None)
        if batch is not None:
            values = [float(v) for v in batch(expected, answers, records)]
        else:
            values = [
                float(evaluator.score(e, a, r))
                for e, a, r in zip(expected, answers, records, strict=True)
            ]
    except Exception as exc:  # third-party code: say whose
        raise EvaluatorError(f"{_label(name)}: score: {exc}") from exc
    if len(values) != len(answers) or not all(math.isfinite(v) for v in values):
        raise EvaluatorError(
            f"{_label(name)}: score gave {len(values)} finite numbers for {len(answers)} answers"
        )
    return values


def _label(name: str) -> str:
    from tuneforge.plugins.discovery import evaluator_info

    return evaluator_info(name).label


def score(
    records: list[dict],
    answers: list[str],
    holdout_tasks: list[str] | tuple[str, ...] = (),
    groups: dict[str, list[str]] | None = None,
    evaluators: list[tuple[str, Any]] | None = None,
) -> tuple[dict[str, float], list[dict]]:
    """Every evaluator's mean score (`build_evaluators`: exact match and ROUGE-L by default),
    overall, per task family, (with `holdout_tasks`) for the held-in and held-out families,
    and per named group of families (`evaluation.groups`); plus one row per example for
    inspection and the gate's paired test (`exact` and each evaluator's value)."""
    evaluators = build_evaluators() if evaluators is None else evaluators
    expected = [split_turns(r)[1] for r in records]
    values = {name: _values(name, e, expected, answers, records) for name, e in evaluators}
    rows = []
    for i, (rec, answer) in enumerate(zip(records, answers, strict=True)):
        row = {
            "row": rec["row"],
            "task": rec.get("task"),
            "prompt": split_turns(rec)[0][-1]["content"],
            "expected": expected[i],
            "answer": answer,
        }
        for name, scored in values.items():
            row["exact" if name == "exact_match" else name] = (
                bool(scored[i]) if name == "exact_match" else scored[i]
            )
        rows.append(row)
    return aggregate(records, values, holdout_tasks, groups), rows


def aggregate(
    records: list[dict],
    values: dict[str, list[float]],
    holdout_tasks: list[str] | tuple[str, ...] = (),
    groups: dict[str, list[str]] | None = None,
) -> dict[str, float]:
    """Each per-record score's mean (`values`: metric name -> a value per record) overall,
    per task family (`name.<family>`, unless there is one family), for the held-in and
    held-out families (with `holdout_tasks`) and per named group of families."""
    found: dict[str, list[int]] = defaultdict(list)
    for i, rec in enumerate(records):
        family = rec.get("task") or "untagged"
        keys = ["", f".{metric_safe(family)}"]
        if holdout_tasks:
            keys.append(".held_out" if family in holdout_tasks else ".held_in")
        keys += [f".{name}" for name, members in (groups or {}).items() if family in members]
        for key in keys:
            found[key].append(i)
    metrics: dict[str, float] = {}
    named = {".held_in", ".held_out", *(f".{name}" for name in groups or {})}
    families = {k for k in found if k and k not in named}
    for key, members in sorted(found.items()):
        if key in families and len(families) == 1:
            continue  # one family: its figures are the overall ones
        for name, scored in values.items():
            metrics[f"{name}{key}"] = sum(scored[i] for i in members) / len(members)
    return metrics


def evaluate_records(
    model_dir: str | Path,
    records: list[dict],
    cfg: EvalConfig,
    max_length: int,
    trust_remote_code: bool = False,
    holdout_tasks: list[str] | tuple[str, ...] = (),
    dtype: str = "float32",
    reference_rows: list[dict] | None = None,
) -> Evaluation:
    """Scores the model in `model_dir` (loaded in `dtype`) on (at most `cfg.max_examples` of)
    `records`, then on `cfg.benchmarks`.

    Preference pairs are also scored as pairs (`preference_scores`), against the per-row
    log-probabilities in `reference_rows` (the run's base's rows) when given. Feedback rows
    are scored on their good answers only: a bad answer is no answer to match."""
    model, tokenizer = load_pretrained(model_dir, trust_remote_code, dtype)
    model.to(pick_device()).eval()
    records = spread([r for r in records if r.get("label", True)], cfg.max_examples)
    per_record = record_losses(model, tokenizer, records, max_length, cfg.batch_size)
    total, count = sum(s for s, _ in per_record), sum(n for _, n in per_record)
    if not count:
        raise ValueError(f"no response token left to score within max_length={max_length}")
    loss = total / count
    # Raw text has no answer to generate: loss and perplexity only.
    chat = [r for r in records if not is_text(r)]
    metrics: dict[str, float] = {}
    generated: dict[int, dict] = {}
    if chat:
        answers = generate_answers(model, tokenizer, chat, cfg.max_new_tokens, cfg.batch_size)
        metrics, scored = score(chat, answers, holdout_tasks, cfg.groups, build_evaluators(cfg))
        generated = {row["row"]: row for row in scored}
    rows = []  # one per record scored: its generation (if any) and its own loss
    for rec, (summed, n) in zip(records, per_record, strict=True):
        row = generated.get(rec["row"]) or {"row": rec["row"], "task": rec.get("task")}
        row["loss"] = summed / n if n else None
        family = rec.get("task") or "untagged"
        if holdout_tasks:
            row["held_out"] = family in holdout_tasks
        if cfg.groups:
            row["groups"] = [name for name, members in cfg.groups.items() if family in members]
        rows.append(row)
    pairs = [i for i, r in enumerate(records) if "rejected" in r]
    if pairs:
        chosen = [-per_record[i][0] for i in pairs]
        paired = [records[i] for i in pairs]
        metrics |= preference_scores(
            model,
            tokenizer,
            paired,
            chosen,
            [rows[i] for i in pairs],
            max_length,
            cfg,
            holdout_tasks,
            reference_rows,
        )
    metrics |= {
        "eval_loss": loss,
        "perplexity": math.exp(min(loss, 50.0)),
        "examples": len(records),
    }
    bench, bench_rows = run_benchmarks(model, tokenizer, cfg)
    return Evaluation(metrics | bench, rows, bench_rows)


def preference_scores(
    model: Any,
    tokenizer: Any,
    pairs: list[dict],
    chosen: list[float],
    rows: list[dict],
    max_length: int,
    cfg: EvalConfig,
    holdout_tasks: list[str] | tuple[str, ...] = (),
    reference_rows: list[dict] | None = None,
) -> dict[str, float]:
    """Scores preference pairs and writes each pair's figures into its row (`rows`):

    - `logp_chosen` / `logp_rejected`: the answers' summed log-probabilities (`chosen` holds
      the chosen ones, already computed);
    - `preference_accuracy`: 1 when the model gives the chosen answer the higher one. A
      model's own preference: comparable between base, tuned model and champion;
    - with `reference_rows` (the base's rows, by `row`): `reward_accuracy`, 1 when the implicit
      reward (log-ratio against the base) of the chosen answer is the higher, and
      `reward_margin`, chosen's log-ratio minus rejected's, in nats (DPO's reward / beta).
      Against itself the base has neither (every log-ratio is 0).

    Returns their means as metrics, overall and per family as the evaluators' are."""
    from tuneforge.plugins.preference import rejected_record

    rejected = [
        -summed
        for summed, _ in record_losses(
            model, tokenizer, [rejected_record(r) for r in pairs], max_length, cfg.batch_size
        )
    ]
    reference = {r["row"]: r for r in reference_rows or [] if "logp_chosen" in r}
    values: dict[str, list[float]] = defaultdict(list)
    for row, lc, lr in zip(rows, chosen, rejected, strict=True):
        row |= {"logp_chosen": lc, "logp_rejected": lr, "preference_accuracy": float(lc > lr)}
        values["preference_accuracy"].append(row["preference_accuracy"])
        base = reference.get(row["row"])
        if reference and base is not None:
            margin = (lc - base["logp_chosen"]) - (lr - base["logp_rejected"])
            row |= {"reward_accuracy": float(margin > 0), "reward_margin": margin}
            values["reward_accuracy"].append(row["reward_accuracy"])
            values["reward_margin"].append(margin)
    if any(len(v) != len(pairs) for v in values.values()):
        raise ValueError("the reference rows do not cover this model's eval pairs")
    return aggregate(pairs, dict(values), holdout_tasks, cfg.groups)


@dataclass(frozen=True)
class Evaluation:
    """One model's scores: `metrics` (on the eval split, and `bench.*`), a row per eval
    record scored (`rows`: its answer, each evaluator's value, its loss) and a row per
    benchmark sample (`bench_rows`: `{"metric": "bench.<task>.<metric>", "doc_id", "value"}`)
    for the gate's paired tests."""

    metrics: dict[str, float]
    rows: list[dict]
    bench_rows: list[dict] = field(default_factory=list)


def run_benchmarks(
    model: Any, tokenizer: Any, cfg: EvalConfig
) -> tuple[dict[str, float], list[dict]]:
    """Every benchmark evaluator of `cfg.benchmarks` on the model in memory: its metrics as
    `bench.<task>.<metric>`, and its sample rows."""
    from tuneforge.plugins.discovery import evaluator_info

    metrics: dict[str, float] = {}
    rows: list[dict] = []
    for name, settings in cfg.benchmark_settings().items():
        info = evaluator_info(name)
        try:
            result = info.cls(settings).evaluate(model, tokenizer)
        except Exception as exc:  # third-party code: say whose
            raise EvaluatorError(f"{info.label}: evaluate: {first_line(exc)}") from exc
        metrics |= {f"{BENCH}.{key}": value for key, value in result.metrics.items()}
        rows += [
            {
                **row,
                "metric": f"{BENCH}.{row['metric']}",
                "higher_is_better": result.higher_is_better.get(row["metric"], True),
            }
            for row in result.samples
        ]
    return metrics, rows
