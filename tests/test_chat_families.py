"""Model families with their own chat formats: random-init checkpoints of the Llama-3, Qwen2,
Qwen3, Mistral, Gemma and Phi-3 shapes, each with a tokenizer carrying its family's chat
template, train with every built-in strategy; each answer is trained to end with the family's
end-of-turn token, and generation stops there. Each family also runs one real `retrain` whose
registered version answers a chat input through the family's template."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import transformers

from tests.conftest import BUNDLED_DATA, NO_GATE, PRESET
from tuneforge.config import TrainConfig
from tuneforge.models import train_tokenizer
from tuneforge.plugins.tokenization import check_chat_template, tokenize_prompt_response
from tuneforge.prompts import end_of_turn_id, render_prompt, split_turns, stop_token_ids
from tuneforge.training.loop import train_model

TEMPLATES = {
    "chatml": (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
        "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    ),
    "llama3": (
        "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}"
        "<|end_header_id|>\n\n{{ m['content'] | trim }}<|eot_id|>{% endfor %}"
        "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
    ),
    "gemma": (
        "{{ bos_token }}{% for m in messages %}{% set role = 'model' if m['role'] == 'assistant' "
        "else m['role'] %}<start_of_turn>{{ role }}\n{{ m['content'] | trim }}<end_of_turn>\n"
        "{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
    ),
    "phi3": (
        "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
    ),
    "mistral": (
        "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}[INST] "
        "{{ m['content'] }} [/INST]{% else %}{{ m['content'] }}{{ eos_token }}{% endif %}"
        "{% endfor %}"
    ),
}
# family: (config, chat format, its special tokens, the token that ends an answer)
SMALL = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2}
FAMILIES = {
    "llama3": (
        transformers.LlamaConfig(num_attention_heads=4, num_key_value_heads=2, **SMALL),
        "llama3",
        ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
        "<|eot_id|>",
    ),
    "qwen2": (
        transformers.Qwen2Config(num_attention_heads=4, num_key_value_heads=2, **SMALL),
        "chatml",
        ["<|im_start|>", "<|im_end|>"],
        "<|im_end|>",
    ),
    "qwen3": (
        transformers.Qwen3Config(num_attention_heads=4, num_key_value_heads=2, head_dim=8, **SMALL),
        "chatml",
        ["<|im_start|>", "<|im_end|>"],
        "<|im_end|>",
    ),
    "mistral": (
        transformers.MistralConfig(num_attention_heads=4, num_key_value_heads=2, **SMALL),
        "mistral",
        [],
        "</s>",
    ),
    "gemma": (
        transformers.GemmaConfig(num_attention_heads=4, num_key_value_heads=1, head_dim=8, **SMALL),
        "gemma",
        ["<start_of_turn>", "<end_of_turn>"],
        "<end_of_turn>",
    ),
    "phi3": (
        transformers.Phi3Config(num_attention_heads=4, num_key_value_heads=4, **SMALL),
        "phi3",
        ["<|user|>", "<|assistant|>", "<|system|>", "<|end|>"],
        "<|end|>",
    ),
}


@pytest.fixture(scope="module")
def checkpoints(bundled_records, tmp_path_factory) -> dict[str, Path]:
    """Each family's random checkpoint and chat-format tokenizer."""
    texts = [render_prompt(split_turns(r)[0], None) + split_turns(r)[1] for r in bundled_records]
    built = {}
    for family, (config, template, specials, _) in FAMILIES.items():
        tokenizer = train_tokenizer(texts[:300], vocab_size=400)
        tokenizer.add_special_tokens({"additional_special_tokens": specials})
        if family in ("qwen2", "qwen3"):
            tokenizer.eos_token = "<|im_end|>"  # as the instruct models set it
        tokenizer.chat_template = TEMPLATES[template]
        config = config.__class__.from_dict(
            {
                **config.to_dict(),
                "vocab_size": len(tokenizer),
                "pad_token_id": tokenizer.pad_token_id,
                "eos_token_id": tokenizer.eos_token_id,
                "bos_token_id": tokenizer.bos_token_id,
            }
        )
        torch.manual_seed(0)
        out = tmp_path_factory.mktemp(family)
        transformers.AutoModelForCausalLM.from_config(config).save_pretrained(out)
        tokenizer.save_pretrained(out)
        built[family] = out
    return built


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_answers_end_with_the_familys_end_of_turn(family, checkpoints, bundled_records):
    tokenizer = transformers.AutoTokenizer.from_pretrained(checkpoints[family])
    check_chat_template(tokenizer)
    expected = tokenizer.convert_tokens_to_ids(FAMILIES[family][3])
    assert end_of_turn_id(tokenizer) == expected
    assert expected in stop_token_ids(tokenizer)
    example = tokenize_prompt_response(bundled_records[0], tokenizer, 256, train_prompt=False)
    assert example.input_ids[-1] == example.labels[-1] == expected  # trained, last


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_batched_encoding_equals_the_tokenizers_own_call(family, checkpoints, bundled_records):
    from tuneforge.plugins.tokenization import encode_texts

    tokenizer = transformers.AutoTokenizer.from_pretrained(checkpoints[family])
    texts = [render_prompt(split_turns(r)[0], tokenizer) for r in bundled_records[:64]]
    texts += [split_turns(r)[1] for r in bundled_records[:64]]
    texts += ["", " ", "a\n\n b", "".join(FAMILIES[family][2]) + " x"]  # edges, special tokens
    expected = tokenizer(texts, add_special_tokens=False).input_ids
    assert encode_texts(tokenizer, texts) == expected
    # With truncation switched on in the backend (by some earlier call), its own call is used.
    tokenizer.backend_tokenizer.enable_truncation(max_length=3)
    assert encode_texts(tokenizer, texts) == tokenizer(texts, add_special_tokens=False).input_ids
    tokenizer.backend_tokenizer.no_truncation()
    calls = []

    class EncodesItsOwnWay(type(tokenizer)):  # e.g. remote code that edits the text first
        def _encode_plus(self, *args, **kwargs):
            calls.append(args)
            return super()._encode_plus(*args, **kwargs)

    tokenizer.__class__ = EncodesItsOwnWay
    assert encode_texts(tokenizer, texts) == expected and len(calls) == 1
    tokenizer.__class__ = EncodesItsOwnWay.__mro__[1]
    tokenizer.split_special_tokens = True
    split = tokenizer(texts, add_special_tokens=False).input_ids
    assert split != expected  # the special tokens are now split into pieces
    assert encode_texts(tokenizer, texts) == split


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("strategy", ["full", "instruction", "lora"])
def test_every_strategy_trains_every_family(
    family, strategy, checkpoints, bundled_records, tmp_path
):
    settings = {"dropout": 0.0} if strategy == "lora" else {}
    cfg = TrainConfig(
        strategy=strategy, settings=settings, steps=3, batch_size=4, max_length=128, log_every=1
    )
    losses: list[float] = []
    result = train_model(
        checkpoints[family],
        bundled_records[:16],
        cfg,
        tmp_path,
        on_metrics=lambda _, m: losses.append(m["train.loss"]),
    )
    assert len(losses) == 3 and all(math.isfinite(x) for x in losses)
    assert result.batches == "padding-free"
    assert result.audit.examples == 16 and result.audit.truncated == 0


