"""The retraining loop under load and faults, on the shared stack (tuneforge/stack.py).

    .venv/bin/python -m benchmarks.stack_load            # ~20 min on 2 idle cores
    .venv/bin/python -m benchmarks.stack_load --quick    # 4 retrains, then the faults

A stack in a temporary folder (PostgreSQL, MLflow with basic auth, Prefect with an auth
string), two process workers on a pool limited to 2 flow runs at once, and the retrain
deployment (`flows/from_files.py:retrain_preset`, the tiny preset, 300 steps).

1. Load: 20 retrains submitted at once, five to each of four models, each with its own seed
   (so none is skipped as unchanged). Waits for all; then counts flow runs, MLflow runs and
   versions against submissions, checks one champion per model whose alias history chains
   (each move from where the last one went) and ends at the alias, and no retrain slot held.
   Reports wall time, queue wait (scheduled to started) and run time per run.
2. Overhead: one retrain alone on the stack (submitted to the deployment; end to end and the
   flow run's own time) against the same retrain alone with `tuneforge run` on the embedded
   default (a local Prefect server, MLflow on SQLite; its command's wall time).
3. Faults: 4 retrains submitted; once two are running, the Prefect server is killed (SIGKILL,
   its process group) and restarted 10 s later by `Stack.up`. Then the same with the MLflow
   server. Each affected retrain either finishes or fails with one line; the failed ones are
   re-run from their deployment and must then finish. Counts are checked again.

Writes benchmarks/results/stack_load.json and prints a markdown summary.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from itertools import pairwise
from pathlib import Path
from typing import Any

from benchmarks.common import wait_for_idle

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
OUT = ROOT / "benchmarks" / "results" / "stack_load.json"
PRESET = "deployments/presets/tiny-cpu.yaml"
POOL = "load"
DEPLOYMENT = "retrain-preset/load"
# 300 steps (a few seconds of training: start-up and evaluation dominate a run), gated on
# eval loss, which every retrain improves on the random base and which seeds move either way
# against the champion: promotions and challengers both happen.
SETTINGS = [
    "train.steps=300",
    "train.eval_every=0",
    "evaluation.max_examples=48",
    "registry.metric=eval_loss",
    "registry.higher_is_better=false",
    "registry.min_correct=0",
    "registry.max_p_value=null",
    "tracking.experiment=stack-load",
]


def _sh(*args: str, env: dict[str, str], cwd: Path) -> str:
    done = subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed: {done.stdout[-2000:]}{done.stderr[-2000:]}")
    return done.stdout


def _client(env: dict[str, str]) -> Any:
    from prefect.client.orchestration import SyncPrefectClient

    return SyncPrefectClient(env["PREFECT_API_URL"], auth_string=env["PREFECT_API_AUTH_STRING"])


def _submit(env: dict[str, str], model: str, seed: int) -> str:
    overrides = [
        *SETTINGS,
        f"registry.model_name={model}",
        f"train.seed={seed}",
        f"output_dir={env['STACK_LOAD_RUNS']}",
    ]
    with _client(env) as client:
        deployment = client.read_deployment_by_name(DEPLOYMENT)
        run = client.create_flow_run_from_deployment(
            deployment.id, parameters={"preset": PRESET, "overrides": overrides}
        )
    return str(run.id)


def _wait(env: dict[str, str], ids: list[str], limit_s: float = 3600) -> list[Any]:
    """The flow runs once all are final; tolerates the API being down for a while."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        try:
            with _client(env) as client:
                runs = [client.read_flow_run(i) for i in ids]
            if all(r.state and r.state.is_final() for r in runs):
                return runs
        except Exception:  # the server is down (the fault phases): ask again
            pass
        time.sleep(3)
    raise SystemExit(f"runs not final after {limit_s} s")


def _running(env: dict[str, str], ids: list[str]) -> int:
    with _client(env) as client:
        return sum(client.read_flow_run(i).state.is_running() for i in ids)


def _kill(stack: Any, service: str) -> None:
    os.killpg(stack.state.pids[service], signal.SIGKILL)


