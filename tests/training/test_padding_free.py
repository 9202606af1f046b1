"""Padding-free batches compute the same loss and gradients as padded ones, on real models."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import transformers

from tuneforge.batching import IGNORE_INDEX, Example, collate
from tuneforge.config import TrainConfig
from tuneforge.plugins.lora import LoraSettings, LoraStrategy
from tuneforge.training import padding_free
from tuneforge.training.loop import train_model
from tuneforge.training.losses import token_mean_loss

VOCAB = 96
PAD = 0


def _examples(lengths: list[int], prompt: int = 3) -> list[Example]:
    generator = torch.Generator().manual_seed(len(lengths))
    out = []
    for n in lengths:
        ids = torch.randint(1, VOCAB, (n,), generator=generator).tolist()
        out.append(Example(ids, [IGNORE_INDEX] * min(prompt, n - 1) + ids[min(prompt, n - 1) :]))
    return out


def test_collate_flat_lays_examples_end_to_end():
    a, b = Example([5, 6, 7], [IGNORE_INDEX, 6, 7]), Example([8, 9], [8, 9])
    batch = padding_free.collate_flat([a, b])
    assert batch["input_ids"].tolist() == [[5, 6, 7, 8, 9]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1]]
    # b's first token is the target of a's last one: never trained (nor in a padded batch).
    assert batch["labels"].tolist() == [[IGNORE_INDEX, 6, 7, IGNORE_INDEX, 9]]
    assert batch["tuneforge_slots"].tolist() == [0, 1, 2, 3, 4]  # a -> row 0, b -> row 1
    assert batch["tuneforge_shape"] == (2, 3)


def test_collate_flat_rounds_the_row_up_with_an_untrained_example():
    a, b = Example([5, 6, 7], [IGNORE_INDEX, 6, 7]), Example([8, 9], [8, 9])
    batch = padding_free.collate_flat([a, b], multiple=8, pad_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7, 8, 9, 0, 0, 0]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1, 0, 1, 2]]
    assert batch["labels"].tolist() == [[IGNORE_INDEX, 6, 7, IGNORE_INDEX, 9, *[IGNORE_INDEX] * 3]]
    assert batch["tuneforge_shape"] == (3, 3)  # the filler is a row of its own
    assert padding_free.collate_flat([a, b], multiple=5)["input_ids"].shape == (1, 5)


# Different attention layouts: plain multi-head, grouped-query (fewer key/value heads),
# a learned-position model (GPT-2), and a sliding window wider than the examples.
ARCHITECTURES = {
    "llama": lambda: transformers.LlamaConfig(num_attention_heads=4, num_key_value_heads=4),
    "llama-gqa": lambda: transformers.LlamaConfig(num_attention_heads=4, num_key_value_heads=2),
    "qwen2": lambda: transformers.Qwen2Config(num_attention_heads=4, num_key_value_heads=2),
    "mistral-window": lambda: transformers.MistralConfig(
        num_attention_heads=4, num_key_value_heads=4, sliding_window=64
    ),
    "gpt2": lambda: transformers.GPT2Config(n_embd=32, n_layer=2, n_head=4, n_positions=64),
    "qwen3": lambda: transformers.Qwen3Config(
        num_attention_heads=4, num_key_value_heads=2, head_dim=8
    ),
    "phi3": lambda: transformers.Phi3Config(num_attention_heads=4, num_key_value_heads=4),
    "gemma": lambda: transformers.GemmaConfig(
        num_attention_heads=4, num_key_value_heads=1, head_dim=8
    ),
}


def _model(kind: str) -> torch.nn.Module:
    config = ARCHITECTURES[kind]()
    if kind != "gpt2":
        config.update(
            {
                "hidden_size": 32,
                "intermediate_size": 64,
                "num_hidden_layers": 2,
                "max_position_embeddings": 64,
            }
        )
    config.update({"vocab_size": VOCAB, "pad_token_id": PAD})
    torch.manual_seed(0)
    return transformers.AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")


def _loss_and_grads(model, batch, chunk: int = 0) -> tuple[float, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    loss, value = token_mean_loss(model, batch, world=1, chunk=chunk)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return value, grads


@pytest.mark.parametrize(
    "kind, multiple", [(kind, 1) for kind in sorted(ARCHITECTURES)] + [("llama-gqa", 16)]
)
def test_padding_free_loss_and_gradients_equal_padded(kind, multiple):
    model = _model(kind).eval()  # eval: no dropout, so both passes see the same network
    examples = _examples([9, 3, 17, 12, 5])  # uneven: the padded batch is 47% padding
    assert padding_free.unsupported_reason(model, max_length=32) is None

    padded_loss, padded = _loss_and_grads(model, collate(examples, PAD))
    with padding_free.attention(model):
        flat = padding_free.collate_flat(examples, multiple, PAD)
        flat_loss, flat = _loss_and_grads(model, flat)

    assert flat_loss == pytest.approx(padded_loss, rel=1e-6)
    assert flat.keys() == padded.keys() and len(flat) == len(list(model.parameters()))
    for name in padded:
        torch.testing.assert_close(flat[name], padded[name], rtol=1e-4, atol=1e-6, msg=name)


def _lora_llama() -> torch.nn.Module:
    """The llama model with LoRA adapters whose B is not zero (at zero, A's gradient would be
    zero whatever the batch), in eval mode."""
    model = LoraStrategy(LoraSettings(dropout=0.0)).prepare_model(_model("llama"))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.1)
    return model.eval()


def test_padding_free_lora_gradients_equal_padded():
    model = _lora_llama()
    examples = _examples([11, 4, 20, 7])
    padded_loss, padded = _loss_and_grads(model, collate(examples, PAD))
    with padding_free.attention(model):
        flat_loss, flat = _loss_and_grads(model, padding_free.collate_flat(examples))
    assert flat_loss == pytest.approx(padded_loss, rel=1e-6)
    assert padded and all("lora_" in name for name in padded)
    for name in padded:
        torch.testing.assert_close(flat[name], padded[name], rtol=1e-4, atol=1e-6, msg=name)


def test_evaluation_inside_the_swap_is_plain_sdpa():
    """Periodic evaluation generates while the padding-free attention is swapped in: padded
    generation must give the same tokens as with the model's own attention."""
    model = _model("llama").eval()
    prompts = torch.tensor([[PAD, PAD, 5, 6, 7], [8, 9, 10, 11, 12]])  # left-padded, as generate
    mask = (prompts != PAD).long()
    kwargs = {"max_new_tokens": 6, "do_sample": False, "pad_token_id": PAD}
    plain = model.generate(prompts, attention_mask=mask, **kwargs)
    with padding_free.attention(model):
        assert model.config._attn_implementation == padding_free.ATTENTION
        swapped = model.generate(prompts, attention_mask=mask, **kwargs)
    assert model.config._attn_implementation == "sdpa"  # restored
    assert torch.equal(plain, swapped)


