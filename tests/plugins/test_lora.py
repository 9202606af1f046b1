"""`lora` strategy: frozen base stays bit-identical, only adapters train, merge is exact."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from tuneforge.config import TrainConfig
from tuneforge.models import load_pretrained
from tuneforge.plugins.lora import LoraStrategy
from tuneforge.tasks.train import train_model


@pytest.fixture(scope="module")
def lora_run(tiny_model_dir, bundled_records, tmp_path_factory):
    out = tmp_path_factory.mktemp("lora")
    cfg = TrainConfig(
        strategy="lora",
        settings={"rank": 4, "merge_export": True, "dropout": 0.0},
        steps=3,
        batch_size=4,
        warmup_steps=0,
        learning_rate=0.01,
        max_length=64,
    )
    return train_model(tiny_model_dir, bundled_records[:16], cfg, out), out


def test_only_adapter_weights_train_and_the_base_is_untouched(tiny_model_dir, lora_run):
    result, out = lora_run
    assert (out / "adapter_model.safetensors").exists()
    assert not (out / "model.safetensors").exists(), "the adapter is saved alone"
    adapter = load_file(out / "adapter_model.safetensors")
    assert adapter and all("lora_" in k for k in adapter)
    assert any(k.endswith("lora_B.weight") and v.abs().sum() > 0 for k, v in adapter.items())
    assert 0 < result.trainable_parameters / result.total_parameters < 0.1

    # The base on disk is unchanged, and the base inside the trained model too.
    model, _ = load_pretrained(out)
    base = load_file(tiny_model_dir / "model.safetensors")
    inside = {
        k.removeprefix("base_model.model.").replace(".base_layer", ""): v
        for k, v in model.state_dict().items()
        if "lora_" not in k
    }
    for key, value in base.items():
        assert torch.equal(inside[key], value), key


def test_merged_export_matches_base_plus_adapter(lora_run, bundled_records):
    _, out = lora_run
    adapted, tokenizer = load_pretrained(out)
    merged, _ = load_pretrained(out / "merged")
    ids = tokenizer("### Instruction:\nWhat is the sum?\n\n3 + 4", return_tensors="pt").input_ids
    with torch.no_grad():
        a, b = adapted(input_ids=ids).logits, merged(input_ids=ids).logits
    assert torch.allclose(a, b, atol=1e-5)


def test_default_targets_are_the_attention_projections(tiny_model_dir, lora_run):
    _, out = lora_run
    model, _ = load_pretrained(out)
    targets = set(model.peft_config["default"].target_modules)
    assert targets == {"q_proj", "k_proj", "v_proj", "o_proj"}


def test_qlora_is_refused_when_the_config_is_validated():
    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present")
    with pytest.raises(ValueError, match="needs a CUDA GPU"):
        LoraStrategy.Settings(quantize_4bit=True)


def test_settings_are_checked():
    with pytest.raises(ValueError, match="rank"):
        LoraStrategy.Settings(rank=0)
    with pytest.raises(ValueError, match="alpah"):
        LoraStrategy.Settings(alpah=3)