def _timings(runs: list[Any]) -> dict[str, float]:
    waits = [(r.start_time - r.expected_start_time).total_seconds() for r in runs if r.start_time]
    spans = [(r.end_time - r.start_time).total_seconds() for r in runs if r.end_time]
    return {
        "queue_wait_median_s": statistics.median(waits),
        "queue_wait_max_s": max(waits),
        "run_median_s": statistics.median(spans),
        "run_max_s": max(spans),
    }


def _census(env: dict[str, str], models: list[str]) -> dict[str, Any]:
    """MLflow runs, versions and champions per model, the alias history's consistency, and
    the retrain slots still held."""
    from mlflow.tracking import MlflowClient

    from tuneforge.model_registry import alias_history, current_champion

    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    experiment = client.get_experiment_by_name("stack-load")
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    per_model: dict[str, Any] = {}
    for model in models:
        versions = client.search_model_versions(f"name='{model}'")
        champion = current_champion(client, model)
        moves = [m for m in alias_history(client, model) if m["alias"] == "champion"]
        chained = all(a["to"] == b["from"] for a, b in pairwise(moves))
        ends = bool(moves) and champion is not None and moves[-1]["to"] == str(champion.version)
        unversioned = [v.version for v in versions if "tuneforge.data_fingerprint" not in v.tags]
        challengers = [
            v for v in versions if "challenger" in (v.tags.get("tuneforge.decision") or "")
        ]
        per_model[model] = {
            "versions": len(versions),
            "challengers": len(challengers),
            "champion": champion.version if champion else None,
            "champion_moves": len(moves),
            "history_consistent": chained and ends,
            "versions_without_lineage": unversioned,
        }
    with _client(env) as prefect:
        limits = prefect.read_global_concurrency_limits(limit=200)
    held = {limit.name: limit.active_slots for limit in limits if limit.active_slots}
    statuses: dict[str, int] = {}
    for run in runs:
        statuses[run.info.status] = statuses.get(run.info.status, 0) + 1
    return {
        "mlflow_runs": len(runs),
        "mlflow_status": statuses,
        "models": per_model,
        "slots_held": held,
    }


def _phase_load(env: dict[str, str], retrains: int, models: list[str]) -> dict[str, Any]:
    started = time.monotonic()
    ids = [_submit(env, models[i % len(models)], seed=i) for i in range(retrains)]
    runs = _wait(env, ids)
    wall = time.monotonic() - started
    states = [r.state.type.value for r in runs]
    return {
        "submitted": retrains,
        "wall_s": wall,
        "states": {s: states.count(s) for s in set(states)},
        **_timings(runs),
    }


def _phase_solo(env: dict[str, str], model: str) -> dict[str, Any]:
    started = time.monotonic()
    (run,) = _wait(env, [_submit(env, model, seed=999)])
    return {
        "end_to_end_s": time.monotonic() - started,
        "queue_wait_s": (run.start_time - run.expected_start_time).total_seconds(),
        "run_s": (run.end_time - run.start_time).total_seconds(),
        "state": run.state.type.value,
    }


def _phase_fault(
    env: dict[str, str], stack: Any, service: str, models: list[str], seed0: int
) -> dict[str, Any]:
    ids = [_submit(env, models[i % len(models)], seed=seed0 + i) for i in range(4)]
    deadline = time.monotonic() + 600
    while _running(env, ids) < 2 and time.monotonic() < deadline:
        time.sleep(1)
    time.sleep(5)  # into training
    with _client(env) as client:
        running = [i for i in ids if client.read_flow_run(i).state.is_running()]
    killed_at = time.monotonic()
    _kill(stack, service)
    time.sleep(10)
    stack.up(workers=2, pool=POOL, pool_limit=2, project=stack.state.project)
    restarted_s = time.monotonic() - killed_at
    runs = _wait(env, ids)
    outcome = {str(r.id): r.state.type.value for r in runs}
    failed = [r for r in runs if not r.state.is_completed()]
    messages = {str(r.id): (r.state.message or "").splitlines()[:1] for r in failed}
    reruns = []
    if failed:
        with _client(env) as client:
            again = [
                client.create_flow_run_from_deployment(r.deployment_id, parameters=r.parameters)
                for r in failed
            ]
        reruns = [r.state.type.value for r in _wait(env, [str(a.id) for a in again])]
    return {
        "killed": service,
        "running_when_killed": running,
        "down_and_restarted_s": restarted_s,
        "outcomes": outcome,
        "failed_messages": messages,
        "reruns": reruns,
    }


