"""The real `sweep` flow through `tuneforge sweep --json` (Prefect test server, MLflow server
over HTTP): three candidates, two at a time, one of which fails in training; the winner on
eval loss goes through the gate, the runner-up is registered without an alias
(`register_others`), the failed one is reported; the runs a killed earlier run of the sweep
left open are ended. Then the same sweep again: skipped, since data and candidates equal
those of the champion's sweep. And a sweep whose every candidate fails (one at a time, in
the flow's own process): it fails in one line, its leaderboard logged.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from prefect import flow
from prefect.context import FlowRunContext

from tests.conftest import BUNDLED_DATA, NO_GATE, PRESET
from tuneforge.sweeps import threads_per_candidate

pytestmark = pytest.mark.integration

SWEEP = "it-sweep"
LORA = ("train.strategy=lora",)


def _write_sweep(path: Path, data: Path) -> Path:
    spec = {
        "name": SWEEP,
        "preset": str(PRESET),
        "set": [
            *NO_GATE,
            f"data.path={data}",
            "registry.model_name=it-sweep",
            "registry.metric=eval_loss",
            "registry.higher_is_better=null",
            "train.steps=12",
            "train.eval_every=0",
            "train.warmup_steps=0",
            "evaluation.max_examples=8",
        ],
        "concurrency": 2,
        "register_others": True,
        "candidates": [
            {"name": "full", "set": ["train.strategy=full"]},
            {"name": "instruction", "set": ["train.strategy=instruction"]},
            # PEFT finds no such layer: the candidate fails inside its training process.
            {
                "name": "broken",
                "set": ["train.strategy=lora", "train.settings.target_modules=[nope]"],
            },
        ],
    }
    path.write_text(yaml.safe_dump(spec), encoding="utf-8")
    return path


def _invoke(path: Path, tracking_uri: str, out: Path):
    from typer.testing import CliRunner

    from tuneforge.cli import app

    args = ["sweep", str(path), "--json"]
    args += ["--set", f"tracking.tracking_uri={tracking_uri}", "--set", f"output_dir={out}"]
    return CliRunner().invoke(app, args)


@flow
def _killed_sweep() -> str:
    """Stands in for the flow run of a sweep that was killed: ended as far as Prefect knows."""
    return str(FlowRunContext.get().flow_run.id)


def _left_open_by_a_killed_sweep(tracking_uri: str) -> str:
    """A RUNNING MLflow run of this sweep and model, from another (dead) sweep flow run."""
    from mlflow.tracking import MlflowClient

    tags = {
        "tuneforge.sweep": SWEEP,
        "tuneforge.model_name": "it-sweep",
        "tuneforge.sweep_flow_run_id": _killed_sweep(),
    }
    client = MlflowClient(tracking_uri)
    found = client.get_experiment_by_name("tuneforge")
    experiment = found.experiment_id if found else client.create_experiment("tuneforge")
    return client.create_run(experiment, run_name=SWEEP, tags=tags).info.run_id


@pytest.fixture(scope="module")
def runs(prefect_harness, mlflow_server, tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    data = root / "chat.jsonl"
    data.write_text(BUNDLED_DATA.read_text(encoding="utf-8")[:60_000].rsplit("\n", 1)[0] + "\n")
    spec = _write_sweep(root / "sweep.yaml", data)
    left_open = _left_open_by_a_killed_sweep(mlflow_server)
    done = [_invoke(spec, mlflow_server, root / "out") for _ in range(2)]
    every_one_fails = root / "broken.yaml"
    every_one_fails.write_text(
        yaml.safe_dump(
            {
                "name": "it-sweep-broken",
                "preset": str(PRESET),
                "set": [*NO_GATE, f"data.path={data}", "registry.model_name=it-sweep-broken"],
                "concurrency": 1,
                "candidates": [
                    {"name": f"broken{i}", "set": [*LORA, f"train.settings.target_modules=[no{i}]"]}
                    for i in range(2)
                ],
            }
        ),
        encoding="utf-8",
    )
    done.append(_invoke(every_one_fails, mlflow_server, root / "out"))
    return done, left_open


def _last_json(result) -> dict:
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_the_best_finished_candidate_wins_and_only_it_is_gated(runs, mlflow_server):
    from mlflow.tracking import MlflowClient

    summary = _last_json(runs[0][0])
    assert [c["rank"] for c in summary["candidates"]] == [1, 2, 3]
    finished = [c for c in summary["candidates"] if c["status"] == "finished"]
    assert {c["candidate"] for c in finished} == {"full", "instruction"}
    best = min(finished, key=lambda c: c["metrics"]["eval_loss"])
    assert summary["winner"] == best["candidate"] == summary["candidates"][0]["candidate"]
    assert (summary["model"], summary["version"], summary["alias"]) == ("it-sweep", "1", "champion")

    client = MlflowClient(mlflow_server)
    version = client.get_model_version("it-sweep", "1")
    assert version.run_id == best["run_id"]
    assert version.tags["tuneforge.sweep"] == SWEEP
    assert version.tags["tuneforge.sweep_candidate"] == best["candidate"]
    assert version.tags["tuneforge.data_fingerprint"]  # the sweep's lineage, on the candidate
    # The runner-up is a version of its own, without an alias and without a gate decision.
    runner_up = next(c for c in finished if c is not best)
    other = client.get_model_version("it-sweep", "2")
    assert other.run_id == runner_up["run_id"] and not other.aliases
    assert other.tags["tuneforge.decision"].startswith(f"rank 2 of 2 in sweep {SWEEP}")
    assert summary["others"] == [{"version": "2", "reason": other.tags["tuneforge.decision"]}]
    assert len(client.search_model_versions("name='it-sweep'")) == 2
    # Each candidate's scores are those its own run logged.
    for c in finished:
        logged = client.get_run(c["run_id"]).data.metrics
        assert logged["tuned.eval_loss"] == pytest.approx(c["metrics"]["eval_loss"])


def test_a_failed_candidate_is_reported_and_does_not_sink_the_sweep(runs, mlflow_server):
    from mlflow.tracking import MlflowClient

    summary = _last_json(runs[0][0])
    broken = summary["candidates"][-1]
    assert broken["candidate"] == "broken" and broken["rank"] == 3
    assert broken["status"].startswith("failed: strategy 'lora'")
    assert "nope" in broken["status"] and "\n" not in broken["status"]
    run = MlflowClient(mlflow_server).get_run(broken["run_id"])
    assert run.info.status == "FAILED"


def test_candidates_share_the_split_and_the_base_and_nest_under_the_sweep(runs, mlflow_server):
    from mlflow.tracking import MlflowClient

    summary = _last_json(runs[0][0])
    client = MlflowClient(mlflow_server)
    sweep = client.get_run(summary["run_id"])
    assert sweep.data.tags["tuneforge.sweep_winner"] == summary["winner"]
    assert sweep.data.metrics["base.eval_loss"] == pytest.approx(summary["base"]["eval_loss"])
    artifacts = {a.path for a in client.list_artifacts(summary["run_id"])}
    assert {"leaderboard.json", "plots", "summary.md"} <= artifacts
    table = json.loads(
        Path(client.download_artifacts(summary["run_id"], "leaderboard.json")).read_text()
    )
    assert [row[1] for row in table["data"]] == [c["candidate"] for c in summary["candidates"]]
    threads = threads_per_candidate(2)
    for c in summary["candidates"]:
        run = client.get_run(c["run_id"])
        assert run.data.tags["mlflow.parentRunId"] == summary["run_id"]
        if c["status"] != "finished":
            continue
        # The base was scored once, on the one eval split every candidate was scored on.
        assert run.data.metrics["base.eval_loss"] == sweep.data.metrics["base.eval_loss"]
        assert run.data.metrics["tuned.examples"] == sweep.data.metrics["base.examples"]
        # Trained beside another, in a process of its own with its share of the cores.
        assert run.data.params["train.num_threads"] == str(threads) == str(c["threads"])


def test_at_most_concurrency_candidates_run_at_once(runs):
    from prefect import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName

    with get_client(sync_client=True) as client:
        found = client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=["sweep-candidate"]))
        )
    first = [r for r in found if r.name.startswith(f"{SWEEP}.")]
    assert sorted(r.name for r in first) == [
        f"{SWEEP}.{n}" for n in ("broken", "full", "instruction")
    ]
    spans = [(r.start_time, r.end_time) for r in first]
    overlapping = max(sum(s <= t < e for s, e in spans) for t, _ in spans)
    assert overlapping == 2  # two at once, never three


def test_the_same_sweep_on_the_same_data_is_skipped(runs):
    again = _last_json(runs[0][1])
    assert again["sweep"] == SWEEP
    assert "version 1 (champion)" in again["skipped"]


def test_runs_a_killed_run_of_the_sweep_left_open_are_ended(runs, mlflow_server):
    from mlflow.tracking import MlflowClient

    _, left_open = runs
    run = MlflowClient(mlflow_server).get_run(left_open)
    assert run.info.status == "KILLED"
    assert run.data.tags["tuneforge.crashed"].startswith("ended by sweep ")


def test_a_sweep_whose_every_candidate_fails_fails_in_one_line(runs, mlflow_server):
    from mlflow.tracking import MlflowClient

    failed = runs[0][2]
    assert failed.exit_code == 2, failed.output
    assert "Traceback" not in failed.output
    last = failed.stderr.strip().splitlines()[-1]
    assert last.startswith("error: sweep it-sweep-broken: every candidate failed (broken0: ")
    assert "{'no0'}" in last and "; broken1: " in last and "{'no1'}" in last
    client = MlflowClient(mlflow_server)
    experiment = client.get_experiment_by_name("tuneforge").experiment_id
    sweep = client.search_runs([experiment], "tags.`tuneforge.sweep` = 'it-sweep-broken'")
    parent = next(r for r in sweep if "tuneforge.sweep_candidate" not in r.data.tags)
    assert parent.info.status == "FAILED"
    assert "leaderboard.json" in {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert not client.search_model_versions("name='it-sweep-broken'")
