"""The alias history on a local registry (SQLite): every move recorded in order, with who,
from which version to which, and why; `tuneforge models history` shows it."""

from __future__ import annotations

import getpass
import json

import pytest
from typer.testing import CliRunner

from tuneforge.cli import app


@pytest.fixture
def registry(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
    client = MlflowClient(uri)
    experiment = client.create_experiment("history", artifact_location=str(tmp_path / "a"))
    run = client.create_run(experiment)
    client.create_registered_model("m")
    for _ in range(3):
        client.create_model_version("m", f"runs:/{run.info.run_id}/model", run.info.run_id)
    return uri, client


def test_moves_are_recorded_in_order_with_who_and_why(registry):
    from tuneforge.model_registry import alias_history, move_alias, rollback, set_champion

    uri, client = registry
    set_champion(client, "m", "1", "first")
    move_alias(client, "m", "challenger", "2", "did not beat the champion")
    set_champion(client, "m", "3", "better")
    move_alias(client, "m", "challenger", None, "gone")
    rollback(client, "m")

    moves = alias_history(client, "m")
    assert [(m["alias"], m["from"], m["to"], m["why"]) for m in moves] == [
        ("champion", None, "1", "first"),
        ("challenger", None, "2", "did not beat the champion"),
        ("champion", "1", "3", "better"),
        ("challenger", "2", None, "gone"),
        ("champion", "3", "1", "rolled back from version 3"),
    ]
    assert {m["by"] for m in moves} == {getpass.getuser()}
    assert [m["at"] for m in moves] == sorted(m["at"] for m in moves)
    assert str(client.get_model_version_by_alias("m", "champion").version) == "1"

    done = CliRunner().invoke(app, ["models", "history", "m", "--tracking-uri", uri, "--json"])
    assert done.exit_code == 0 and json.loads(done.stdout.strip().splitlines()[-1]) == moves


def test_the_tracking_user_is_who_moved_it(registry, monkeypatch):
    from tuneforge.model_registry import alias_history, set_champion

    _, client = registry
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "ci-bot")
    set_champion(client, "m", "2", "nightly")
    assert alias_history(client, "m")[-1]["by"] == "ci-bot"


def test_history_of_an_unknown_model_is_one_line(registry):
    uri, _ = registry
    done = CliRunner().invoke(app, ["models", "history", "nope", "--tracking-uri", uri])
    assert done.exit_code == 2
    assert len(done.stderr.strip().splitlines()) == 1
    assert done.stderr.startswith("error: nope: ")
    empty = CliRunner().invoke(app, ["models", "history", "m", "--tracking-uri", uri])
    assert empty.exit_code == 0 and "m: no alias moves recorded" in empty.stdout
