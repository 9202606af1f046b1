"""Writes a Hugging Face causal-LM checkpoint as one GGUF file that llama.cpp and Ollama load.

    from pathlib import Path
    from tuneforge.exports.gguf import write_gguf

    write_gguf(Path("runs/abc/model"), Path("model-q8_0.gguf"), precision="q8_0")

then `llama-cli -m model-q8_0.gguf`, or an Ollama Modelfile `FROM ./model-q8_0.gguf`. The
checkpoint is a local directory (config.json, *.safetensors, a tokenizer with tokenizer.json);
a PEFT adapter must be merged into its base first. Needs the `gguf` package (the `export`
extra), not a llama.cpp build.

Architectures (config.json `model_type` -> llama.cpp architecture): `llama` and `mistral` ->
`llama`; `qwen2` -> `qwen2`. Tokenizers: byte-level BPE (`tokenizer.json`) with the GPT-2,
Llama-3 or Qwen2 pre-tokenizer. Anything else is refused with a one-line ValueError rather than
written into a file llama.cpp would reject or, worse, run with different numbers.

What is written follows llama.cpp's own `convert_hf_to_gguf.py`: its metadata keys, tensor names,
tensor types (norms and other 1-D tensors F32, matrices in the chosen precision) and the Llama
q/k row permutation. transformers reads the result back (`from_pretrained(dir,
gguf_file=...)`), which is how tests/exports/test_gguf.py checks it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    import numpy as np

Precision = Literal["f16", "bf16", "q8_0"]

# config.json model_type -> llama.cpp architecture. Mistral is llama.cpp's `llama` too
# (convert_hf_to_gguf.py registers MistralForCausalLM under LlamaModel).
ARCHITECTURES = {"llama": "llama", "mistral": "llama", "qwen2": "qwen2"}

# llama.cpp's `llama` applies rotary embeddings to adjacent pairs of a head's values (the
# original Meta layout); HF's Llama rotates the two halves of each head instead, after its
# conversion script permuted the q/k rows. So the rows are permuted back, exactly as
# LlamaModel.permute in convert_hf_to_gguf.py does. llama.cpp's `qwen2` rotates halves (NEOX
# style), as HF does, so its weights go in unchanged.
_UNPERMUTE_QK = {"llama"}

# Byte-level pre-tokenizer split patterns llama.cpp implements, by its `tokenizer.ggml.pre`
# name (llama-vocab.cpp). A plain ByteLevel pre-tokenizer with its built-in regex is GPT-2's.
_SPLIT_PATTERNS = {
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+": "llama-bpe",
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+": "qwen2",
}

# Weights in a checkpoint that are not model parameters llama.cpp loads.
_SKIPPED_SUFFIXES = (".rotary_emb.inv_freq",)


def write_gguf(
    checkpoint: Path, out_file: Path, precision: Precision = "f16", name: str | None = None
) -> Path:
    """Converts a local Hugging Face causal-LM checkpoint into one GGUF file.

    Matrices are stored in `precision`; norms, biases and other 1-D tensors in F32 (llama.cpp
    computes those in F32). With `q8_0`, a matrix whose rows are not a multiple of 32 values
    (the Q8_0 block) is stored as F16, as llama.cpp's converter does. The output head is left
    out when the embeddings are tied: llama.cpp then reuses `token_embd`. The file is written
    next to `out_file` and renamed into place, so a failed export leaves no partial file.

    Args:
        checkpoint: directory with config.json, *.safetensors and the tokenizer files; a
            plain checkpoint (a PEFT adapter must be merged first).
        out_file: the GGUF file to write; its directory is created if missing.
        precision: `f16` (default), `bf16` or `q8_0` (8-bit blocks, about half the size of
            f16 and a small loss).
        name: the model's name in the file (`general.name`, what llama.cpp and Ollama show);
            default the checkpoint directory's name.

    Returns:
        `out_file`.

    Raises:
        ValueError: one line naming the checkpoint, when it is an adapter, has no config.json,
            is an architecture other than llama/mistral/qwen2, has a tokenizer that is not a
            byte-level BPE llama.cpp knows, or has weights or settings this export cannot
            carry over (an unknown tensor, an unsupported RoPE scaling).
    """
    import gguf
    from transformers import AutoConfig, AutoTokenizer

    checkpoint, out_file = Path(checkpoint), Path(out_file)
    if precision not in ("f16", "bf16", "q8_0"):
        raise ValueError(f"precision {precision!r}: choose f16, bf16 or q8_0")
    model_type = _model_type(checkpoint)
    arch = ARCHITECTURES[model_type]
    config = AutoConfig.from_pretrained(checkpoint)
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    rope = _rope_parameters(config)
    _check_rope(checkpoint, arch, rope)
    pre = _pre_tokenizer_name(checkpoint, tokenizer)
    top_id = max(tokenizer.get_vocab().values())
    if top_id >= config.vocab_size:  # llama.cpp needs one embedding row per token
        raise ValueError(
            f"{checkpoint}: the tokenizer has token id {top_id} but the model has only "
            f"{config.vocab_size} embedding rows (vocab_size); resize the embeddings first"
        )
    file_type, matrix_type = {
        "f16": (gguf.LlamaFileType.MOSTLY_F16, gguf.GGMLQuantizationType.F16),
        "bf16": (gguf.LlamaFileType.MOSTLY_BF16, gguf.GGMLQuantizationType.BF16),
        "q8_0": (gguf.LlamaFileType.MOSTLY_Q8_0, gguf.GGMLQuantizationType.Q8_0),
    }[precision]

    out_file.parent.mkdir(parents=True, exist_ok=True)
    partial = out_file.with_name(f".{out_file.name}.partial")
    # use_temp_file: tensors are spooled to disk as they are added instead of all being held in
    # memory until the file is written (a 7B model is 14 GB at f16).
    writer = gguf.GGUFWriter(partial, arch, use_temp_file=True)
    try:
        writer.add_type(gguf.GGUFType.MODEL)
        writer.add_name(name or checkpoint.resolve().name)
        writer.add_file_type(file_type)
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        _add_hyperparameters(writer, config, rope)
        _add_tokenizer(writer, tokenizer, config, pre)
        _add_tensors(writer, checkpoint, config, arch, matrix_type, rope)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    except BaseException:
        writer.close()
        partial.unlink(missing_ok=True)
        raise
    writer.close()
    os.replace(partial, out_file)
    return out_file


def _model_type(checkpoint: Path) -> str:
    """The checkpoint's `model_type`, refusing what cannot be exported (one line each)."""
    supported = ", ".join(ARCHITECTURES)
    if (checkpoint / "adapter_config.json").is_file():
        raise ValueError(
            f"{checkpoint}: a PEFT adapter, not a checkpoint; GGUF export needs the merged model "
            f"(model types {supported})"
        )
    config_file = checkpoint / "config.json"
    if not config_file.is_file():
        raise ValueError(f"{checkpoint}: no config.json; GGUF export needs a checkpoint directory")
    model_type = json.loads(config_file.read_text(encoding="utf-8")).get("model_type")
    if model_type not in ARCHITECTURES:
        raise ValueError(
            f"{checkpoint}: model type {model_type!r} cannot be exported to GGUF; "
            f"supported: {supported}"
        )
    return model_type


