"""The GPU preset a user copies for a real model, run as shipped (bar sizes) on the CPU: a real
`retrain` of `deployments/presets/qwen2.5-0.5b-qlora-gpu.yaml` whose hub base,
`Qwen/Qwen2.5-0.5B-Instruct`, resolves offline (HF_HUB_OFFLINE=1) from a Hugging Face cache
holding a random checkpoint with Qwen2.5's vocabulary and chat format (ChatML), at two small
layers so that it runs in seconds. Exercises together: a hub id through the cache, a bfloat16
base in 4 bits (QLoRA), gradient checkpointing, the chunked output head at a 151,936-token
vocabulary, padding-free batches, a chat template, and a version that records its base as
the hub id at its commit."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import BUNDLED_DATA, NO_GATE, REPO, cache_hub_checkpoint, qwen2_checkpoint

pytestmark = pytest.mark.integration

PRESET = REPO / "deployments" / "presets" / "qwen2.5-0.5b-qlora-gpu.yaml"
HUB_ID = "Qwen/Qwen2.5-0.5B-Instruct"


def test_qlora_gpu_preset_trains_and_registers_from_an_offline_cache(
    prefect_harness, mlflow_server, bundled_records, tmp_path
):
    from mlflow.tracking import MlflowClient

    from tuneforge.config import load_config
    from tuneforge.flows.retrain import retrain

    checkpoint = qwen2_checkpoint(tmp_path / "random-qwen", bundled_records)
    snapshot = cache_hub_checkpoint(checkpoint, HUB_ID, commit="c3" * 20)
    config = load_config(
        PRESET,
        [
            f"data.path={BUNDLED_DATA}",
            f"output_dir={tmp_path / 'runs'}",
            f"tracking.tracking_uri={mlflow_server}",
            "tracking.experiment=gpu-preset",
            # Sizes for two CPU cores; everything else as shipped.
            "train.steps=3",
            "train.batch_size=4",
            "train.eval_every=0",
            "evaluation.max_examples=8",
            "evaluation.max_new_tokens=4",
            *NO_GATE,
        ],
    )
    assert config.model.source == HUB_ID and config.model.dtype == "bfloat16"
    assert config.train.gradient_checkpointing and config.train.strategy_settings().quantize_4bit
    result = retrain(config)

    client = MlflowClient(mlflow_server)
    run = client.get_run(result.run_id)
    assert run.data.tags["tuneforge.batches"] == "padding-free"
    assert run.data.metrics["train.peak_rss_mb"] > 0
    assert run.data.metrics["train.trainable_fraction"] < 0.5
    assert result.registration.name == "qwen2.5-0.5b-qlora"
    manifest = json.loads(
        Path(
            client.download_artifacts(result.run_id, "model/artifacts/tuneforge_model.json")
        ).read_text()
    )
    assert manifest["base"] == f"hf://{HUB_ID}@{snapshot.name}"  # the commit, not "main"
    assert manifest["dtype"] == "bfloat16"
