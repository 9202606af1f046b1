"""GGUF export, checked with a reader we did not write: transformers loads the file (it
dequantises every tensor and undoes llama.cpp's Llama q/k permutation) and must give the same
logits, greedy answers and token ids as the checkpoint it came from.

The tiny Llama and Qwen2 models are trained for 150 steps first (2-8 s each on 2 idle cores): a
random tiny model's logits are nearly flat, so equal greedy answers would prove little.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import CHATML

pytestmark = pytest.mark.integration  # tiny models trained first: the slower tier

PRECISIONS = ["f16", "bf16", "q8_0"]
N_PROMPTS = 8

# The largest |logit difference| over the prompts, as a fraction of the standard deviation of
# the checkpoint's logits. Measured (2026-12, tiny models trained 150 steps): f16 <= 0.0037,
# bf16 <= 0.020, q8_0 <= 0.051; each bound is about 3x the worst case seen.
TOLERANCE = {"f16": 0.01, "bf16": 0.06, "q8_0": 0.15}


@pytest.fixture(scope="module")
def records() -> list[dict]:
    from tuneforge.plugins.testing import sample_records

    return sample_records(400)


def _train(base: Path, records: list[dict], out: Path) -> Path:
    from tuneforge.config import TrainConfig
    from tuneforge.training.loop import train_model

    cfg = TrainConfig(
        steps=150, batch_size=16, max_length=64, eval_every=0, checkpoint_every=0, log_every=1000
    )
    train_model(base, records, cfg, out)
    return out


@pytest.fixture(scope="module")
def llama_dir(records: list[dict], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The plugin kit's tiny Llama (tied embeddings, no chat template), trained a little."""
    from tuneforge.plugins.testing import tiny_checkpoint

    root = tmp_path_factory.mktemp("llama")
    return _train(tiny_checkpoint(root / "base"), records, root / "trained")