class CustomLlama(transformers.LlamaForCausalLM):
    """Stands for remote model code (`trust_remote_code`): not transformers' own module."""


def test_models_that_cannot_train_padding_free_say_why(monkeypatch):
    narrow = transformers.MistralConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=4,
        vocab_size=VOCAB,
        sliding_window=16,
    )
    model = transformers.AutoModelForCausalLM.from_config(narrow, attn_implementation="sdpa")
    assert "sliding attention window (16)" in padding_free.unsupported_reason(model, 32)
    assert padding_free.unsupported_reason(model, 16) is None
    eager = _model("llama")
    eager.set_attn_implementation("eager")
    assert padding_free.unsupported_reason(eager, 32) is None  # eager and sdpa both qualify
    flash = _model("llama")
    flash.config._attn_implementation_internal = "flash_attention_2"
    assert "'flash_attention_2' was chosen" in padding_free.unsupported_reason(flash, 32)

    custom = CustomLlama(_model("llama").config)
    assert "custom model code" in padding_free.unsupported_reason(custom, 32)
    assert not padding_free.takes_logits_to_keep(custom)  # nor the boolean logits_to_keep
    opt = transformers.OPTConfig(
        hidden_size=32,
        ffn_dim=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        vocab_size=VOCAB,
        word_embed_proj_dim=32,
    )
    opt_model = transformers.AutoModelForCausalLM.from_config(opt)
    assert "'opt' is not verified" in padding_free.unsupported_reason(opt_model, 32)

    # transformers' own check that a class can swap its attention implementation says no.
    llama = _model("llama")
    monkeypatch.setattr(
        transformers.LlamaForCausalLM,
        "_can_set_attn_implementation_cached_value",
        False,
        raising=False,
    )
    assert "cannot swap its attention" in padding_free.unsupported_reason(llama, 32)


