"""The real `retrain` flow under a Prefect API server, logging to a real MLflow server over HTTP.

Three runs share one registered model name:
1. a proper run registers version 1 and, with no champion yet, makes it `champion`;
2. a run trained for a handful of steps loses to it: it becomes `challenger`, champion stays;
3. a run whose base is `models:/NAME@champion` fine-tunes from the champion (transfer
   learning): its base metrics are exactly the champion's tuned metrics, its version links to
   its parent, and, being better, it takes `champion`; a rollback gives it back.
Then a QLoRA stage (4-bit base, on the CPU) on that champion registers its adapter alone, which
answers in a fresh process without tuneforge once its run directory is gone.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import BUNDLED_DATA, PRESET, REPO

pytestmark = pytest.mark.integration

MODEL = "it-retrain"


def _config(tracking_uri: str, out: Path, *overrides: str):
    from tuneforge.config import load_config

    return load_config(
        PRESET,
        [
            f"data.path={BUNDLED_DATA}",
            f"output_dir={out}",
            f"tracking.tracking_uri={tracking_uri}",
            "tracking.experiment=integration",
            f"registry.model_name={MODEL}",
            "train.steps=600",
            "evaluation.max_examples=96",
            *overrides,
        ],
    )


def _aliases(tracking_uri: str) -> dict[str, str]:
    from mlflow.tracking import MlflowClient

    return dict(MlflowClient(tracking_uri).get_registered_model(MODEL).aliases)


@pytest.fixture(scope="module")
def runs(prefect_harness, mlflow_server, tmp_path_factory):
    from tuneforge.flows.retrain import retrain

    out = tmp_path_factory.mktemp("runs")
    first = retrain(_config(mlflow_server, out))
    weak = retrain(_config(mlflow_server, out, "train.steps=3", "train.warmup_steps=0"))
    aliases_after_weak = _aliases(mlflow_server)
    # 300 more steps on top of the champion: reliably better, so it must take the alias.
    # (Its base is the champion: 300 steps more beat it, though not always by a margin the
    # preset's significance test against the base calls certain on 96 rows.)
    chained_config = (
        f"model.source=models:/{MODEL}@champion",
        "train.steps=300",
        "registry.max_p_value=null",
    )
    chained = retrain(_config(mlflow_server, out, *chained_config))
    # Same data, same config as the champion: stops after validation, registers nothing.
    again = retrain(_config(mlflow_server, out, *chained_config, "name=again"))
    return first, weak, chained, aliases_after_weak, again


@pytest.fixture(scope="module")
def lora_run(runs, mlflow_server, tmp_path_factory):
    from tuneforge.flows.retrain import retrain

    return retrain(
        _config(
            mlflow_server,
            tmp_path_factory.mktemp("lora-runs"),
            f"model.source=models:/{MODEL}@champion",
            "train.strategy=lora",
            "train.settings.quantize_4bit=true",  # QLoRA: a 4-bit base, on the CPU
            "train.steps=10",  # what is checked is the version, not how much it learned
            f"registry.model_name={MODEL}-lora",
        )
    )


@pytest.fixture(scope="module")
def dpo_run(runs, mlflow_server, tmp_path_factory):
    """DPO from the champion on preference pairs (the tiny-cpu-dpo preset's recipe)."""
    from tuneforge.flows.retrain import retrain

    return retrain(
        _config(
            mlflow_server,
            tmp_path_factory.mktemp("dpo-runs"),
            f"data.path={REPO / 'data' / 'preferences.jsonl'}",
            f"model.source=models:/{MODEL}@champion",
            "train.strategy=dpo",
            "train.steps=20",  # what is checked is the version and its scores
            "train.learning_rate=0.00005",
            "train.batch_size=8",
            "evaluation.max_examples=48",
            "registry.metric=preference_accuracy",
            "registry.max_p_value=null",
            f"registry.model_name={MODEL}-dpo",
        )
    )


def test_dpo_from_the_champion_registers_a_version_scored_on_preference_pairs(
    dpo_run, mlflow_server
):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(mlflow_server)
    metrics = client.get_run(dpo_run.run_id).data.metrics
    # Both scored on the same held-out pairs: the model's own ranking of chosen over rejected.
    for label in ("base", "tuned"):
        assert 0.0 <= metrics[f"{label}.preference_accuracy"] <= 1.0
        assert f"{label}.exact_match" in metrics  # generation metrics as for every version
    # The implicit reward is measured against the base: the tuned model has one, the base not.
    assert "tuned.reward_accuracy" in metrics and "base.reward_accuracy" not in metrics
    assert "train.reward_margin" in metrics and metrics["audit.masked_tokens"] > 0
    version = client.get_model_version(f"{MODEL}-dpo", dpo_run.registration.version)
    assert version.tags["tuneforge.base_model"] == f"models:/{MODEL}@champion"
    assert dpo_run.registration.decision.startswith(f"{MODEL}-dpo version")
    assert "preference_accuracy" in dpo_run.registration.decision
    rows = [
        json.loads(line)
        for line in Path(dpo_run.split.eval_path)
        .with_name("tuned_scores.jsonl")
        .read_text()
        .splitlines()
    ]
    assert all({"logp_chosen", "logp_rejected", "reward_margin"} <= set(r) for r in rows)


def test_first_run_registers_champion_with_metrics(runs, mlflow_server):
    from mlflow.tracking import MlflowClient

    first, *_ = runs
    client = MlflowClient(mlflow_server)
    version = client.get_model_version(MODEL, first.registration.version)
    assert version.run_id == first.run_id
    assert first.registration.alias == "champion"

    run = client.get_run(first.run_id)
    assert run.info.status == "FINISHED"
    metrics = run.data.metrics
    # The tuned model must beat the random base by a wide margin, not by noise.
    assert metrics["tuned.exact_match"] >= metrics["base.exact_match"] + 0.2
    assert metrics["tuned.eval_loss"] < metrics["base.eval_loss"] / 2
    assert metrics["data.total"] == metrics["data.valid"] == 1508
    assert metrics["train.peak_rss_mb"] > 100
    assert run.data.params["train.strategy"] == "full"
    assert run.data.params["train.steps"] == "600"
    assert run.data.tags["tuneforge.data_fingerprint"] == first.data.fingerprint

    losses = client.get_metric_history(first.run_id, "train.loss")
    steps = [m.step for m in losses]
    assert steps == sorted(steps) and len(steps) == 600 // 50
    assert losses[-1].value < losses[0].value / 2

    files = {Path(f.path).name for f in client.list_artifacts(first.run_id, "model")}
    assert {"MLmodel", "serving.py", "artifacts"} <= files
    checkpoint = client.list_artifacts(first.run_id, "model/artifacts/checkpoint")
    weights = {Path(f.path).name for f in checkpoint}
    assert "model.safetensors" in weights
    assert not any(name.endswith((".bin", ".pt", ".pkl")) for name in weights)


def test_worse_run_becomes_challenger_and_champion_stays(runs, mlflow_server):
    from mlflow.tracking import MlflowClient

    first, weak, _, aliases_after_weak, _ = runs
    assert weak.registration.alias == "challenger"
    assert "does not beat" in weak.registration.reason
    assert aliases_after_weak == {
        "champion": first.registration.version,
        "challenger": weak.registration.version,
    }
    client = MlflowClient(mlflow_server)
    version = client.get_model_version(MODEL, weak.registration.version)
    assert version.tags["tuneforge.decision"].startswith("challenger:")
    # The champion was re-scored on the weak run's own split: the same numbers as when it won.
    metrics = client.get_run(weak.run_id).data.metrics
    assert metrics["champion.exact_match"] == pytest.approx(first.tuned["exact_match"])
    assert metrics["champion.eval_loss"] == pytest.approx(first.tuned["eval_loss"], rel=1e-5)
    # The same split, tokenizer and strategy settings (only the steps differ): the weak run
    # trained on the examples the first one tokenized, and says so.
    tags = {run.run_id: client.get_run(run.run_id).data.tags for run in (first, weak)}
    assert tags[first.run_id]["tuneforge.token_cache"] == "built"
    assert tags[weak.run_id]["tuneforge.token_cache"] == "reused"
    assert weak.training.token_cache == "reused"


def test_registry_model_as_base_continues_from_champion(runs):
    first, _, chained, *_ = runs
    # Same weights, same eval split, greedy decoding: the chained run's base is the champion.
    assert chained.base["exact_match"] == pytest.approx(first.tuned["exact_match"])
    assert chained.base["eval_loss"] == pytest.approx(first.tuned["eval_loss"], rel=1e-5)


def _predict_in_a_fresh_process(tracking_uri: str, calls: list[tuple[str, list]]) -> list:
    """`mlflow.pyfunc.load_model(uri).predict(inputs)` for each (uri, inputs), in one new
    interpreter that cannot import tuneforge (as on a machine without it); also checks the
    error a wrong dict gets from each."""
    code = (
        "import json, sys\n"
        "sys.modules['tuneforge'] = None  # not installed here\n"
        "import mlflow\n"
        f"mlflow.set_tracking_uri({tracking_uri!r})\n"
        f"for uri, inputs in {calls!r}:\n"
        "    model = mlflow.pyfunc.load_model(uri)\n"
        "    try:\n"
        "        model.predict([{'question': 'x'}])\n"
        "    except ValueError as exc:\n"
        "        print('refused:', exc)\n"
        "    print(json.dumps(model.predict(inputs)))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.strip().splitlines()[-2 * len(calls) :]
    assert all("refused: input 0: a dict needs 'instruction'" in x for x in lines[::2]), lines
    return [json.loads(x) for x in lines[1::2]]


def test_qlora_stage_registers_the_adapter_alone(lora_run, runs, mlflow_server):
    from mlflow.tracking import MlflowClient

    _, _, chained, *_ = runs
    client = MlflowClient(mlflow_server)
    run = client.get_run(lora_run.run_id)
    assert run.data.metrics["train.trainable_fraction"] < 0.1
    assert run.data.metrics["audit.masked_tokens"] > 0  # prompt tokens carry no loss
    assert '"quantize_4bit": true' in run.data.tags["tuneforge.strategy_settings"]
    top = {Path(f.path).name for f in client.list_artifacts(lora_run.run_id, "model/artifacts")}
    assert top == {"checkpoint", "tuneforge_model.json"}  # no copy of the base weights
    files = client.list_artifacts(lora_run.run_id, "model/artifacts/checkpoint")
    assert "adapter_model.safetensors" in {Path(f.path).name for f in files}
    manifest = json.loads(
        Path(
            client.download_artifacts(lora_run.run_id, "model/artifacts/tuneforge_model.json")
        ).read_text()
    )
    # The base by its pinned registry version (the champion it was tuned from), not a path.
    assert manifest["base"] == f"models:/{MODEL}/{chained.registration.version}"
    assert client.get_model_version(f"{MODEL}-lora", lora_run.registration.version)


def test_versions_carry_lineage_and_a_model_card(runs, mlflow_server):
    from mlflow.tracking import MlflowClient

    first, *_ = runs
    client = MlflowClient(mlflow_server)
    version = client.get_model_version(MODEL, first.registration.version)
    tags = version.tags
    assert tags["tuneforge.data_fingerprint"] == first.data.fingerprint
    assert tags["tuneforge.strategy"] == "full"
    assert tags["tuneforge.strategy_settings"] == "{}"
    assert tags["tuneforge.base_model"] == "tiny"
    assert len(tags["tuneforge.config_hash"]) == 16
    assert tags["tuneforge.code_version"]  # a git commit when run from a checkout
    assert (
        "torch==" in tags["tuneforge.packages"] and "transformers==" in tags["tuneforge.packages"]
    )
    assert "tuneforge.parent_version" not in tags  # built from scratch: no parent
    # The preset evaluates every 500 steps: the registered weights come from the best of them.
    evals = client.get_metric_history(first.run_id, "train.eval_exact_match")
    losses = {m.step: m.value for m in client.get_metric_history(first.run_id, "train.eval_loss")}
    assert [m.step for m in evals] == [500, 600] == sorted(losses)
    best = max(evals, key=lambda m: (m.value, -losses[m.step], m.step))
    assert tags["tuneforge.checkpoint_step"] == str(best.step) == str(first.training.best_step)
    assert version.description.startswith(f"# {MODEL} version {first.registration.version}")
    assert "| exact_match |" in version.description
    assert "Decision: champion:" in version.description


def test_run_reports_plots_generations_and_summary(runs, mlflow_server):
    from mlflow.tracking import MlflowClient

    first, *_ = runs
    client = MlflowClient(mlflow_server)
    plots = {Path(f.path).name for f in client.list_artifacts(first.run_id, "plots")}
    assert plots == {"loss.png", "exact_match_by_task.png"}
    evals = {Path(f.path).name for f in client.list_artifacts(first.run_id, "eval")}
    assert {"base_generations.jsonl", "tuned_generations.jsonl", "generations_sample.md"} <= evals
    local = client.download_artifacts(first.run_id, "plots/loss.png", str(Path(first.run_dir)))
    assert Path(local).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = Path(client.download_artifacts(first.run_id, "summary.md", first.run_dir))
    text = summary.read_text()
    assert "| exact_match |" in text and "| rouge_l |" in text and "champion" in text


def test_better_chained_run_takes_champion_and_links_its_parent(runs, mlflow_server):
    from mlflow.tracking import MlflowClient

    first, _, chained, *_ = runs
    assert chained.tuned["exact_match"] > first.tuned["exact_match"]
    assert chained.registration.alias == "champion"
    assert "beats champion's" in chained.registration.reason
    client = MlflowClient(mlflow_server)
    version = client.get_model_version(MODEL, chained.registration.version)
    assert version.tags["tuneforge.parent_version"] == f"{MODEL}/{first.registration.version}"
    # Its base was the champion: the gate compared against exactly the base's scores.
    metrics = client.get_run(chained.run_id).data.metrics
    assert metrics["champion.exact_match"] == pytest.approx(chained.base["exact_match"])
    assert version.tags["tuneforge.base_model"] == f"models:/{MODEL}@champion"


def test_models_cli_lists_compares_rolls_back_and_promotes(runs, lora_run, mlflow_server):
    from typer.testing import CliRunner

    from tuneforge.cli import app

    first, weak, chained, *_ = runs
    cli = CliRunner()

    def call(*args: str) -> dict:
        done = cli.invoke(app, ["models", *args, "--tracking-uri", mlflow_server, "--json"])
        assert done.exit_code == 0, done.output
        return json.loads(done.output.strip().splitlines()[-1])

    shown_first = call("show", MODEL, first.registration.version)
    listed = {m["name"]: m for m in call("list")}
    assert listed[MODEL]["champion"] == chained.registration.version
    assert listed[MODEL]["champion_metrics"]["tuned.exact_match"] == pytest.approx(
        chained.tuned["exact_match"]
    )
    shown = call("show", MODEL)
    assert shown["version"] == chained.registration.version and "champion" in shown["aliases"]
    assert "MLmodel" in {Path(a).name for a in shown["artifacts"]}

    compared = call("compare", MODEL, first.registration.version, chained.registration.version)
    row = next(r for r in compared["metrics"] if r["metric"] == "tuned.exact_match")
    assert row["delta"] == pytest.approx(chained.tuned["exact_match"] - first.tuned["exact_match"])

    rolled = call("rollback", MODEL)
    assert (rolled["from"], rolled["champion"]) == (
        chained.registration.version,
        first.registration.version,
    )
    assert call("show", MODEL)["version"] == first.registration.version
    promoted = call("promote", MODEL, weak.registration.version)
    assert promoted["champion"] == weak.registration.version
    assert call("show", MODEL)["version"] == weak.registration.version

    # Every move of champion, automatic or by hand, with who and why.
    import getpass

    moves = [m for m in call("history", MODEL) if m["alias"] == "champion"]
    v1, v3, v2 = (r.registration.version for r in (first, chained, weak))
    assert [(m["from"], m["to"]) for m in moves] == [(None, v1), (v1, v3), (v3, v1), (v1, v2)]
    assert {m["by"] for m in moves} == {getpass.getuser()}
    assert moves[0]["why"] == shown_first["tags"]["tuneforge.decision"].removeprefix("champion: ")
    assert [m["why"] for m in moves[2:]] == [f"rolled back from version {v3}", "promoted by hand"]
    challenger = [m for m in call("history", MODEL) if m["alias"] == "challenger"]
    assert (None, weak.registration.version) in [(m["from"], m["to"]) for m in challenger]

    missing = cli.invoke(app, ["models", "show", "no-such-model", "--tracking-uri", mlflow_server])
    assert missing.exit_code == 2 and "no-such-model" in missing.output


def test_unchanged_data_and_config_skip_retraining(runs, mlflow_server):
    from mlflow.tracking import MlflowClient

    from tuneforge.flows.retrain import SkippedRun

    _, _, chained, _, again = runs
    assert isinstance(again, SkippedRun)
    assert f"version {chained.registration.version} (champion)" in again.reason
    assert again.version == chained.registration.version
    client = MlflowClient(mlflow_server)
    run = client.get_run(again.run_id)
    assert run.info.status == "FINISHED" and run.data.tags["tuneforge.skipped"] == again.reason
    assert "train.loss" not in run.data.metrics
    versions = client.search_model_versions(f"name='{MODEL}'")
    assert all(v.run_id != again.run_id for v in versions)


def test_versions_answer_in_a_fresh_process_after_their_workers_are_gone(
    runs, lora_run, mlflow_server
):
    """Last: after the models CLI test has moved the champion alias (the QLoRA version's base
    stays pinned by number), and with the QLoRA run's directory deleted."""
    import shutil

    from tuneforge.jsonl import read_jsonl

    first, *_ = runs
    eval_dir = Path(lora_run.split.eval_path).parent
    scored = read_jsonl(eval_dir / "tuned_scores.jsonl")[:4]
    by_row = {r["row"]: r for r in read_jsonl(lora_run.split.eval_path)}
    prompts = [{"messages": by_row[r["row"]]["messages"][:-1]} for r in scored]
    shutil.rmtree(lora_run.ctx.run_dir)  # what a worker's pod takes with it
    strings_and_records = [
        "Convert to uppercase.\n\nsalt",
        {"instruction": "Convert to uppercase.", "input": "salt"},
    ]
    full, qlora = _predict_in_a_fresh_process(
        mlflow_server,
        [
            (f"models:/{MODEL}/{first.registration.version}", strings_and_records),
            (f"models:/{MODEL}-lora/{lora_run.registration.version}", prompts),
        ],
    )
    assert full[0] == full[1] and full[0].strip()  # the same prompt either way
    # The base resolved through the registry, the adapter applied: evaluation's own answers.
    assert qlora == [r["answer"] for r in scored]
