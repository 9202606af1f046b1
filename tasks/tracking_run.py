"""Open the MLflow run that every later task of a `retrain` flow logs into."""

from __future__ import annotations

import platform

from prefect import task

from tuneforge.config import RunConfig
from tuneforge.tracking import flatten, start_run


@task(name="start_tracking_run")
def start_tracking_run(config: RunConfig, tracking_uri: str) -> str:
    """Creates the run with the whole resolved config as params; returns the run id."""
    tags = {
        "tuneforge.strategy": config.train.strategy,
        "tuneforge.config_hash": config.fingerprint(),
        "tuneforge.base_model": config.model.source,
        "tuneforge.data_source": config.data.path,
        "tuneforge.python": platform.python_version(),
    }
    params = flatten(config.model_dump(mode="json"))
    return start_run(tracking_uri, config.tracking.experiment, config.name, params, tags)
