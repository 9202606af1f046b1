"""Train a model: the `train_with_strategy` task over the training engine
(`tuneforge/training/`), and `train_here_or_on_pool`, the one place that decides where a flow
trains (retrain, a sweep's candidate, the train-stage deployment).

    trained = train_here_or_on_pool(
        config=config, base_dir=base_dir, train_path=..., eval_path=..., ctx=ctx
    )
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task

from tuneforge.config import RunConfig, TrainConfig
from tuneforge.lineage import (
    BATCHES,
    CHECKPOINT_STEP,
    SWEEP,
    SWEEP_CANDIDATE,
    TOKEN_CACHE,
    TRAIN_LOSS,
)
from tuneforge.paths import inside, safe_component
from tuneforge.run_context import RunContext
from tuneforge.slots import training_slot
from tuneforge.tasks.train_remote import train_on_pool
from tuneforge.tracking import MetricLogger
from tuneforge.training import checkpoint
from tuneforge.training.launch import train_from_files
from tuneforge.training.loop import TrainResult, finished_result


def train_here_or_on_pool(
    *,
    config: RunConfig,
    base_dir: str,
    train_path: str,
    eval_path: str,
    ctx: RunContext,
    isolated: bool = False,
    here: bool = False,
) -> TrainResult:
    """Trains where the config says, for every flow that trains (retrain, a sweep's candidate,
    the train-stage deployment): as the deployment `train.deployment` on its work pool (the
    split and the tuned checkpoint travel through the MLflow run), or here with `train.retries`
    Prefect retries, each resuming from the last checkpoint. `here`: the caller is that
    deployment already. `isolated`: train here in a process of its own (`train_with_strategy`)."""
    if config.train.deployment and not here:
        return train_on_pool(config=config, train_path=train_path, eval_path=eval_path, ctx=ctx)
    return train_with_strategy.with_options(retries=config.train.retries)(
        base_dir=base_dir,
        train_path=train_path,
        eval_path=eval_path,
        train=config.train,
        checkpoint_dir=checkpoint_dir(config),
        token_cache_dir=str(inside(config.output_dir, "token-cache")),
        ctx=ctx,
        isolated=isolated,
    )


def checkpoint_dir(config: RunConfig) -> str:
    """One checkpoint directory per registered model: only one retrain of a model runs at a
    time, and a re-run after a crash (a new flow run) finds the checkpoints of the last one.

    A sweep's candidates train side by side under the model's one slot: one directory each,
    named by the sweep and candidate tags their configs carry (`flows/sweep_candidate.py:
    as_candidate`), which travel with the config to a work pool."""
    name = safe_component(config.registry.model_name)
    sweep = config.tracking.tags.get(SWEEP)
    candidate = config.tracking.tags.get(SWEEP_CANDIDATE)
    if sweep and candidate:
        parts = ("sweep-checkpoints", name, safe_component(sweep), safe_component(candidate))
        return str(inside(config.output_dir, *parts))
    return str(inside(config.output_dir, "checkpoints", name))


def retry_unless_bad_input(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect retry condition: retry crashes and infrastructure errors, not a ValueError (bad
    data, config or a mismatched checkpoint), which would only fail again."""
    try:
        state.result()
    except ValueError:
        return False
    except BaseException:
        return True
    return True


@task(name="train_with_strategy", retry_condition_fn=retry_unless_bad_input)
def train_with_strategy(
    *,
    base_dir: str,
    train_path: str,
    eval_path: str,
    train: TrainConfig,
    checkpoint_dir: str,
    ctx: RunContext,
    isolated: bool = False,
    token_cache_dir: str | None = None,
) -> TrainResult:
    """Trains with the configured strategy into `tuned/` in the run directory; logs metrics per
    step to the MLflow run, and tags it with the step whose weights were kept.

    Resumes from a matching checkpoint in `checkpoint_dir` (see `train_model`); the flow runs
    this task with `train.retries` Prefect retries, each of which resumes. `isolated` trains
    in a process of its own even on one process (a sweep trains candidates side by side)."""
    logger = get_run_logger()
    metrics = MetricLogger(ctx.tracking_uri, ctx.run_id)
    out_dir = ctx.path("tuned")
    # On a terminal the progress bar shows each step; log lines would tear it apart.
    log_steps = not sys.stderr.isatty()

    def on_metrics(step: int, values: dict[str, float]) -> None:
        metrics.log(values, step)
        if log_steps and TRAIN_LOSS in values:
            logger.info(
                "step %d/%d loss %.4f tokens/s %.0f",
                step,
                train.steps,
                values[TRAIN_LOSS],
                values["train.tokens_per_second"],
            )

    result = finished_result(out_dir)
    if result is not None:
        # An earlier attempt of this run (a retry, or a re-run after a crash that continued
        # its MLflow run) saved the model: training again would only reproduce it.
        logger.info("training finished in an earlier attempt of this run; using its model")
        return result
    found = checkpoint.complete_checkpoints(Path(checkpoint_dir))
    if found and train.checkpoint_every and train.resume != "never":
        logger.info("resuming from checkpoint %s if it matches this run's inputs", found[-1])
    # Whoever starts the training holds its slot: here, unless this runs on train.deployment's
    # pool for a flow that holds it already (train_on_pool).
    limit = None if train.deployment else train.concurrency_limit
    with training_slot(limit, "training"):
        result = train_from_files(
            base_dir,
            train_path,
            eval_path,
            train,
            out_dir,
            isolated=isolated,
            on_metrics=on_metrics,
            trust_remote_code=ctx.trust_remote_code,
            dtype=ctx.model_dtype,
            checkpoint_dir=checkpoint_dir,
            token_cache_dir=token_cache_dir,
        )
    if result.token_cache == "reused":  # the same records, tokenizer and settings as before
        logger.info("tokenized examples reused from the token cache in %s", token_cache_dir)
    if result.resumed_from_step:
        logger.info("resumed from the checkpoint of step %d", result.resumed_from_step)
    if train.padding_free and result.batches != "padding-free":
        logger.warning("trained with %s", result.batches)
    metrics.log(result.summary_metrics(), step=result.steps)
    metrics.flush()
    metrics.client.set_tag(ctx.run_id, CHECKPOINT_STEP, str(result.best_step))
    metrics.client.set_tag(ctx.run_id, BATCHES, result.batches)
    metrics.client.set_tag(ctx.run_id, TOKEN_CACHE, result.token_cache)
    return result
