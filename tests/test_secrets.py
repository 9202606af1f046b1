"""Secrets never leak: a real `tuneforge run` with planted tokens, then a search everywhere.

The run happens in a subprocess whose environment carries distinctive fake secrets (the HF token,
MLflow credentials, a cloud key, a custom API key), at debug log level, against the session's real
Prefect API server and real MLflow server. Afterwards every place a value could end up is read
back and searched for every planted value: the process output, the run's output directory, the
MLflow run (params, tags, metric keys, every artifact downloaded), the registered model and its
version, and in Prefect the flow runs, task runs, logs and artifacts, then, as a catch-all, the
raw bytes of both servers' databases and of MLflow's artifact store.

The MLflow server has no auth, so the basic-auth (or bearer) header built from the planted
credentials is sent and ignored: the values travel the real client code paths.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import BUNDLED_DATA, PRESET, set_args

pytestmark = pytest.mark.integration

TUNEFORGE = [sys.executable, "-m", "tuneforge.cli"]
MODEL = "it-secrets"

PLANTED = {
    "HF_TOKEN": "hf_PLANTEDhfTokenZq7Xw3Lk9Vb2",
    "HUGGING_FACE_HUB_TOKEN": "hf_PLANTEDhubTokenYp4Rn8Mc1",
    "MLFLOW_TRACKING_USERNAME": "planted-mlflow-user-Gx5",
    "MLFLOW_TRACKING_PASSWORD": "PLANTEDmlflowPassword-Tq2Wd9",
    "MLFLOW_TRACKING_TOKEN": "PLANTEDmlflowBearer-Hs6Kf1",
    "AWS_SECRET_ACCESS_KEY": "PLANTEDawsSecret/Jm3Nb7Vc0+Zx",
    "MY_API_KEY": "PLANTEDcustomApiKey-Ew8Ru4",
}


def _needles() -> dict[str, bytes]:
    """Each planted secret, plus the basic-auth header value MLflow builds from the user name
    and the password. The user name alone is no secret: the alias history records who moved
    an alias by it (tuneforge models history)."""
    pair = f"{PLANTED['MLFLOW_TRACKING_USERNAME']}:{PLANTED['MLFLOW_TRACKING_PASSWORD']}"
    needles = {n: v.encode() for n, v in PLANTED.items() if n != "MLFLOW_TRACKING_USERNAME"}
    needles["basic-auth header"] = base64.b64encode(pair.encode())
    return needles


def _leaks(where: str, blob: str | bytes) -> list[str]:
    data = blob.encode() if isinstance(blob, str) else blob
    return [f"{name} in {where}" for name, needle in _needles().items() if needle in data]


def _files_under(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()]


@pytest.fixture(scope="module")
def planted_run(prefect_harness, mlflow_server, tmp_path_factory):
    """One tiny `tuneforge run` with planted secrets; yields (process, output dir, API URL)."""
    from prefect.settings import get_current_settings

    out = tmp_path_factory.mktemp("secrets-run")
    api_url = get_current_settings().api.url
    env = {
        **os.environ,
        **PLANTED,
        "PREFECT_API_URL": api_url,
        "PREFECT_LOGGING_LEVEL": "DEBUG",
        "PREFECT_LOGGING_TO_API_LEVEL": "DEBUG",
    }
    done = subprocess.run(
        [
            *TUNEFORGE,
            "run",
            str(PRESET),
            "--set",
            f"data.path={BUNDLED_DATA}",
            "--set",
            f"output_dir={out}",
            "--set",
            f"tracking.tracking_uri={mlflow_server}",
            "--set",
            "tracking.experiment=secrets",
            "--set",
            f"registry.model_name={MODEL}",
            "--set",
            "train.steps=20",
            "--set",
            "train.eval_every=0",
            "--set",
            "evaluation.max_examples=16",
            "--json",
        ],
        env=env,
        capture_output=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stdout.decode()[-2000:] + done.stderr.decode()[-4000:]
    return done, out, api_url


def test_run_ends_with_one_json_line_naming_the_version_and_its_metrics(planted_run, mlflow_server):
    """`tuneforge run --json`: the human summary, then the outcome as the last line."""
    from mlflow.tracking import MlflowClient

    done, _, _ = planted_run
    lines = done.stdout.decode().strip().splitlines()
    summary = json.loads(lines[-1])
    assert "Registered" in done.stdout.decode()  # the human summary still comes first
    version = MlflowClient(mlflow_server).get_model_version(MODEL, summary["version"])
    assert summary["model"] == MODEL and summary["alias"] in ("champion", "challenger")
    assert version.run_id == summary["run_id"]
    assert version.tags["tuneforge.decision"].startswith(summary["alias"])
    assert summary["decision"].startswith(f"{MODEL} version {summary['version']} is ")
    assert summary["reason"] in summary["decision"]
    assert summary["training"]["steps"] == 20 and summary["data"]["valid"] > 0
    tuned = MlflowClient(mlflow_server).get_run(summary["run_id"]).data.metrics
    assert summary["metrics"]["tuned"]["exact_match"] == tuned["tuned.exact_match"]
    assert set(summary["metrics"]["base"]) == set(summary["metrics"]["tuned"])


def test_planted_secrets_reach_no_output_file_or_log(planted_run):
    done, out, _ = planted_run
    assert b"DEBUG" in done.stderr, "debug logging was not on: the search would prove little"
    found = _leaks("stdout", done.stdout) + _leaks("stderr", done.stderr)
    for path in _files_under(out):
        found += _leaks(str(path), path.read_bytes())
    assert not found


def test_planted_secrets_reach_no_mlflow_run_registry_entry_or_artifact(
    planted_run, mlflow_server, tmp_path
):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(mlflow_server)
    experiment = client.get_experiment_by_name("secrets")
    (run,) = client.search_runs([experiment.experiment_id])
    found = _leaks("experiment", repr(experiment))
    found += _leaks("run info", repr(run.info))
    found += _leaks("run params", repr(run.data.params))
    found += _leaks("run tags", repr(run.data.tags))
    found += _leaks("metric keys", repr(sorted(run.data.metrics)))
    model = client.get_registered_model(MODEL)
    found += _leaks("registered model", repr(model) + repr(model.tags) + str(model.description))
    for version in client.search_model_versions(f"name='{MODEL}'"):
        found += _leaks(f"version {version.version}", repr(version) + str(version.description))
    artifacts = Path(client.download_artifacts(run.info.run_id, "", str(tmp_path)))
    downloaded = _files_under(artifacts)
    assert any(p.name == "model.safetensors" for p in downloaded)  # the whole tree came down
    for path in downloaded:
        found += _leaks(f"artifact {path.relative_to(artifacts)}", path.read_bytes())
    assert not found


def test_planted_secrets_reach_no_prefect_run_parameter_log_or_artifact(planted_run):
    from prefect import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterId,
        LogFilter,
        LogFilterFlowRunId,
    )

    with get_client(sync_client=True) as client:
        flow_runs = client.read_flow_runs()
        assert flow_runs, "the run did not go through the test's Prefect server"
        ids = [run.id for run in flow_runs]
        assert any(run.parameters.get("config") for run in flow_runs)
        found: list[str] = []
        for run in flow_runs:
            found += _leaks(f"flow run {run.name}", run.model_dump_json())
        for task_run in client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=ids))
        ):
            found += _leaks(f"task run {task_run.name}", task_run.model_dump_json())
        logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=ids)))
        assert any(log.level == 10 for log in logs), "no debug records reached the API"
        for log in logs:
            found += _leaks(f"log {log.name}", log.message)
        for artifact in client.read_artifacts():
            found += _leaks(f"artifact {artifact.key}", artifact.model_dump_json())
    assert not found


def test_planted_secrets_are_nowhere_in_either_servers_storage(planted_run, tmp_path_factory):
    """The catch-all: raw bytes of the Prefect and MLflow databases and MLflow's artifact
    store, whatever table or file a value might have landed in."""
    from prefect.settings import get_current_settings

    prefect_db = get_current_settings().server.database.connection_url
    assert prefect_db and "sqlite" in prefect_db.get_secret_value()
    db_path = Path(prefect_db.get_secret_value().split(":///", 1)[1])
    stores = [p for p in db_path.parent.iterdir() if p.name.startswith(db_path.name)]
    for mlflow_root in tmp_path_factory.getbasetemp().glob("mlflow-server*"):
        stores += _files_under(mlflow_root)
    assert len(stores) > 2
    found = [leak for path in stores for leak in _leaks(str(path), path.read_bytes())]
    assert not found


def test_credentials_in_the_tracking_uri_are_refused_without_echoing_them(tmp_path):
    password = "PLANTEDuriPassword-Lv3"
    uri = f"https://someone:{password}@mlflow.example:5000"
    line = _refused_run(tmp_path, password, ["--set", f"tracking.tracking_uri={uri}"])
    assert "tracking.tracking_uri: embeds credentials" in line
    assert not list(tmp_path.iterdir())


def test_credentials_in_the_environments_tracking_uri_are_refused_and_not_echoed(tmp_path):
    # Preflight refuses them too: the URI would travel as a Prefect parameter to a train pool.
    password = "PLANTEDenvUriPassword-Qz5"
    env = {"MLFLOW_TRACKING_URI": f"http://someone:{password}@127.0.0.1:9"}
    line = _refused_run(tmp_path, password, [], env)
    assert "MLFLOW_TRACKING_URI: embeds credentials" in line


def test_credentials_in_plugin_settings_are_refused_without_echoing_them(tmp_path):
    # A plugin's settings are logged as MLflow params like the rest of the config.
    password = "PLANTEDsettingsToken-Wq8"
    args = ["--set", f"train.settings.hub.api_token={password}"]
    line = _refused_run(tmp_path, password, args)
    assert "train.settings: hub.api_token looks like a credential" in line
    assert not list(tmp_path.iterdir())  # refused before anything was written
    # Short values and ordinary keys stay allowed: only the secret-looking key is named.
    from tuneforge.config import credential_keys

    settings = {"rank": 8, "key": "short", "target_modules": ["q_proj"], "auth": [{"pwd": "x"}]}
    assert credential_keys(settings) == []
    assert credential_keys({"layers": [{"db_password": "long-enough"}]}) == ["layers.0.db_password"]


def _refused_run(
    tmp_path: Path, password: str, args: list[str], env: dict[str, str] | None = None
) -> str:
    """Runs `tuneforge run` on the preset; asserts it stops with exit 2 in one line that does
    not echo `password`, and returns that line."""
    done = subprocess.run(
        [
            *TUNEFORGE,
            "run",
            str(PRESET),
            *set_args(f"data.path={BUNDLED_DATA}", f"output_dir={tmp_path}"),
            *args,
        ],
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 2
    lines = (done.stdout + done.stderr).strip().splitlines()
    assert len(lines) == 1
    assert password not in done.stdout + done.stderr
    return lines[0]


def test_redact_masks_secret_env_values_and_url_user_info_only():
    from tuneforge.secrets import redact

    environ = {
        "HF_TOKEN": "hf_abcdefgh123",
        "MY_API_KEY": "key-0123456789",
        "TOKENIZERS_PARALLELISM": "false-but-long",  # not a token: a whole-word match only
        "MLFLOW_TRACKING_PASSWORD": "short",  # too short to mask without garbling logs
        "HOME": "/home/someone",
    }
    text = (
        "token hf_abcdefgh123, key key-0123456789, false-but-long, short, /home/someone, "
        "http://me:pw@mlflow:5000/api https://tok@github.com/x"
    )
    assert redact(text, environ) == (
        "token ***, key ***, false-but-long, short, /home/someone, "
        "http://***@mlflow:5000/api https://***@github.com/x"
    )


def test_installed_redaction_masks_log_records_tracebacks_and_printed_text(monkeypatch):
    import io
    import logging

    from tuneforge.secrets import install_redaction

    secret = "PLANTEDunitSecret-Aa1"
    monkeypatch.setenv("SOME_SERVICE_TOKEN", secret)
    stdout, stderr = io.StringIO(), io.StringIO()
    monkeypatch.setattr(sys, "stdout", stdout)
    monkeypatch.setattr(sys, "stderr", stderr)
    logger = logging.getLogger("tuneforge.test-secrets")
    captured = io.StringIO()
    handler = logging.StreamHandler(captured)
    logger.addHandler(handler)
    previous = logging.getLogRecordFactory()
    try:
        install_redaction()
        install_redaction()  # a second install neither nests nor drops the masking
        logger.warning("calling with %s", secret)
        try:
            raise RuntimeError(f"server refused {secret}")
        except RuntimeError:
            logger.exception("failed")
        print(f"printed {secret}")
        sys.stderr.write(f"written {secret}\n")
    finally:
        logging.setLogRecordFactory(previous)
        logger.removeHandler(handler)
    logged = captured.getvalue()
    assert "calling with ***" in logged and "RuntimeError: server refused ***" in logged
    assert stdout.getvalue() == "printed ***\n" and stderr.getvalue() == "written ***\n"
    assert secret not in logged + stdout.getvalue() + stderr.getvalue()
