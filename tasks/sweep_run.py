"""The MLflow side of a sweep: the sweep's own run, and each candidate taking over what the
sweep prepared once (the split, the base's scores, the data's lineage tags)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from mlflow.tracking import MlflowClient
from prefect import task

from tuneforge import lineage
from tuneforge.config import RunConfig
from tuneforge.run_context import RunContext
from tuneforge.tasks.split_data import SplitPaths
from tuneforge.tasks.tracking_run import (
    code_version,
    left_by_other_flow_runs,
    package_versions,
    run_context,
)
from tuneforge.tracking import MetricLogger, flatten, start_run

# What the sweep's tasks tag on its run that describes the data and the base every candidate
# shares; copied onto each candidate's run, so a registered candidate carries it as lineage.
SHARED_TAGS = (lineage.DATA_FINGERPRINT, lineage.DATA_SCHEMA, lineage.PARENT_VERSION)

# What a candidate's data directory takes from the sweep's: the split, and the base's
# per-row scores, benchmark samples and generations (the gate's paired test, its guards and
# the report read them there).
SHARED_FILES = (
    "train.jsonl",
    "eval.jsonl",
    "base_scores.jsonl",
    "base_bench.jsonl",
    "base_generations.jsonl",
)


@task(name="start_sweep_run")
def start_sweep_run(
    *, sweep: str, config: RunConfig, candidates: list[tuple[str, list[str]]], tracking_uri: str
) -> RunContext:
    """Creates the sweep's MLflow run: the shared config and each candidate's overrides as
    params (`candidate.NAME`); the candidates' runs are nested under it. First ends the runs
    a killed run of this sweep left open (`end_crashed_sweep_runs`)."""
    from prefect.runtime import flow_run

    flow_run_id = str(flow_run.id or "")
    end_crashed_sweep_runs(tracking_uri, config, sweep, flow_run_id)
    params = flatten(config.model_dump(mode="json"))
    params |= {f"candidate.{name}": " ".join(own) or "(the preset)" for name, own in candidates}
    tags = {
        lineage.SWEEP: sweep,
        lineage.SWEEP_FLOW_RUN_ID: flow_run_id,
        lineage.FLOW_RUN_ID: flow_run_id,
        lineage.MODEL_NAME: config.registry.model_name,
        lineage.BASE_MODEL: config.model.source,
        lineage.DATA_SOURCE: config.data.path,
        lineage.CODE_VERSION: code_version(),
        lineage.PACKAGES: package_versions(),
        **config.tracking.tags,
    }
    run_id = start_run(tracking_uri, config.tracking.experiment, sweep, params, tags)
    return run_context(config, tracking_uri, run_id)


@task(name="adopt_sweep_inputs")
def adopt_sweep_inputs(
    *, sweep_run_id: str, split_dir: str, base: dict[str, float], ctx: RunContext
) -> SplitPaths:
    """Gives the candidate's run what the sweep prepared: the split and the base's per-row
    scores (linked into its own data directory, where its own evaluation writes beside them),
    the base's metrics (`base.*`) and the data's lineage tags."""
    client = MlflowClient(ctx.tracking_uri)
    tags = client.get_run(sweep_run_id).data.tags
    for key in SHARED_TAGS:
        if key in tags:
            client.set_tag(ctx.run_id, key, tags[key])
    logger = MetricLogger(ctx.tracking_uri, ctx.run_id)
    logger.log({lineage.metric_key(lineage.BASE, k): v for k, v in base.items()}, step=0)
    logger.flush()
    out = Path(ctx.path("data"))
    out.mkdir(parents=True, exist_ok=True)
    for name in SHARED_FILES:
        src, dst = Path(split_dir, name), out / name
        if src.exists():
            try:
                os.link(src, dst)  # read only by the candidates: one copy on disk
            except OSError:  # another file system
                shutil.copy2(src, dst)
    rows = [_lines(out / name) for name in ("train.jsonl", "eval.jsonl")]
    return SplitPaths(str(out / "train.jsonl"), str(out / "eval.jsonl"), *rows)


def _lines(path: Path) -> int:
    with path.open(encoding="utf-8") as f:
        return sum(1 for _ in f)


def end_crashed_sweep_runs(
    tracking_uri: str, config: RunConfig, sweep: str, flow_run_id: str
) -> list[str]:
    """Ends (KILLED, tag `tuneforge.crashed`) the runs a killed run of this sweep left RUNNING,
    its own and its candidates'; returns their ids.

    Called holding the model's retrain slot: a RUNNING run of this sweep and model from another
    flow run that this Prefect server knows is dead. (Its candidates' checkpoints are resumed
    by the new run's candidates of the same name; its runs are not continued.) Runs of a flow
    run this server does not know (another Prefect server sharing MLflow) are left alone."""
    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name(config.tracking.experiment)
    if experiment is None or not flow_run_id:
        return []
    running = client.search_runs(
        [experiment.experiment_id],
        filter_string=f"attributes.status = 'RUNNING' and tags.`{lineage.SWEEP}` = '{sweep}'",
    )
    mine = [
        run
        for run in running
        if run.data.tags.get(lineage.MODEL_NAME) == config.registry.model_name
    ]
    ended = []
    for run in left_by_other_flow_runs(mine, lineage.SWEEP_FLOW_RUN_ID, flow_run_id):
        client.set_tag(run.info.run_id, lineage.CRASHED, f"ended by sweep {flow_run_id}")
        client.set_terminated(run.info.run_id, status="KILLED")
        ended.append(run.info.run_id)
    return ended


def candidate_run(tracking_uri: str, sweep_run_id: str, name: str) -> RunContext | None:
    """The MLflow run candidate `name` of the sweep opened (for one that failed, whose
    outcome carries no context), if it got as far as opening one."""
    client = MlflowClient(tracking_uri)
    sweep = client.get_run(sweep_run_id)
    found = client.search_runs(
        [sweep.info.experiment_id],
        filter_string=(
            f"tags.`mlflow.parentRunId` = '{sweep_run_id}' and "
            f"tags.`{lineage.SWEEP_CANDIDATE}` = '{name}'"
        ),
        max_results=1,
    )
    if not found:
        return None
    return RunContext(found[0].info.run_id, tracking_uri, "")
