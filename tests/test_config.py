"""Run config: shipped presets validate, and every bad key fails with a one-line error naming it."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import PRESET, REPO
from tuneforge.config import ConfigError, load_config


@pytest.mark.parametrize("preset", sorted((REPO / "deployments" / "presets").glob("*.yaml")))
def test_every_shipped_preset_validates(preset: Path):
    cfg = load_config(preset)
    assert (REPO / cfg.data.path).exists()


def _error(tmp_path: Path, text: str, *overrides: str) -> str:
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path, list(overrides))
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(str(path))
    return message


MINIMAL = "data:\n  path: data/instructions.jsonl\n"


def test_minimal_config_takes_defaults(tmp_path: Path):
    path = tmp_path / "cfg.yaml"
    path.write_text(MINIMAL)
    cfg = load_config(path)
    assert cfg.train.strategy == "full" and cfg.model.source == "tiny"
    assert cfg.model.trust_remote_code is False


def test_unknown_key_is_named(tmp_path: Path):
    message = _error(tmp_path, MINIMAL + "train:\n  stepz: 5\n")
    assert "train.stepz: unknown key" in message


def test_bad_value_is_named(tmp_path: Path):
    assert "train.steps:" in _error(tmp_path, MINIMAL + "train:\n  steps: 0\n")
    assert "data.eval_fraction:" in _error(
        tmp_path, MINIMAL.replace("\n", "\n  eval_fraction: 2\n", 1)
    )
    assert "train.learning_rate:" in _error(tmp_path, MINIMAL + "train:\n  learning_rate: fast\n")


def test_fsdp_with_periodic_evaluation_is_refused(tmp_path: Path):
    settings = "train:\n  num_processes: 2\n  parallel: fsdp\n  checkpoint_every: 0\n"
    assert "train.checkpoint_every needs train.parallel=ddp" in _error(
        tmp_path, MINIMAL + "train:\n  num_processes: 2\n  parallel: fsdp\n"
    )
    settings += "  eval_every: 100\n"
    assert "train.eval_every needs train.parallel=ddp" in _error(tmp_path, MINIMAL + settings)
    assert "train.parallel:" in _error(tmp_path, MINIMAL + "train:\n  parallel: zero3\n")


def test_missing_required_key_is_named(tmp_path: Path):
    assert "data: Field required" in _error(tmp_path, "name: x\n")


def test_unknown_strategy_lists_available(tmp_path: Path):
    message = _error(tmp_path, MINIMAL + "train:\n  strategy: nope\n")
    assert "train.strategy:" in message and "'nope'" in message and "available: " in message
    assert "full" in message


def test_strategy_settings_are_checked_by_the_strategy(tmp_path: Path):
    message = _error(tmp_path, MINIMAL + "train:\n  settings:\n    rank: 8\n")
    assert "train.settings.rank: unknown key" in message
    message = _error(tmp_path, MINIMAL + "train:\n  settings:\n    gradient_checkpointing: true\n")
    assert "gradient_checkpointing is now train.gradient_checkpointing" in message
    bad = "train:\n  strategy: instruction\n  settings:\n    train_top_layers: maybe\n"
    assert "train.settings.train_top_layers:" in _error(tmp_path, MINIMAL + bad)


def test_overrides_apply_and_are_validated(tmp_path: Path):
    cfg = load_config(PRESET, ["train.steps=7", "model.tiny.seed=3", "data.holdout_tasks=[add]"])
    assert cfg.train.steps == 7 and cfg.model.tiny.seed == 3
    assert cfg.data.holdout_tasks == ["add"]
    with pytest.raises(ConfigError, match=r"train\.steps:"):
        load_config(PRESET, ["train.steps=-1"])
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        load_config(PRESET, ["train.steps"])


def test_invalid_yaml_and_missing_file(tmp_path: Path):
    assert "invalid YAML" in _error(tmp_path, "data: [unclosed\n")
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "absent.yaml")


def test_fingerprint_follows_content():
    a, b = load_config(PRESET), load_config(PRESET)
    assert a.fingerprint() == b.fingerprint()
    assert load_config(PRESET, ["train.steps=1"]).fingerprint() != a.fingerprint()
    # Where outputs go, the run's name and `force` do not change what is trained.
    same = load_config(
        PRESET, ["force=true", "name=x", "output_dir=/tmp/elsewhere", "data.path=/abs/copy.jsonl"]
    )
    assert same.fingerprint() == a.fingerprint()


def test_registry_metric_and_direction_are_checked(tmp_path: Path):
    assert "registry.metric: unknown metric 'bleu'" in _error(
        tmp_path, MINIMAL + "registry:\n  metric: bleu\n"
    )
    message = _error(
        tmp_path, MINIMAL + "registry:\n  metric: eval_loss\n  higher_is_better: true\n"
    )
    assert "registry:" in message and "lower eval_loss is better" in message
    path = tmp_path / "ok.yaml"
    path.write_text(MINIMAL + "registry:\n  metric: exact_match.held_out\n")
    with pytest.raises(ConfigError, match=r"needs data\.holdout_tasks"):
        load_config(path)
    assert load_config(path, ["data.holdout_tasks=[add]"]).registry.higher_wins is True
    path.write_text(MINIMAL + "registry:\n  metric: perplexity\n")
    assert load_config(path).registry.higher_wins is False


def test_qlora_without_bitsandbytes_is_refused_before_any_model_is_built(
    tmp_path: Path, monkeypatch
):
    import importlib.util

    text = MINIMAL + "train:\n  strategy: lora\n  settings:\n    quantize_4bit: true\n"
    path = tmp_path / "qlora.yaml"
    path.write_text(text)
    assert load_config(path).train.strategy_settings().quantize_4bit is True
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "bitsandbytes" else real(name)
    )
    message = _error(tmp_path, text)
    assert "train.settings: quantize_4bit (QLoRA) needs bitsandbytes" in message


LORA_PRESET = REPO / "deployments" / "presets" / "tiny-cpu-lora.yaml"


def test_switching_the_strategy_starts_from_its_defaults_and_says_so(caplog):
    caplog.set_level("INFO", logger="tuneforge.config")
    cfg = load_config(LORA_PRESET, ["train.strategy=full"])
    assert cfg.train.strategy == "full" and cfg.train.settings == {}
    assert cfg.train.strategy_settings().model_dump() == {}
    notes = [r.getMessage() for r in caplog.records if r.name == "tuneforge.config"]
    assert len(notes) == 1
    assert "train.strategy=full replaces the preset's lora" in notes[0]
    assert "alpha, dropout, rank, target_modules are dropped" in notes[0]


def test_settings_given_with_the_new_strategy_are_kept_and_only_they(caplog):
    caplog.set_level("INFO", logger="tuneforge.config")
    cfg = load_config(
        LORA_PRESET, ["train.strategy=instruction", "train.settings.train_top_layers=1"]
    )
    assert cfg.train.settings == {"train_top_layers": 1}  # not the preset's lora keys
    notes = [r.getMessage() for r in caplog.records if r.name == "tuneforge.config"]
    assert len(notes) == 1 and "alpha, dropout, rank, target_modules are dropped" in notes[0]
    # The same strategy again, or its own settings changed: nothing is dropped.
    same = load_config(LORA_PRESET, ["train.strategy=lora", "train.settings.rank=4"])
    assert same.train.settings["rank"] == 4 and same.train.settings["alpha"] == 16


def test_pretrain_is_for_raw_text_scored_by_loss(tmp_path: Path):
    pretrain = MINIMAL + "train:\n  strategy: pretrain\n"
    assert "use eval_loss or perplexity" in _error(tmp_path, pretrain)
    message = _error(tmp_path, pretrain, "registry.metric=perplexity", "data.schema=alpaca")
    assert "trains on raw text, and data.schema alpaca has prompt/response pairs" in message
    path = tmp_path / "ok.yaml"
    path.write_text(pretrain + "registry:\n  metric: perplexity\n")
    assert load_config(path).train.strategy == "pretrain"  # schema auto: the data decides


def test_evaluation_groups_and_tracking_tags_are_checked(tmp_path: Path):
    assert "group 'held_out'" in _error(
        tmp_path, MINIMAL + "evaluation:\n  groups: {held_out: [a]}\n"
    )
    assert "looks like a credential" in _error(
        tmp_path, MINIMAL + "tracking:\n  tags: {api_token: abcdefghijklmnopqrstuvwxyz123456}\n"
    )