def _baseline(env: dict[str, str], project: Path) -> float:
    """One retrain with `tuneforge run` on the embedded default (a local Prefect server,
    MLflow on SQLite), its files in a fresh folder."""
    folder = Path(tempfile.mkdtemp(prefix="stack-load-base-"))
    clean = {
        k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_API", "MLFLOW_TRACKING"))
    }
    clean["PREFECT_HOME"] = str(folder / "prefect")
    clean["MLFLOW_TRACKING_URI"] = f"sqlite:///{folder / 'mlflow.db'}"
    sets = [
        a
        for s in [*SETTINGS, "registry.model_name=baseline", f"output_dir={folder / 'runs'}"]
        for a in ("--set", s)
    ]
    started = time.monotonic()
    _sh(str(BIN / "tuneforge"), "run", PRESET, *sets, env=clean, cwd=project)
    elapsed = time.monotonic() - started
    shutil.rmtree(folder, ignore_errors=True)
    return elapsed


def main() -> None:
    from tuneforge.stack import Stack

    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    retrains = 4 if args.quick else 20
    models = [f"load-{c}" for c in "abcd"]
    wait_for_idle()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # through `finally`: stack down
    root = Path(tempfile.mkdtemp(prefix="tuneforge-stack-load-"))
    root.chmod(0o755)
    stack = Stack(root)
    os.environ.setdefault("PREFECT_UI_ENABLED", "false")
    result: dict[str, Any] = {"retrains": retrains, "settings": SETTINGS}
    try:
        t0 = time.monotonic()
        stack.up(
            workers=2,
            pool=POOL,
            pool_limit=2,
            project=ROOT,
            ports={"postgres": 0, "mlflow": 0, "prefect": 0},
        )
        result["stack_up_s"] = time.monotonic() - t0
        env = {**os.environ, **stack.client_env(), "STACK_LOAD_RUNS": str(root / "runs")}
        os.environ.update(
            {k: v for k, v in stack.client_env().items() if k.startswith("MLFLOW_TRACKING")}
        )
        _sh(
            str(BIN / "prefect"), "--no-prompt", "deploy", "flows/from_files.py:retrain_preset",
            "--name", "load", "--pool", POOL, env=env, cwd=ROOT,
        )  # fmt: skip
        result["load"] = _phase_load(env, retrains, models)
        _save(result)
        result["load_census"] = _census(env, models)
        _save(result)
        result["solo_on_stack"] = _phase_solo(env, models[0])
        result["solo_embedded_s"] = _baseline(env, ROOT)
        _save(result)
        result["faults"] = []
        for service, seed0 in (("prefect", 100), ("mlflow", 200)):
            result["faults"].append(_phase_fault(env, stack, service, models, seed0))
            _save(result)
        result["final_census"] = _census(env, models)
        with _client(env) as client:
            deployment = client.read_deployment_by_name(DEPLOYMENT)
            runs = client.read_flow_runs(limit=200)
        # Each retrain is a deployment run with the `retrain` flow inside it (a subflow run).
        top = [r for r in runs if r.deployment_id == deployment.id]
        result["flow_runs"] = {
            "of_the_deployment": len(top),
            "subflows": len(runs) - len(top),
            "completed": sum(r.state.is_completed() for r in top),
        }
    finally:
        stack.down()
        shutil.rmtree(root, ignore_errors=True)
    _save(result)
    print(json.dumps(result, indent=2, default=str))


def _save(result: dict[str, Any]) -> None:
    """Written after every phase: a run that dies later keeps what it measured."""
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=2, default=str))


if __name__ == "__main__":
    main()
