"""The evaluation tasks: score the base, the tuned model and the current champion on a run's
eval split (`tuneforge.evaluation` does the scoring) and log `<label>.<metric>` to MLflow."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from prefect import task

from tuneforge import lineage
from tuneforge.config import RunConfig
from tuneforge.evaluation import Evaluation, evaluate_records
from tuneforge.jsonl import read_jsonl, write_jsonl
from tuneforge.pause_points import pause_point
from tuneforge.run_context import RunContext
from tuneforge.tracking import MetricLogger


@task(name="evaluate_model")
def evaluate_model(
    *, model_dir: str, label: str, eval_path: str, config: RunConfig, ctx: RunContext
) -> dict[str, float]:
    """Evaluates one model as `config.evaluation` says (examples `train.max_length` tokens long,
    `data.holdout_tasks` reported as held out, `evaluation.benchmarks` after them) and logs its
    metrics as `<label>.<metric>` (e.g. `tuned.exact_match`, `tuned.bench.<task>.<metric>`),
    its generations and benchmark samples as artifacts under `eval/`."""
    pause_point(f"evaluate:{label}")
    scores = evaluate_records(
        model_dir,
        read_jsonl(eval_path),
        config.evaluation,
        config.train.max_length,
        trust_remote_code=ctx.trust_remote_code,
        holdout_tasks=config.data.holdout_tasks,
        dtype=config.model.dtype,
        reference_rows=None if label == lineage.BASE else _base_rows(eval_path),
    )
    _record(scores, label, Path(eval_path).parent, ctx)
    return scores.metrics


@task(name="evaluate_champion")
def evaluate_champion(
    *, eval_path: str, base_metrics: dict[str, float], config: RunConfig, ctx: RunContext
) -> dict[str, Any] | None:
    """Scores the current champion on this run's eval split (and benchmarks), so that
    promotion and its guards compare like with like (the champion's own run was scored on its
    own, older split). Returns `{"version", "metrics"}`, `metrics` None when the champion cannot
    be loaded here; None when there is no champion. Logged as `champion.<metric>`, its rows
    beside the base's and tuned model's. When this run's base *is* the champion (a chained
    stage), the base's scores are its scores: nothing is loaded twice."""
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
    parent = client.get_run(run_id).data.tags.get(lineage.PARENT_VERSION)
    uri = f"models:/{model_name}/{champion.version}"
    out = Path(eval_path).parent
    if parent == f"{model_name}/{champion.version}":
        for kind in ROWS:  # the base's rows are the champion's
            base_file = out / f"{lineage.BASE}_{kind}.jsonl"
            if base_file.exists():
                shutil.copyfile(base_file, out / f"{lineage.CHAMPION_SCORES}_{kind}.jsonl")
        metrics = base_metrics
        _log_metrics(metrics, lineage.CHAMPION_SCORES, ctx)
        return {"version": champion.version, "metrics": metrics}
    try:
        model_dir = download_registry_model(uri, Path(ctx.path("champion")))
        scores = evaluate_records(
            model_dir,
            read_jsonl(eval_path),
            config.evaluation,
            config.train.max_length,
            holdout_tasks=config.data.holdout_tasks,
            reference_rows=_base_rows(eval_path),
        )
    except (ModelSourceError, ValueError) as exc:
        get_run_logger().warning("cannot score champion %s here (%s)", uri, exc)
        return {"version": champion.version, "metrics": None}
    _record(scores, lineage.CHAMPION_SCORES, out, ctx)
    return {"version": champion.version, "metrics": scores.metrics}


def _base_rows(eval_path: str) -> list[dict[str, Any]] | None:
    """The base's per-row scores on this split, when scored already: preference pairs'
    implicit rewards are log-ratios against the base."""
    path = Path(eval_path).parent / f"{lineage.BASE}_scores.jsonl"
    return read_jsonl(path) if path.exists() else None


# What evaluation writes beside the eval split, per model: `<label>_scores.jsonl` (a row per
# eval record: answer, exact, each evaluator's value, loss) and `<label>_bench.jsonl` (a row
# per benchmark sample): what the promotion gate's paired tests and guards read.
ROWS = ("scores", "bench")


def _record(scores: Evaluation, label: str, out: Path, ctx: RunContext) -> None:
    """Logs a model's metrics as `<label>.<metric>`, writes its rows beside the eval split and
    logs its generations and benchmark samples as artifacts."""
    logger = _log_metrics(scores.metrics, label, ctx)
    write_jsonl(scores.rows, out / f"{label}_scores.jsonl")
    write_jsonl(scores.bench_rows, out / f"{label}_bench.jsonl")
    if scores.bench_rows:
        logger.client.log_artifact(ctx.run_id, str(out / f"{label}_bench.jsonl"), "eval")
    generations = [r for r in scores.rows if "answer" in r]  # raw text has no generations
    if generations:
        write_jsonl(generations, out / f"{label}_generations.jsonl")
        logger.client.log_artifact(ctx.run_id, str(out / f"{label}_generations.jsonl"), "eval")


def _log_metrics(metrics: dict[str, float], label: str, ctx: RunContext) -> MetricLogger:
    logger = MetricLogger(ctx.tracking_uri, ctx.run_id)
    logger.log({lineage.metric_key(label, k): v for k, v in metrics.items()}, step=0)
    logger.flush()
    return logger
