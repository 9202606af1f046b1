"""Model sources: the tiny builder, local checkpoints, and clear errors for bad sources."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.conftest import cache_hub_checkpoint
from tuneforge.config import ModelConfig
from tuneforge.models import ModelSourceError, TinyModelConfig, build_tiny_model, load_pretrained
from tuneforge.tasks.model_source import resolve_model_dir

SMALL = TinyModelConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64)


def test_tiny_model_is_deterministic_for_a_seed(bundled_records, tmp_path: Path):
    records = bundled_records[:200]
    a = build_tiny_model(SMALL, records, tmp_path / "a")
    b = build_tiny_model(SMALL, records, tmp_path / "b")
    c = build_tiny_model(SMALL.model_copy(update={"seed": 1}), records, tmp_path / "c")
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    assert (a / "model.safetensors").read_bytes() != (c / "model.safetensors").read_bytes()
    assert not list(a.glob("*.bin")), "weights must be safetensors only"


def test_tiny_model_loads_through_from_pretrained(tiny_model_dir: Path):
    model, tokenizer = load_pretrained(tiny_model_dir)
    assert model.config.model_type == "llama"
    assert model.config.vocab_size == len(tokenizer) <= 384
    assert {tokenizer.pad_token, tokenizer.eos_token} == {"<pad>", "</s>"}
    # Byte-level BPE: any text round-trips, even characters never seen in training.
    text = "Ünïcödé ✓ 123 {json}"
    assert tokenizer.decode(tokenizer(text).input_ids) == text


def test_local_directory_is_used_in_place(tiny_model_dir: Path, tmp_path: Path):
    cfg = ModelConfig(source=str(tiny_model_dir))
    assert resolve_model_dir(cfg, [], tmp_path) == tiny_model_dir.resolve()


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("./no/such/model", "no such model directory"),
        ("/abs/missing", "no such model directory"),
        ("not-a-hub-id/with/three", "no such model directory"),
        ("someorg/somemodel", "cannot fetch from the hub"),  # HF_HUB_OFFLINE=1 in tests
    ],
)
def test_unresolvable_sources_fail_with_one_line(source: str, message: str, tmp_path: Path):
    with pytest.raises(ModelSourceError) as info:
        resolve_model_dir(ModelConfig(source=source), [], tmp_path)
    assert message in str(info.value) and source in str(info.value)
    assert "\n" not in str(info.value)


def test_directory_without_config_is_refused(tmp_path: Path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelSourceError, match=r"no config\.json"):
        resolve_model_dir(ModelConfig(source=str(tmp_path / "empty")), [], tmp_path)


def test_corrupt_weights_fail_with_a_clear_error(tiny_model_dir: Path, tmp_path: Path):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_model_dir, broken)
    (broken / "model.safetensors").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(ModelSourceError, match="cannot load model"):
        load_pretrained(broken)


def test_unknown_registry_model_fails_with_one_line(tmp_path: Path):
    with pytest.raises(ModelSourceError) as info:
        resolve_model_dir(ModelConfig(source="models:/never-registered@champion"), [], tmp_path)
    assert "models:/never-registered@champion" in str(info.value)
    assert "\n" not in str(info.value)


def test_hub_id_resolves_offline_from_the_cache(tiny_model_dir: Path, tmp_path: Path):
    from huggingface_hub import scan_cache_dir

    snapshot = cache_hub_checkpoint(tiny_model_dir, "tuneforge-test/tiny")
    cached = {r.repo_id: r for r in scan_cache_dir().repos}  # the hub library reads it as its own
    assert {rev.commit_hash for rev in cached["tuneforge-test/tiny"].revisions} == {snapshot.name}

    found = resolve_model_dir(ModelConfig(source="tuneforge-test/tiny"), [], tmp_path)
    assert found == snapshot
    pinned = ModelConfig(source="tuneforge-test/tiny", revision=snapshot.name)
    assert resolve_model_dir(pinned, [], tmp_path) == snapshot
    model, _ = load_pretrained(found)
    assert model.config.model_type == "llama"


def test_hub_id_missing_from_the_cache_fails_naming_it_and_the_cache(tmp_path: Path):
    from huggingface_hub import constants

    with pytest.raises(ModelSourceError) as info:
        resolve_model_dir(ModelConfig(source="tuneforge-test/absent"), [], tmp_path)
    message = str(info.value)
    assert message.startswith("tuneforge-test/absent: cannot fetch from the hub")
    assert f"cache {constants.HF_HUB_CACHE}; HF_HUB_OFFLINE=1" in message and "\n" not in message
