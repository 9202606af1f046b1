"""Resolve the base model to a local directory of safetensors weights plus tokenizer.

Sources (`model.source` in the run config):
- `tiny`: a small Llama-style model built from a config with random weights and a byte-level
  BPE tokenizer trained on the training split; no download, deterministic for a seed.
- a local directory holding a Hugging Face checkpoint: used in place.
- a Hugging Face hub id (`org/name`): fetched with `huggingface_hub.snapshot_download`,
  safetensors only.
- a registry URI `models:/NAME@ALIAS` or `models:/NAME/VERSION`: a model registered by an
  earlier tuneforge run (transfer learning), downloaded from MLflow.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from prefect import task

from tuneforge.config import ModelConfig, TinyModelConfig
from tuneforge.prompts import render_prompt, split_turns

SPECIAL_TOKENS = ["<pad>", "<s>", "</s>"]
# Files a checkpoint directory needs; anything else (pickled *.bin weights, code) is not fetched.
HUB_PATTERNS = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja"]


class ModelSourceError(ValueError):
    """The base model cannot be resolved; the message is one line naming the source."""


def _first_line(exc: Exception) -> str:
    """The first line of a library's (often multi-line) error, or its type when empty."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


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


def load_pretrained(model_dir: str | Path, trust_remote_code: bool = False) -> tuple[Any, Any]:
    """Loads (model, tokenizer) from a local checkpoint or PEFT adapter directory, safetensors
    only, in float32."""
    import torch
    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # per-tensor bars drown the training progress
    model_dir = Path(model_dir)
    is_adapter = (model_dir / "adapter_config.json").is_file()
    if not is_adapter and not (model_dir / "config.json").is_file():
        raise ModelSourceError(f"{model_dir}: not a model directory (no config.json)")
    kwargs = {"dtype": torch.float32, "use_safetensors": True}
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
        first = _first_line(exc)
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


def find_checkpoint_dir(root: Path) -> Path:
    """The directory under `root` holding a Hugging Face `config.json` with weights."""
    for config in sorted(root.rglob("config.json"), key=lambda p: len(p.parts)):
        if any(config.parent.glob("*.safetensors")):
            return config.parent
    raise ModelSourceError(f"{root}: no safetensors checkpoint found")


def download_registry_model(uri: str, dst: Path) -> Path:
    """Downloads a registered model and returns one directory with weights and tokenizer.

    tuneforge logs models in MLflow's transformers flavour (see `tasks/register.py`), which
    keeps the weights under `model/` and the tokenizer under `components/tokenizer/`; the
    tokenizer files are copied beside the weights so the result loads like any checkpoint.
    """
    import shutil

    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(dst)))
    except MlflowException as exc:
        raise ModelSourceError(f"{uri}: {exc.message.splitlines()[0]}") from None
    checkpoint = find_checkpoint_dir(local)
    tokenizer_dir = local / "components" / "tokenizer"
    if tokenizer_dir.is_dir():
        for file in tokenizer_dir.iterdir():
            if not (checkpoint / file.name).exists():
                shutil.copy2(file, checkpoint / file.name)
    return checkpoint


def resolve_model_dir(cfg: ModelConfig, train_records: list[dict[str, Any]], out_dir: Path) -> Path:
    """Returns a local checkpoint directory for `cfg.source` (see the module docstring)."""
    source = cfg.source
    if source == "tiny":
        return build_tiny_model(cfg.tiny, train_records, out_dir / "base")
    if source.startswith("models:/"):
        return download_registry_model(source, out_dir / "base")
    local = Path(source).expanduser()
    if local.is_file():
        raise ModelSourceError(f"{source}: is a file; model.source needs a checkpoint directory")
    if local.exists():
        if not (local / "config.json").is_file():
            raise ModelSourceError(f"{source}: directory has no config.json")
        return local.resolve()
    if source.startswith((".", "/", "~")) or source.count("/") != 1:
        raise ModelSourceError(f"{source}: no such model directory (and not a hub id org/name)")
    from huggingface_hub import snapshot_download

    try:
        # Code files only when the config trusts the checkpoint's code.
        patterns = [*HUB_PATTERNS, "*.py"] if cfg.trust_remote_code else HUB_PATTERNS
        path = snapshot_download(source, revision=cfg.revision, allow_patterns=patterns)
    except Exception as exc:  # offline, unknown repo, auth: all mean "cannot resolve"
        first = _first_line(exc)
        raise ModelSourceError(f"{source}: cannot fetch from the hub: {first}") from None
    return Path(path)


@task(name="resolve_base_model")
def resolve_base_model(
    cfg: ModelConfig, train_path: str, out_dir: str, run_id: str, tracking_uri: str
) -> str:
    """Materializes the base model as a local checkpoint directory and returns its path.

    A registry source is pinned first (`models:/NAME@champion` -> `models:/NAME/3`) and the
    pinned version is tagged on the run as `tuneforge.parent_version`: the lineage link from
    this model to the one it was tuned from, even if the alias moves on later.
    """
    from mlflow.tracking import MlflowClient

    from tasks.split_data import read_jsonl
    from tuneforge.model_registry import RegistryError, resolve_version

    if cfg.source.startswith("models:/"):
        client = MlflowClient(tracking_uri)
        try:
            parent = resolve_version(client, cfg.source)
        except RegistryError as exc:
            raise ModelSourceError(str(exc)) from None
        pinned = f"models:/{parent.name}/{parent.version}"
        client.set_tag(run_id, "tuneforge.parent_version", f"{parent.name}/{parent.version}")
        cfg = cfg.model_copy(update={"source": pinned})
    records = read_jsonl(train_path) if cfg.source == "tiny" else []
    return str(resolve_model_dir(cfg, records, Path(out_dir)))
