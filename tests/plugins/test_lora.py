"""`lora` strategy: frozen base stays bit-identical, only adapters train, merge is exact."""

from __future__ import annotations

import math

import pytest
import torch
from safetensors.torch import load_file

from tuneforge.config import TrainConfig
from tuneforge.models import load_pretrained
from tuneforge.plugins.lora import LoraStrategy
from tuneforge.training.loop import train_model


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


def _run(tiny_model_dir, records, dtype: str, **settings):
    """A set-up LoRA training run on the tiny model, its loss logged at every step."""
    from tuneforge.training.loop import TrainingRun

    cfg = TrainConfig(
        strategy="lora",
        settings={"rank": 8, "dropout": 0.0, "target_modules": "all-linear", **settings},
        steps=30,
        batch_size=16,  # the whole set each step: the loss falls without sampling noise
        warmup_steps=0,
        learning_rate=0.05,
        max_length=64,
        log_every=1,
    )
    losses: list[float] = []

    def log(step: int, metrics: dict[str, float]) -> None:
        losses.append(metrics["train.loss"])

    run = TrainingRun(cfg, tiny_model_dir, False, log, dtype)
    run.setup(records, [])
    run.resume(None, records)
    return run, losses


def _falls(losses: list[float]) -> bool:
    """Finite and falling: on the random tiny base, LoRA takes the loss from about 6.0 to 5.6
    in 30 whole-set steps (it has little to adapt), well beyond the first steps' spread."""
    first, last = sum(losses[:4]) / 4, sum(losses[-4:]) / 4
    return all(math.isfinite(x) for x in losses) and last < first - 0.2


def test_bfloat16_base_stays_bfloat16_and_the_adapters_train_in_float32(
    tiny_model_dir, bundled_records
):
    run, losses = _run(tiny_model_dir, bundled_records[:16], "bfloat16")
    params = dict(run.core.named_parameters())
    trained = {n for n, p in params.items() if p.requires_grad}
    assert trained and all("lora_" in n for n in trained)
    assert {params[n].dtype for n in trained} == {torch.float32}
    assert {p.dtype for n, p in params.items() if n not in trained} == {torch.bfloat16}
    run.train()
    assert _falls(losses), losses


def test_qlora_trains_adapters_on_an_unchanged_4bit_base(tiny_model_dir, bundled_records):
    import bitsandbytes as bnb

    run, losses = _run(tiny_model_dir, bundled_records[:16], "float32", quantize_4bit=True)
    quantized = {n: m for n, m in run.core.named_modules() if isinstance(m, bnb.nn.Linear4bit)}
    assert len(quantized) == 2 * 7  # every linear layer of both decoder layers, not the head
    before = {n: m.weight.data.clone() for n, m in quantized.items()}
    assert all(m.weight.quant_state.nested for m in quantized.values())  # double quantisation
    trained = {n for n, p in run.core.named_parameters() if p.requires_grad}
    assert trained and all("lora_" in n for n in trained)
    run.train()
    assert _falls(losses), losses
    for name, module in quantized.items():
        assert module.weight.dtype == torch.uint8 and torch.equal(module.weight.data, before[name])


def test_qlora_without_bitsandbytes_is_refused_naming_the_extra(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "bitsandbytes" else real(name)
    )
    with pytest.raises(ValueError, match=r"pip install 'tuneforge\[qlora\]'"):
        LoraStrategy.Settings(quantize_4bit=True)


def test_settings_are_checked():
    with pytest.raises(ValueError, match="rank"):
        LoraStrategy.Settings(rank=0)
    with pytest.raises(ValueError, match="alpah"):
        LoraStrategy.Settings(alpah=3)
