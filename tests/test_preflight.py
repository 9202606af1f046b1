"""Checks before a run: missing inputs and an unreachable tracking server fail in one line."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.conftest import PRESET, _free_port
from tuneforge.cli import app
from tuneforge.config import ConfigError, load_config
from tuneforge.preflight import check_run


@pytest.fixture(autouse=True)
def _no_tracking_uri_from_earlier_tests(monkeypatch):
    # mlflow.set_tracking_uri (called by in-process flows) exports MLFLOW_TRACKING_URI; a
    # server an earlier test stopped must not decide these checks.
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


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


def test_an_unwritable_output_directory_is_named(monkeypatch, tmp_path):
    monkeypatch.chdir(PRESET.parents[2])
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")  # (tests run as root here: permissions would not stop it)
    with pytest.raises(ConfigError, match=rf"output_dir: {blocker}/runs: cannot write there"):
        check_run(load_config(PRESET, [f"output_dir={blocker}/runs"]))


def test_unreachable_tracking_server_fails_fast(monkeypatch):
    monkeypatch.chdir(PRESET.parents[2])
    uri = f"http://127.0.0.1:{_free_port()}"
    with pytest.raises(ConfigError, match=r"tracking\.tracking_uri: cannot reach http://127"):
        check_run(load_config(PRESET, [f"tracking.tracking_uri={uri}"]))


@pytest.mark.parametrize(
    "uri",
    [
        "http://user:s3cret@127.0.0.1:5000",
        "postgresql+psycopg2://mlflow:s3cret@db/mlflow",
        "https://mlflow.internal/?access_token=s3cret",
    ],
)
def test_credentials_in_the_tracking_uri_are_refused(uri, monkeypatch):
    with pytest.raises(ConfigError, match=r"tracking\.tracking_uri: embeds credentials") as e:
        load_config(PRESET, [f"tracking.tracking_uri={uri}"])
    assert "s3cret" not in str(e.value)
    monkeypatch.chdir(PRESET.parents[2])
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    with pytest.raises(ConfigError, match=r"^MLFLOW_TRACKING_URI: embeds credentials") as e:
        check_run(load_config(PRESET))
    assert "s3cret" not in str(e.value)


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


def test_real_cli_fails_fast_on_an_unreachable_tracking_server(tmp_path):
    """`tuneforge run` as a user runs it: exit 2, one line naming the URI, no traceback, and
    nothing built (no run directory, no Prefect server) before it gives up."""
    uri = f"http://127.0.0.1:{_free_port()}"
    out_dir = tmp_path / "runs"
    started = time.monotonic()
    done = subprocess.run(
        [
            str(Path(sys.executable).with_name("tuneforge")),
            "run",
            str(PRESET),
            "--set",
            f"tracking.tracking_uri={uri}",
            "--set",
            f"output_dir={out_dir}",
        ],
        cwd=PRESET.parents[2],
        capture_output=True,
        text=True,
        timeout=120,
    )
    seconds = time.monotonic() - started
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: tracking.tracking_uri: cannot reach")
    assert uri in lines[0]
    assert not out_dir.exists()  # gave up before any work
    print(f"gave up after {seconds:.1f} s")


def test_a_gguf_export_it_cannot_write_is_refused_before_training(monkeypatch, tmp_path):
    import importlib.util

    monkeypatch.chdir(PRESET.parents[2])
    model = tmp_path / "gpt2-model"
    model.mkdir()
    (model / "config.json").write_text('{"model_type": "gpt2"}')
    config = load_config(PRESET, [f"model.source={model}", "registry.export=[merged, gguf:q8_0]"])
    with pytest.raises(ConfigError, match=r"registry.export: gguf writes llama, mistral, qwen2"):
        check_run(config)
    check_run(load_config(PRESET, [f"model.source={model}", "registry.export=[merged]"]))

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda n, *a: None if n == "gguf" else real(n, *a)
    )
    with pytest.raises(ConfigError, match=r"registry.export: .*pip install 'tuneforge\[export\]'"):
        check_run(load_config(PRESET, ["registry.export=[gguf]"]))
