"""The real `pipeline` flow through `tuneforge pipeline --json` (Prefect test server, MLflow
server over HTTP): continued pretraining on raw text, then instruction tuning from the version
it registered. Three runs of one pipeline file:
1. both stages train and register; the second starts from the first's version by number;
2. the second stage's settings changed: the first, unchanged, is skipped; the second retrains
   from the same pinned version (a re-run resumes at the first stage whose inputs changed);
3. the first stage changed and the second fails (every row of its data is bad): the pipeline
   stops in one line naming the stage, the first stage's new version registered and kept.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.conftest import BUNDLED_DATA, NO_GATE, PRESET
from tests.test_data_schemas import as_schema, write_rows

pytestmark = pytest.mark.integration

COMMON = [
    *NO_GATE,
    "registry.metric=eval_loss",
    "registry.higher_is_better=null",
    "train.eval_every=0",
    "train.warmup_steps=0",
    "evaluation.max_examples=8",
]


def _write_pipeline(path: Path, text: Path, chat: Path, pretrain: list[str], tune: list[str]):
    spec = {
        "name": "it-pipeline",
        "set": COMMON,
        "stages": [
            {
                "name": "pretrain",
                "preset": str(PRESET),
                "set": [
                    f"data.path={text}",
                    "data.schema=text",
                    "train.strategy=pretrain",
                    "registry.model_name=it-pipe-pretrained",
                    *pretrain,
                ],
            },
            {
                "name": "instruct",
                "preset": str(PRESET),
                "set": [
                    f"data.path={chat}",
                    "train.strategy=instruction",
                    "registry.model_name=it-pipe-instruct",
                    "train.max_length=128",
                    *tune,
                ],
            },
        ],
    }
    path.write_text(yaml.safe_dump(spec), encoding="utf-8")
    return path


def _invoke(path: Path, tracking_uri: str, out: Path):
    from typer.testing import CliRunner

    from tuneforge.cli import app

    args = ["pipeline", str(path), "--json"]
    args += ["--set", f"tracking.tracking_uri={tracking_uri}", "--set", f"output_dir={out}"]
    return CliRunner().invoke(app, args)


def _stages(result) -> dict[str, dict]:
    assert result.exit_code == 0, result.output
    last = json.loads(result.stdout.strip().splitlines()[-1])
    assert last["pipeline"] == "it-pipeline"
    return {s["stage"]: s for s in last["stages"]}


@pytest.fixture(scope="module")
def runs(prefect_harness, mlflow_server, bundled_records, tmp_path_factory):
    root = tmp_path_factory.mktemp("pipeline")
    text = write_rows(as_schema("text", bundled_records[:120]), root / "prose.jsonl", "jsonl")
    chat = root / "chat.jsonl"
    chat.write_text(BUNDLED_DATA.read_text(encoding="utf-8")[:40_000].rsplit("\n", 1)[0] + "\n")
    spec, out = root / "pipeline.yaml", root / "out"
    done = []
    for tune in (["train.steps=10"], ["train.steps=11"]):
        _write_pipeline(spec, text, chat, ["train.steps=10"], tune)
        done.append(_invoke(spec, mlflow_server, out))
    # Every row of the second stage's data is bad: it fails at validation, mid-pipeline.
    bad = root / "bad.jsonl"
    bad.write_text('{"instruction": "Say hi.", "output": ""}\n' * 10, encoding="utf-8")
    _write_pipeline(spec, text, bad, ["train.steps=12"], ["train.steps=11"])
    done.append(_invoke(spec, mlflow_server, out))
    return done


def test_each_stage_registers_a_version_the_next_starts_from(runs, mlflow_server):
    from mlflow.tracking import MlflowClient

    stages = _stages(runs[0])
    pretrain, instruct = stages["pretrain"], stages["instruct"]
    assert (pretrain["version"], instruct["version"]) == ("1", "1")
    assert not pretrain["skipped"] and not instruct["skipped"]
    assert pretrain["exact_match"] == {} and "perplexity" in pretrain["tuned"]  # raw text
    assert set(instruct["exact_match"]) == {"base", "tuned"}
    client = MlflowClient(mlflow_server)
    tags = client.get_run(instruct["run_id"]).data.tags
    assert tags["tuneforge.base_model"] == "models:/it-pipe-pretrained/1"  # pinned, no alias
    assert tags["tuneforge.parent_version"] == "it-pipe-pretrained/1"


def test_stages_carry_lineage_tags_and_nest_under_the_pipeline_run(runs, mlflow_server):
    from mlflow.tracking import MlflowClient

    last = json.loads(runs[0].stdout.strip().splitlines()[-1])
    client = MlflowClient(mlflow_server)
    for stage in last["stages"]:
        run = client.get_run(stage["run_id"])
        assert run.data.tags["mlflow.parentRunId"] == last["run_id"]
        version = client.get_model_version(stage["model"], stage["version"])
        assert version.tags["tuneforge.pipeline"] == "it-pipeline"
        assert version.tags["tuneforge.pipeline_stage"] == stage["stage"]
    parent = client.get_run(last["run_id"])
    assert parent.info.status == "FINISHED"
    assert (
        parent.data.metrics["instruct.tuned.eval_loss"] == last["stages"][1]["tuned"]["eval_loss"]
    )
    artifacts = {a.path for a in client.list_artifacts(last["run_id"])}
    assert {"pipeline.json", "plots", "summary.md"} <= artifacts


def test_each_stage_is_a_subflow_of_the_pipeline_flow_run(runs):
    import asyncio

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName

    async def names() -> dict[str, object]:
        async with get_client() as client:
            found = await client.read_flow_runs(
                flow_run_filter=FlowRunFilter(
                    name=FlowRunFilterName(any_=["it-pipeline.pretrain", "it-pipeline.instruct"])
                )
            )
            return {run.name: run.parent_task_run_id for run in found}

    subflows = asyncio.run(names())
    assert set(subflows) == {"it-pipeline.pretrain", "it-pipeline.instruct"}
    assert all(parent is not None for parent in subflows.values())


def test_a_rerun_skips_unchanged_stages_and_resumes_at_the_first_changed_one(runs, mlflow_server):
    from mlflow.tracking import MlflowClient

    first, again = _stages(runs[0]), _stages(runs[1])
    assert again["pretrain"]["skipped"] and again["pretrain"]["version"] == "1"
    assert again["pretrain"]["tuned"] == first["pretrain"]["tuned"]  # the champion's own scores
    assert not again["instruct"]["skipped"] and again["instruct"]["version"] == "2"
    tags = MlflowClient(mlflow_server).get_run(again["instruct"]["run_id"]).data.tags
    assert tags["tuneforge.base_model"] == "models:/it-pipe-pretrained/1"


def test_a_failed_stage_stops_the_pipeline_and_keeps_earlier_versions(runs, mlflow_server):
    from mlflow.tracking import MlflowClient

    failed = runs[2]
    assert failed.exit_code == 2, failed.output
    last = failed.stderr.strip().splitlines()[-1]  # after MLflow's own INFO lines
    assert "Traceback" not in failed.output
    assert last.startswith("error: stage instruct failed: ")
    assert "bad.jsonl" in last and "pretrain: it-pipe-pretrained v2" in last
    client = MlflowClient(mlflow_server)
    assert client.get_model_version("it-pipe-pretrained", "2").run_id  # kept
    versions = client.search_model_versions("name='it-pipe-instruct'")
    assert sorted(v.version for v in versions) == ["1", "2"]  # the failed stage added none
