"""Checks a run config against the world before any work starts.

Config validation (tuneforge/config.py) checks shapes and values; this checks what only the
machine can tell: the data file exists, a local model directory exists, and a tracking server
answers. Each failure is one `ConfigError` line naming the key, raised in seconds rather than
after a Prefect server has started or a model has trained.
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from pathlib import Path

from tuneforge.config import ConfigError, RunConfig

HEALTH_TIMEOUT_S = 5


def check_run(config: RunConfig) -> None:
    """Raises `ConfigError` for the first input that cannot work."""
    data = config.data
    if data.format != "hf" and not data.path.startswith("hf:"):
        path = Path(data.path)
        if not path.exists():
            raise ConfigError(f"data.path: {data.path}: file not found")
    source = config.model.source
    if source.startswith((".", "/", "~")) and not Path(source).expanduser().exists():
        raise ConfigError(f"model.source: {source}: no such model directory")
    uri = config.tracking.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if uri and uri.startswith(("http://", "https://")):
        check_tracking_server(uri)
    elif config.train.deployment:
        raise ConfigError(
            f"train.deployment: training on another pool hands data over through MLflow, "
            f"which needs a tracking server (http://...), not {uri or './mlflow.db'}"
        )


def check_tracking_server(uri: str) -> None:
    """The MLflow server at `uri` answers its health endpoint within a few seconds."""
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=HEALTH_TIMEOUT_S):
            return
    except urllib.error.HTTPError as exc:
        if exc.code < 500:  # reachable; auth or routing is MLflow's to report
            return
        reason = f"HTTP {exc.code}"
    except (urllib.error.URLError, OSError) as exc:
        reason = str(getattr(exc, "reason", exc))
    raise ConfigError(f"tracking.tracking_uri: cannot reach {uri} ({reason})")
