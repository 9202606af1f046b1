"""Config fields describe themselves, and declare whether they shape training; the fingerprint
built from those declarations is the one the shipped presets have always had."""

from __future__ import annotations

from typing import Any, get_args

import pytest
from pydantic import BaseModel

from tests.conftest import PRESET, REPO
from tuneforge.config import (
    DataConfig,
    RunConfig,
    TrainConfig,
    fields_not_shaping,
    load_config,
)
from tuneforge.models import TinyModelConfig

PRESETS = REPO / "deployments" / "presets"


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """The pydantic models an annotation names, also inside `X | None`, `list[X]`, ..."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [model for arg in get_args(annotation) for model in _models_in(arg)]


def _config_models(root: type[BaseModel] = RunConfig) -> list[type[BaseModel]]:
    """`root` and every config section below it, each once."""
    found = [root]
    for field in root.model_fields.values():
        for model in _models_in(field.annotation):
            found += [m for m in _config_models(model) if m not in found]
    return found


def test_the_walk_reaches_every_section():
    names = {model.__name__ for model in _config_models()}
    assert {"RunConfig", "DataConfig", "ModelConfig", "TinyModelConfig", "TrainConfig"} <= names
    assert {"EvalConfig", "RegistryConfig", "TrackingConfig"} <= names


def _pipeline_and_sweep_files() -> list[type[BaseModel]]:
    from tuneforge.pipelines import PipelineSpec
    from tuneforge.sweeps import SweepSpec

    return [*_config_models(PipelineSpec), *_config_models(SweepSpec)]


@pytest.mark.parametrize(
    "models", [_config_models, _pipeline_and_sweep_files], ids=["run config", "pipeline, sweep"]
)
def test_every_config_field_has_a_description(models):
    undescribed = [
        f"{model.__name__}.{name}"
        for model in models()
        for name, field in model.model_fields.items()
        if not (field.description or "").strip()
    ]
    assert undescribed == [], "add Field(description=...) to: " + ", ".join(undescribed)


# The hand-kept list that the marks on the fields replace, as it was.
OLD_TRAIN_NOT_SHAPING = {
    "log_every",
    "num_threads",
    "checkpoint_every",
    "keep_checkpoints",
    "resume",
    "retries",
    "deployment",
    "num_processes",
    "num_nodes",
    "rendezvous",
    "parallel",
    "padding_free",
    "gradient_checkpointing",
    "loss_chunk_tokens",
    "concurrency_limit",
}


def test_training_fields_marked_not_shaping_are_the_old_list():
    assert fields_not_shaping(TrainConfig) == OLD_TRAIN_NOT_SHAPING


def test_volatile_run_and_data_fields_are_marked():
    assert fields_not_shaping(RunConfig) == {"name", "output_dir", "tracking", "force"}
    assert fields_not_shaping(DataConfig) == {"path", "hf_streaming"}
    assert fields_not_shaping(TinyModelConfig) == set()


def test_the_mark_shows_in_the_json_schema():
    train = RunConfig.model_json_schema()["$defs"]["TrainConfig"]["properties"]
    assert train["log_every"]["shapes_training"] is False
    assert "shapes_training" not in train["learning_rate"]


# Computed with the hand-kept exclusion list, before the fields carried their marks.
OVERRIDES = [
    "train.steps=7",
    "train.num_threads=1",
    "train.padding_free=false",
    "name=x",
    "train.log_every=3",
    "train.concurrency_limit=gpu",
]
GOLDEN = [
    ("tiny-cpu.yaml", [], "fae5931b855d98f7"),
    ("tiny-cpu.yaml", OVERRIDES, "2dad5d1a6004a1bf"),
    ("tiny-cpu-lora.yaml", [], "1190fee6f359945e"),
    ("qwen2.5-0.5b-lora-gpu.yaml", [], "7335f5711fd6e0d6"),
    ("flan-mini-pretrain.yaml", OVERRIDES, "ad6b30718e99ff7d"),
]


@pytest.mark.parametrize(("preset", "overrides", "expected"), GOLDEN)
def test_shipped_presets_keep_their_fingerprints(preset: str, overrides: list[str], expected):
    assert load_config(PRESETS / preset, overrides).fingerprint() == expected


def test_a_shaping_setting_changes_fingerprint_and_resume_key():
    base = load_config(PRESET)
    faster = load_config(PRESET, ["train.learning_rate=0.01"])
    assert faster.fingerprint() != base.fingerprint()
    assert faster.train.shaping_settings() != base.train.shaping_settings()
    assert faster.train.shaping_settings()["learning_rate"] == 0.01


@pytest.mark.parametrize("override", ["train.log_every=3", "train.num_threads=1"])
def test_a_marked_setting_changes_neither(override: str):
    base, changed = load_config(PRESET), load_config(PRESET, [override])
    assert changed.train != base.train
    assert changed.fingerprint() == base.fingerprint()
    assert changed.train.shaping_settings() == base.train.shaping_settings()


@pytest.mark.parametrize(
    "override",
    [
        "name=other",
        "output_dir=elsewhere",
        "force=true",
        "tracking.experiment=other",
        "data.path=data/elsewhere.jsonl",
    ],
)
def test_volatile_settings_leave_the_fingerprint(override: str):
    assert load_config(PRESET, [override]).fingerprint() == load_config(PRESET).fingerprint()


def test_shaping_settings_leave_out_exactly_the_marked_fields():
    settings = TrainConfig().shaping_settings()
    assert set(settings) == set(TrainConfig.model_fields) - OLD_TRAIN_NOT_SHAPING


def test_a_setting_added_later_changes_the_fingerprint_only_when_set():
    """data.replay shapes training but came after versions were registered: at its default it
    is left out, so their fingerprints (the golden ones above) still match."""
    parent = load_config(PRESET, ["model.source=models:/x/1"])
    assert load_config(PRESET, ["model.source=models:/x/1", "data.replay=0"]).fingerprint() == (
        parent.fingerprint()
    )
    replayed = load_config(PRESET, ["model.source=models:/x/1", "data.replay=0.5"])
    assert replayed.fingerprint() != parent.fingerprint()


def test_benchmarks_and_guards_judge_a_model_and_do_not_shape_it():
    suite = REPO / "deployments" / "benchmarks"
    guarded = load_config(
        PRESET,
        [
            f"evaluation.benchmarks={{lm_eval: {{path: {suite}}}}}",
            "registry.guards={bench.guard_antonym.acc: 0.1}",
        ],
    )
    assert guarded.fingerprint() == load_config(PRESET).fingerprint()
