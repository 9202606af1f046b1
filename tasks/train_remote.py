"""Train on another work pool: hand the split over through the MLflow run, run the
`train-stage` deployment there, and take the tuned checkpoint back the same way.

Chosen by `tasks/train.py:train_here_or_on_pool`, for every flow that trains, when
`train.deployment` names a deployment of `flows/train_stage.py:train_stage` (e.g. on the GPU
pool); the rest of the flow stays put.
"""

from __future__ import annotations

import json
from pathlib import Path

from prefect import task

from tuneforge.config import RunConfig
from tuneforge.run_context import RunContext
from tuneforge.slots import training_slot
from tuneforge.training.loop import TrainResult

HANDOVER = "handover"


@task(name="train_on_pool")
def train_on_pool(
    *, config: RunConfig, train_path: str, eval_path: str, ctx: RunContext
) -> TrainResult:
    """Runs training as the deployment `config.train.deployment` and waits for it, holding a
    slot of `train.concurrency_limit` meanwhile; the tuned checkpoint comes back into `tuned/`
    in the run directory."""
    from mlflow.tracking import MlflowClient
    from prefect.deployments import run_deployment

    run_id, tracking_uri = ctx.run_id, ctx.tracking_uri
    client = MlflowClient(tracking_uri)
    for path in (train_path, eval_path):
        client.log_artifact(run_id, path, f"{HANDOVER}/data")
    with training_slot(config.train.concurrency_limit, f"training on {config.train.deployment}"):
        flow_run = run_deployment(
            config.train.deployment,
            parameters={
                "config": config.model_dump(mode="json"),
                "run_id": run_id,
                "tracking_uri": tracking_uri,
            },
        )
    if not flow_run.state or not flow_run.state.is_completed():
        state = flow_run.state.name if flow_run.state else "unknown"
        raise RuntimeError(
            f"train.deployment {config.train.deployment}: flow run {flow_run.name} ended {state}"
        )
    local = Path(ctx.path("tuned"))
    local.mkdir(parents=True, exist_ok=True)
    tuned = client.download_artifacts(run_id, f"{HANDOVER}/tuned", str(local))
    result = client.download_artifacts(run_id, f"{HANDOVER}/train_result.json", str(local))
    data = json.loads(Path(result).read_text())
    return TrainResult.from_dict({**data, "model_dir": tuned})
