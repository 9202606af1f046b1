"""Crash recovery of the whole `tuneforge run` command: SIGKILL of its process group (the CLI,
its local Prefect server, the flow) at a chosen point, then the same command again; and a
Prefect server restarted under a run that holds its slot.

`a` runs as a user's would, with no PREFECT_API_URL: each of its commands starts its own local
Prefect server (tuneforge/prefect_server.py). `b` and `c` share one server of that kind on the
same PREFECT_HOME. `restart` runs against a real `prefect server` with Prefect's default
in-memory leases. All log to a real MLflow server over HTTP. The four start together, one
thread each:

- `a`       trains 150 steps and is killed after step 125 (checkpoints at 50 and 100);
- `b`       is killed while evaluating its tuned model (pause point `evaluate:tuned`);
- `c`       is killed between creating its model version and giving it an alias (pause point
            `register:version-created`);
- `restart` trains the same 150 steps as `a`, uninterrupted (the reference for `a`), then
            pauses at the start of its tuned model's evaluation, holding its slot; its server
            is stopped and started again, and once the run says it took its slot back it goes
            on (pause point with `TUNEFORGE_RESUME_WHEN`).

Then `a`, `b` and `c` run again, each waiting for its killed predecessor's lease to lapse
(the `restart` scenario runs meanwhile: the scenarios share the waiting). Checked: every run
completes; `a` resumed from its newest checkpoint and registered the same weights (hash) and
metrics as `restart`; `b` and `c` continued the killed MLflow run (one run, one version, one
champion, no second training); `restart` took its slot again under a new lease; no slot is
left taken.

About 3 minutes on two cores, most of it start-ups and the re-runs waiting out the killed
runs' leases.
"""

from __future__ import annotations

import hashlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import BUNDLED_DATA, NO_GATE, PRESET, PrefectServerProcess, set_args

pytestmark = pytest.mark.integration

# A local Prefect server as `tuneforge run` starts one, held until stdin closes.
SERVE = """
import sys
from tuneforge.prefect_server import prefect_api
with prefect_api() as api_url:
    print(api_url, flush=True)
    sys.stdin.read()
"""

SAME_AS_A = ("train.steps=150", "train.checkpoint_every=50", "train.log_every=25")
RUNS = {
    "a": SAME_AS_A,
    "b": ("train.steps=100",),
    "c": ("train.steps=100",),
    "restart": SAME_AS_A,
}
PAUSE = {"b": "evaluate:tuned", "c": "register:version-created", "restart": "evaluate:tuned"}
KILLED_AT = {
    "a": r"step 125/150",
    "b": r"tuneforge: paused at evaluate:tuned",
    "c": r"tuneforge: paused at register:version-created",
}


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
            *NO_GATE,
            # One thread each: four at once on two cores, and the same sums in `restart` and `a`.
            "train.num_threads=1",
            *overrides,
        ]
        self.args = [sys.executable, "-m", "tuneforge.cli", "run", str(PRESET)]
        self.args += set_args(*settings)
        self.attempts = 0
        self.proc: subprocess.Popen | None = None
        self.seconds = 0.0  # how long the last attempt ran

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

    def done(self) -> bool:
        if self.proc.poll() is None:
            return False
        self.seconds = self.seconds or time.monotonic() - self.started
        return True

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            self.seconds = 0.0


def _when_reached(actions: dict[str, tuple[Command, str, Callable[[], None]]], timeout_s: float):
    """Runs each action once its command's output shows its pattern."""
    deadline = time.monotonic() + timeout_s
    pending = dict(actions)
    while pending:
        for name, (command, pattern, action) in list(pending.items()):
            if command.reached(pattern):
                action()
                del pending[name]
        assert time.monotonic() < deadline, f"never reached: {sorted(pending)}"
        time.sleep(0.2)