def _qwen2_dir(llama: Path, records: list[dict], root: Path, tied: bool) -> Path:
    """A Qwen2 (2 KV heads, q/k/v biases) with the Llama's tokenizer plus ChatML: its two
    control tokens and template. Untied, the embedding is padded past the tokenizer (as
    Qwen2.5's 151,936 rows are past its 151,665 tokens), so the GGUF needs filler tokens."""
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(llama)
    # transformers loads a qwen2 checkpoint's tokenizer as Qwen2Tokenizer (Qwen2's split
    # regex), which adds an unknown token `<|endoftext|>` unless it is there already.
    chatml = {"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]}
    tokenizer.add_special_tokens({"unk_token": "<|endoftext|>", **chatml})
    tokenizer.eos_token, tokenizer.chat_template = "<|im_end|>", CHATML
    config = Qwen2Config(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=128,
        max_position_embeddings=256,
        vocab_size=len(tokenizer) if tied else len(tokenizer) + 14,
        tie_word_embeddings=tied,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    Qwen2ForCausalLM(config).save_pretrained(root / "base")
    tokenizer.save_pretrained(root / "base")
    return _train(root / "base", records, root / "trained")


@pytest.fixture(scope="module")
def checkpoints(
    llama_dir: Path, records: list[dict], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Path]:
    return {
        "llama": llama_dir,
        "qwen2-tied": _qwen2_dir(llama_dir, records, tmp_path_factory.mktemp("qt"), tied=True),
        "qwen2-untied": _qwen2_dir(llama_dir, records, tmp_path_factory.mktemp("qu"), tied=False),
    }


def _load(folder: Path, gguf_file: str | None = None):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    kwargs = {"gguf_file": gguf_file} if gguf_file else {}
    model = AutoModelForCausalLM.from_pretrained(folder, **kwargs).eval()
    return model, AutoTokenizer.from_pretrained(folder, **kwargs)


def _prompts(records: list[dict], tokenizer) -> list[str]:
    from tuneforge.prompts import render_prompt, split_turns

    return [render_prompt(split_turns(r)[0], tokenizer) for r in records[:N_PROMPTS]]


def _read_gguf(path: Path) -> tuple[dict, dict]:
    """(metadata, {tensor name: (type name, shape)}) as gguf-py's reader sees the file."""
    from gguf import GGUFReader

    reader = GGUFReader(path)
    meta = {key: field.contents() for key, field in reader.fields.items()}
    tensors = {t.name: (t.tensor_type.name, [int(n) for n in t.shape]) for t in reader.tensors}
    return meta, tensors


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("name", ["llama", "qwen2-tied", "qwen2-untied"])
def test_gguf_answers_as_the_checkpoint_does(name, precision, checkpoints, records, tmp_path):
    import torch

    from tuneforge.exports.gguf import write_gguf
    from tuneforge.serving import generate

    source = checkpoints[name]
    out = write_gguf(source, tmp_path / f"{name}-{precision}.gguf", precision)
    model, tokenizer = _load(source)
    gguf_model, gguf_tokenizer = _load(tmp_path, out.name)

    prompts = _prompts(records, tokenizer)
    # The tokenizer rebuilt from the file renders and encodes prompts exactly as the original.
    assert _prompts(records, gguf_tokenizer) == prompts
    for prompt in prompts:
        ids = tokenizer(prompt, add_special_tokens=True).input_ids
        assert gguf_tokenizer(prompt, add_special_tokens=True).input_ids == ids

    worst = 0.0
    with torch.no_grad():
        for prompt in prompts:
            ids = torch.tensor([tokenizer(prompt, add_special_tokens=False).input_ids])
            expected, got = model(ids).logits, gguf_model(ids).logits
            worst = max(worst, ((got - expected).abs().max() / expected.std()).item())
    answers = generate(model, tokenizer, prompts, max_new_tokens=8, batch_size=4)
    gguf_answers = generate(gguf_model, gguf_tokenizer, prompts, max_new_tokens=8, batch_size=4)
    same = sum(a == b for a, b in zip(answers, gguf_answers, strict=True))
    print(
        f"\n{name} {precision}: {out.stat().st_size:,} bytes, max |dlogit| / std = {worst:.2e},"
        f" same greedy answers {same}/{len(prompts)}, answers {answers[:2]}"
    )
    assert worst < TOLERANCE[precision]
    assert sum(bool(a.strip()) for a in answers) >= len(prompts) // 2  # not a vacuous check
    if precision == "f16":
        assert gguf_answers == answers
    else:  # 8-bit mantissas or blocks may flip a near tie; most answers must still agree
        assert same >= len(prompts) - 1


def test_gguf_metadata_and_tensors_follow_llama_cpp(checkpoints, tmp_path):
    import gguf
    import numpy as np
    from safetensors.numpy import load_file

    from tuneforge.exports.gguf import write_gguf

    written = {
        name: _read_gguf(write_gguf(checkpoints[name], tmp_path / f"{name}.gguf"))
        for name in ("llama", "qwen2-tied", "qwen2-untied")
    }
    meta, tensors = written["llama"]
    config = json.loads((checkpoints["llama"] / "config.json").read_text())
    assert meta["general.architecture"] == "llama"
    assert meta["general.type"] == "model"
    assert meta["general.name"] == checkpoints["llama"].name
    assert meta["general.file_type"] == gguf.LlamaFileType.MOSTLY_F16
    expected = {
        "llama.context_length": config["max_position_embeddings"],
        "llama.embedding_length": config["hidden_size"],
        "llama.block_count": config["num_hidden_layers"],
        "llama.feed_forward_length": config["intermediate_size"],
        "llama.attention.head_count": config["num_attention_heads"],
        "llama.attention.head_count_kv": config["num_key_value_heads"],
        "llama.rope.dimension_count": config["hidden_size"] // config["num_attention_heads"],
        "llama.vocab_size": config["vocab_size"],
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": "gpt-2",
        "tokenizer.ggml.bos_token_id": 1,
        "tokenizer.ggml.eos_token_id": 2,
        "tokenizer.ggml.padding_token_id": 0,
        "tokenizer.ggml.add_bos_token": False,  # the tiny tokenizer adds no BOS when encoding
    }
    assert {key: meta[key] for key in expected} == expected
    assert meta["llama.rope.freq_base"] == pytest.approx(10000.0)
    assert meta["llama.attention.layer_norm_rms_epsilon"] == pytest.approx(1e-6)
    assert "tokenizer.chat_template" not in meta  # the tiny Llama has none
    assert len(meta["tokenizer.ggml.tokens"]) == config["vocab_size"]
    assert meta["tokenizer.ggml.token_type"][:4] == [3, 3, 3, 1]  # <pad> <s> </s> control
    assert meta["tokenizer.ggml.merges"][0] == "# #"
    layer = ["attn_norm", "attn_q", "attn_k", "attn_v", "attn_output"]
    layer += ["ffn_norm", "ffn_gate", "ffn_up", "ffn_down"]
    names = {f"blk.{i}.{t}.weight" for i in range(2) for t in layer}
    assert set(tensors) == names | {"token_embd.weight", "output_norm.weight"}  # tied: no output
    assert {tensors[n][0] for n in tensors if n.endswith("norm.weight")} == {"F32"}
    assert {tensors[n][0] for n in tensors if not n.endswith("norm.weight")} == {"F16"}
    assert tensors["token_embd.weight"][1] == [64, config["vocab_size"]]  # ggml order: reversed

    # Llama's q rows are interleaved (llama.cpp's rotary layout), k too; v is left as it is.
    from gguf import GGUFReader

    stored = {t.name: np.array(t.data) for t in GGUFReader(tmp_path / "llama.gguf").tensors}
    hf = load_file(checkpoints["llama"] / "model.safetensors")
    q = hf["model.layers.0.self_attn.q_proj.weight"].astype(np.float16)
    assert not np.array_equal(stored["blk.0.attn_q.weight"], q)
    per_head = q.reshape(4, 2, 8, 64).swapaxes(1, 2).reshape(64, 64)
    assert np.array_equal(stored["blk.0.attn_q.weight"], per_head)
    assert np.array_equal(
        stored["blk.0.attn_v.weight"], hf["model.layers.0.self_attn.v_proj.weight"].astype("f2")
    )

    meta, tensors = written["qwen2-tied"]
    assert meta["general.architecture"] == "qwen2"
    assert meta["tokenizer.ggml.pre"] == "qwen2"  # Qwen2Tokenizer's split, as transformers loads it
    assert meta["tokenizer.ggml.unknown_token_id"] == meta["tokenizer.ggml.tokens"].index(
        "<|endoftext|>"
    )
    assert meta["qwen2.attention.head_count_kv"] == 2
    assert meta["tokenizer.ggml.eos_token_id"] == meta["tokenizer.ggml.tokens"].index("<|im_end|>")
    assert meta["tokenizer.ggml.bos_token_id"] == 1  # the Llama tokenizer's <s>, never added
    assert meta["tokenizer.ggml.add_bos_token"] is False
    assert meta["tokenizer.chat_template"] == CHATML
    assert meta["tokenizer.ggml.token_type"][-2:] == [3, 3]  # <|im_start|> <|im_end|>
    assert "output.weight" not in tensors
    assert {tensors[f"blk.1.attn_{x}.bias"][0] for x in "qkv"} == {"F32"}
    # Qwen2 rotates halves, as HF does: q goes in unpermuted.
    stored = {t.name: np.array(t.data) for t in GGUFReader(tmp_path / "qwen2-tied.gguf").tensors}
    hf = load_file(checkpoints["qwen2-tied"] / "model.safetensors")
    q = hf["model.layers.0.self_attn.q_proj.weight"].astype(np.float16)
    assert np.array_equal(stored["blk.0.attn_q.weight"], q)

    meta, tensors = written["qwen2-untied"]
    assert tensors["output.weight"][0] == "F16"
    vocab = meta["qwen2.vocab_size"]
    assert len(meta["tokenizer.ggml.tokens"]) == vocab
    assert meta["tokenizer.ggml.tokens"][-1] == f"[PAD{vocab - 1}]"
    assert meta["tokenizer.ggml.token_type"][-1] == 5  # unused


def test_q8_0_keeps_rows_that_are_not_whole_blocks_in_f16(llama_dir, tmp_path):
    """Q8_0 packs rows in blocks of 32 values; a matrix with rows of 80 (the feed-forward's
    down projection here) stays F16, as llama.cpp's converter leaves it."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from tuneforge.exports.gguf import write_gguf

    tokenizer = AutoTokenizer.from_pretrained(llama_dir)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=80,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(tmp_path / "ckpt")
    tokenizer.save_pretrained(tmp_path / "ckpt")
    out = write_gguf(tmp_path / "ckpt", tmp_path / "odd.gguf", "q8_0")
    _, tensors = _read_gguf(out)
    assert tensors["blk.0.ffn_down.weight"][0] == "F16"
    for name in ("blk.0.ffn_up.weight", "blk.0.attn_k.weight", "output.weight"):
        assert tensors[name][0] == "Q8_0"

    model, _ = _load(tmp_path / "ckpt")
    gguf_model, _ = _load(tmp_path, out.name)
    ids = torch.tensor([tokenizer("Reverse the word 'hello'.").input_ids])
    with torch.no_grad():
        expected, got = model(ids).logits, gguf_model(ids).logits
    assert ((got - expected).abs().max() / expected.std()).item() < TOLERANCE["q8_0"]


def test_llama3_rope_scaling_writes_the_frequency_factors(llama_dir, tmp_path):
    """Llama 3.1's RoPE scaling reaches llama.cpp as a `rope_freqs` tensor of divisors: the
    default inverse frequencies over transformers' own llama3-scaled ones."""
    import numpy as np
    import torch
    from transformers import AutoConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    from tuneforge.exports.gguf import write_gguf

    ckpt = shutil.copytree(llama_dir, tmp_path / "ckpt")
    config = json.loads((ckpt / "config.json").read_text())
    config["max_position_embeddings"] = 1024
    config["rope_parameters"] = {
        "rope_type": "llama3",
        "rope_theta": 500000.0,
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 128,  # so the tiny head has all three bands
    }
    (ckpt / "config.json").write_text(json.dumps(config))
    from gguf import GGUFReader

    reader = GGUFReader(write_gguf(ckpt, tmp_path / "l3.gguf"))
    factors = next(np.array(t.data) for t in reader.tensors if t.name == "rope_freqs.weight")
    hf_config = AutoConfig.from_pretrained(ckpt)
    scaled, _ = ROPE_INIT_FUNCTIONS["llama3"](hf_config, torch.device("cpu"))
    default = 1.0 / 500000.0 ** (torch.arange(0, 16, 2, dtype=torch.float64) / 16)
    np.testing.assert_allclose(factors, (default / scaled.double()).numpy(), rtol=1e-5)
    assert factors.min() == pytest.approx(1.0) and factors.max() == pytest.approx(8.0)


def test_llama3_pre_tokenizer_is_named_for_llama_cpp(llama_dir, records, tmp_path):
    """A tokenizer that splits text with Llama 3's regex is written as `llama-bpe`, and the
    tokenizer transformers rebuilds from that name encodes as the original. (Qwen2's regex,
    `qwen2`, is what the Qwen2 checkpoints above are written with.)"""
    from tokenizers import Regex, Tokenizer, pre_tokenizers
    from transformers import AutoTokenizer

    from tuneforge.exports.gguf import write_gguf

    llama3_split = (
        r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
        r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
    )
    ckpt = shutil.copytree(llama_dir, tmp_path / "ckpt")
    backend = Tokenizer.from_file(str(ckpt / "tokenizer.json"))
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(llama3_split), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    backend.save(str(ckpt / "tokenizer.json"))
    out = write_gguf(ckpt, tmp_path / "l3.gguf")
    meta, _ = _read_gguf(out)
    assert meta["tokenizer.ggml.pre"] == "llama-bpe"
    tokenizer = AutoTokenizer.from_pretrained(ckpt)
    reread = AutoTokenizer.from_pretrained(tmp_path, gguf_file=out.name)
    text = "".join(_prompts(records, tokenizer)) + " 12345 numbers   and  spaces\n\n"
    assert reread(text).input_ids == tokenizer(text).input_ids
    gpt2_split = AutoTokenizer.from_pretrained(llama_dir)  # the same vocabulary and merges
    assert gpt2_split(text).input_ids != tokenizer(text).input_ids  # so the name matters


def test_refusals_are_one_line(llama_dir, tmp_path):
    from tuneforge.exports.gguf import write_gguf

    for model_type in ("gpt2", "gemma"):
        ckpt = tmp_path / model_type
        ckpt.mkdir()
        (ckpt / "config.json").write_text(json.dumps({"model_type": model_type}))
        with pytest.raises(ValueError) as refused:
            write_gguf(ckpt, tmp_path / "x.gguf")
        message = str(refused.value)
        assert "\n" not in message
        assert str(ckpt) in message and repr(model_type) in message
        assert "llama, mistral, qwen2" in message

    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA"}))
    with pytest.raises(ValueError, match=r"PEFT adapter.*merged") as refused:
        write_gguf(adapter, tmp_path / "x.gguf")
    assert "\n" not in str(refused.value) and str(adapter) in str(refused.value)

    # A sentencepiece-style tokenizer would load in llama.cpp but tokenize differently.
    ckpt = shutil.copytree(llama_dir, tmp_path / "spm")
    spec = json.loads((ckpt / "tokenizer.json").read_text())
    spec["pre_tokenizer"] = {"type": "Metaspace", "replacement": "\u2581"}
    (ckpt / "tokenizer.json").write_text(json.dumps(spec))
    with pytest.raises(ValueError, match=r"not a byte-level BPE llama\.cpp knows") as refused:
        write_gguf(ckpt, tmp_path / "x.gguf")
    assert "\n" not in str(refused.value)
    assert not list(tmp_path.glob("*.gguf*"))  # nothing half-written


def test_importing_the_module_does_not_import_gguf():
    code = "import sys, tuneforge.exports.gguf; print('gguf' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip() == "False", result.stderr


# llama.cpp itself, through llama-cpp-python: not in the dev install (PyPI ships it as source,
# and compiling llama.cpp takes many minutes on 2 cores), so `make test-gguf` installs it and
# runs this. It computes in its own kernels (f16 KV cache), so its logits may move a little more
# than transformers' reading of the same file. Measured (llama-cpp-python 0.3.36, 2026-12-06):
# f16 <= 2.3e-3, q8_0 <= 5.3e-2 of the logits' spread; the bounds leave room above that.
LLAMA_CPP_TOLERANCE = {"f16": 0.03, "q8_0": 0.2}


def _llama_cpp_greedy(llm, ids: list[int], max_new_tokens: int) -> tuple[list[int], object]:
    """Greedy token ids from llama.cpp's own logits, and its logits at the prompt's end."""
    import numpy as np

    llm.reset()
    llm.eval(ids)
    first = np.array(llm.scores[llm.n_tokens - 1])
    out: list[int] = []
    logits = first
    while len(out) < max_new_tokens:
        token = int(np.argmax(logits))
        out.append(token)
        if token == llm.token_eos():
            break
        llm.eval([token])
        logits = llm.scores[llm.n_tokens - 1]
    return out, first


@pytest.mark.skipif(
    importlib.util.find_spec("llama_cpp") is None, reason="llama-cpp-python: make test-gguf"
)
@pytest.mark.parametrize("precision", ["f16", "q8_0"])
@pytest.mark.parametrize("name", ["llama", "qwen2-tied", "qwen2-untied"])
def test_llama_cpp_answers_as_the_checkpoint_does(name, precision, checkpoints, records, tmp_path):
    import llama_cpp
    import torch

    from tuneforge.exports.gguf import write_gguf

    source = checkpoints[name]
    out = write_gguf(source, tmp_path / f"{name}-{precision}.gguf", precision)
    model, tokenizer = _load(source)
    llm = llama_cpp.Llama(
        model_path=str(out), n_ctx=256, n_threads=1, logits_all=True, verbose=False
    )
    worst, same, answered = 0.0, 0, 0
    for prompt in _prompts(records, tokenizer):
        ids = tokenizer(prompt, add_special_tokens=True).input_ids
        # llama.cpp's tokenizer, built from the file's metadata alone, encodes as the original
        assert llm.tokenize(prompt.encode(), add_bos=True, special=True) == ids
        with torch.no_grad():
            expected = model(torch.tensor([ids])).logits[0, -1]
            greedy = model.generate(
                torch.tensor([ids]),
                max_new_tokens=8,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
            )[0, len(ids) :].tolist()
        got, logits = _llama_cpp_greedy(llm, ids, 8)
        diff = (torch.from_numpy(logits) - expected).abs().max() / expected.std()
        worst = max(worst, diff.item())
        same += got == greedy
        answered += bool(greedy) and greedy[0] != tokenizer.eos_token_id
    print(
        f"\nllama.cpp {name} {precision}: max |dlogit| / std = {worst:.2e}, same {same}/{N_PROMPTS}"
    )
    assert answered >= N_PROMPTS // 2  # answers that are not an immediate end of turn
    assert worst < LLAMA_CPP_TOLERANCE[precision]
    assert same >= N_PROMPTS - (0 if precision == "f16" else 1)
