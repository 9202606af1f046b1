"""Evaluate a model on held-back records: loss, perplexity and greedy-generation exact match.

The same function scores the base and the tuned model, so the two are comparable:
- `eval_loss` is the mean cross-entropy over response tokens given the prompt (the part a user
  cares about; prompt tokens are not scored), `perplexity` is its exponential;
- `exact_match` is the share of greedy generations equal to the expected answer after trimming
  surrounding whitespace, overall and per task family (`exact_match.<task>`); every other
  evaluator in `evaluation.metrics` (ROUGE-L by default, plugins through the
  `tuneforge.evaluators` entry points) is aggregated the same way.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
from prefect import task

from tuneforge.batching import IGNORE_INDEX, collate
from tuneforge.config import EvalConfig, RunConfig
from tuneforge.jsonl import read_jsonl, write_jsonl
from tuneforge.models import load_pretrained, pick_device
from tuneforge.pause_points import pause_point
from tuneforge.plugins.examples import tokenize_prompt_response, tokenize_text_blocks
from tuneforge.prompts import render_prompt, split_turns
from tuneforge.records import is_text
from tuneforge.run_context import RunContext
from tuneforge.serving import generate
from tuneforge.tasks.chunked_head import chunk_unsupported, token_losses
from tuneforge.tracking import MetricLogger

EVAL_CHUNK = 1024  # scored positions whose logits exist at once (train.loss_chunk_tokens)


@torch.inference_mode()
def record_losses(
    model: Any, tokenizer: Any, records: list[dict], max_length: int, bs: int
) -> list[tuple[float, int]]:
    """Per record: the summed cross-entropy of its response tokens and how many there are
    (prompt and padding are not scored); for raw-text records, of every token of the text, in
    `max_length` blocks as training sees it."""
    examples, owner = [], []
    for i, r in enumerate(records):
        if is_text(r):
            blocks = tokenize_text_blocks(r, tokenizer, max_length)
        else:
            blocks = [tokenize_prompt_response(r, tokenizer, max_length, train_prompt=False)]
        examples += blocks
        owner += [i] * len(blocks)
    sums, counts = [0.0] * len(records), [0] * len(records)
    # At a real vocabulary a batch's logits would be the biggest tensor by far (32 x 512 x
    # 151,936 floats: 10 GB): the head runs on scored positions, a chunk at a time.
    chunked = chunk_unsupported(model) is None
    for start in range(0, len(examples), bs):
        batch = examples[start : start + bs]
        inputs = {k: v.to(model.device) for k, v in collate(batch, tokenizer.pad_token_id).items()}
        labels = inputs["labels"][:, 1:]
        scored = labels != IGNORE_INDEX
        model_inputs = {k: inputs[k] for k in ("input_ids", "attention_mask")}
        if chunked:
            keep = torch.nn.functional.pad(scored, (0, 1))  # position i predicts token i + 1
            losses = torch.zeros(labels.shape, device=labels.device)
            losses[scored] = token_losses(model, model_inputs, keep, labels[scored], EVAL_CHUNK)
        else:
            logits = model(**model_inputs).logits
            losses = torch.nn.functional.cross_entropy(
                logits[:, :-1].reshape(-1, logits.size(-1)).float(),
                labels.reshape(-1),
                ignore_index=IGNORE_INDEX,
                reduction="none",
            ).view(labels.shape)
        for j, (total, count) in enumerate(
            zip((losses * scored).sum(1).tolist(), scored.sum(1).tolist(), strict=True)
        ):
            sums[owner[start + j]] += total
            counts[owner[start + j]] += count
    return list(zip(sums, counts, strict=True))


def response_loss(
    model: Any, tokenizer: Any, records: list[dict], max_length: int, bs: int
) -> float:
    """Mean cross-entropy per response token (per text token for raw text)."""
    per_record = record_losses(model, tokenizer, records, max_length, bs)
    total, count = sum(s for s, _ in per_record), sum(n for _, n in per_record)
    if not count:
        raise ValueError(f"no response token left to score within max_length={max_length}")
    return total / count


def generate_answers(
    model: Any, tokenizer: Any, records: list[dict], max_new_tokens: int, bs: int
) -> list[str]:
    """Greedy answers to each record's prompt, as the registered model gives them."""
    prompts = [render_prompt(split_turns(r)[0], tokenizer) for r in records]
    return generate(model, tokenizer, prompts, max_new_tokens, bs)


def metric_safe(name: str) -> str:
    """A task family name usable inside an MLflow metric key (alphanumerics, _-. / space)."""
    return re.sub(r"[^\w\-. /]", "_", name)


class EvaluatorError(ValueError):
    """An evaluator plugin failed: one line naming it and its distribution."""


def build_evaluators(cfg: EvalConfig | None = None) -> list[tuple[str, Any]]:
    """`(name, evaluator)` for each metric `cfg` scores (`exact_match`, then
    `evaluation.metrics`; by default `rouge_l`), built with its settings."""
    from tuneforge.plugins.registry import evaluator_info

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
    from tuneforge.plugins.registry import evaluator_info

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
    found: dict[str, list[int]] = defaultdict(list)
    rows = []
    for i, (rec, answer) in enumerate(zip(records, answers, strict=True)):
        family = rec.get("task") or "untagged"
        keys = ["", f".{metric_safe(family)}"]
        if holdout_tasks:
            keys.append(".held_out" if family in holdout_tasks else ".held_in")
        keys += [f".{name}" for name, members in (groups or {}).items() if family in members]
        for key in keys:
            found[key].append(i)
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
    metrics: dict[str, float] = {}
    named = {".held_in", ".held_out", *(f".{name}" for name in groups or {})}
    families = {k for k in found if k and k not in named}
    for key, members in sorted(found.items()):
        if key in families and len(families) == 1:
            continue  # one family: its figures are the overall ones
        for name, scored in values.items():
            metrics[f"{name}{key}"] = sum(scored[i] for i in members) / len(members)
    return metrics, rows


