"""Checks a run config against the world before any work starts.

Config validation (tuneforge/config.py) checks shapes and values; this checks what only the
machine can tell: the data file exists, a local model directory exists, the output directory
is writable, and a tracking server answers. Each failure is one `ConfigError` line naming the
key, raised in seconds rather than after a Prefect server has started or a model has trained.
"""

from __future__ import annotations

import os
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from tuneforge.config import ConfigError, RunConfig, embeds_credentials
from tuneforge.lineage import BENCH

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
    key = "tracking.tracking_uri" if config.tracking.tracking_uri else "MLFLOW_TRACKING_URI"
    if uri and embeds_credentials(uri):
        # It would travel in the clear: as a Prefect parameter to a training pool, in messages.
        raise ConfigError(
            f"{key}: embeds credentials; put them in MLFLOW_TRACKING_USERNAME / "
            "MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN) instead"
        )
    if uri and uri.startswith(("http://", "https://")):
        check_tracking_server(uri, key)
    elif config.train.deployment:
        raise ConfigError(
            f"train.deployment: training on another pool hands data over through MLflow, "
            f"which needs a tracking server (http://...), not {uri or './mlflow.db'}"
        )
    check_benchmarks(config)
    check_exports(config)
    check_writable(config.output_dir)  # last: it creates the directory


def check_exports(config: RunConfig) -> None:
    """A GGUF export needs the gguf package, and from a local base, an architecture it
    writes: found now, not after training and registration."""
    import json

    from tuneforge.exports.gguf import ARCHITECTURES
    from tuneforge.exports.version import gguf_missing

    if not any(entry.startswith("gguf") for entry in config.registry.export):
        return
    missing = gguf_missing()
    if missing:
        raise ConfigError(f"registry.export: {missing}")
    config_file = Path(config.model.source).expanduser() / "config.json"
    if config.model.source.startswith((".", "/", "~")) and config_file.is_file():
        model_type = json.loads(config_file.read_text()).get("model_type")
        if model_type not in ARCHITECTURES:
            raise ConfigError(
                f"registry.export: gguf writes {', '.join(ARCHITECTURES)} models, not "
                f"{model_type!r} ({config.model.source})"
            )


def check_benchmarks(config: RunConfig) -> dict[str, bool]:
    """Each benchmark's tasks, files and metrics exist, and every `bench.*` guard names one of
    them; returns the benchmark metrics (`bench.<task>.<metric>` -> higher is better)."""
    from tuneforge.plugins.discovery import evaluator_info

    found: dict[str, bool] = {}
    for name, settings in config.evaluation.benchmark_settings().items():
        key = f"evaluation.benchmarks.{name}"
        try:
            metrics = evaluator_info(name).cls(settings).metrics()
        except ModuleNotFoundError as exc:
            raise ConfigError(
                f"{key}: needs {exc.name}, which is not installed (pip install "
                "'tuneforge[harness]' for lm_eval)"
            ) from None
        except ValueError as exc:
            message = str(exc).strip().splitlines()[0]
            raise ConfigError(message if message.startswith(key) else f"{key}: {message}") from None
        for metric, higher in metrics.items():
            full = f"{BENCH}.{metric}"
            if full in found:
                raise ConfigError(f"{key}: {full} is produced by two benchmark evaluators")
            found[full] = higher
    for guard in config.registry.guards:
        if guard.startswith(f"{BENCH}.") and guard not in found:
            raise ConfigError(
                f"registry.guards.{guard}: not a metric the benchmarks produce (they produce "
                f"{', '.join(sorted(found)) or 'none'})"
            )
    return found


def check_writable(output_dir: str) -> None:
    """`output_dir` can be created and written: found now, not after an hour of training."""
    path = Path(output_dir)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".tuneforge-write-check-"):
            pass
    except OSError as exc:
        raise ConfigError(
            f"output_dir: {output_dir}: cannot write there ({exc.strerror or exc})"
        ) from None


def check_tracking_server(uri: str, key: str = "tracking.tracking_uri") -> None:
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
    raise ConfigError(f"{key}: cannot reach {uri} ({reason})")
