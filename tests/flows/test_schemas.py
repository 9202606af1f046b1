"""Every dataset schema through a real `retrain` (Prefect test server, MLflow server over
HTTP): the file is recognised, trained on and registered, and the run records which schema
and columns it read. One format each; between them, every format (alpaca JSONL is what every
other flow test runs)."""

from __future__ import annotations

import pytest

from tests.conftest import NO_GATE, PRESET
from tests.test_data_schemas import as_schema, write_rows

pytestmark = pytest.mark.integration

CASES = {  # schema -> the format its file is written in
    "dolly": "parquet",
    "prompt_completion": "json",
    "openai": "hf",
    "sharegpt": "csv",
    "text": "jsonl",
}


@pytest.fixture(scope="module")
def runs(prefect_harness, mlflow_server, bundled_records, tmp_path_factory):
    from tuneforge.config import load_config
    from tuneforge.flows.retrain import retrain

    root = tmp_path_factory.mktemp("schemas")
    records = bundled_records[:120]
    done = {}
    for schema, fmt in CASES.items():
        path = write_rows(as_schema(schema, records), root / f"{schema}.{fmt}", fmt)
        config = load_config(
            PRESET,
            [
                f"name=schema-{schema}",
                f"data.path={path}",
                f"output_dir={root / 'out'}",
                f"tracking.tracking_uri={mlflow_server}",
                "tracking.experiment=schemas",
                f"registry.model_name=schema-{schema}",
                "registry.metric=eval_loss",
                "registry.higher_is_better=null",
                *NO_GATE,
                "train.steps=30",
                "train.eval_every=0",
                "evaluation.max_examples=8",
                # Raw text trains with continued pretraining: packed rows.
                *(["train.strategy=pretrain"] if schema == "text" else []),
            ],
        )
        done[schema] = retrain(config)
    return done


@pytest.mark.parametrize("schema", sorted(CASES))
def test_each_schema_is_recognised_trained_and_registered(runs, mlflow_server, schema):
    from mlflow.tracking import MlflowClient

    result = runs[schema]
    assert result.data.schema == schema
    assert result.data.valid == 120 and result.data.rejected == 0
    assert result.training.trained_tokens > 0
    assert result.tuned["eval_loss"] < result.base["eval_loss"]  # it learnt something
    client = MlflowClient(mlflow_server)
    version = client.get_model_version_by_alias(f"schema-{schema}", "champion")
    tag = client.get_run(version.run_id).data.tags["tuneforge.data_schema"]
    assert tag.startswith(f"{schema} (")


def test_raw_text_is_pretrained_in_packed_rows_and_scored_by_loss_alone(runs, mlflow_server):
    from mlflow.tracking import MlflowClient

    text = runs["text"]
    assert "exact_match" not in text.tuned and "perplexity" in text.tuned
    assert text.training.audit.masked_tokens == 0  # every token of the text is trained
    run = MlflowClient(mlflow_server).get_run(text.run_id)
    assert run.data.tags["tuneforge.strategy"] == "pretrain"
    # Packed: a step trains batch_size rows of nearly max_length tokens, where one document
    # (a ~40-token record) per example would give well under half that.
    cfg = run.data.params
    per_step = text.training.real_tokens / text.training.steps
    assert per_step > 0.85 * int(cfg["train.batch_size"]) * int(cfg["train.max_length"])
    assert "exact_match" in runs["openai"].tuned
