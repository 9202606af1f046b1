"""A registered version exported for a serving engine, from its downloaded MLflow model.

    root = serving.download("models:/tuneforge-demo@champion", scratch)
    export_version(root, "merged", out_dir)          # a plain Hugging Face checkpoint
    export_version(root, "adapter", out_dir)         # the PEFT adapter, checked for vLLM
    export_version(root, "gguf", out_dir, "q8_0")    # one GGUF file, for llama.cpp / Ollama

- merged: the checkpoint with any adapter (LoRA, QLoRA: the base unquantised) merged into it,
  in the version's dtype (`model.dtype`), with its tokenizer and chat template; loads with
  `AutoModelForCausalLM.from_pretrained(out)` and nothing of tuneforge.
- adapter: an adapter version's PEFT directory as is, refused in one line unless vLLM can
  hot-load it (`vllm_refusal`); `tuneforge_export.json` beside it records its base's lasting
  address.
- gguf: the merged checkpoint written as GGUF (`gguf.py`): f16, bf16 or q8_0.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any, Literal

from tuneforge.serving import CHECKPOINT, load_registered, read_manifest

Format = Literal["merged", "adapter", "gguf"]
FORMATS: tuple[str, ...] = ("merged", "adapter", "gguf")

# The LoRA ranks vLLM's punica kernels take (vllm/config/lora.py, 0.11); its default
# --max-lora-rank is 16, so larger ones also need that flag raised.
VLLM_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
VLLM_DEFAULT_MAX_RANK = 16


class ExportError(ValueError):
    """A version that cannot be exported as asked; the message is one line saying why."""


def export_version(
    root: Path, fmt: Format, out_dir: Path, precision: str = "f16", name: str = "model"
) -> Path:
    """Exports the downloaded version at `root` into `out_dir`; returns the exported file or
    directory (`out_dir` itself, or the GGUF file in it)."""
    manifest = read_manifest(root)
    if manifest is None:
        raise ExportError(f"{root}: registered before tuneforge's layout 1; retrain it to export")
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}; use one of {', '.join(FORMATS)}")
    if fmt != "gguf" and out_dir.exists() and any(out_dir.iterdir()):
        # A checkpoint written over another mixes their files (an adapter_config.json left
        # beside a merged model makes transformers load the folder as an adapter).
        raise ExportError(f"{out_dir}: not empty; export {fmt} into a new or empty folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    if fmt == "merged":
        return export_merged(root, out_dir)
    if fmt == "adapter":
        return export_adapter(root, manifest, out_dir)
    missing = gguf_missing()
    if missing:
        raise ExportError(missing)
    from tuneforge.exports.gguf import write_gguf

    with tempfile.TemporaryDirectory(prefix="tuneforge-export-") as tmp:
        merged = export_merged(root, Path(tmp) / "merged")
        try:
            return write_gguf(merged, out_dir / f"{name}-{precision}.gguf", precision, name)
        except ValueError as exc:  # what the file cannot carry, one line naming it
            raise ExportError(str(exc).replace(str(merged), name)) from exc


def gguf_missing() -> str | None:
    """Why a GGUF export cannot be written here (the `gguf` package missing), or None."""
    import importlib.util

    if importlib.util.find_spec("gguf") is None:
        return "gguf export needs the gguf package: pip install 'tuneforge[export]'"
    return None


def export_merged(root: Path, out_dir: Path) -> Path:
    """The version as one plain checkpoint in its dtype, an adapter merged onto its base."""
    with tempfile.TemporaryDirectory(prefix="tuneforge-base-") as scratch:
        model, tokenizer = load_registered(root, Path(scratch))
        model.save_pretrained(out_dir)
        tokenizer.save_pretrained(out_dir)
    return out_dir


def export_adapter(root: Path, manifest: dict[str, Any], out_dir: Path) -> Path:
    """An adapter version's PEFT directory, if vLLM can load it, with its base's address."""
    checkpoint = root / "artifacts" / CHECKPOINT
    config_path = checkpoint / "adapter_config.json"
    if not manifest.get("adapter") or not config_path.is_file():
        raise ExportError(
            f"{root}: a full checkpoint, not an adapter (its strategy trained every weight it "
            "changed): export it as merged or gguf"
        )
    config = json.loads(config_path.read_text())
    reason = vllm_refusal(config)
    if reason:
        raise ExportError(f"{root}: vLLM cannot load this adapter: {reason}")
    shutil.copytree(checkpoint, out_dir, dirs_exist_ok=True)
    base = manifest.get("base")
    note = {
        "base": base,  # models:/NAME/VERSION, hf://Org/Name@commit, or bundled
        "vllm": {
            "rank": config["r"],
            "needs_max_lora_rank": config["r"] > VLLM_DEFAULT_MAX_RANK,
        },
    }
    (out_dir / "tuneforge_export.json").write_text(json.dumps(note, indent=1))
    return out_dir


def vllm_refusal(config: dict[str, Any]) -> str | None:
    """Why vLLM would refuse a PEFT adapter (`adapter_config.json`), or None: LoRA only, no
    `modules_to_save`, no bias, no DoRA, adapters on linear layers only, a rank its kernels
    take. The settings that give such an adapter: `train.strategy: lora` with its defaults
    (rank 8, the attention projections); rank 16 or less needs no extra vLLM flag."""
    if config.get("peft_type") != "LORA":
        return f"peft_type {config.get('peft_type')!r}; vLLM loads LoRA adapters only"
    if config.get("modules_to_save"):
        return f"modules_to_save {config['modules_to_save']} (whole modules trained beside it)"
    if config.get("bias", "none") != "none":
        return f"bias {config['bias']!r}; vLLM loads adapters with bias 'none'"
    if config.get("use_dora"):
        return "DoRA (use_dora); vLLM loads plain LoRA"
    targets = config.get("target_modules") or []
    targets = [targets] if isinstance(targets, str) else targets
    embedded = [t for t in targets if t in ("embed_tokens", "lm_head", "wte", "word_embeddings")]
    if embedded:
        return f"adapters on {', '.join(embedded)}; vLLM loads adapters on linear layers only"
    rank = config.get("r")
    if rank not in VLLM_RANKS:
        allowed = ", ".join(map(str, VLLM_RANKS))
        return f"rank {rank}; vLLM takes ranks {allowed} (train with lora rank 8 or 16)"
    return None