def test_the_swap_is_undone_on_errors_and_refused_when_it_does_not_take(monkeypatch):
    model = _model("llama")
    with pytest.raises(KeyError), padding_free.attention(model):
        assert model.config._attn_implementation == padding_free.ATTENTION
        raise KeyError("a step failed")
    assert model.config._attn_implementation == "sdpa"
    # If transformers declines the swap (it only logs a warning), attention would run across
    # the examples of a row: training must stop instead.
    monkeypatch.setattr(type(model), "set_attn_implementation", lambda self, name: None)
    with pytest.raises(RuntimeError, match="did not take"), padding_free.attention(model):
        pass


def _train(model_dir: Path, records: list[dict], out: Path, **kw):
    cfg = TrainConfig(steps=6, batch_size=8, warmup_steps=0, log_every=1, max_length=128, **kw)
    logged: list[float] = []
    result = train_model(
        model_dir, records, cfg, out, on_metrics=lambda s, m: logged.append(m["train.loss"])
    )
    return result, logged


@pytest.mark.parametrize("strategy", ["instruction", "lora"])
def test_training_padding_free_follows_the_padded_run(
    strategy, tiny_model_dir, bundled_records, tmp_path
):
    settings = {"dropout": 0.0} if strategy == "lora" else {}
    records = bundled_records[:48]
    flat, flat_losses = _train(
        tiny_model_dir, records, tmp_path / "flat", strategy=strategy, settings=settings
    )
    padded, padded_losses = _train(
        tiny_model_dir,
        records,
        tmp_path / "padded",
        strategy=strategy,
        settings=settings,
        padding_free=False,
    )
    assert flat.batches == "padding-free"
    assert padded.batches == "padded: train.padding_free is off"
    assert flat.real_tokens == padded.real_tokens
    assert flat_losses == pytest.approx(padded_losses, rel=1e-4)
    assert flat_losses[-1] < flat_losses[0]


@pytest.mark.parametrize("kind", [*sorted(ARCHITECTURES), "lora"])
def test_a_chunked_output_head_gives_the_same_loss_and_gradients(kind):
    from tuneforge.training.chunked_head import chunk_unsupported

    model = _lora_llama() if kind == "lora" else _model(kind).eval()
    assert chunk_unsupported(model) is None
    examples = _examples([9, 3, 17, 12, 5])  # 36 trained tokens: 9 chunks of 4
    for batch in (collate(examples, PAD), padding_free.collate_flat(examples)):
        with padding_free.attention(model):
            whole_loss, whole = _loss_and_grads(model, batch)
            chunked_loss, chunked = _loss_and_grads(model, batch, chunk=4)
        assert chunked_loss == pytest.approx(whole_loss, rel=1e-6)
        assert chunked.keys() == whole.keys()
        for name in whole:
            torch.testing.assert_close(chunked[name], whole[name], rtol=1e-4, atol=1e-6, msg=name)


def test_heads_that_scale_their_logits_are_not_chunked():
    from tuneforge.training.chunked_head import chunk_unsupported

    config = transformers.Gemma2Config(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        vocab_size=VOCAB,
        final_logit_softcapping=30.0,
    )
    model = transformers.AutoModelForCausalLM.from_config(config)
    assert "not verified" in chunk_unsupported(model)  # gemma2 is outside VERIFIED
    llama = _model("llama")
    llama.config.logit_scale = 0.5
    assert chunk_unsupported(llama) == "its output head applies logit_scale"
