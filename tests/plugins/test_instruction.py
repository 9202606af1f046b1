"""`instruction` strategy: response-only loss, varied templates, top-N layer freezing."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tuneforge.batching import collate
from tuneforge.config import TrainConfig
from tuneforge.models import load_pretrained
from tuneforge.plugins import IGNORE_INDEX
from tuneforge.plugins.full import FullStrategy
from tuneforge.plugins.instruction import InstructionStrategy
from tuneforge.prompts import split_turns
from tuneforge.training.loop import train_model


def _strategy(**settings) -> InstructionStrategy:
    return InstructionStrategy(InstructionStrategy.Settings(**settings))


def test_prompt_tokens_are_masked_and_the_response_and_eos_are_trained(
    tiny_model_dir, bundled_records
):
    _, tokenizer = load_pretrained(tiny_model_dir)
    record = bundled_records[0]
    example = _strategy().build_example(record, tokenizer, max_length=128)
    response = tokenizer(split_turns(record)[1], add_special_tokens=False).input_ids
    trained = [label for label in example.labels if label != IGNORE_INDEX]
    assert trained == [*response, tokenizer.eos_token_id]
    n_prompt = len(example.labels) - len(trained)
    assert example.labels[:n_prompt] == [IGNORE_INDEX] * n_prompt


def test_loss_covers_response_tokens_only(tiny_model_dir, bundled_records):
    model, tokenizer = load_pretrained(tiny_model_dir)
    record = bundled_records[3]
    example = _strategy(templates=["{prompt}"]).build_example(record, tokenizer, 128)
    batch = collate([example], tokenizer.pad_token_id)
    with torch.no_grad():
        loss = model(**batch).loss
        logits = model(input_ids=batch["input_ids"]).logits[0, :-1]
    targets = batch["labels"][0, 1:]
    keep = targets != IGNORE_INDEX
    by_hand = torch.nn.functional.cross_entropy(logits[keep], targets[keep])
    assert torch.allclose(loss, by_hand, atol=1e-6)

    # No gradient reaches the logits of prompt positions: their labels cannot matter.
    logits = model(input_ids=batch["input_ids"]).logits.detach().requires_grad_(True)
    shifted = logits[0, :-1]
    torch.nn.functional.cross_entropy(
        shifted.reshape(-1, shifted.size(-1)), targets, ignore_index=IGNORE_INDEX
    ).backward()
    grad_per_position = logits.grad[0, :-1].abs().sum(-1)
    assert torch.all(grad_per_position[~keep] == 0)
    assert torch.all(grad_per_position[keep] > 0)

    full = FullStrategy(FullStrategy.Settings()).build_example(record, tokenizer, 128)
    with torch.no_grad():
        full_loss = model(**collate([full], tokenizer.pad_token_id)).loss
    assert not torch.allclose(loss, full_loss)  # the full strategy does score the prompt


def test_templates_vary_per_example_and_are_deterministic(bundled_records):
    strategy = _strategy()
    chosen = [strategy.template_for(r) for r in bundled_records[:200]]
    assert set(chosen) == set(strategy.settings.templates)
    assert chosen == [_strategy().template_for(r) for r in bundled_records[:200]]
    assert chosen != [_strategy(seed=1).template_for(r) for r in bundled_records[:200]]


def test_template_without_placeholder_is_refused():
    with pytest.raises(ValueError, match="no \\{prompt\\} placeholder"):
        InstructionStrategy.Settings(templates=["Answer this."])


def test_top_layer_training_leaves_the_rest_bit_identical(
    tiny_model_dir, bundled_records, tmp_path: Path
):
    cfg = TrainConfig(
        strategy="instruction",
        settings={"train_top_layers": 1},
        steps=2,
        batch_size=4,
        warmup_steps=0,
        max_length=64,
    )
    result = train_model(tiny_model_dir, bundled_records[:16], cfg, tmp_path)
    before = load_file(tiny_model_dir / "model.safetensors")
    after = load_file(tmp_path / "model.safetensors")
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    top = {k for k in before if k.startswith("model.layers.1.")} | {"model.norm.weight"}
    assert changed == top
    assert result.trainable_parameters == sum(before[k].numel() for k in top)
