"""Open the MLflow run that every later task of a `retrain` flow logs into."""

from __future__ import annotations

import json
import platform
import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from prefect import task

from tuneforge.config import RunConfig
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
            capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{commit}+dirty" if dirty else commit


def package_versions() -> str:
    found = []
    for name in PACKAGES:
        try:
            found.append(f"{name}=={version(name)}")
        except PackageNotFoundError:
            continue
    return ",".join(found)


@task(name="start_tracking_run")
def start_tracking_run(config: RunConfig, tracking_uri: str) -> str:
    """Creates the run with the whole resolved config as params; returns the run id."""
    tags = {
        "tuneforge.strategy": config.train.strategy,
        "tuneforge.strategy_settings": json.dumps(
            config.strategy_settings().model_dump(mode="json"), sort_keys=True
        ),
        "tuneforge.config_hash": config.fingerprint(),
        "tuneforge.base_model": config.model.source,
        "tuneforge.data_source": config.data.path,
        "tuneforge.python": platform.python_version(),
        "tuneforge.code_version": code_version(),
        "tuneforge.packages": package_versions(),
    }
    params = flatten(config.model_dump(mode="json"))
    return start_run(tracking_uri, config.tracking.experiment, config.name, params, tags)
