"""Guards through real `retrain` flows (Prefect test server, MLflow server over HTTP), and the
benchmark scores tuneforge logs against lm-evaluation-harness's own command line.

1. instruct: the tiny model instruction-tuned briefly, scored on the bundled guard suite;
2. arithmetic: that version (pinned) fully fine-tuned on arithmetic alone, with guards on the
   suite: it forgets what they watch and stays challenger, the reason naming the guard;
3. arithmetic with replay: the same, with 80% of the instruct version's training rows mixed in,
   found through its lineage.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import BUNDLED_DATA, NO_GATE, PRESET, REPO

pytestmark = pytest.mark.integration

MODEL = "it-guards"
SUITE = REPO / "deployments" / "benchmarks"
ARITHMETIC = REPO / "deployments" / "presets" / "tiny-cpu-arithmetic.yaml"
LIMIT = 30  # documents per guard task: enough for the sign test, a few seconds per model
GUARDS = (
    "bench.guard_uppercase.exact_match",
    "bench.guard_first_letter.exact_match",
    "bench.guard_antonym.acc",
)


def _config(preset: Path, tracking_uri: str, out: Path, *overrides: str):
    from tuneforge.config import load_config

    return load_config(
        preset,
        [
            *NO_GATE,
            f"output_dir={out}",
            f"tracking.tracking_uri={tracking_uri}",
            "tracking.experiment=guards",
            f"registry.model_name={MODEL}",
            "evaluation.max_examples=64",
            f"evaluation.benchmarks={{lm_eval: {{path: {SUITE}, limit: {LIMIT}}}}}",
            "train.eval_every=0",
            *overrides,
        ],
    )


@pytest.fixture(scope="module")
def stages(prefect_harness, mlflow_server, tmp_path_factory):
    from tuneforge.flows.retrain import retrain

    out = tmp_path_factory.mktemp("guards")
    instruct = retrain(
        _config(PRESET, mlflow_server, out, f"data.path={BUNDLED_DATA}", "train.steps=600")
    )
    parent = f"model.source=models:/{MODEL}/{instruct.registration.version}"
    adapt = (parent, f"data.path={REPO / 'data' / 'arithmetic.jsonl'}", "train.steps=300")
    guarded = retrain(_config(ARITHMETIC, mlflow_server, out, *adapt, "name=arithmetic"))
    replayed = retrain(
        _config(ARITHMETIC, mlflow_server, out, *adapt, "data.replay=0.8", "name=replay")
    )
    return instruct, guarded, replayed


def test_the_forgetful_version_stays_challenger_and_its_reason_names_the_guard(stages):
    instruct, guarded, _ = stages
    reg = guarded.registration
    # It learnt arithmetic: better than its base (the instruct version) on the new data ...
    assert guarded.tuned["exact_match"] > guarded.base["exact_match"]
    # ... and forgot what a guard watches (the suite's scores are the instruct version's
    # when it was registered, as the base of this run scores them again).
    for metric in GUARDS:
        assert guarded.base[metric] == pytest.approx(instruct.tuned[metric])
    failed = [g for g in reg.guards if not g["passed"]]
    assert failed, f"no guard caught the forgetting: {reg.guards}"
    assert reg.alias == "challenger"
    first = failed[0]
    assert f"but guard {first['metric']}: {first['tuned']:.4f} against champion v1's" in (
        reg.reason
    )
    assert first["worse"] > first["better"] and first["p_value"] < 0.05


def test_guard_results_are_tagged_on_the_version_and_in_its_model_card(stages, mlflow_server):
    from mlflow.tracking import MlflowClient

    _, guarded, _ = stages
    version = MlflowClient(mlflow_server).get_model_version(MODEL, guarded.registration.version)
    tagged = json.loads(version.tags["tuneforge.guards"])
    assert tagged == guarded.registration.guards and [g["metric"] for g in tagged] == list(GUARDS)
    assert "## Guards" in version.description
    assert "FAILED" in version.description.split("## Guards")[1].split("## Lineage")[0]
    bench = MlflowClient(mlflow_server).list_artifacts(guarded.run_id, "eval")
    assert {"eval/tuned_bench.jsonl", "eval/base_bench.jsonl"} <= {a.path for a in bench}


def test_replay_mixes_in_the_parents_training_rows_through_its_lineage(stages, mlflow_server):
    from mlflow.tracking import MlflowClient

    instruct, guarded, replayed = stages
    run = MlflowClient(mlflow_server).get_run(replayed.run_id)
    parent_train = instruct.split.train_rows
    want = round(0.8 * parent_train)
    assert run.data.metrics["data.replayed_rows"] == want
    assert run.data.tags["tuneforge.replayed"] == (
        f"{want} of {parent_train} training rows of {MODEL}/{instruct.registration.version}"
    )
    assert replayed.split.train_rows == guarded.split.train_rows + want
    assert replayed.split.eval_rows == guarded.split.eval_rows  # evaluation: new data only
    # Replay keeps more of what the guards watch than adapting without it.
    kept = sum(replayed.tuned[m] for m in GUARDS)
    assert kept > sum(guarded.tuned[m] for m in GUARDS)


def test_logged_benchmark_scores_equal_the_harness_command_line(stages, mlflow_server, tmp_path):
    """The instruct version's checkpoint through `lm_eval --model hf`: the same tasks, limit
    and (no) chat template give the scores tuneforge logged for it, to 4 decimals."""
    import mlflow

    from tuneforge.tasks.model_source import download_registry_model

    instruct, _, _ = stages
    mlflow.set_tracking_uri(mlflow_server)
    checkpoint = download_registry_model(
        f"models:/{MODEL}/{instruct.registration.version}", tmp_path / "version"
    )
    tasks = ["guard_uppercase", "guard_first_letter", "guard_antonym"]
    done = subprocess.run(
        [
            str(Path(sys.executable).parent / "lm_eval"),
            *("--model", "hf"),
            *("--model_args", f"pretrained={checkpoint},dtype=float32"),
            *("--include_path", "."),
            *("--tasks", ",".join(tasks)),
            *("--limit", str(LIMIT)),
            *("--batch_size", "8"),
            *("--device", "cpu"),
            *("--output_path", str(tmp_path / "harness")),
        ],
        cwd=SUITE,  # the harness reads the tasks' data files relative to where it runs
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    (results,) = (tmp_path / "harness").rglob("results_*.json")
    printed = json.loads(results.read_text())["results"]
    scores = []
    for task in tasks:
        (metric,) = [k for k in printed[task] if k.endswith(",none") and "stderr" not in k]
        logged = instruct.tuned[f"bench.{task}.{metric.split(',')[0]}"]
        assert round(printed[task][metric], 4) == round(logged, 4), task
        scores.append(logged)
    assert any(0.0 < score < 1.0 for score in scores), scores  # a model partly right: not trivial
