"""Crash recovery of the whole `tuneforge run` command: SIGKILL of its process group (the CLI,
its local Prefect server, the flow) at a chosen point, then the same command again.

`a` runs as a user's would, with no PREFECT_API_URL: each of its commands starts its own local
Prefect server (tuneforge/prefect_server.py). The others share one server of that kind on the
same PREFECT_HOME. All log to a real MLflow server over HTTP. The four start together, one
thread each:

- `ref`  trains 150 steps uninterrupted;
- `a`    trains the same 150 steps and is killed after step 125 (checkpoints at 50 and 100);
- `b`    is killed while evaluating its tuned model (pause point `evaluate:tuned`);
- `c`    is killed between creating its model version and giving it an alias (pause point
         `register:version-created`).

Then `a`, `b` and `c` run again, each waiting for its killed predecessor's lease to lapse.
Checked: every re-run completes; `a` resumed from its newest checkpoint and registered the
same weights (hash) and metrics as `ref`; `b` and `c` continued the killed MLflow run (one
run, one version, one champion, no second training); no slot is left taken.

About 4 minutes on two cores, most of it the re-runs waiting out the killed runs' leases.
"""

from __future__ import annotations

import hashlib
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import BUNDLED_DATA, PRESET, set_args

pytestmark = pytest.mark.integration

RUNS = {
    "ref": ("train.steps=150", "train.checkpoint_every=50", "train.log_every=25"),
    "a": ("train.steps=150", "train.checkpoint_every=50", "train.log_every=25"),
    "b": ("train.steps=100",),
    "c": ("train.steps=100",),
}
PAUSE = {"b": "evaluate:tuned", "c": "register:version-created"}


class Command:
    """One `tuneforge run` in its own process group, its output in a file."""

    def __init__(
        self, name: str, root: Path, env: dict[str, str], tracking_uri: str, *overrides: str
    ) -> None:
        self.name, self.root, self.env = name, root, env
        settings = [
            f"name=crash-{name}",
            f"data.path={BUNDLED_DATA}",
            f"output_dir={root / 'out'}",
            f"tracking.tracking_uri={tracking_uri}",
            "tracking.experiment=crash-recovery",
            f"registry.model_name=kr-{name}",
            "train.eval_every=0",
            "evaluation.max_examples=16",
            # Moves within 100 steps (exact match on 16 rows may not), so each run is champion.
            "registry.metric=eval_loss",
            "registry.higher_is_better=null",
            *overrides,
        ]
        self.args = [sys.executable, "-m", "tuneforge.cli", "run", str(PRESET)]
        self.args += set_args(*settings)
        self.attempts = 0
        self.proc: subprocess.Popen | None = None

    @property
    def log(self) -> Path:
        return self.root / f"{self.name}-{self.attempts}.log"

    def start(self, **extra_env: str) -> None:
        self.attempts += 1
        self.started = time.monotonic()
        with self.log.open("w") as out:
            self.proc = subprocess.Popen(
                self.args,
                cwd=self.root,
                env={**self.env, **extra_env},
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def reached(self, pattern: str) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"{self.name} ended early:\n{self.output()[-4000:]}")
        return re.search(pattern, self.output()) is not None

    def kill(self) -> None:
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def finish(self, timeout_s: float) -> tuple[int, str, float]:
        code = self.proc.wait(timeout=timeout_s)
        return code, self.output(), time.monotonic() - self.started


def _wait_all(conditions: dict[str, tuple[Command, str]], timeout_s: float) -> None:
    """Kills each command once its pattern appears in its output."""
    deadline = time.monotonic() + timeout_s
    pending = dict(conditions)
    while pending:
        for name, (command, pattern) in list(pending.items()):
            if command.reached(pattern):
                command.kill()
                del pending[name]
        assert time.monotonic() < deadline, f"never reached: {sorted(pending)}"
        time.sleep(0.2)


@pytest.fixture(scope="module")
def recovered(mlflow_server, tmp_path_factory):
    root = tmp_path_factory.mktemp("crash-recovery")
    env = {
        **os.environ,
        "PREFECT_HOME": str(root / "prefect-home"),
        "PREFECT_LOGGING_LEVEL": "INFO",
    }
    env.pop("PREFECT_API_URL", None)  # the default set-up: each command's own local server
    # `a` runs in that default set-up. The others share one server of the same kind (leases
    # on disk, the repossessor): six servers starting on two cores would cost a minute.
    from prefect.client.orchestration import SyncPrefectClient
    from prefect.settings import PREFECT_HOME, temporary_settings

    from tuneforge.concurrency import list_slots
    from tuneforge.prefect_server import start_server, stop_server

    with temporary_settings(updates={PREFECT_HOME: env["PREFECT_HOME"]}):
        server, api_url = start_server(root / "shared-server.log", timeout_s=180)
    shared = {**env, "PREFECT_API_URL": api_url}
    try:
        # One thread each: four at once on two cores, and the same sums in `ref` and `a`.
        commands = {}
        for name, overrides in RUNS.items():
            prefect = env if name == "a" else shared
            one_thread = ("train.num_threads=1", *overrides)
            commands[name] = Command(name, root, prefect, mlflow_server, *one_thread)
        for name, command in commands.items():
            command.start(**({"TUNEFORGE_PAUSE_AT": PAUSE[name]} if name in PAUSE else {}))
        killed = {
            "a": (commands["a"], r"step 125/150"),
            "b": (commands["b"], r"tuneforge: paused at evaluate:tuned"),
            "c": (commands["c"], r"tuneforge: paused at register:version-created"),
        }
        _wait_all(killed, timeout_s=420)
        for name in killed:
            commands[name].start()
        results = {name: command.finish(timeout_s=600) for name, command in commands.items()}
        with SyncPrefectClient(api_url) as client:
            slots = list_slots(client)
    finally:
        stop_server(server)
    for name, (_, _, seconds) in results.items():
        print(f"{name}: last attempt {seconds:.0f} s")
    return results, slots