def _rope_parameters(config: Any) -> dict[str, Any]:
    """RoPE settings as transformers 5 keeps them (`rope_parameters`), or as older configs
    did (`rope_theta` plus `rope_scaling`)."""
    rope = getattr(config, "rope_parameters", None)
    if not rope:
        rope = {"rope_theta": getattr(config, "rope_theta", 10000.0)}
        rope.update(getattr(config, "rope_scaling", None) or {})
    rope = dict(rope)
    rope.setdefault("rope_type", rope.get("type", "default"))
    return rope


def _check_rope(checkpoint: Path, arch: str, rope: dict[str, Any]) -> None:
    kind = rope["rope_type"]
    if kind in ("default", "linear", "yarn") or (kind == "llama3" and arch == "llama"):
        return
    raise ValueError(
        f"{checkpoint}: RoPE scaling {kind!r} is not supported by the GGUF export "
        f"(default, linear, yarn, and llama3 for Llama models)"
    )


def _head_dim(config: Any) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def _add_hyperparameters(writer: Any, config: Any, rope: dict[str, Any]) -> None:
    """The `{arch}.*` keys llama.cpp reads to build the model (TextModel and LlamaModel's
    set_gguf_parameters in convert_hf_to_gguf.py)."""
    import gguf

    writer.add_vocab_size(config.vocab_size)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(
        getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    )
    writer.add_rope_freq_base(float(rope["rope_theta"]))
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    head_dim = _head_dim(config)
    writer.add_rope_dimension_count(head_dim)
    if getattr(config, "head_dim", None):  # an explicit head size may differ from hidden/heads
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    if rope["rope_type"] == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(rope["factor"]))
    elif rope["rope_type"] == "yarn":
        writer.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        writer.add_rope_scaling_factor(float(rope["factor"]))
        original = rope.get("original_max_position_embeddings", config.max_position_embeddings)
        writer.add_rope_scaling_orig_ctx_len(int(original))


