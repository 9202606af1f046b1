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

from pathlib import Path
from typing import Any

from prefect import task

from tuneforge import lineage
from tuneforge.config import ModelConfig
from tuneforge.models import ModelSourceError, build_tiny_model
from tuneforge.run_context import RunContext
from tuneforge.serving import ModelLoadError, hub_snapshot, materialize

TOKENIZER_ROWS = 50_000  # rows the tiny model's tokenizer learns from, at most


def download_registry_model(uri: str, dst: Path) -> Path:
    """Downloads a registered model and returns one checkpoint directory with weights and
    tokenizer: an adapter version comes back merged onto its base, resolved through the
    registry or the hub (`tuneforge.serving.materialize`)."""
    try:
        return materialize(uri, dst)
    except ModelLoadError as exc:
        raise ModelSourceError(str(exc)) from None


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
    try:  # code files only when the config trusts the checkpoint's code
        return hub_snapshot(source, cfg.revision, cfg.trust_remote_code)
    except ModelLoadError as exc:
        raise ModelSourceError(str(exc)) from None


@task(name="resolve_base_model")
def resolve_base_model(*, model: ModelConfig, train_path: str, ctx: RunContext) -> str:
    """Materializes the base model as a local checkpoint directory and returns its path.

    A registry source is pinned first (`models:/NAME@champion` -> `models:/NAME/3`) and the
    pinned version is tagged on the run as `tuneforge.parent_version`: the lineage link from
    this model to the one it was tuned from, even if the alias moves on later.
    """
    from mlflow.tracking import MlflowClient

    from tuneforge.jsonl import read_jsonl_sample
    from tuneforge.model_registry import RegistryError, resolve_version

    if model.source.startswith("models:/"):
        client = MlflowClient(ctx.tracking_uri)
        try:
            parent = resolve_version(client, model.source)
        except RegistryError as exc:
            raise ModelSourceError(str(exc)) from None
        pinned = f"models:/{parent.name}/{parent.version}"
        client.set_tag(ctx.run_id, lineage.PARENT_VERSION, f"{parent.name}/{parent.version}")
        model = model.model_copy(update={"source": pinned})
    # The tiny model's tokenizer learns from at most TOKENIZER_ROWS rows spread over the split:
    # all of them for small data; at a million rows, training it on all took 25 s.
    records = read_jsonl_sample(train_path, TOKENIZER_ROWS) if model.source == "tiny" else []
    return str(resolve_model_dir(model, records, Path(ctx.run_dir)))
