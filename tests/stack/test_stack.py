"""The shared stack against real servers: PostgreSQL, MLflow with basic auth, Prefect with an
auth string (the session's `stack` fixture). Who may do what, the alias history on the server,
one-line refusals, and credentials that stay in their file."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import prefect.context  # noqa: F401  Prefect reads its settings once, at import: not here
import pytest
from typer.testing import CliRunner

from tuneforge.cli import app

pytestmark = pytest.mark.integration

MODEL = "it-stack-access"  # moved by the admin, then refused to the reader
HISTORY_MODEL = "it-stack-history"


@pytest.fixture(scope="module")
def admin(stack):
    """MlflowClient as the stack's admin; two models with two versions of one run, its file sent
    through the server; and a user `reader` with no grant (READ, the stack's default)."""
    from mlflow.server import get_app_client
    from mlflow.tracking import MlflowClient

    with pytest.MonkeyPatch.context() as env:
        for key, value in stack.client_env().items():
            env.setenv(key, value)
        client = MlflowClient(stack.mlflow_uri)
        run = client.create_run(client.create_experiment("it-stack-access"))
        client.log_text(run.info.run_id, "weights", "model/note.txt")  # through the server
        for name in (MODEL, HISTORY_MODEL):
            client.create_registered_model(name)
            for _ in range(2):
                client.create_model_version(name, f"runs:/{run.info.run_id}/model", run.info.run_id)
        auth = get_app_client("basic-auth", tracking_uri=stack.mlflow_uri)
        auth.create_user("reader", "reader-password-1")
        yield client


def _cli(stack, *args: str, user: str | None = "admin", password: str | None = None, **env):
    """`tuneforge ARGS` in-process as `user` (None: no credentials); returns the result."""
    values = stack.client_env(user or "admin", password)
    if user is None:
        del values["MLFLOW_TRACKING_USERNAME"], values["MLFLOW_TRACKING_PASSWORD"]
    from mlflow.tracking._tracking_service.utils import _use_tracking_uri

    values.update(env)
    # MLflow's in-process tracking URI outranks the environment once an earlier test (or
    # command) has set one: this command's is used, and exactly what was before (set or
    # not) is put back after (MLflow's own tests do it this way).
    with pytest.MonkeyPatch.context() as patch, _use_tracking_uri(values["MLFLOW_TRACKING_URI"]):
        for key in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
            patch.delenv(key, raising=False)
        for key, value in values.items():
            patch.setenv(key, value)
        return CliRunner().invoke(app, list(args))


def _one_line_error(result) -> str:
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_every_move_is_in_the_history_with_who_and_why(stack, admin):
    for args in (
        ["promote", HISTORY_MODEL, "1"],
        ["promote", HISTORY_MODEL, "2", "--reason", "better"],
    ):
        assert _cli(stack, "models", *args).exit_code == 0
    assert _cli(stack, "models", "rollback", HISTORY_MODEL).exit_code == 0

    result = _cli(stack, "models", "history", HISTORY_MODEL, "--json")
    moves = json.loads(result.stdout.strip().splitlines()[-1])
    assert [(m["alias"], m["from"], m["to"], m["by"]) for m in moves] == [
        ("champion", None, "1", "admin"),
        ("champion", "1", "2", "admin"),
        ("champion", "2", "1", "admin"),
    ]
    assert [m["why"] for m in moves] == [
        "promoted by hand",
        "better",
        "rolled back from version 2",
    ]
    assert moves[0]["at"] <= moves[1]["at"] <= moves[2]["at"]
    table = _cli(stack, "models", "history", HISTORY_MODEL).stdout
    assert "rolled back from" in table and "admin" in table  # (wrapped at 80 columns)


def test_a_reader_browses_but_cannot_move_the_champion(stack, admin):
    for version in ("1", "2"):  # a champion to roll back
        assert _cli(stack, "models", "promote", MODEL, version).exit_code == 0
    before = _cli(stack, "models", "history", MODEL, "--json").stdout

    shown = _cli(stack, "models", "show", MODEL, user="reader", password="reader-password-1")
    assert shown.exit_code == 0, shown.output
    history = _cli(stack, "models", "history", MODEL, user="reader", password="reader-password-1")
    assert history.exit_code == 0, history.output
    for command in (["promote", MODEL, "2"], ["rollback", MODEL]):
        refused = _cli(stack, "models", *command, user="reader", password="reader-password-1")
        line = _one_line_error(refused)
        assert line == (
            f"error: {stack.mlflow_uri}: HTTP 403 Forbidden: reader may not move the champion "
            f"alias of {MODEL}"
        )
    assert _cli(stack, "models", "history", MODEL, "--json").stdout == before  # no trace


@pytest.mark.parametrize("user", ["admin", None])
def test_a_wrong_or_missing_password_is_one_line_naming_the_server(stack, admin, user):
    wrong = "not-the-password-42"
    result = _cli(stack, "models", "list", user=user, password=wrong)
    line = _one_line_error(result)
    if user:
        assert (
            line
            == f"error: {stack.mlflow_uri}: HTTP 401 Unauthorized: it refused the password of admin"
        )
    else:
        refused = f"{stack.mlflow_uri}: HTTP 401 Unauthorized: it refused a request without"
        assert line.startswith(f"error: {refused} credentials")
    assert wrong not in result.output


def test_a_run_stops_before_training_when_a_server_refuses_it(stack, tmp_path):
    """Preflight asks each server as the run would: a refused password or auth string is one
    line naming the setting and the server, before any data is read or model built."""
    from tests.conftest import PRESET

    wrong = "not-the-password-42"
    cases = {
        "MLFLOW_TRACKING_URI": {"MLFLOW_TRACKING_PASSWORD": wrong},
        "PREFECT_API_URL": {"PREFECT_API_AUTH_STRING": f"tuneforge:{wrong}"},
    }
    for key, env in cases.items():
        result = _cli(stack, "run", str(PRESET), "--set", f"output_dir={tmp_path}", **env)
        line = _one_line_error(result)
        server = stack.mlflow_uri if key.startswith("MLFLOW") else stack.prefect_api_url
        assert line.startswith(f"error: {key}: {server} refused"), line
        assert "401" in line and wrong not in result.output


def test_an_unknown_tracking_scheme_is_one_line(stack, tmp_path):
    from tests.conftest import PRESET

    result = _cli(
        stack, "run", str(PRESET), "--set", f"output_dir={tmp_path}",
        MLFLOW_TRACKING_URI="htp://127.0.0.1:5000",
    )  # fmt: skip
    assert _one_line_error(result).startswith(
        "error: MLFLOW_TRACKING_URI: htp://127.0.0.1:5000: unknown scheme 'htp'"
    )


def test_credentials_stay_in_their_file(stack, admin):
    """No secret in any log, in stack.json, in the auth config, or on a command line; the
    files that hold them are the owner's alone."""
    creds = stack.credentials()
    secrets = [creds.db_password, creds.admin_password, creds.prefect_password, creds.flask_secret]
    for name in ("credentials.json", "env.sh"):
        assert (stack.root / name).stat().st_mode & 0o077 == 0
    texts = [p.read_text(errors="replace") for p in stack.logs.glob("*.log")]
    texts += [(stack.root / "stack.json").read_text(), (stack.root / "mlflow-auth.ini").read_text()]
    texts.append((stack.root / "postgres" / "postgres.log").read_text(errors="replace"))
    for pid in stack.state.pids.values():
        texts.append(Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace"))
    assert len(texts) >= 6
    for text in texts:
        for secret in secrets:
            assert secret not in text


def test_a_credentials_file_others_can_read_is_refused(tmp_path):
    from tuneforge.stack import StackError, load_credentials

    path = tmp_path / "credentials.json"
    load_credentials(path, create=True)
    assert path.stat().st_mode & 0o777 == 0o600
    path.chmod(0o644)
    with pytest.raises(StackError, match=r"others can read it \(mode 644.*chmod 600"):
        load_credentials(path, create=False)


def test_status_names_each_service_and_up_restarts_only_what_died(stack):
    result = _cli(stack, "stack", "status", "--dir", str(stack.root), "--json")
    assert result.exit_code == 0, result.output
    status = json.loads(result.stdout.strip().splitlines()[-1])
    assert set(status["services"]) == {"postgres", "mlflow", "prefect"}
    assert all(s["running"] for s in status["services"].values())

    mlflow_pid, prefect_pid = stack.state.pids["mlflow"], stack.state.pids["prefect"]
    os.killpg(prefect_pid, 9)
    subprocess.run(["sleep", "0.5"], check=True)
    down = _cli(stack, "stack", "status", "--dir", str(stack.root), "--json")
    assert down.exit_code == 1
    assert not json.loads(down.stdout.strip().splitlines()[-1])["services"]["prefect"]["running"]
    stack.up(workers=0)
    assert stack.state.pids["mlflow"] == mlflow_pid  # left as it was
    assert stack.state.pids["prefect"] != prefect_pid
    assert all(s["running"] for s in stack.status()["services"].values())


def test_a_database_down_is_one_line_and_up_brings_it_back(stack, admin, tmp_path):
    """PostgreSQL stops under both servers: each says so in one line (the registry command, and
    a run's preflight for either server); `stack up` starts it again and the servers recover."""
    import time

    from tests.conftest import PRESET
    from tuneforge.stack import postgres_bin

    stop = [postgres_bin("pg_ctl"), "-D", str(stack.pg_data), "-m", "immediate", "stop"]
    subprocess.run(stack._as_postgres(stop), check=True, capture_output=True)
    try:
        # MLflow answers 503 and its client retries for about two minutes by default.
        line = _one_line_error(_cli(stack, "models", "list", MLFLOW_HTTP_REQUEST_MAX_RETRIES="1"))
        assert line.startswith(f"error: {stack.mlflow_uri}: HTTP 5"), line
        assert "the server is up but failing (is its database down?" in line
        run = ["run", str(PRESET), "--set", f"output_dir={tmp_path}"]
        line = _one_line_error(_cli(stack, *run))
        assert line.startswith(f"error: MLFLOW_TRACKING_URI: {stack.mlflow_uri} answered HTTP 5")
        local = f"sqlite:///{tmp_path / 'mlflow.db'}"
        line = _one_line_error(_cli(stack, *run, MLFLOW_TRACKING_URI=local))
        assert line.startswith(
            f"error: PREFECT_API_URL: {stack.prefect_api_url} answered HTTP 503"
        ), line
        assert "database down" in line
    finally:
        stack.up(workers=0)
    deadline = time.monotonic() + 30
    while (listed := _cli(stack, "models", "list", "--json")).exit_code != 0:
        assert time.monotonic() < deadline, listed.output  # the server's pool reconnects
        time.sleep(1)
