"""`deployments/prefect.yaml` on the shared stack (the session's `stack` fixture): Prefect's
server on PostgreSQL behind an auth string, MLflow on PostgreSQL with basic auth and
artifacts through the server, real process workers. Deploy, check the schedule, run the
nightly deployment through a worker (killed once), a sweep and a retrain on another pool,
then push the same data and watch the triggered run skip; the champion then loads through
`models:/NAME@champion` with credentials, and `tuneforge models` browses it.

Slow (a full preset run plus server start-ups, about two minutes on two cores).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from itertools import pairwise
from pathlib import Path

import pytest
import yaml

from tests.conftest import NO_GATE, REPO, set_args

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent


class Worker:
    """`prefect worker start --pool cpu` in its own process group, killable like a lost
    machine: the worker and the flow run it is running die together."""

    def __init__(self, env: dict[str, str], home: Path, root: Path) -> None:
        self.env, self.home, self.root = env, home, root
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    def start(self) -> None:
        self.starts += 1
        self.log = self.root / f"worker-{self.starts}.log"
        self.proc = subprocess.Popen(
            [str(BIN / "prefect"), "worker", "start", "--pool", "cpu"],
            cwd=self.home,
            env=self.env,
            stdout=self.log.open("w"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def kill(self, flow_run) -> None:
        """SIGKILL to the worker's process group and to the flow run's process group (the
        process worker may start a flow run in a session of its own)."""
        groups = {self.proc.pid}
        if flow_run.infrastructure_pid:
            groups.add(os.getpgid(int(flow_run.infrastructure_pid.rpartition(":")[2])))
        for group in groups:
            os.killpg(group, signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def mlflow_server(stack):
    """This module's tracking server: the stack's, with the admin's credentials in this
    process's environment (the session's plain `mlflow_server` is not used here)."""
    with pytest.MonkeyPatch.context() as patch:
        for key, value in stack.client_env().items():
            if key.startswith("MLFLOW_TRACKING_"):
                patch.setenv(key, value)
        yield stack.mlflow_uri


@pytest.fixture(scope="module")
def deployed(stack, mlflow_server, tmp_path_factory):
    root = tmp_path_factory.mktemp("deploy")
    home = root / "project"  # a copy of the project, as a worker machine would have it
    for part in ("flows", "tasks", "plugins", "tuneforge", "deployments", "data"):
        shutil.copytree(REPO / part, home / part)
    # The deployments run the demo preset; here a shorter one of the same shape (300 steps,
    # fewer evaluation rows): these tests are about schedules, triggers, pools and crashes.
    preset = home / "deployments" / "presets" / "tiny-cpu.yaml"
    text = preset.read_text()
    shorter = {
        "steps: 2000 ": "steps: 300 ",
        "eval_every: 500 ": "eval_every: 0 ",
        "max_examples: 240": "max_examples: 48",
        # 300 steps answer few of 48 rows exactly: the gate against the base is not tested here
        "min_correct: 5": "min_correct: 0",
        "max_p_value: 0.05": "max_p_value: null",
    }
    for old, new in shorter.items():
        assert old in text, old
        text = text.replace(old, new)
    preset.write_text(text)
    # The stack's Prefect server (its repossessor checks leases every 5 s instead of 15 s).
    env = {
        **os.environ,
        **stack.client_env(),
        "PREFECT_HOME": str(root / "prefect-home"),
        "TUNEFORGE_HOME": str(home),
        # The worker asks for work every 2 s instead of 10 s: four runs start sooner.
        "PREFECT_WORKER_QUERY_SECONDS": "2",
    }
    worker = Worker(env, home, root)

    def prefect(*commands: tuple[str, ...]) -> None:
        """Runs `prefect` commands side by side (each CLI start costs seconds of imports)."""
        with ThreadPoolExecutor(len(commands)) as pool:
            list(pool.map(lambda args: _command("prefect", *args, env=env, cwd=home), commands))

    try:
        template = str(home / "deployments" / "work-pools" / "gpu-kubernetes.json")
        stage = ("flows/train_stage.py:train_stage", "--name", "on-cpu", "--pool", "cpu")
        deploy_stage = ("--no-prompt", "deploy", *stage)
        prefect(
            ("work-pool", "create", "cpu", "--type", "process"),
            ("work-pool", "create", "gpu", "--type", "kubernetes", "--base-job-template", template),
            # One training at a time on the pool (as `gpu` slots would be one per GPU).
            ("global-concurrency-limit", "create", POOL_SLOTS, "--limit", "1"),
        )
        prefect(
            ("--no-prompt", "deploy", "--prefect-file", "deployments/prefect.yaml", "--all"),
            # The GPU training stage, deployed on the CPU pool here: no GPUs, same mechanics.
            deploy_stage,
        )
        worker.start()
        yield env, home, root, worker
    finally:
        worker.stop()


def _command(program: str, *args: str, env: dict[str, str], cwd: Path) -> str:
    """Runs a command of the environment (`prefect`, `tuneforge`); it must succeed."""
    done = subprocess.run(
        [str(BIN / program), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, f"{program} {' '.join(args)}: {done.stdout}{done.stderr}"
    return done.stdout


def _client(env):
    from prefect.client.orchestration import SyncPrefectClient

    return SyncPrefectClient(env["PREFECT_API_URL"], auth_string=env["PREFECT_API_AUTH_STRING"])


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


def _wait_flow_run(client, flow_run_id, seconds: float):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        run = client.read_flow_run(flow_run_id)
        if run.state and run.state.is_final():
            return run
        time.sleep(2)
    raise AssertionError(f"flow run {flow_run_id} did not finish in {seconds} s")


def test_deploys_with_schedules_and_pools(deployed):
    env, _, _, _ = deployed
    with _client(env) as client:
        nightly = client.read_deployment_by_name("retrain-preset/nightly")
        schedule = nightly.schedules[0].schedule
        assert (schedule.cron, schedule.timezone) == ("0 2 * * *", "Europe/Berlin")
        assert nightly.work_pool_name == "cpu"
        assert client.read_deployment_by_name("retrain-preset/nightly-gpu").work_pool_name == "gpu"
        weekly = client.read_deployment_by_name("pipeline-file/flan-mini-weekly")
        assert weekly.parameters == {"path": "deployments/pipelines/flan-mini.yaml"}
        assert weekly.schedules[0].schedule.cron == "0 4 * * 0"
        monthly = client.read_deployment_by_name("sweep-file/tiny-strategies-monthly")
        assert monthly.parameters == {"path": "deployments/sweeps/tiny-strategies.yaml"}
        assert monthly.schedules[0].schedule.cron == "0 3 1 * *"
        # The feedback loop's deployments (routing by schema: test_feedback_routing.py).
        preferences = client.read_deployment_by_name("retrain-preset/on-new-preferences")
        assert preferences.parameters == {"preset": "deployments/presets/tiny-cpu-dpo.yaml"}
        ratings = client.read_deployment_by_name("retrain-preset/on-new-feedback")
        assert ratings.parameters == {"preset": "deployments/presets/tiny-cpu-kto.yaml"}
        pool = client.read_work_pool("gpu")
        limits = pool.base_job_template["job_configuration"]["job_manifest"]["spec"]["template"]
        assert "nvidia.com/gpu" in limits["spec"]["containers"][0]["resources"]["limits"]


POOL_SLOTS = "it-pool-slots"
# A sweep of two candidates, each trained on the other pool (the train-stage deployment),
# both submitted at once; the pool's concurrency limit (one slot) lets one train at a time.
REMOTE_SWEEP = {
    "name": "it-remote-sweep",
    "preset": "../presets/tiny-cpu.yaml",
    "set": [
        "train.deployment=train-stage/on-cpu",
        f"train.concurrency_limit={POOL_SLOTS}",
        "train.steps=100",
        "train.eval_every=0",
        "evaluation.max_examples=16",
        "registry.model_name=it-remote",
        "registry.metric=eval_loss",
        "registry.higher_is_better=null",
        *NO_GATE,
    ],
    "concurrency": 2,
    "candidates": [
        {"name": "seed0", "set": ["train.seed=0"]},
        {"name": "seed1", "set": ["train.seed=1"]},
    ],
}


@pytest.fixture(scope="module")
def scenarios(deployed):
    """The machine running the nightly deployment dies (worker and flow run, SIGKILL) after
    the checkpoint of step 100; the next run of the deployment is triggered by hand on a new
    worker. While it waits for the dead run's lease to lapse, a `tuneforge sweep` and a
    `tuneforge run` train on another pool (the train-stage deployment, on the same worker),
    through one concurrency limit of one slot. Then the same data is pushed. Returns what each
    of them left."""
    env, home, _, worker = deployed
    checkpoint = home / "runs" / "checkpoints" / "tuneforge-demo" / "step-000000100"
    with _client(env) as client:
        nightly = client.read_deployment_by_name("retrain-preset/nightly")
        killed = client.create_flow_run_from_deployment(nightly.id)
        deadline = time.monotonic() + 300
        while not checkpoint.exists():
            state = client.read_flow_run(killed.id).state
            assert not (state and state.is_final()), worker.log.read_text()[-4000:]
            assert time.monotonic() < deadline, worker.log.read_text()[-4000:]
            time.sleep(0.5)
        worker.kill(client.read_flow_run(killed.id))
        worker.start()
        again = client.create_flow_run_from_deployment(nightly.id)
        sweep_file = home / "deployments" / "sweeps" / "it-remote.yaml"
        sweep_file.write_text(yaml.safe_dump(REMOTE_SWEEP))
        retrain = [
            "run",
            "deployments/presets/tiny-cpu.yaml",
            *set_args(*REMOTE_SWEEP["set"], "registry.model_name=it-remote-retrain"),
        ]
        remote = [
            subprocess.Popen(
                [str(BIN / "tuneforge"), *args],
                cwd=home,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            for args in (["sweep", str(sweep_file), "--json"], retrain)
        ]
        for command in remote:
            output, _ = command.communicate(timeout=600)
            assert command.returncode == 0, output[-4000:]
            if command is remote[0]:
                swept = json.loads(output.strip().splitlines()[-1])
        finished = _wait_flow_run(client, again.id, seconds=600)
        slot = client.read_global_concurrency_limit_by_name("retrain-tuneforge-demo")

        # New data announced (the same file: nothing new): the triggered run stops early.
        _command("tuneforge", "data", "push", "data/instructions.jsonl", env=env, cwd=home)
        on_data = client.read_deployment_by_name("retrain-preset/on-new-data")
        triggered = _wait_run(client, on_data.id, seconds=300)
    return {
        "nightly": finished,
        "slot": slot,
        "triggered": triggered,
        "log": worker.log,
        "sweep": swept,
    }


def test_nightly_run_killed_resumed_then_pushed_unchanged_data_is_skipped(scenarios, mlflow_server):
    """The re-run waited for the dead run's lease, continued its MLflow run from the
    checkpoint, registered, and left the slot free; the pushed data changed nothing since
    that champion, so the triggered run stopped early."""
    from mlflow.tracking import MlflowClient

    mlflow = MlflowClient(mlflow_server)
    log = scenarios["log"].read_text()[-4000:]
    assert scenarios["nightly"].state.is_completed(), log
    assert scenarios["slot"].active_slots == 0
    champion = mlflow.get_model_version_by_alias("tuneforge-demo", "champion")
    assert champion.tags["tuneforge.data_source"] == "data/instructions.jsonl"
    run = mlflow.get_run(champion.run_id)
    assert run.data.metrics["train.resumed_from_step"] >= 100
    assert run.data.tags["tuneforge.attempt"] == "2" and run.info.status == "FINISHED"
    triggered = scenarios["triggered"]
    assert triggered.state.is_completed(), log
    assert triggered.parameters["dataset"].endswith("data/instructions.jsonl")

    experiment = mlflow.get_experiment_by_name("tuneforge")
    skipped = mlflow.search_runs(
        [experiment.experiment_id],
        filter_string=(
            "tags.`tuneforge.skipped` != '' and tags.`tuneforge.model_name` = 'tuneforge-demo'"
        ),
    )
    assert len(skipped) == 1
    assert f"version {champion.version} (champion)" in skipped[0].data.tags["tuneforge.skipped"]
    assert len(mlflow.search_model_versions("name='tuneforge-demo'")) == 1


def test_a_sweep_and_a_retrain_train_on_another_pool_one_slot_at_a_time(
    scenarios, deployed, mlflow_server
):
    """Both candidates of the sweep and the retrain trained as the train-stage deployment,
    one after the other (the pool's limit has one slot); each model came back trained."""
    from mlflow.tracking import MlflowClient
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    env, _, _, _ = deployed
    swept = scenarios["sweep"]
    assert [c["status"] for c in swept["candidates"]] == ["finished", "finished"]
    client = MlflowClient(mlflow_server)
    version = client.get_model_version_by_alias("it-remote", "champion")
    assert version.run_id == swept["candidates"][0]["run_id"]  # the winner
    retrained = client.get_model_version_by_alias("it-remote-retrain", "champion")
    for run_id in (version.run_id, retrained.run_id):
        run = client.get_run(run_id)
        assert run.data.params["train.deployment"] == "train-stage/on-cpu"
        assert run.data.params["train.concurrency_limit"] == POOL_SLOTS
        assert len(client.get_metric_history(run_id, "train.loss")) == 100 // 50
        tuned = {Path(f.path).name for f in client.list_artifacts(run_id, "handover/tuned")}
        assert "model.safetensors" in tuned
        # The model trained on the other pool came back trained.
        assert run.data.metrics["tuned.eval_loss"] < run.data.metrics["base.eval_loss"] / 2
    with _client(env) as prefect_client:
        stage = prefect_client.read_deployment_by_name("train-stage/on-cpu")
        trainings = prefect_client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[stage.id]))
        )
        slots = prefect_client.read_global_concurrency_limit_by_name(POOL_SLOTS)
    assert len(trainings) == 3 and all(r.state.is_completed() for r in trainings)
    spans = sorted((r.start_time, r.end_time) for r in trainings)
    assert all(later[0] >= earlier[1] for earlier, later in pairwise(spans))
    assert slots.active_slots == 0


