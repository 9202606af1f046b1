"""Preference training in the loop (tuneforge/training/preference.py): the loss's gradient is
the true gradient, padding-free and padded batches agree, the reference stays the base, only
answer tokens count, and too-long pairs are quarantined with their reason."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tuneforge.batching import IGNORE_INDEX, collate
from tuneforge.config import TrainConfig
from tuneforge.models import load_pretrained
from tuneforge.plugins.discovery import strategy_info
from tuneforge.plugins.preference import completion_logps
from tuneforge.plugins.testing import sample_feedback_records, sample_preference_records
from tuneforge.training import padding_free
from tuneforge.training.loop import too_long_path, train_model
from tuneforge.training.preference import PreferenceObjective


def _strategy(name: str, **settings):
    info = strategy_info(name)
    return info.cls(info.cls.Settings(**settings))


@pytest.fixture(scope="module")
def pairs() -> list[dict]:
    return sample_preference_records(24)


@pytest.fixture(scope="module")
def base(tiny_model_dir: Path):
    model, tokenizer = load_pretrained(tiny_model_dir)
    return model.eval(), tokenizer


def _flat(examples):
    return padding_free.collate_flat(examples)


def _padded(tokenizer):
    return lambda examples: collate(examples, tokenizer.pad_token_id)


def test_padding_free_and_padded_batches_give_the_same_log_probabilities(base, pairs):
    model, tokenizer = base
    objective = PreferenceObjective(_strategy("dpo"), pairs, tokenizer, 96)
    examples = objective.examples[:16]
    with torch.no_grad():
        padded, n_padded = completion_logps(model, _padded(tokenizer)(examples), 8)
        with padding_free.attention(model):
            flat, n_flat = completion_logps(model, _flat(examples), 8)
    assert torch.equal(n_padded, n_flat)
    # Answer tokens only: each count is the example's trained labels after the first.
    trained = [sum(y != IGNORE_INDEX for y in e.labels[1:]) for e in examples]
    assert n_padded.flatten().tolist() == trained
    torch.testing.assert_close(flat, padded, rtol=1e-5, atol=1e-4)
    assert (padded < 0).all()


@pytest.mark.parametrize(
    ("name", "settings", "records"),
    [
        ("dpo", {}, "pairs"),
        ("dpo", {"loss_type": "ipo"}, "pairs"),
        ("simpo", {}, "pairs"),
        # Not kto: its KL reference point is held out of the gradient on purpose (a stop-
        # gradient), so finite differences, which move it, measure another function.
    ],
)
def test_the_step_loss_gradient_matches_finite_differences(
    tiny_model_dir, pairs, name, settings, records
):
    """In float64, autograd's gradient of the step loss equals central differences on a few
    weights, reference included (full weights: precomputed from the base before the step):
    the loss, its log-probabilities over the answer tokens and their sums are differentiated
    correctly."""
    model, tokenizer = load_pretrained(tiny_model_dir)
    model = model.double().eval()
    strategy = _strategy(name, **settings)
    data = pairs if records == "pairs" else sample_feedback_records(24)
    objective = PreferenceObjective(strategy, data, tokenizer, 96)
    device = torch.device("cpu")
    collate_fn = _padded(tokenizer)
    objective.precompute_reference(model, collate_fn, device)
    # Move the model off the reference, so log-ratios are not all zero.
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    units = list(range(6))

    def loss() -> torch.Tensor:
        value, _, _ = objective.step_loss(model, model, units, len(units), collate_fn, device, 1)
        return value

    # The final norm's weight: everything after it runs in float64 (Llama's RMSNorm computes
    # the normalisation itself in float32, which would drown a finite difference upstream).
    weight = model.model.norm.weight
    loss().backward()
    for index in [(0,), (5,), (17,)]:
        eps = 1e-6
        with torch.no_grad():
            weight[index] += eps
            up = loss().item()
            weight[index] -= 2 * eps
            down = loss().item()
            weight[index] += eps
        numeric = (up - down) / (2 * eps)
        assert weight.grad[index].item() == pytest.approx(numeric, rel=1e-4, abs=1e-9)


def test_lora_reference_is_the_base_with_adapters_off_and_the_base_never_moves(
    tiny_model_dir, pairs, tmp_path
):
    cfg = TrainConfig(
        strategy="dpo",
        settings={"lora": {"rank": 4}},
        steps=6,
        batch_size=4,
        max_length=96,
        learning_rate=5e-3,
        warmup_steps=0,
        num_threads=2,
    )
    out = tmp_path / "tuned"
    result = train_model(tiny_model_dir, pairs, cfg, out)
    base, tokenizer = load_pretrained(tiny_model_dir)
    tuned, _ = load_pretrained(out)  # base + the saved adapter
    assert (out / "adapter_model.safetensors").exists() and not (out / "config.json").exists()
    frozen = {n: p for n, p in tuned.named_parameters() if "lora_" not in n}
    base_params = dict(base.named_parameters())
    for name, param in frozen.items():
        plain = name.replace("base_model.model.", "").replace(".base_layer", "")
        assert torch.equal(param, base_params[plain]), name
    objective = PreferenceObjective(_strategy("dpo"), pairs, tokenizer, 96)
    batch = _padded(tokenizer)(objective.examples[:8])
    with torch.no_grad():
        with tuned.disable_adapter():
            off = completion_logps(tuned.eval(), batch, 4)[0]
        on = completion_logps(tuned, batch, 4)[0]
        plain = completion_logps(base.eval(), batch, 4)[0]
    torch.testing.assert_close(off, plain)
    assert not torch.allclose(on, plain)  # the adapter learned something
    assert result.audit.trained_tokens < result.audit.masked_tokens  # answers only


def test_full_weights_precompute_the_reference_once_from_the_base(tiny_model_dir, pairs, base):
    model, tokenizer = base
    objective = PreferenceObjective(_strategy("dpo"), pairs, tokenizer, 96)
    objective.precompute_reference(model, _padded(tokenizer), torch.device("cpu"))
    assert objective.reference.shape == (len(pairs), 2)
    with torch.no_grad():
        first = completion_logps(model, _padded(tokenizer)(objective.examples[:8]), 4)[0]
    torch.testing.assert_close(objective.reference[:4], first)
    simpo = PreferenceObjective(_strategy("simpo"), pairs, tokenizer, 96)
    simpo.precompute_reference(model, _padded(tokenizer), torch.device("cpu"))
    assert simpo.reference is None  # no reference model at all


def test_pairs_longer_than_max_length_are_left_out_with_their_reason(
    tiny_model_dir, pairs, tmp_path
):
    long = {**pairs[0], "row": 999, "rejected": "word " * 80}
    cfg = TrainConfig(strategy="dpo", steps=2, batch_size=4, max_length=64, num_threads=2)
    out = tmp_path / "tuned"
    result = train_model(tiny_model_dir, [*pairs, long], cfg, out)
    assert result.too_long == 1
    entries = [json.loads(line) for line in too_long_path(out).read_text().splitlines()]
    assert [(e["row"], e["reason"]) for e in entries] == [
        (999, "the chosen or rejected answer does not fit train.max_length=64 tokens")
    ]
    assert result.audit.examples == 2 * len(pairs)  # both answers of every pair that fit


def test_a_kto_unit_pairs_each_answer_with_another_rows_answer(base):
    _, tokenizer = base
    feedback = sample_feedback_records(12)
    objective = PreferenceObjective(_strategy("kto"), feedback, tokenizer, 96)
    assert objective.labels.tolist() == [r["label"] for r in feedback]
    assert {True, False} == set(objective.labels.tolist())
    for i in range(len(feedback)):
        rated, other = objective.examples[2 * i], objective.examples[2 * i + 1]
        start = next(k for k, y in enumerate(rated.labels) if y != IGNORE_INDEX)
        assert other.input_ids[:start] == rated.input_ids[:start]  # the same prompt
        assert other.input_ids[start:] != rated.input_ids[start:]  # someone else's answer


@pytest.mark.parametrize(
    ("strategy", "records", "message"),
    [
        (
            "dpo",
            "chat",
            "'dpo' .* trains on preference pairs .*, and these rows are "
            "prompt/response records; use full, instruction or lora",
        ),
        (
            "instruction",
            "pairs",
            "'instruction' .* and these rows are preference pairs .*; use dpo or simpo",
        ),
        ("kto", "pairs", "'kto' .* trains on good/bad feedback .*; use dpo or simpo"),
    ],
)
def test_the_loop_refuses_data_the_strategy_does_not_train(
    tiny_model_dir, pairs, bundled_records, tmp_path, strategy, records, message
):
    data = {"chat": bundled_records[:16], "pairs": pairs}[records]
    cfg = TrainConfig(strategy=strategy, steps=1, batch_size=4, max_length=96)
    with pytest.raises(ValueError, match=message):
        train_model(tiny_model_dir, data, cfg, tmp_path / "out")