def _pre_tokenizer_name(checkpoint: Path, tokenizer: Any) -> str:
    """llama.cpp's name (`tokenizer.ggml.pre`) for how the tokenizer splits text before BPE.

    llama.cpp re-implements each pre-tokenizer by name and refuses names it does not know; a
    wrong name would load but split text differently, so the model would see other tokens."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    spec = json.loads(backend.to_str()) if backend is not None else {}
    model, pre = spec.get("model") or {}, spec.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    kinds = [step.get("type") for step in steps]
    name = None
    if model.get("type") == "BPE" and not model.get("byte_fallback"):
        if kinds == ["ByteLevel"] and pre.get("use_regex", True):
            name = "gpt-2" if not pre.get("add_prefix_space") else None
        elif kinds == ["Split", "ByteLevel"] and not steps[1].get("use_regex", True):
            name = _SPLIT_PATTERNS.get((steps[0].get("pattern") or {}).get("Regex"))
    if name is None:
        raise ValueError(
            f"{checkpoint}: tokenizer ({model.get('type')}, pre-tokenizer {kinds}) is not a "
            "byte-level BPE llama.cpp knows (GPT-2, Llama-3 or Qwen2 style)"
        )
    return name


def _add_tokenizer(writer: Any, tokenizer: Any, config: Any, pre: str) -> None:
    """The `tokenizer.ggml.*` keys of a byte-level BPE (`gpt2` in llama.cpp), as
    convert_hf_to_gguf.py's get_vocab_base and gguf.SpecialVocab write them."""
    import gguf

    vocab_size = config.vocab_size
    by_id = {i: token for token, i in tokenizer.get_vocab().items()}
    added = tokenizer.added_tokens_decoder
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in by_id:  # embedding rows past the tokenizer (padded vocabularies)
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
            continue
        token = by_id[i]
        tokens.append(token)
        if i not in added:
            types.append(gguf.TokenType.NORMAL)
        elif added[i].special or (token.startswith("<|") and token.endswith("|>")):
            # CONTROL tokens are matched whole and never printed; convert_hf_to_gguf treats
            # <|...|> as special even where the tokenizer forgot to mark it.
            types.append(gguf.TokenType.CONTROL)
        else:
            types.append(gguf.TokenType.USER_DEFINED)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)

    merges = json.loads(tokenizer.backend_tokenizer.to_str())["model"]["merges"]
    # tokenizers >= 0.20 saves merges as pairs; GGUF keeps the older "left right" strings.
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in merges])

    # A tokenizer without a BOS (Qwen2's) leaves it to config.json, as gguf.SpecialVocab does.
    ids = {
        "bos": tokenizer.bos_token_id
        if tokenizer.bos_token_id is not None
        else _single_id(getattr(config, "bos_token_id", None)),
        "eos": tokenizer.eos_token_id
        if tokenizer.eos_token_id is not None
        else _single_id(getattr(config, "eos_token_id", None)),
        "pad": tokenizer.pad_token_id,
        "unk": tokenizer.unk_token_id,
    }
    for kind, token_id in ids.items():
        if token_id is not None:
            getattr(writer, f"add_{kind}_token_id")(token_id)
    # Whether encoding adds BOS/EOS is what the tokenizer does, not what its config claims.
    encoded = tokenizer("a", add_special_tokens=True).input_ids
    writer.add_add_bos_token(ids["bos"] is not None and encoded[0] == ids["bos"])
    writer.add_add_eos_token(ids["eos"] is not None and encoded[-1] == ids["eos"])

    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, dict):  # several named templates
        writer.add_chat_template([{"name": k, "template": v} for k, v in template.items()])
    elif template:
        writer.add_chat_template(template)


def _single_id(value: Any) -> int | None:
    if isinstance(value, list):
        return value[0] if value else None
    return value


