"""Loading and building models: what training, evaluation, registration and the strategies'
conformance kit all need, with no dependency on any of them.

`load_pretrained` loads a local checkpoint or PEFT adapter (safetensors only); `build_tiny_model`
makes the small Llama-style model and byte-level BPE tokenizer the demo and the tests train,
without a download.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from tuneforge import errors
from tuneforge.prompts import render_prompt, split_turns


class ModelSourceError(ValueError):
    """The base model cannot be resolved; the message is one line naming the source."""


class TinyModelConfig(BaseModel):
    """A Llama-style model built from a config with random weights, plus a byte-level BPE
    tokenizer trained on the training split: no download, deterministic for a given seed."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # The upper bounds are far above "tiny" and only stop a typo from allocating a model that
    # cannot fit in memory (hidden_size 40960 would be about 100 GB at float32).
    hidden_size: int = Field(
        128,
        gt=0,
        le=4096,
        description=(
            "Width of the embeddings and of every layer's hidden state; a multiple of "
            "num_heads. Bigger learns the toy tasks in fewer steps, but each step costs more "
            "(on 2 CPU cores, noticeably)."
        ),
    )
    num_layers: int = Field(
        2,
        gt=0,
        le=64,
        description="Transformer layers: more learn more per step, each costing its share.",
    )
    num_heads: int = Field(
        4,
        gt=0,
        le=128,
        description=(
            "Attention heads per layer (as many key-value heads); must divide hidden_size."
        ),
    )
    intermediate_size: int = Field(
        256, gt=0, le=16384, description="Width of each layer's feed-forward (MLP) block."
    )
    vocab_size: int = Field(
        384,
        ge=300,
        le=65536,
        description=(
            "Size of the byte-level BPE vocabulary trained on the training split: 256 byte "
            "symbols, the special tokens, and merges for the rest (at least 300, so some)."
        ),
    )
    max_position_embeddings: int = Field(
        256,
        gt=0,
        le=32768,
        description="The longest sequence, in tokens, the model is built for.",
    )
    seed: int = Field(
        0,
        description=(
            "Seed of the random initial weights: the same seed and shape build the same model."
        ),
    )

    @model_validator(mode="after")
    def _heads_divide_hidden(self) -> TinyModelConfig:
        if self.hidden_size % self.num_heads:
            raise ValueError("hidden_size must be a multiple of num_heads")
        return self


SPECIAL_TOKENS = ["<pad>", "<s>", "</s>"]


def train_tokenizer(texts: Iterable[str], vocab_size: int) -> Any:
    """Trains a byte-level BPE tokenizer (any text encodes; nothing is unknown)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>"
    )


def build_tiny_model(cfg: TinyModelConfig, records: list[dict[str, Any]], out_dir: Path) -> Path:
    """Builds the tiny model and its tokenizer into `out_dir` and returns it."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    def texts() -> Iterable[str]:
        for rec in records:
            if "text" in rec:  # raw text (tuneforge.records.is_text; models imports no records)
                yield rec["text"]
                continue
            turns, response = split_turns(rec)
            yield render_prompt(turns, None) + response

    tokenizer = train_tokenizer(texts(), cfg.vocab_size)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_heads,
        max_position_embeddings=cfg.max_position_embeddings,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(cfg.seed)
    model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def load_pretrained(
    model_dir: str | Path,
    trust_remote_code: bool = False,
    dtype: str = "float32",
    **options: Any,
) -> tuple[Any, Any]:
    """Loads (model, tokenizer) from a local checkpoint or PEFT adapter directory, safetensors
    only, in `dtype` (`model.dtype`: auto, float32, bfloat16, float16); `options` go to
    `from_pretrained` (a strategy's `load_options`, e.g. a 4-bit quantization config)."""
    import torch
    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # per-tensor bars drown the training progress
    model_dir = Path(model_dir)
    is_adapter = (model_dir / "adapter_config.json").is_file()
    if not is_adapter and not (model_dir / "config.json").is_file():
        raise ModelSourceError(f"{model_dir}: not a model directory (no config.json)")
    kwargs = {
        "dtype": dtype if dtype == "auto" else getattr(torch, dtype),
        "use_safetensors": True,
        **options,
    }
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=trust_remote_code)
        if is_adapter:  # a PEFT adapter: loads its base (recorded in adapter_config.json) too
            from peft import AutoPeftModelForCausalLM

            model = AutoPeftModelForCausalLM.from_pretrained(model_dir, **kwargs)
        else:
            model = AutoModelForCausalLM.from_pretrained(
                model_dir, trust_remote_code=trust_remote_code, **kwargs
            )
    # Corrupt files surface as many types: OSError (missing file), ValueError and KeyError
    # (bad config), TypeError (config.json not an object), RuntimeError (weights whose shapes
    # differ from config.json), SafetensorError (truncated or garbage weights).
    except (OSError, ValueError, KeyError, TypeError, RuntimeError, SafetensorError) as exc:
        first = errors.first_line(exc)
        if "mismatched_sizes" in first:  # transformers points at a report printed above
            first = "the weights' shapes do not match config.json"
        raise ModelSourceError(f"{model_dir}: cannot load model: {first}") from None
    if tokenizer.pad_token_id is None:  # many causal LMs ship without one
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def pick_device() -> Any:
    """The first CUDA GPU when there is one (a GPU worker), else the CPU."""
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
