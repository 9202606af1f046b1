"""Two `tuneforge run` processes of the same model name, started together: exactly one champion.

Both run for real against one Prefect API server (the session's harness) and one MLflow server
over HTTP, tiny (30 and 45 steps, 16 evaluation examples), with different seeds and step counts
so their scores differ. The model's retrain slot (tuneforge/slots.py) must serialise them
from data loading to the report, so the second one's gate sees the first one's champion. Checked:
both finish; exactly one version holds `champion`; the first version to register was promoted
for want of a champion, and the second's decision compares it with that champion's score on
the same split, in the metric's direction; and no task of one run overlaps the other's.

About 80 s on two idle cores (the two runs' work is serialised; start-up overlaps).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import BUNDLED_DATA, NO_GATE, PRESET, set_args

pytestmark = pytest.mark.integration

MODEL = "it-concurrent"
METRIC = "eval_loss"  # lower wins; unlike exact match it moves within a few dozen steps
RUNS = {
    "concurrent-a": ("train.seed=1", "train.steps=30"),
    "concurrent-b": ("train.seed=2", "train.steps=45"),
}


def _command(name: str, overrides: tuple[str, ...], tracking_uri: str, out: Path) -> list[str]:
    settings = [
        f"name={name}",
        f"data.path={BUNDLED_DATA}",
        f"output_dir={out}",
        f"tracking.tracking_uri={tracking_uri}",
        "tracking.experiment=concurrent",
        f"registry.model_name={MODEL}",
        f"registry.metric={METRIC}",
        "registry.higher_is_better=null",  # the preset says true, for exact_match
        "train.eval_every=0",
        "evaluation.max_examples=16",
        *NO_GATE,
        *overrides,
    ]
    return [sys.executable, "-m", "tuneforge.cli", "run", str(PRESET), *set_args(*settings)]


@pytest.fixture(scope="module")
def finished(prefect_harness, mlflow_server, tmp_path_factory):
    """Starts both runs at once, waits for both; yields {name: (exit code, output)}."""
    from prefect.settings import get_current_settings

    out = tmp_path_factory.mktemp("concurrent-runs")
    env = {**os.environ, "PREFECT_API_URL": get_current_settings().api.url}
    logs = {name: out / f"{name}.log" for name in RUNS}
    procs = {
        name: subprocess.Popen(
            _command(name, overrides, mlflow_server, out),
            env=env,
            stdout=logs[name].open("w"),
            stderr=subprocess.STDOUT,
        )
        for name, overrides in RUNS.items()
    }
    started = time.monotonic()
    try:
        codes = {name: proc.wait(timeout=400) for name, proc in procs.items()}
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
    print(f"both runs done in {time.monotonic() - started:.0f} s")
    return {name: (codes[name], logs[name].read_text()) for name in RUNS}


def _number_after(label: str, text: str) -> float | None:
    """The number after `label` in a decision tag, e.g. "champion's " in "... beats champion's
    3.8564"; None when the label is not there."""
    found = re.search(rf"{re.escape(label)}(-?\d+\.\d+)", text)
    return float(found.group(1)) if found else None


def test_both_runs_finish(finished, mlflow_server):
    from mlflow.tracking import MlflowClient

    for name, (code, output) in finished.items():
        assert code == 0, f"{name}:\n{output[-4000:]}"
    client = MlflowClient(mlflow_server)
    experiment = client.get_experiment_by_name("concurrent")
    runs = client.search_runs([experiment.experiment_id])
    assert sorted(r.info.run_name for r in runs) == sorted(RUNS)
    assert {r.info.status for r in runs} == {"FINISHED"}


def test_exactly_one_champion_consistent_with_the_gate(finished, mlflow_server):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(mlflow_server)
    # search_model_versions leaves aliases out over REST; get_model_version has them.
    numbers = sorted(int(v.version) for v in client.search_model_versions(f"name='{MODEL}'"))
    versions = [client.get_model_version(MODEL, str(n)) for n in numbers]
    assert len(versions) == 2
    first, second = versions
    holders = [v.version for v in versions if "champion" in v.aliases]
    assert len(holders) == 1, [(v.version, v.aliases, v.tags) for v in versions]
    assert client.get_model_version_by_alias(MODEL, "champion").version == holders[0]

    tuned = {v.version: client.get_run(v.run_id).data.metrics[f"tuned.{METRIC}"] for v in versions}
    base = {v.version: client.get_run(v.run_id).data.metrics[f"base.{METRIC}"] for v in versions}
    decision = {v.version: v.tags["tuneforge.decision"] for v in versions}
    # The first to register found no champion: it needed only to beat its base.
    assert decision[first.version].startswith(f"champion: no current champion; {METRIC}=")
    assert tuned[first.version] < base[first.version]
    # The second was gated against the first (serialised, it saw the first's champion), scored
    # on its own split, which is the first's too (same data and data.seed): the same number.
    verdict = decision[second.version]
    compared = _number_after("champion's ", verdict)
    assert compared is not None, f"the second run never saw a champion: {verdict!r}"
    assert compared == pytest.approx(tuned[first.version], abs=5e-4)
    assert _number_after(f"{METRIC}=", verdict) == pytest.approx(tuned[second.version], abs=5e-4)
    wins = tuned[second.version] < tuned[first.version]  # min_improvement is 0
    if wins:
        assert verdict.startswith("champion: ") and holders == [second.version]
        assert "champion" not in first.aliases and "challenger" not in first.aliases
    else:
        assert verdict.startswith("challenger: ") and holders == [first.version]
        assert second.aliases == ["challenger"]
    history = client.get_registered_model(MODEL).tags["tuneforge.champion_history"]
    assert history == (f"{first.version},{second.version}" if wins else first.version)


def test_the_slot_serialised_the_two_retrains(finished):
    """Each run's tasks after opening its MLflow run (the slot is taken right after) happen
    wholly before or wholly after the other's."""
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId, FlowRunFilterName

    windows = []
    with get_client(sync_client=True) as client:
        for name in RUNS:
            (flow_run,) = client.read_flow_runs(
                flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[name]))
            )
            assert flow_run.state and flow_run.state.is_completed(), flow_run.state
            tasks = client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run.id]))
            )
            inside = [t for t in tasks if not t.name.startswith("start_tracking_run")]
            assert inside
            windows.append(
                (min(t.start_time for t in inside), max(t.end_time for t in inside), name)
            )
    (_, first_end, first), (second_start, _, second) = sorted(windows)
    assert first_end <= second_start, f"{first} and {second} ran their retrains at once"