def test_generation_stops_at_the_end_of_turn_not_only_at_end_of_sequence(checkpoints):
    tokenizer = transformers.AutoTokenizer.from_pretrained(checkpoints["gemma"])
    model = transformers.AutoModelForCausalLM.from_pretrained(checkpoints["gemma"]).eval()
    end = end_of_turn_id(tokenizer)
    assert end != tokenizer.eos_token_id  # Gemma's turn ends before its sequence does
    # A head that always says <end_of_turn>: generation must stop after one token.
    head = torch.nn.Linear(model.config.hidden_size, model.config.vocab_size, bias=True)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.zero_()
        head.bias[end] = 10.0
    model.lm_head = head
    prompt = render_prompt([{"role": "user", "content": "Q?"}], tokenizer)
    enc = tokenizer([prompt], return_tensors="pt", add_special_tokens=False)
    stopped = model.generate(
        **enc, max_new_tokens=8, do_sample=False, eos_token_id=stop_token_ids(tokenizer)
    )
    assert stopped.shape[1] - enc["input_ids"].shape[1] == 1
    ran_on = model.generate(
        **enc, max_new_tokens=8, do_sample=False, eos_token_id=tokenizer.eos_token_id
    )
    assert ran_on.shape[1] - enc["input_ids"].shape[1] == 8  # what end-of-sequence alone does


# Through a real `retrain` (validation, training, both evaluations, registration): every family
# once and every strategy twice, each family with a strategy of its own. What is per family
# (tokenizer, template, end of turn, model class) runs at each family's `retrain`; what is per
# strategy (its training) runs above for every family and strategy pair.
RETRAIN = {
    "gemma": "full",
    "llama3": "instruction",
    "mistral": "lora",
    "phi3": "full",
    "qwen2": "lora",
    "qwen3": "instruction",
}


@pytest.mark.integration
@pytest.mark.parametrize("family", sorted(RETRAIN))
def test_each_family_retrains_and_registers_a_version_that_answers(
    family, checkpoints, prefect_harness, mlflow_server, tmp_path
):
    import mlflow
    from mlflow.tracking import MlflowClient

    from tuneforge.config import load_config
    from tuneforge.flows.retrain import retrain

    strategy = RETRAIN[family]
    config = load_config(
        PRESET,
        [
            f"model.source={checkpoints[family]}",
            f"train.strategy={strategy}",
            f"data.path={BUNDLED_DATA}",
            f"output_dir={tmp_path / 'runs'}",
            f"tracking.tracking_uri={mlflow_server}",
            "tracking.experiment=chat-families",
            f"registry.model_name=family-{family}",
            "train.steps=3",
            "train.batch_size=4",
            "train.eval_every=0",
            "evaluation.max_examples=4",
            "evaluation.max_new_tokens=4",
            *NO_GATE,
        ],
    )
    result = retrain(config)

    run = MlflowClient(mlflow_server).get_run(result.run_id)
    assert run.data.tags["tuneforge.strategy"] == strategy
    assert run.data.tags["tuneforge.batches"] == "padding-free"
    assert math.isfinite(run.data.metrics["tuned.eval_loss"])
    version = result.registration.version
    mlflow.set_tracking_uri(mlflow_server)
    model = mlflow.pyfunc.load_model(f"models:/family-{family}/{version}")
    # Rendered with the family's own template, as training rendered it (a template that does
    # not take the messages fails here).
    [answer] = model.predict([{"messages": [{"role": "user", "content": "Opposite of hot?"}]}])
    assert isinstance(answer, str)
