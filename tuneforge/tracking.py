"""MLflow plumbing shared by the flow and its tasks.

Tasks receive the MLflow `run_id` and the tracking URI explicitly and talk to MLflow through a
`MlflowClient`: MLflow's "active run" is per thread, and Prefect may run a task in another
thread (or process) than the flow.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

# MLflow rejects params longer than this.
_MAX_PARAM_LENGTH = 6000


def resolve_tracking_uri(configured: str | None) -> str:
    """The configured URI, else MLflow's own default (MLFLOW_TRACKING_URI or ./mlflow.db)."""
    import mlflow

    if configured:
        mlflow.set_tracking_uri(configured)
    return mlflow.get_tracking_uri()


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """`{"train": {"steps": 5}}` -> `{"train.steps": "5"}`, for MLflow params."""
    flat: dict[str, str] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat |= flatten(value, f"{name}.")
        else:
            flat[name] = str(value)[:_MAX_PARAM_LENGTH]
    return flat


def start_run(
    tracking_uri: str, experiment: str, run_name: str, params: dict[str, str], tags: dict[str, str]
) -> str:
    """Creates an MLflow run (and its experiment if needed) and returns the run id."""
    client = MlflowClient(tracking_uri)
    found = client.get_experiment_by_name(experiment)
    experiment_id = found.experiment_id if found else client.create_experiment(experiment)
    run = client.create_run(experiment_id, run_name=run_name, tags=tags)
    items = [Param(k, v) for k, v in params.items()]
    for start in range(0, len(items), 100):  # log_batch takes at most 100 params
        client.log_batch(run.info.run_id, params=items[start : start + 100])
    return run.info.run_id


class MetricLogger:
    """Buffers metrics and sends them in batches (one HTTP call per flush, not per value)."""

    def __init__(self, tracking_uri: str, run_id: str, flush_every: int = 200) -> None:
        self.client = MlflowClient(tracking_uri)
        self.run_id = run_id
        self.flush_every = flush_every
        self._buffer: list[Metric] = []

    def log(self, values: dict[str, float], step: int) -> None:
        now = int(time.time() * 1000)
        self._buffer += [Metric(k, float(v), now, step) for k, v in values.items()]
        if len(self._buffer) >= self.flush_every:
            self.flush()

    def flush(self) -> None:
        while self._buffer:
            self.client.log_batch(self.run_id, metrics=self._buffer[:1000])
            del self._buffer[:1000]  # only once sent: a failed call keeps them for a retry


@contextmanager
def run_status(tracking_uri: str, run_id: str) -> Iterator[None]:
    """Ends the MLflow run as FINISHED, or FAILED when the block raises."""
    client = MlflowClient(tracking_uri)
    try:
        yield
    except BaseException:
        client.set_terminated(run_id, status="FAILED")
        raise
    client.set_terminated(run_id, status="FINISHED")
