"""`deployments/stack/compose.yaml` starts what `tuneforge stack up` starts, with the same
settings (no Docker needed: the files are compared). The compose file itself is not run in
the tests: this machine has Docker's client but no Compose and no daemon."""

from __future__ import annotations

import configparser
import re

import pytest
import yaml

from tests.conftest import REPO
from tuneforge.stack import DATABASES, DB_USER, Stack

STACK_DIR = REPO / "deployments" / "stack"


@pytest.fixture
def compose() -> dict:
    return yaml.safe_load((STACK_DIR / "compose.yaml").read_text())["services"]


@pytest.fixture
def local(tmp_path) -> Stack:
    stack = Stack(tmp_path)
    stack.credentials(create=True)
    stack.state.ports = {"postgres": 15432, "mlflow": 5000, "prefect": 4200}
    return stack


def _settings(env: dict[str, str]) -> dict[str, str]:
    """A server's own settings: what the stack adds on top of the caller's environment."""
    ignored = {
        "MLFLOW_DISABLE_TELEMETRY",
        "DO_NOT_TRACK",
        "PREFECT_SERVER_ANALYTICS_ENABLED",
        "PREFECT_UI_ENABLED",  # the caller's, passed through (the tests turn the UI off)
        "PREFECT_LOGGING_LEVEL",
    }
    return {
        k: v
        for k, v in env.items()
        if k.startswith(("MLFLOW_", "PREFECT_", "PG")) and k not in ignored
    }


def test_the_servers_get_the_same_settings(compose, local):
    for service, env in (("mlflow", local._mlflow_env()), ("prefect", local._prefect_env())):
        theirs, ours = compose[service]["environment"], _settings(env)
        assert set(theirs) == set(ours), service
        for key, value in ours.items():
            if key.endswith(("PASSWORD", "SECRET_KEY", "AUTH_STRING")):
                assert "${TUNEFORGE_STACK_" in str(theirs[key])  # from .env, never a literal
            elif key.endswith(("_URL", "_PATH", "_HOME")):
                continue  # addresses and paths differ between a machine and containers
            else:
                assert str(theirs[key]) == value, key
    assert compose["prefect"]["environment"]["PREFECT_API_DATABASE_CONNECTION_URL"] == (
        f"postgresql+asyncpg://{DB_USER}@postgres:5432/prefect"
    )


def test_mlflow_runs_alike(compose, local):
    theirs = compose["mlflow"]["command"].split()
    ours = local._mlflow_command()
    local._mlflow_env()  # writes the stack's auth config
    for flag in ("--app-name", "--backend-store-uri", "--artifacts-destination"):
        assert flag in theirs and flag in ours
    assert theirs[theirs.index("--app-name") + 1] == ours[ours.index("--app-name") + 1]
    backend = theirs[theirs.index("--backend-store-uri") + 1]
    assert backend == f"postgresql://{DB_USER}@postgres:5432/mlflow"
    # Basic auth: the same ini, but for where its database lives.
    committed = configparser.ConfigParser()
    committed.read(STACK_DIR / "mlflow-auth.ini")
    generated = configparser.ConfigParser()
    generated.read(local.root / "mlflow-auth.ini")
    for config in (committed, generated):
        config["mlflow"]["database_uri"] = re.sub(
            r"@[^/]+/", "@HOST/", config["mlflow"]["database_uri"]
        )
    assert dict(committed["mlflow"]) == dict(generated["mlflow"])


def test_the_worker_is_a_client_like_any_other(compose, local):
    env = compose["worker"]["environment"]
    assert set(local.client_env()) | {"TUNEFORGE_HOME"} == set(env)
    assert "--pool cpu" in compose["worker"]["command"]


def test_the_databases_and_no_secret_in_the_files(compose):
    sql = (STACK_DIR / "initdb" / "create-databases.sql").read_text()
    assert re.findall(r"CREATE DATABASE (\w+);", sql) == list(DATABASES)
    text = (STACK_DIR / "compose.yaml").read_text()
    for line in text.splitlines():
        if not line.strip().startswith("#") and re.search(
            r"(PASSWORD|SECRET|AUTH_STRING)\w*:", line
        ):
            assert "${TUNEFORGE_STACK_" in line, line
    ignored = (REPO / ".gitignore").read_text().split()
    assert "deployments/stack/.env" in ignored