def test_the_champion_loads_and_is_browsed_with_credentials(scenarios, deployed, mlflow_server):
    """What a teammate does next, with the stack's credentials: list, show, and the alias
    history of the model the worker registered, then load its champion by alias."""
    import mlflow.pyfunc

    env, home, _, _ = deployed
    listed = json.loads(_command("tuneforge", "models", "list", "--json", env=env, cwd=home))
    demo = next(m for m in listed if m["name"] == "tuneforge-demo")
    shown = json.loads(
        _command("tuneforge", "models", "show", "tuneforge-demo", "--json", env=env, cwd=home)
    )
    assert shown["version"] == demo["champion"] and "champion" in shown["aliases"]
    assert "model/MLmodel" in shown["artifacts"]
    history = json.loads(
        _command("tuneforge", "models", "history", "tuneforge-demo", "--json", env=env, cwd=home)
    )
    assert [(m["alias"], m["from"], m["to"], m["by"]) for m in history] == [
        ("champion", None, demo["champion"], "admin")
    ]
    assert history[0]["why"] == shown["tags"]["tuneforge.decision"].removeprefix("champion: ")

    mlflow.set_tracking_uri(mlflow_server)  # other tests may have set another in-process
    model = mlflow.pyfunc.load_model("models:/tuneforge-demo@champion")
    answers = model.predict([{"instruction": "Convert to uppercase.", "input": "salt"}])
    assert len(answers) == 1 and isinstance(answers[0], str)