def spread(records: list[dict], n: int) -> list[dict]:
    """At most `n` records taken round-robin over task families (source order within each),
    so a capped evaluation still covers every family even when the data is sorted by task."""
    families: dict[str, list[dict]] = defaultdict(list)
    for rec in records:
        families[rec.get("task") or ""].append(rec)
    picked: list[dict] = []
    queues = [iter(v) for v in families.values()]
    while queues and len(picked) < n:
        for queue in list(queues):
            rec = next(queue, None)
            if rec is None:
                queues.remove(queue)
            elif len(picked) < n:
                picked.append(rec)
    return picked


def evaluate_records(
    model_dir: str | Path,
    records: list[dict],
    cfg: EvalConfig,
    max_length: int,
    trust_remote_code: bool = False,
    holdout_tasks: list[str] | tuple[str, ...] = (),
    dtype: str = "float32",
) -> tuple[dict[str, float], list[dict]]:
    """Scores the model in `model_dir` (loaded in `dtype`) on (at most `cfg.max_examples` of)
    `records`."""
    model, tokenizer = load_pretrained(model_dir, trust_remote_code, dtype)
    model.to(pick_device()).eval()
    records = spread(records, cfg.max_examples)
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
    metrics |= {
        "eval_loss": loss,
        "perplexity": math.exp(min(loss, 50.0)),
        "examples": len(records),
    }
    return metrics, rows


@task(name="evaluate_model")
def evaluate_model(
    *, model_dir: str, label: str, eval_path: str, config: RunConfig, ctx: RunContext
) -> dict[str, float]:
    """Evaluates one model as `config.evaluation` says (examples `train.max_length` tokens long,
    `data.holdout_tasks` reported as held out) and logs its metrics as `<label>.<metric>` (e.g.
    `tuned.exact_match`) plus its generations as the artifact `eval/<label>_generations.jsonl`."""
    pause_point(f"evaluate:{label}")
    records = read_jsonl(eval_path)
    metrics, rows = evaluate_records(
        model_dir,
        records,
        config.evaluation,
        config.train.max_length,
        trust_remote_code=ctx.trust_remote_code,
        holdout_tasks=config.data.holdout_tasks,
        dtype=config.model.dtype,
    )
    run_id = ctx.run_id
    logger = MetricLogger(ctx.tracking_uri, run_id)
    logger.log({f"{label}.{k}": v for k, v in metrics.items()}, step=0)
    logger.flush()
    out = Path(eval_path).parent
    # Per row: exact (with answers), ROUGE-L, loss: what the promotion gate's paired test and
    # minimum of correct answers read.
    write_jsonl(rows, out / f"{label}_scores.jsonl")
    generations = [r for r in rows if "answer" in r]  # raw text has no generations
    if generations:
        write_jsonl(generations, out / f"{label}_generations.jsonl")
        logger.client.log_artifact(run_id, str(out / f"{label}_generations.jsonl"), "eval")
    return metrics


@task(name="evaluate_champion")
def evaluate_champion(
    *, eval_path: str, base_metrics: dict[str, float], config: RunConfig, ctx: RunContext
) -> dict[str, Any] | None:
    """Scores the current champion on this run's eval split, so that promotion compares like
    with like (the champion's own run was scored on its own, older split). Returns
    `{"version", "metrics"}`, `metrics` None when the champion cannot be loaded here; None when
    there is no champion. Logged as `champion.<metric>`. When this run's base *is* the
    champion (a chained stage), the base's scores are its scores: nothing is loaded twice."""
    from mlflow.tracking import MlflowClient
    from prefect import get_run_logger

    from tuneforge.model_registry import current_champion
    from tuneforge.models import ModelSourceError
    from tuneforge.tasks.model_source import download_registry_model

    model_name, run_id = config.registry.model_name, ctx.run_id
    client = MlflowClient(ctx.tracking_uri)
    champion = current_champion(client, model_name)
    if champion is None:
        return None
    parent = client.get_run(run_id).data.tags.get("tuneforge.parent_version")
    uri = f"models:/{model_name}/{champion.version}"
    if parent == f"{model_name}/{champion.version}":
        metrics = base_metrics
    else:
        try:
            model_dir = download_registry_model(uri, Path(ctx.path("champion")))
            metrics, _ = evaluate_records(
                model_dir,
                read_jsonl(eval_path),
                config.evaluation,
                config.train.max_length,
                holdout_tasks=config.data.holdout_tasks,
            )
        except (ModelSourceError, ValueError) as exc:
            get_run_logger().warning("cannot score champion %s here (%s)", uri, exc)
            return {"version": champion.version, "metrics": None}
    logger = MetricLogger(ctx.tracking_uri, run_id)
    logger.log({f"champion.{k}": v for k, v in metrics.items()}, step=0)
    logger.flush()
    return {"version": champion.version, "metrics": metrics}
