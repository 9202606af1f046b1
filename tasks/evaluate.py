"""The evaluation tasks: score the base, the tuned model and the current champion on a run's
eval split (`tuneforge.evaluation` does the scoring) and log `<label>.<metric>` to MLflow."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import task

from tuneforge import lineage
from tuneforge.config import RunConfig
from tuneforge.evaluation import evaluate_records
from tuneforge.jsonl import read_jsonl, write_jsonl
from tuneforge.pause_points import pause_point
from tuneforge.run_context import RunContext
from tuneforge.tracking import MetricLogger


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
    logger.log({lineage.metric_key(label, k): v for k, v in metrics.items()}, step=0)
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
    parent = client.get_run(run_id).data.tags.get(lineage.PARENT_VERSION)
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
    logger.log(
        {lineage.metric_key(lineage.CHAMPION_SCORES, k): v for k, v in metrics.items()}, step=0
    )
    logger.flush()
    return {"version": champion.version, "metrics": metrics}
