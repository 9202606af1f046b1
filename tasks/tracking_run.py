"""Open the MLflow run that every later task of a `retrain` flow logs into."""

from __future__ import annotations

import json
import platform
import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any
from uuid import UUID

from mlflow.tracking import MlflowClient
from prefect import get_run_logger, task
from prefect.exceptions import ObjectNotFound

from tuneforge import lineage
from tuneforge.config import RunConfig
from tuneforge.plugins.discovery import strategy_info
from tuneforge.run_context import RunContext
from tuneforge.tracking import flatten, start_run

PACKAGES = ("tuneforge", "torch", "transformers", "peft", "mlflow", "prefect", "pandera")


def code_version() -> str:
    """The git commit of the tuneforge checkout (`+dirty` with local changes), if any."""
    root = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{commit}+dirty" if dirty else commit


def package_versions() -> str:
    """`name==version` of the packages that shape a model: the stack, and every distribution
    that registers a tuning strategy (the code that trained it may be a plugin's)."""
    from tuneforge.plugins.discovery import discover_strategies

    plugins = sorted({info.package for info in discover_strategies().values()})
    found = []
    for name in dict.fromkeys([*PACKAGES, *plugins]):
        try:
            found.append(f"{name}=={version(name)}")
        except PackageNotFoundError:
            continue
    return ",".join(found)


@task(name="start_tracking_run")
def start_tracking_run(*, config: RunConfig, tracking_uri: str) -> RunContext:
    """Creates the run with the whole resolved config as params, unless a crashed retrain of
    the same model and config left one: that run is continued instead (see `crashed_runs`).
    Returns the context every later task gets (run id, URI, run directory).

    Continuing it keeps one MLflow run, one run directory and at most one registered version
    per retrain, however often it is killed: the re-run finds the trained model (or the
    checkpoints) it left, and registration finishes the version it may have created."""
    from prefect.runtime import flow_run

    flow_run_id = str(flow_run.id or "")
    client = MlflowClient(tracking_uri)
    resumable = None
    for run in crashed_runs(client, config, flow_run_id):
        same = run.data.tags.get(lineage.CONFIG_HASH) == config.fingerprint() and (
            run.data.tags.get(lineage.DATA_SOURCE) == config.data.path
        )
        if same and resumable is None:  # the newest one (runs come newest first)
            resumable = run
        else:
            client.set_tag(run.info.run_id, lineage.CRASHED, "superseded by a later retrain")
            client.set_terminated(run.info.run_id, status="KILLED")
    if resumable is not None:
        run_id = resumable.info.run_id
        attempt = int(resumable.data.tags.get(lineage.ATTEMPT, "1")) + 1
        client.set_tag(run_id, lineage.ATTEMPT, str(attempt))
        client.set_tag(run_id, lineage.FLOW_RUN_ID, flow_run_id)
        get_run_logger().warning(
            "continuing MLflow run %s (attempt %d): a retrain of %s with the same config was "
            "killed before it finished",
            run_id,
            attempt,
            config.registry.model_name,
        )
        return run_context(config, tracking_uri, run_id, resumed=True)

    strategy = strategy_info(config.train.strategy)
    tags = {
        lineage.STRATEGY: config.train.strategy,
        # The distribution whose code trained the model, and its version.
        lineage.STRATEGY_PACKAGE: f"{strategy.package}=={strategy.version}",
        lineage.STRATEGY_SETTINGS: json.dumps(
            config.train.strategy_settings().model_dump(mode="json"), sort_keys=True
        ),
        lineage.CONFIG_HASH: config.fingerprint(),
        lineage.BASE_MODEL: config.model.source,
        lineage.DATA_SOURCE: config.data.path,
        lineage.DATA_CONFIG: json.dumps(config.data.model_dump(mode="json"), sort_keys=True),
        lineage.MODEL_NAME: config.registry.model_name,
        lineage.FLOW_RUN_ID: flow_run_id,
        lineage.PYTHON: platform.python_version(),
        lineage.CODE_VERSION: code_version(),
        lineage.PACKAGES: package_versions(),
        **config.tracking.tags,
    }
    params = flatten(config.model_dump(mode="json"))
    run_id = start_run(tracking_uri, config.tracking.experiment, config.name, params, tags)
    return run_context(config, tracking_uri, run_id, resumed=False)


def run_context(
    config: RunConfig, tracking_uri: str, run_id: str, resumed: bool = False
) -> RunContext:
    """The context every task of the run gets: its run directory under `output_dir`."""
    return RunContext(
        run_id=run_id,
        tracking_uri=tracking_uri,
        run_dir=str(Path(config.output_dir).resolve() / run_id),
        trust_remote_code=config.model.trust_remote_code,
        model_dtype=config.model.dtype,
        resumed=resumed,
    )


def crashed_runs(client: MlflowClient, config: RunConfig, flow_run_id: str) -> list[Any]:
    """MLflow runs of this model left RUNNING by a retrain whose process died, newest first.

    Called while holding the model's retrain slot, so no other retrain of the model is alive
    on this Prefect server: a RUNNING run of the model whose flow run this server knows is
    dead. A run whose flow run this server does not know (another Prefect server sharing the
    MLflow server) is left alone.

    Runs of a sweep (tag `tuneforge.sweep`) are not a retrain's to continue or end, and a
    sweep's candidate continues none: its siblings train beside it under the one slot, and a
    killed sweep's runs are ended by the next run of that sweep (`end_crashed_sweep_runs`)."""
    if lineage.SWEEP in config.tracking.tags:
        return []

    experiment = client.get_experiment_by_name(config.tracking.experiment)
    if experiment is None or not flow_run_id:
        return []
    running = client.search_runs(
        [experiment.experiment_id],
        filter_string="attributes.status = 'RUNNING'",
        order_by=["attributes.start_time DESC"],
    )
    mine = [
        run
        for run in running
        if run.data.tags.get(lineage.MODEL_NAME) == config.registry.model_name
        and lineage.SWEEP not in run.data.tags
    ]
    return left_by_other_flow_runs(mine, lineage.FLOW_RUN_ID, flow_run_id)


def left_by_other_flow_runs(runs: list[Any], tag: str, flow_run_id: str) -> list[Any]:
    """The runs whose flow run (the id in `tag`) is not `flow_run_id` and is known to this
    Prefect server: taken for dead by a caller holding the model's retrain slot."""
    from prefect import get_client

    found = []
    with get_client(sync_client=True) as prefect:
        for run in runs:
            other = run.data.tags.get(tag, "")
            if not other or other == flow_run_id:
                continue
            try:
                prefect.read_flow_run(UUID(other))
            except (ObjectNotFound, ValueError):
                continue
            found.append(run)
    return found
