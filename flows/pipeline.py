"""The `pipeline` flow: stages of `retrain`, each starting from the version the one before it
registered (continued pretraining -> instruction tuning -> ..., transfer learning as one run).

    tuneforge pipeline deployments/pipelines/flan-mini.yaml

Steps: open the pipeline's MLflow run (each stage's run is nested under it) -> per stage: its
config (preset + overrides, `model.source` pinned to the previous stage's version by number,
lineage tags) -> `retrain` as a subflow (its own flow run in the Prefect UI), which skips a
stage whose data and config equal its champion's: a re-run resumes at the first stage whose
inputs changed -> report (a summary table, a plot of base vs tuned per stage). A stage that
fails stops the pipeline; the versions earlier stages registered stay as they are.
"""

from __future__ import annotations

from dataclasses import dataclass

from prefect import flow, get_run_logger
from prefect.runtime import flow_run

from tuneforge import lineage
from tuneforge.config import RunConfig
from tuneforge.errors import first_line
from tuneforge.flows.retrain import SkippedRun, retrain
from tuneforge.pipelines import PipelineSpec
from tuneforge.reporting import StageOutcome, stage_outcome
from tuneforge.tasks.report import report_pipeline
from tuneforge.tracking import resolve_tracking_uri, run_status, start_run


class StageFailed(ValueError):
    """A stage raised: one line naming it and what the earlier stages registered."""


@dataclass(frozen=True)
class PipelineResult:
    name: str
    run_id: str  # the pipeline's MLflow run; the stages' runs are nested under it
    tracking_uri: str
    stages: list[StageOutcome]


@flow(name="pipeline", flow_run_name="{spec.name}")
def pipeline(
    spec: PipelineSpec, overrides: list[str] | None = None, force: bool = False
) -> PipelineResult:
    """Runs `spec`'s stages in order, each a `retrain` of the one before's version."""
    extra = [*(overrides or []), *(["force=true"] if force else [])]
    first = spec.stage_config(0, None, extra)
    tracking_uri = resolve_tracking_uri(first.tracking.tracking_uri)
    tags = {lineage.PIPELINE: spec.name, lineage.PIPELINE_FLOW_RUN: str(flow_run.id)}
    params = {f"stage.{i}": f"{s.name}: {s.preset}" for i, s in enumerate(spec.stages)}
    run_id = start_run(tracking_uri, first.tracking.experiment, spec.name, params, tags)
    with run_status(tracking_uri, run_id):
        outcomes = _run_stages(spec, extra, {**tags, "mlflow.parentRunId": run_id})
        report_pipeline(
            spec_name=spec.name, stages=outcomes, tracking_uri=tracking_uri, run_id=run_id
        )
    return PipelineResult(spec.name, run_id, tracking_uri, outcomes)


def _run_stages(spec: PipelineSpec, extra: list[str], tags: dict[str, str]) -> list[StageOutcome]:
    outcomes: list[StageOutcome] = []
    previous: str | None = None
    for index, stage in enumerate(spec.stages):
        config = _with_tags(
            spec.stage_config(index, previous, extra),
            {**tags, lineage.PIPELINE_STAGE: stage.name},
        )
        try:
            result = retrain.with_options(flow_run_name=f"{spec.name}.{stage.name}")(config)
        except Exception as exc:
            done = ", ".join(f"{o.stage}: {o.model} v{o.version}" for o in outcomes) or "none"
            kept = f"earlier stages' versions kept: {done}"
            raise StageFailed(f"stage {stage.name} failed: {first_line(exc)} ({kept})") from exc
        outcome = stage_outcome(stage.name, config, result)
        if isinstance(result, SkippedRun):
            get_run_logger().info("stage %s unchanged: %s", stage.name, result.reason)
        outcomes.append(outcome)
        previous = f"models:/{outcome.model}/{outcome.version}"
    return outcomes


def _with_tags(config: RunConfig, tags: dict[str, str]) -> RunConfig:
    tracking = config.tracking.model_copy(update={"tags": {**config.tracking.tags, **tags}})
    return config.model_copy(update={"tracking": tracking})
