"""Orchestration overhead of the retrain flow, and the demo's wall time split by stage.

    .venv/bin/python -m benchmarks.flow_overhead [--quick]

Starts a Prefect server (timed: `tuneforge run` without PREFECT_API_URL starts the same kind
of temporary server itself), runs `tuneforge run deployments/presets/tiny-cpu.yaml` as the demo
does and once more sized to about two minutes, then reads the task run durations from Prefect's
API and `train.seconds` from the MLflow run. Overhead = flow run wall time minus the training
loop (`train.seconds`) minus the evaluation tasks, as a share of the flow run. With `--install`
it also times a fresh install (`make install`'s steps, into a throwaway venv).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
PRESET = "deployments/presets/tiny-cpu.yaml"
# Steps that make the whole flow take about two minutes on 2 cores (the demo's 2000 take ~1).
TWO_MINUTE_STEPS = 6000

# Task name -> demo stage; every task of the flow is in one.
STAGES = {
    "start_tracking_run": "register",  # opens the MLflow run: tracking, like registering
    "load_dataset": "data",
    "validate_dataset": "data",
    "split_dataset": "data",
    "check_unchanged": "data",  # compares the data fingerprint with the champion's
    "resolve_base_model": "data",  # builds the tiny model and its tokenizer from the data
    "train_with_strategy": "train",
    "evaluate_model": "evaluate",
    "evaluate_champion": "evaluate",
    "register_model": "register",
    "report_run": "register",
}


def start_server(home: Path, port: int) -> tuple[subprocess.Popen[bytes], float]:
    """A Prefect server on loopback; returns it and the seconds until /api/health answered."""
    started = time.perf_counter()
    server = subprocess.Popen(
        [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env={**os.environ, "PREFECT_HOME": str(home)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    while time.perf_counter() - started < 120:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=1)
            return server, time.perf_counter() - started
        except OSError:
            time.sleep(0.2)
    server.terminate()
    raise RuntimeError("prefect server did not answer within 120 s")


def task_durations(api: str) -> tuple[float, dict[str, float]]:
    """The latest flow run's wall time and the summed wall time of its tasks by name."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.client.schemas.sorting import FlowRunSort
    from prefect.settings import PREFECT_API_URL, temporary_settings

    # Settings, not os.environ: prefect may already be imported (by the training suite in the
    # same process), and would then ask a temporary server of its own holding other runs.
    with temporary_settings({PREFECT_API_URL: api}), get_client(sync_client=True) as client:
        flow_run = client.read_flow_runs(sort=FlowRunSort.START_TIME_DESC, limit=1)[0]
        tasks = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run.id]))
        )
    by_name: dict[str, float] = {}
    for task in tasks:
        if task.start_time and task.end_time:
            name = task.name.rsplit("-", 1)[0]  # "evaluate_model-3f2" -> "evaluate_model"
            by_name[name] = (
                by_name.get(name, 0.0) + (task.end_time - task.start_time).total_seconds()
            )
    return (flow_run.end_time - flow_run.start_time).total_seconds(), by_name


def train_seconds(tracking_uri: str) -> float:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    experiments = [e.experiment_id for e in client.search_experiments()]
    run = client.search_runs(experiments, order_by=["attribute.start_time DESC"], max_results=1)[0]
    return float(run.data.metrics["train.seconds"])


def one_run(api: str, work: Path, label: str, steps: int | None) -> dict[str, Any]:
    tracking_uri = f"sqlite:///{work}/mlflow.db"
    sets = [
        f"output_dir={work}/runs",
        f"tracking.tracking_uri={tracking_uri}",
        f"registry.model_name=bench-{label}",
        *([f"train.steps={steps}"] if steps else []),
    ]
    command = [str(BIN / "tuneforge"), "run", PRESET]
    for item in sets:
        command += ["--set", item]
    env = {**os.environ, "PREFECT_API_URL": api, "PREFECT_HOME": str(work / "prefect")}
    started = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    flow_seconds, tasks = task_durations(api)
    if flow_seconds > wall:
        raise RuntimeError(f"read another flow run ({flow_seconds:.0f} s > command {wall:.0f} s)")
    stages: dict[str, float] = {}
    for name, seconds in tasks.items():
        stage = STAGES.get(name, "other")
        stages[stage] = stages.get(stage, 0.0) + seconds
    loop = train_seconds(tracking_uri)
    evaluation = stages.get("evaluate", 0.0)
    overhead = flow_seconds - loop - evaluation
    return {
        "label": label,
        "command": "tuneforge run " + PRESET + "".join(f" --set {s}" for s in sets),
        "command_seconds": wall,  # includes Python start-up and imports of the CLI
        "flow_seconds": flow_seconds,
        "train_loop_seconds": loop,
        "evaluate_seconds": evaluation,
        "overhead_seconds": overhead,
        "overhead_share": overhead / flow_seconds,
        "command_overhead_share": (wall - loop - evaluation) / wall,
        "stages": stages,
        "tasks": tasks,
    }


def install_seconds() -> float:
    """`make install`'s steps into a throwaway venv (pip's cache is warm, as on a re-install)."""
    venv = Path(tempfile.mkdtemp(prefix="tuneforge-venv-"))
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q"]
    started = time.perf_counter()
    try:
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([*pip, "torch==2.13.0"], check=True)
        subprocess.run([*pip, "-c", "constraints.txt", "-e", ".[dev]"], cwd=ROOT, check=True)
        return time.perf_counter() - started
    finally:
        shutil.rmtree(venv, ignore_errors=True)


def measure(quick: bool, install: bool = False) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="tuneforge-flow-"))
    port = 4290
    server, server_seconds = start_server(work / "prefect-server", port)
    api = f"http://127.0.0.1:{port}/api"
    try:
        runs = [one_run(api, work, "demo", 20 if quick else None)]
        if not quick:
            runs.append(one_run(api, work, "two-minutes", TWO_MINUTE_STEPS))
    finally:
        server.terminate()
        server.wait(timeout=30)
        shutil.rmtree(work, ignore_errors=True)
    return {
        "server_start_seconds": server_seconds,
        "install_seconds": install_seconds() if install else None,
        "runs": runs,
    }


if __name__ == "__main__":
    print(json.dumps(measure("--quick" in sys.argv, "--install" in sys.argv), indent=1))
