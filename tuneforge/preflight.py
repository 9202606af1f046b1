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
from base64 import b64encode
from pathlib import Path

from tuneforge.config import ConfigError, RunConfig, embeds_credentials
from tuneforge.lineage import BENCH

HEALTH_TIMEOUT_S = 5
# Schemes of MLflow tracking URIs: a server, a SQL database, a local folder, Databricks.
TRACKING_SCHEMES = {"http", "https", "sqlite", "postgresql", "mysql", "mssql", "file", "databricks"}


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
    scheme = uri.partition("://")[0].partition("+")[0] if uri and "://" in uri else ""
    if scheme and scheme not in TRACKING_SCHEMES:
        raise ConfigError(
            f"{key}: {uri}: unknown scheme {scheme!r}; use http(s):// for a tracking server, "
            "or sqlite:/// or postgresql:// for a database"
        )
    if uri and uri.startswith(("http://", "https://")):
        check_tracking_server(uri, key)
    elif config.train.deployment:
        raise ConfigError(
            f"train.deployment: training on another pool hands data over through MLflow, "
            f"which needs a tracking server (http://...), not {uri or './mlflow.db'}"
        )
    if api_url := os.environ.get("PREFECT_API_URL"):
        check_prefect_server(api_url)
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
    """The MLflow server at `uri` answers its health endpoint within a few seconds, and takes
    this process's credentials (MLFLOW_TRACKING_USERNAME/PASSWORD or MLFLOW_TRACKING_TOKEN)."""
    _probe(f"{uri.rstrip('/')}/health", key, uri, {})
    user, password = (os.environ.get(f"MLFLOW_TRACKING_{k}") for k in ("USERNAME", "PASSWORD"))
    headers = {}
    if user and password:
        headers["Authorization"] = "Basic " + b64encode(f"{user}:{password}".encode()).decode()
    elif token := os.environ.get("MLFLOW_TRACKING_TOKEN"):
        headers["Authorization"] = f"Bearer {token}"
    refused = _probe(
        f"{uri.rstrip('/')}/api/2.0/mlflow/experiments/search?max_results=1", key, uri, headers
    )
    if refused:
        given = (
            f"as {user}"
            if user and password
            else "with a token"
            if "Authorization" in headers
            else "without credentials (set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD)"
        )
        raise ConfigError(f"{key}: {uri} refused {given}: {refused}")


def check_prefect_server(api_url: str) -> None:
    """The Prefect API at `api_url` (PREFECT_API_URL) answers and takes this process's
    PREFECT_API_AUTH_STRING (or PREFECT_API_KEY)."""
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_KEY

    key = "PREFECT_API_URL"
    _probe(f"{api_url.rstrip('/')}/health", key, api_url, {})
    # The environment first (Prefect reads its own settings once, when imported), then the
    # settings (a profile's). Plain strings from .value(): SecretStr only inside Settings.
    auth = os.environ.get("PREFECT_API_AUTH_STRING") or PREFECT_API_AUTH_STRING.value()
    api_key = os.environ.get("PREFECT_API_KEY") or PREFECT_API_KEY.value()
    headers = {}
    if auth:
        headers["Authorization"] = "Basic " + b64encode(str(auth).encode()).decode()
    elif api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    _probe(f"{api_url.rstrip('/')}/ready", key, api_url, {})  # 503 when its database is down
    if refused := _probe(f"{api_url.rstrip('/')}/admin/version", key, api_url, headers):
        given = (
            "PREFECT_API_AUTH_STRING was refused"
            if auth
            else ("PREFECT_API_KEY was refused" if api_key else "set PREFECT_API_AUTH_STRING")
        )
        raise ConfigError(f"{key}: {api_url} refused the request ({refused}): {given}")


def _probe(url: str, key: str, server: str, headers: dict[str, str]) -> str | None:
    """GETs `url`: None when answered, "HTTP 401 Unauthorized" (or 403) when refused; a
    server that cannot be reached or fails (5xx) is a ConfigError naming `key`."""
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=HEALTH_TIMEOUT_S):
            return None
    except urllib.error.HTTPError as exc:
        if exc.code in (401, 403):
            return f"HTTP {exc.code} {exc.reason}"
        if exc.code < 500:  # reachable; anything else is the server's to report later
            return None
        raise ConfigError(
            f"{key}: {server} answered HTTP {exc.code} {exc.reason}: the server is up but "
            "failing (is its database down? its log says)"
        ) from None
    except (urllib.error.URLError, OSError) as exc:
        reason = str(getattr(exc, "reason", exc))
    raise ConfigError(f"{key}: cannot reach {server} ({reason})")