def _champion(tracking_uri: str, model: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    versions = client.search_model_versions(f"name='{model}'")
    champion = client.get_model_version_by_alias(model, "champion")
    return client, versions, champion


def _weights_hash(client, run_id: str, tmp: Path) -> str:
    path = client.download_artifacts(run_id, "model/model/model.safetensors", str(tmp))
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def test_every_rerun_completes_and_frees_its_slot(recovered):
    results, slots = recovered
    for name, (code, output, _) in results.items():
        assert code == 0, f"{name}:\n{output[-4000:]}"
    assert slots is not None and {row["model"]: row["taken"] for row in slots} == {
        f"kr-{name}": 0 for name in RUNS
    }


def test_killed_mid_training_resumes_and_registers_what_an_uninterrupted_run_does(
    recovered, mlflow_server, tmp_path
):
    results, _ = recovered
    _, output, _ = results["a"]
    # The re-run waited for the killed run's lease to lapse (not for ever), then resumed.
    freed = re.search(r"the retrain slot of kr-a was freed by the expiry of the lease", output)
    assert freed, output[-4000:]
    # (No wait at all when the lease lapsed while the re-run was starting.)
    waited = re.search(r"took the retrain slot of kr-a after waiting (\d+) s", output)
    assert waited is None or float(waited[1]) < 120  # a lease (60 s) and a repossessor pass
    assert re.search(r"resuming from checkpoint \S+/kr-a/step-000000100", output)
    assert "resumed from the checkpoint of step 100" in output
    assert "continuing MLflow run" in output

    client, versions, champion = _champion(mlflow_server, "kr-a")
    _, ref_versions, ref = _champion(mlflow_server, "kr-ref")
    assert len(versions) == len(ref_versions) == 1
    assert _weights_hash(client, champion.run_id, tmp_path / "a") == _weights_hash(
        client, ref.run_id, tmp_path / "ref"
    )
    metrics = client.get_run(champion.run_id).data.metrics
    ref_metrics = client.get_run(ref.run_id).data.metrics
    scored = {k: v for k, v in ref_metrics.items() if k.startswith(("tuned.", "base."))}
    assert scored and {k: metrics[k] for k in scored} == scored
    run = client.get_run(champion.run_id)
    assert run.data.tags["tuneforge.attempt"] == "2" and run.info.status == "FINISHED"


@pytest.mark.parametrize("name", ["b", "c"])
def test_killed_after_training_continues_the_same_run_to_one_version(
    recovered, mlflow_server, name
):
    results, _ = recovered
    _, output, _ = results[name]
    client, versions, champion = _champion(mlflow_server, f"kr-{name}")
    # One MLflow run for both attempts, one version from it, holding the champion alias.
    assert [v.version for v in versions] == ["1"] and champion.version == "1"
    run = client.get_run(champion.run_id)
    assert run.data.tags["tuneforge.attempt"] == "2" and run.info.status == "FINISHED"
    assert f"continuing MLflow run {champion.run_id}" in output
    assert "training finished in an earlier attempt of this run" in output
    assert run.data.tags["tuneforge.decision"].startswith("champion: ")
    experiment = client.get_experiment_by_name("crash-recovery")
    runs = client.search_runs(
        [experiment.experiment_id], filter_string=f"tags.`tuneforge.model_name` = 'kr-{name}'"
    )
    assert [r.info.run_id for r in runs] == [champion.run_id]
    assert len(client.get_metric_history(champion.run_id, "train.loss")) == 100 // 50


def test_a_prefect_server_restart_while_a_run_holds_the_slot(mlflow_server, tmp_path):
    """A real `prefect server` with its default in-memory leases, restarted mid-training: it
    forgets the run's lease but keeps the slot counted. The run finds its lease gone at the
    next renewal, takes the slot again, completes, and leaves the slot free."""
    from prefect.client.orchestration import SyncPrefectClient

    from tests.conftest import PrefectServerProcess

    server = PrefectServerProcess(tmp_path / "prefect-server")
    server.start()
    try:
        env = {**os.environ, "PREFECT_API_URL": server.api_url, "PREFECT_LOGGING_LEVEL": "INFO"}
        run = Command("restart", tmp_path, env, mlflow_server, "train.steps=900")
        run.start()
        deadline = time.monotonic() + 300
        while not run.reached(r"step 50/900"):
            assert time.monotonic() < deadline, run.output()[-3000:]
            time.sleep(0.2)
        server.stop()
        server.start()
        code, output, _ = run.finish(timeout_s=600)
        assert code == 0, output[-4000:]
        assert "took the slot again" in output, output[-4000:]
        with SyncPrefectClient(server.api_url) as client:
            slot = client.read_global_concurrency_limit_by_name("retrain-kr-restart")
        assert slot.active_slots == 0
    finally:
        server.stop()
