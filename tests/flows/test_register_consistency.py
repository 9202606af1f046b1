"""A registered version always has its whole model, and an interrupted registration is finished,
not duplicated, by a re-run. Against a real MLflow server over HTTP, with faults injected into
the upload and between the registry calls.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest
from mlflow.exceptions import MlflowException

from tuneforge.config import RegistryConfig
from tuneforge.lineage import CHALLENGER, CHAMPION
from tuneforge.packaging import IncompleteUpload
from tuneforge.run_context import RunContext
from tuneforge.tasks.register import register_model, retry_if_unreachable
from tuneforge.tracking import start_run

pytestmark = pytest.mark.integration

BASE = {"exact_match": 0.1, "eval_loss": 3.0}
TUNED = {"exact_match": 0.5, "eval_loss": 2.0}
LINEAGE = {"tuneforge.strategy": "full", "tuneforge.config_hash": "0123456789abcdef"}


def _run(uri: str) -> str:
    """A run as the flow leaves it before registration: lineage tags, tuned metrics."""
    from mlflow.tracking import MlflowClient

    run_id = start_run(uri, "register-consistency", "run", {}, LINEAGE)
    for key, value in TUNED.items():  # the gate reads a champion's score from its run
        MlflowClient(uri).log_metric(run_id, f"tuned.{key}", value)
    return run_id


def _register(tiny_model_dir: Path, run_id: str, name: str, uri: str, task=register_model.fn):
    return task(
        model_dir=str(tiny_model_dir),
        base_metrics=BASE,
        tuned_metrics=TUNED,
        champion=None,
        registry=RegistryConfig(model_name=name),
        ctx=RunContext(run_id=run_id, tracking_uri=uri, run_dir=str(tiny_model_dir.parent)),
    )


def _versions(uri: str, name: str, run_id: str | None = None) -> list:
    from mlflow.tracking import MlflowClient

    query = f"name='{name}'" + (f" and run_id='{run_id}'" if run_id else "")
    return MlflowClient(uri).search_model_versions(query)


def _lose_nested_file(local: Path) -> str:
    # A file two levels down: a check of top-level names alone would not notice it.
    victim = next(
        p for p in sorted(local.rglob("*")) if p.is_file() and len(p.parts) - len(local.parts) >= 3
    )
    victim.unlink()
    return victim.relative_to(local).as_posix()


def _truncate_weights(local: Path) -> str:
    victim = next(local.rglob("*.safetensors"))
    victim.write_bytes(victim.read_bytes()[:1000])
    return victim.relative_to(local).as_posix()


@pytest.mark.parametrize(
    ("damage", "complaint"),
    [(_lose_nested_file, "missing"), (_truncate_weights, "wrong size")],
)
def test_an_upload_that_loses_a_file_registers_nothing(
    mlflow_server, tiny_model_dir, monkeypatch, damage, complaint
):
    from mlflow.tracking import MlflowClient

    upload = MlflowClient.log_artifacts
    damaged: list[str] = []

    def lossy_upload(self, run_id, local_dir, artifact_path=None):
        # The store ends up with one file fewer (or shorter) than the model has, as after a
        # dropped connection that the upload did not report.
        with tempfile.TemporaryDirectory() as tmp:
            copy = Path(tmp) / "model"
            shutil.copytree(local_dir, copy)
            damaged.append(damage(copy))
            upload(self, run_id, str(copy), artifact_path)

    monkeypatch.setattr(MlflowClient, "log_artifacts", lossy_upload)
    name = f"lossy-{damage.__name__.strip('_')}"
    run_id = _run(mlflow_server)
    with pytest.raises(IncompleteUpload) as raised:
        _register(tiny_model_dir, run_id, name, mlflow_server)
    message = str(raised.value)
    print(message)
    assert "\n" not in message and damaged[0] in message and complaint in message
    assert f"run {run_id} at {mlflow_server} incomplete" in message
    assert _versions(mlflow_server, name) == []
    # A Prefect retry is allowed to upload again.
    from prefect.states import Failed

    assert retry_if_unreachable(None, None, Failed(data=raised.value))


def test_a_crash_after_the_version_is_created_is_finished_by_a_rerun(
    mlflow_server, tiny_model_dir, monkeypatch
):
    from mlflow.tracking import MlflowClient

    import tuneforge.model_registry as model_registry

    def crash(*args, **kwargs):
        raise ConnectionResetError("worker lost between creating the version and its alias")

    name = "half-registered"
    run_id = _run(mlflow_server)
    monkeypatch.setattr(model_registry, "set_champion", crash)
    with pytest.raises(ConnectionResetError):
        _register(tiny_model_dir, run_id, name, mlflow_server)
    client = MlflowClient(mlflow_server)
    (half,) = _versions(mlflow_server, name, run_id)
    assert half.tags == LINEAGE  # lineage came with the create call
    assert not client.get_registered_model(name).aliases and not half.description

    monkeypatch.undo()
    done = _register(tiny_model_dir, run_id, name, mlflow_server)
    assert (done.version, done.alias) == (half.version, CHAMPION)
    (version,) = _versions(mlflow_server, name, run_id)
    assert dict(client.get_registered_model(name).aliases) == {CHAMPION: half.version}
    assert version.tags["tuneforge.decision"].startswith(f"{CHAMPION}: ")
    assert version.description.startswith(f"# {name} version {half.version}")
    assert client.get_run(run_id).data.tags["tuneforge.registered_version"] == (
        f"{name}/{half.version}"
    )

    # Once more after a complete registration: still one version, still champion (it is not
    # re-judged against itself).
    again = _register(tiny_model_dir, run_id, name, mlflow_server)
    assert (again.version, again.alias) == (half.version, CHAMPION)
    assert len(_versions(mlflow_server, name, run_id)) == 1
    history = client.get_registered_model(name).tags["tuneforge.champion_history"]
    assert history == half.version


def test_a_losing_version_interrupted_before_its_alias_becomes_challenger_on_rerun(
    mlflow_server, tiny_model_dir, monkeypatch
):
    from mlflow.tracking import MlflowClient

    name = "half-challenger"
    first = _register(tiny_model_dir, _run(mlflow_server), name, mlflow_server)
    assert first.alias == CHAMPION

    def crash(self, *args, **kwargs):
        raise ConnectionResetError("worker lost")

    run_id = _run(mlflow_server)  # same scores as the champion: does not beat it
    monkeypatch.setattr(MlflowClient, "set_registered_model_alias", crash)
    with pytest.raises(ConnectionResetError):
        _register(tiny_model_dir, run_id, name, mlflow_server)
    monkeypatch.undo()
    done = _register(tiny_model_dir, run_id, name, mlflow_server)
    assert done.alias == CHALLENGER and len(_versions(mlflow_server, name, run_id)) == 1
    aliases = dict(MlflowClient(mlflow_server).get_registered_model(name).aliases)
    assert aliases == {CHAMPION: first.version, CHALLENGER: done.version}


def test_registration_is_retried_on_connection_errors_only():
    from prefect.states import Failed

    try:
        try:
            raise ConnectionRefusedError(111, "Connection refused")
        except OSError as exc:
            raise MlflowException(f"API request failed with exception {exc}")  # noqa: B904
    except MlflowException as wrapped:
        unreachable = wrapped
    assert retry_if_unreachable(None, None, Failed(data=unreachable))
    assert not retry_if_unreachable(None, None, Failed(data=ValueError("registry.metric")))
    assert register_model.retries == 3 and register_model.retry_condition_fn is not None


def test_prefect_retries_a_registration_that_lost_the_server(
    prefect_harness, mlflow_server, tiny_model_dir, monkeypatch
):
    """Under the real task engine: the first attempt loses the server after creating the
    version; the retry finishes that version instead of registering a second."""
    from prefect import flow

    import tuneforge.model_registry as model_registry

    set_champion = model_registry.set_champion
    attempts: list[str] = []

    def flaky_set_champion(*args, **kwargs):
        attempts.append("set_champion")
        if len(attempts) == 1:
            try:
                raise ConnectionRefusedError(111, "Connection refused")
            except OSError as exc:  # as MLflow wraps it once its own retries are spent
                raise MlflowException(f"API request failed with exception {exc}")  # noqa: B904
        set_champion(*args, **kwargs)

    monkeypatch.setattr(model_registry, "set_champion", flaky_set_champion)
    name, run_id = "retried", _run(mlflow_server)

    @flow
    def register() -> object:
        retrying = register_model.with_options(retry_delay_seconds=0)
        return _register(tiny_model_dir, run_id, name, mlflow_server, task=retrying)

    done = register()
    assert attempts == ["set_champion", "set_champion"]
    assert done.alias == CHAMPION and len(_versions(mlflow_server, name)) == 1
