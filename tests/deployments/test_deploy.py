"""`deployments/prefect.yaml` against a real `prefect server`, a real process worker, and a
real MLflow server: deploy, check the schedule, run the nightly deployment, then push the same
data and watch the triggered run skip (nothing changed since the champion).

Slow (a full preset run plus server start-ups, about two minutes on two cores).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import REPO, _free_port

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent


def _wait_http(url: str, proc: subprocess.Popen, log: Path, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[:3]} exited: {log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"{url} did not answer: {log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def deployed(mlflow_server, tmp_path_factory):
    root = tmp_path_factory.mktemp("deploy")
    home = root / "project"  # a copy of the project, as a worker machine would have it
    for part in ("flows", "tasks", "plugins", "tuneforge", "deployments", "data"):
        shutil.copytree(REPO / part, home / part)
    port = _free_port()
    env = {
        **os.environ,
        "PREFECT_HOME": str(root / "prefect-home"),
        "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
        "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{root / 'prefect.db'}",
        "PREFECT_LOGGING_LEVEL": "INFO",
        "MLFLOW_TRACKING_URI": mlflow_server,
        "TUNEFORGE_HOME": str(home),
    }
    procs: list[subprocess.Popen] = []

    def start(name: str, *args: str) -> tuple[subprocess.Popen, Path]:
        log = root / f"{name}.log"
        proc = subprocess.Popen(
            [str(BIN / "prefect"), *args], cwd=home, env=env,
            stdout=log.open("w"), stderr=subprocess.STDOUT,
        )  # fmt: skip
        procs.append(proc)
        return proc, log

    def prefect(*args: str) -> str:
        done = subprocess.run(
            [str(BIN / "prefect"), *args], cwd=home, env=env, capture_output=True, text=True,
            timeout=300, check=False,
        )  # fmt: skip
        assert done.returncode == 0, f"prefect {' '.join(args)}: {done.stdout}{done.stderr}"
        return done.stdout

    try:
        server, log = start("server", "server", "start", "--host", "127.0.0.1", "--port", str(port))
        _wait_http(f"http://127.0.0.1:{port}/api/health", server, log)
        prefect("work-pool", "create", "cpu", "--type", "process")
        template = home / "deployments" / "work-pools" / "gpu-kubernetes.json"
        prefect("work-pool", "create", "gpu", "--type", "kubernetes", "--base-job-template",
                str(template))  # fmt: skip
        prefect("--no-prompt", "deploy", "--prefect-file", "deployments/prefect.yaml", "--all")
        # The GPU training stage, deployed on the CPU pool here: no GPUs, same mechanics.
        prefect("--no-prompt", "deploy", "flows/train_stage.py:train_stage", "--name", "on-cpu",
                "--pool", "cpu")  # fmt: skip
        start("worker", "worker", "start", "--pool", "cpu")
        yield env, home, root
    finally:
        for proc in reversed(procs):
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()


def _client(env):
    from prefect.client.orchestration import SyncPrefectClient

    return SyncPrefectClient(env["PREFECT_API_URL"])


def _wait_run(client, deployment_id, seconds: float = 420):
    """The first flow run of the deployment, once it reaches a final state."""
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        runs = client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id]))
        )
        if runs and runs[0].state and runs[0].state.is_final():
            return runs[0]
        time.sleep(2)
    raise AssertionError(f"no finished run of deployment {deployment_id} in {seconds} s")


def test_deploys_with_schedules_and_pools(deployed):
    env, _, _ = deployed
    with _client(env) as client:
        nightly = client.read_deployment_by_name("retrain-preset/nightly")
        schedule = nightly.schedules[0].schedule
        assert (schedule.cron, schedule.timezone) == ("0 2 * * *", "Europe/Berlin")
        assert nightly.work_pool_name == "cpu"
        assert client.read_deployment_by_name("retrain-preset/nightly-gpu").work_pool_name == "gpu"
        pool = client.read_work_pool("gpu")
        limits = pool.base_job_template["job_configuration"]["job_manifest"]["spec"]["template"]
        assert "nvidia.com/gpu" in limits["spec"]["containers"][0]["resources"]["limits"]


def test_nightly_run_registers_then_pushed_unchanged_data_is_skipped(deployed, mlflow_server):
    from mlflow.tracking import MlflowClient

    env, home, root = deployed
    mlflow = MlflowClient(mlflow_server)
    with _client(env) as client:
        nightly = client.read_deployment_by_name("retrain-preset/nightly")
        run = client.create_flow_run_from_deployment(nightly.id)
        finished = _wait_run(client, nightly.id)
        assert finished.id == run.id
        assert finished.state.is_completed(), (root / "worker.log").read_text()[-4000:]
        champion = mlflow.get_model_version_by_alias("tuneforge-demo", "champion")
        assert champion.tags["tuneforge.data_source"] == "data/instructions.jsonl"

        # New data announced (the same file: nothing new): the triggered run stops early.
        pushed = subprocess.run(
            [str(BIN / "tuneforge"), "data", "push", "data/instructions.jsonl"],
            cwd=home, env=env, capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert pushed.returncode == 0, pushed.stderr
        on_data = client.read_deployment_by_name("retrain-preset/on-new-data")
        triggered = _wait_run(client, on_data.id, seconds=300)
        assert triggered.state.is_completed(), (root / "worker.log").read_text()[-4000:]
        assert triggered.parameters["dataset"].endswith("data/instructions.jsonl")

    experiment = mlflow.get_experiment_by_name("tuneforge")
    skipped = mlflow.search_runs(
        [experiment.experiment_id], filter_string="tags.`tuneforge.skipped` != ''"
    )
    assert len(skipped) == 1
    assert f"version {champion.version} (champion)" in skipped[0].data.tags["tuneforge.skipped"]
    assert len(mlflow.search_model_versions("name='tuneforge-demo'")) == 1


def test_training_runs_as_a_deployment_on_another_pool(deployed, mlflow_server):
    from mlflow.tracking import MlflowClient

    env, home, _ = deployed
    done = subprocess.run(
        [
            str(BIN / "tuneforge"), "run", "deployments/presets/tiny-cpu.yaml",
            "--set", "train.deployment=train-stage/on-cpu", "--set", "train.steps=200",
            "--set", "train.eval_every=0", "--set", "evaluation.max_examples=48",
            "--set", "registry.model_name=it-remote",
        ],
        cwd=home, env=env, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    client = MlflowClient(mlflow_server)
    version = client.get_model_version_by_alias("it-remote", "champion")
    run = client.get_run(version.run_id)
    assert run.data.params["train.deployment"] == "train-stage/on-cpu"
    assert len(client.get_metric_history(version.run_id, "train.loss")) == 200 // 50
    tuned = {Path(f.path).name for f in client.list_artifacts(version.run_id, "handover/tuned")}
    assert "model.safetensors" in tuned
    assert run.data.metrics["tuned.exact_match"] > run.data.metrics["base.exact_match"]
    with _client(env) as prefect_client:
        stage = prefect_client.read_deployment_by_name("train-stage/on-cpu")
        assert _wait_run(prefect_client, stage.id, seconds=5).state.is_completed()