def _wait_done(commands: list[Command], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not all(command.done() for command in commands):
        late = [c.name for c in commands if not c.done()]
        assert time.monotonic() < deadline, f"still running after {timeout_s:.0f} s: {late}"
        time.sleep(0.5)


@pytest.fixture(scope="module")
def recovered(mlflow_server, tmp_path_factory):
    from prefect.client.orchestration import SyncPrefectClient

    from tuneforge.slots import list_slots

    root = tmp_path_factory.mktemp("crash-recovery")
    env = {
        **os.environ,
        "PREFECT_HOME": str(root / "prefect-home"),
        "PREFECT_LOGGING_LEVEL": "INFO",
    }
    env.pop("PREFECT_API_URL", None)  # the default set-up: each command's own local server
    # `a` runs in that default set-up. `b` and `c` share one server of the same kind on
    # the same PREFECT_HOME (leases on disk, the repossessor), started by tuneforge's own code
    # in a process of its own, as a command starts it: more servers starting on two cores
    # would cost a minute.
    serving = subprocess.Popen(
        [sys.executable, "-c", SERVE],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    restartable = PrefectServerProcess(root / "restartable-server")
    resume = root / "restart.resume"
    restarted = threading.Event()

    def restart_server() -> None:
        restartable.stop()
        restartable.start()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if "took the slot again" in commands["restart"].output():
                restarted.set()
                break
            time.sleep(0.5)
        resume.touch()  # on, either way: the test reports what it said

    commands: dict[str, Command] = {}
    try:
        api_url = serving.stdout.readline().strip()
        assert api_url.startswith("http://127.0.0.1:"), api_url
        restartable.start()
        servers = {"a": env, "restart": {**env, "PREFECT_API_URL": restartable.api_url}}
        for name, overrides in RUNS.items():
            prefect = servers.get(name, {**env, "PREFECT_API_URL": api_url})
            commands[name] = Command(name, root, prefect, mlflow_server, *overrides)
        for name, command in commands.items():
            paused = {"TUNEFORGE_PAUSE_AT": PAUSE[name]} if name in PAUSE else {}
            if name == "restart":  # the others stay paused until they are killed
                paused["TUNEFORGE_RESUME_WHEN"] = str(resume)
            command.start(**paused)
        actions = {
            name: (commands[name], KILLED_AT[name], commands[name].kill) for name in KILLED_AT
        }
        # The restart takes a while: off the loop, which must kill the others on time.
        thread = threading.Thread(target=restart_server, daemon=True)
        actions["restart"] = (commands["restart"], r"tuneforge: paused at", thread.start)
        _when_reached(actions, timeout_s=420)
        for name in KILLED_AT:
            commands[name].start()
        _wait_done(list(commands.values()), timeout_s=600)
        assert restarted.is_set(), commands["restart"].output()[-4000:]
        with SyncPrefectClient(api_url) as client:
            slots = list_slots(client)
        with SyncPrefectClient(restartable.api_url) as client:
            slots += list_slots(client)
    finally:
        for command in commands.values():
            command.kill()
        serving.stdin.close()  # the end of its input stops the server
        serving.wait(timeout=60)
        restartable.stop()
    results = {}
    for name, command in commands.items():
        print(f"{name}: last attempt {command.seconds:.0f} s")
        results[name] = (command.proc.returncode, command.output())
    return results, slots


def _champion(tracking_uri: str, model: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    versions = client.search_model_versions(f"name='{model}'")
    champion = client.get_model_version_by_alias(model, "champion")
    return client, versions, champion


def _weights_hash(client, run_id: str, tmp: Path) -> str:
    weights = "model/artifacts/checkpoint/model.safetensors"
    path = client.download_artifacts(run_id, weights, str(tmp))
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def test_every_run_completes_and_frees_its_slot(recovered):
    results, slots = recovered
    for name, (code, output) in results.items():
        assert code == 0, f"{name}:\n{output[-4000:]}"
    assert {row["model"]: row["taken"] for row in slots} == {f"kr-{name}": 0 for name in RUNS}


def test_killed_mid_training_resumes_and_registers_what_an_uninterrupted_run_does(
    recovered, mlflow_server, tmp_path
):
    results, _ = recovered
    _, output = results["a"]
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
    _, ref_versions, ref = _champion(mlflow_server, "kr-restart")  # uninterrupted training
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
    _, output = results[name]
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


def test_a_prefect_server_restart_while_a_run_holds_the_slot(recovered, mlflow_server):
    """A real `prefect server` with its default in-memory leases, restarted mid-training: it
    forgets the run's lease but keeps the slot counted. The run finds its lease gone at the
    next renewal, takes the slot again, completes (one version), and leaves the slot free
    (checked with the others')."""
    results, _ = recovered
    _, output = results["restart"]
    assert "took the slot again" in output, output[-4000:]
    _, versions, champion = _champion(mlflow_server, "kr-restart")
    assert [v.version for v in versions] == ["1"] and champion.version == "1"
