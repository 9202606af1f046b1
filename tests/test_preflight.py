"""Checks before a run: missing inputs and an unreachable tracking server fail in one line."""

from __future__ import annotations

import socket

import pytest
from typer.testing import CliRunner

from tests.conftest import PRESET
from tuneforge.cli import app
from tuneforge.config import ConfigError, load_config
from tuneforge.preflight import check_run


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # released on close: nothing listens there


def test_shipped_preset_passes(monkeypatch):
    monkeypatch.chdir(PRESET.parents[2])
    check_run(load_config(PRESET))


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("data.path=/no/such/data.jsonl", "data.path: /no/such/data.jsonl: file not found"),
        ("model.source=./no/such/model", "model.source: ./no/such/model: no such model directory"),
    ],
)
def test_missing_inputs_are_named(override, message, monkeypatch):
    monkeypatch.chdir(PRESET.parents[2])
    with pytest.raises(ConfigError, match=message):
        check_run(load_config(PRESET, [override]))


def test_unreachable_tracking_server_fails_fast(monkeypatch):
    monkeypatch.chdir(PRESET.parents[2])
    uri = f"http://127.0.0.1:{_closed_port()}"
    with pytest.raises(ConfigError, match=r"tracking\.tracking_uri: cannot reach http://127"):
        check_run(load_config(PRESET, [f"tracking.tracking_uri={uri}"]))


def test_credentials_in_the_tracking_uri_are_refused():
    with pytest.raises(ConfigError, match=r"tracking\.tracking_uri: embeds credentials"):
        load_config(PRESET, ["tracking.tracking_uri=http://user:s3cret@127.0.0.1:5000"])


def test_cli_run_stops_before_starting_anything(monkeypatch, tmp_path):
    monkeypatch.chdir(PRESET.parents[2])
    done = CliRunner().invoke(
        app, ["run", str(PRESET), "--set", f"data.path={tmp_path / 'absent.jsonl'}"]
    )
    assert done.exit_code == 2
    assert done.output.count("\n") == 1 and "data.path:" in done.output


def test_training_on_another_pool_needs_a_tracking_server(monkeypatch):
    monkeypatch.chdir(PRESET.parents[2])
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(ConfigError, match=r"train\.deployment: .* needs a tracking server"):
        check_run(load_config(PRESET, ["train.deployment=train-stage/train-gpu"]))
