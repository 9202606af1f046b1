"""The training stage alone, deployed on another work pool (see `train.deployment`).

    prefect deploy flows/train_stage.py:train_stage --name gpu --pool gpu

It receives the run config and the MLflow run id, fetches the split that the `retrain` flow
handed over as run artifacts, resolves the same base model (a registry base pinned to the
version the run recorded), trains, and hands the tuned checkpoint back as run artifacts.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

from prefect import flow

from tuneforge import lineage
from tuneforge.config import RunConfig
from tuneforge.run_context import RunContext
from tuneforge.tasks.model_source import resolve_base_model
from tuneforge.tasks.train import train_here_or_on_pool
from tuneforge.tasks.train_remote import HANDOVER


@flow(name="train-stage")
def train_stage(config: dict[str, Any], run_id: str, tracking_uri: str) -> dict[str, Any]:
    """Fetch split -> resolve base -> train -> hand the tuned checkpoint back (all in a
    temporary directory)."""
    cfg = RunConfig.model_validate(config)
    # The split, base and tuned model are only passing through (checkpoints live under
    # output_dir): gone when the stage ends, so a shared volume does not fill up with them.
    with tempfile.TemporaryDirectory(prefix="tuneforge-stage-") as work:
        return _train_in(Path(work), cfg, run_id, tracking_uri)


def _train_in(work: Path, cfg: RunConfig, run_id: str, tracking_uri: str) -> dict[str, Any]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    ctx = RunContext(
        run_id, tracking_uri, str(work), cfg.model.trust_remote_code, model_dtype=cfg.model.dtype
    )
    data = Path(client.download_artifacts(run_id, f"{HANDOVER}/data", str(work)))
    parent = client.get_run(run_id).data.tags.get(lineage.PARENT_VERSION)
    model = cfg.model.model_copy(update={"source": f"models:/{parent}"}) if parent else cfg.model
    train_path = str(data / "train.jsonl")
    base_dir = resolve_base_model(model=model, train_path=train_path, ctx=ctx)
    trained = train_here_or_on_pool(
        config=cfg,
        base_dir=base_dir,
        train_path=train_path,
        eval_path=str(data / "eval.jsonl"),
        ctx=ctx,
        here=True,  # this flow is train.deployment
    )
    client.log_artifacts(run_id, trained.model_dir, f"{HANDOVER}/tuned")
    client.log_text(run_id, json.dumps(asdict(trained)), f"{HANDOVER}/train_result.json")
    return {"steps": trained.steps, "seconds": trained.seconds}