def _add_tensors(
    writer: Any, checkpoint: Path, config: Any, arch: str, matrix_type: Any, rope: dict[str, Any]
) -> None:
    """Every weight under its llama.cpp name and type (convert_hf_to_gguf.py's
    prepare_tensors), plus Llama 3's RoPE frequency factors when it uses them."""
    import gguf

    names = gguf.get_tensor_name_map(_model_arch(arch), config.num_hidden_layers)
    tied = bool(getattr(config, "tie_word_embeddings", False))
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    if rope["rope_type"] == "llama3":
        writer.add_tensor("rope_freqs.weight", _llama3_rope_factors(config, rope))
    for hf_name, data in _read_weights(checkpoint):
        if hf_name.endswith(_SKIPPED_SUFFIXES) or (tied and hf_name == "lm_head.weight"):
            continue  # tied: llama.cpp reads the output head from token_embd
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise ValueError(f"{checkpoint}: tensor {hf_name!r} has no llama.cpp {arch} name")
        if arch in _UNPERMUTE_QK and hf_name.endswith(("q_proj.weight", "q_proj.bias")):
            data = _unpermute_rotary(data, heads)
        elif arch in _UNPERMUTE_QK and hf_name.endswith(("k_proj.weight", "k_proj.bias")):
            data = _unpermute_rotary(data, kv_heads)
        _add_tensor(writer, name, data, matrix_type)


def _model_arch(arch: str) -> Any:
    import gguf

    return next(k for k, v in gguf.MODEL_ARCH_NAMES.items() if v == arch)


def _add_tensor(writer: Any, name: str, data: np.ndarray, matrix_type: Any) -> None:
    import gguf

    F32, F16 = gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16
    # llama.cpp computes norms and biases in F32, and most of its kernels take 1-D tensors
    # only as F32.
    qtype = F32 if data.ndim <= 1 or not name.endswith(".weight") else matrix_type
    try:
        packed = gguf.quants.quantize(data, qtype)
    except gguf.QuantError:  # Q8_0 needs rows of whole 32-value blocks; llama.cpp uses F16
        qtype = F16
        packed = gguf.quants.quantize(data, qtype)
    writer.add_tensor(name, packed, raw_dtype=qtype)


def _unpermute_rotary(weights: np.ndarray, n_head: int) -> np.ndarray:
    """Per head, interleaves the two halves of the rows (HF's rotary layout) into adjacent
    pairs (llama.cpp's), as LlamaModel.permute in convert_hf_to_gguf.py."""
    shape = weights.shape
    return (
        weights.reshape(n_head, 2, shape[0] // n_head // 2, *shape[1:])
        .swapaxes(1, 2)
        .reshape(shape)
    )


def _llama3_rope_factors(config: Any, rope: dict[str, Any]) -> np.ndarray:
    """Llama 3.1's per-frequency RoPE divisors, which llama.cpp reads from a `rope_freqs`
    tensor (LlamaModel.generate_extra_tensors in convert_hf_to_gguf.py)."""
    import numpy as np

    dim = _head_dim(config)
    base = float(rope["rope_theta"])
    factor = float(rope.get("factor", 8.0))
    low, high = float(rope.get("low_freq_factor", 1.0)), float(rope.get("high_freq_factor", 4.0))
    old_context = float(rope.get("original_max_position_embeddings", 8192))
    freqs = 1.0 / base ** (np.arange(0, dim, 2, dtype=np.float64) / dim)
    wavelen = 2 * np.pi / freqs
    smooth = (old_context / wavelen - low) / (high - low)
    factors = np.where(
        wavelen < old_context / high,
        1.0,
        np.where(wavelen > old_context / low, factor, 1 / ((1 - smooth) / factor + smooth)),
    )
    return factors.astype(np.float32)


def _read_weights(checkpoint: Path) -> Iterator[tuple[str, np.ndarray]]:
    """(name, float32 array) for every tensor in the checkpoint's safetensors files, one at a
    time (bfloat16 has no numpy type, so tensors go through torch)."""
    import torch
    from safetensors import safe_open

    files = sorted(checkpoint.glob("*.safetensors"))
    if not files:
        raise ValueError(f"{checkpoint}: no *.safetensors weights")
    for file in files:
        with safe_open(file, framework="pt") as weights:
            for name in weights.keys():  # noqa: SIM118 (safe_open is not a mapping)
                yield name, weights.get_tensor(name).to(torch.float32).numpy()
