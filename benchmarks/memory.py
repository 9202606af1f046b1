"""Peak training memory at a real model shape: full, LoRA and QLoRA, with and without gradient
checkpointing and the chunked output head.

    .venv/bin/python -m benchmarks.memory [--steps 2] [--only NAME,...] [--tiny]

Builds a random-init checkpoint of the Qwen2.5-0.5B shape (24 layers, hidden 896, 14 heads,
2 key/value heads, MLP 4864, vocabulary 151,936, tied embeddings; 494M parameters) once, in
bfloat16, with a locally trained tokenizer, then trains each variant for a few steps on raw
text in batches of 4 x 512 tokens (every token trained: the logits' worst case), each in a
fresh process through the real loop (`tuneforge.training.loop.train_model`), and prints one
JSON line per variant: peak RSS (the process's, loading included), peak CUDA memory on a GPU,
seconds per step. `--tiny` runs the same on a 2-layer model (a smoke run, seconds). The figures
for this machine are in benchmarks/RESULTS.md ("Memory at a real shape").
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

QWEN_05B = {
    "hidden_size": 896,
    "num_hidden_layers": 24,
    "num_attention_heads": 14,
    "num_key_value_heads": 2,
    "intermediate_size": 4864,
    "vocab_size": 151_936,
    "max_position_embeddings": 32_768,
    "tie_word_embeddings": True,
}
TINY = {
    **QWEN_05B,
    "num_hidden_layers": 2,
    "hidden_size": 64,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "intermediate_size": 128,
}

# name: (strategy, model.dtype, strategy settings, train overrides)
VARIANTS = {
    "full": ("full", "float32", {}, {"loss_chunk_tokens": 0}),
    "full+ckpt+chunk": ("full", "float32", {}, {"gradient_checkpointing": True}),
    "lora-fp32": ("lora", "float32", {}, {"loss_chunk_tokens": 0}),
    "lora": ("lora", "bfloat16", {}, {"loss_chunk_tokens": 0}),
    "lora+ckpt": ("lora", "bfloat16", {}, {"loss_chunk_tokens": 0, "gradient_checkpointing": True}),
    "lora+chunk": ("lora", "bfloat16", {}, {}),
    "lora+ckpt+chunk": ("lora", "bfloat16", {}, {"gradient_checkpointing": True}),
    "qlora": ("lora", "bfloat16", {"quantize_4bit": True}, {"loss_chunk_tokens": 0}),
    "qlora+ckpt+chunk": (
        "lora",
        "bfloat16",
        {"quantize_4bit": True},
        {"gradient_checkpointing": True},
    ),
    # The GPU presets' settings: bf16 autocast on top (activations in bf16).
    "lora+ckpt+chunk+autocast": (
        "lora",
        "bfloat16",
        {},
        {"gradient_checkpointing": True, "precision": "bf16"},
    ),
    "qlora+ckpt+chunk+autocast": (
        "lora",
        "bfloat16",
        {"quantize_4bit": True},
        {"gradient_checkpointing": True, "precision": "bf16"},
    ),
}


def build_checkpoint(out: Path, shape: dict) -> Path:
    """The random-init Qwen2-shaped checkpoint (bfloat16) and a byte-level tokenizer."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from tuneforge.models import train_tokenizer

    if (out / "config.json").exists():
        return out
    tokenizer = train_tokenizer([_document(i) for i in range(50)], vocab_size=2_000)
    config = Qwen2Config(
        **shape, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id
    )
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def _document(i: int) -> str:
    words = ["river", "stone", "light", "orbit", "signal", "meadow", "copper", "lantern"]
    return " ".join(f"{words[(i * 7 + k * 3) % len(words)]}{k % 97}" for k in range(600))


def run_variant(base: str, name: str, steps: int) -> dict:
    """Trains one variant in this process (called in a fresh one) and returns its figures."""
    import torch

    from tuneforge.config import TrainConfig
    from tuneforge.training.loop import train_model

    strategy, dtype, settings, overrides = VARIANTS[name]
    torch.manual_seed(0)
    records = [{"row": i, "task": None, "text": _document(i)} for i in range(8)]
    cfg = TrainConfig(
        strategy=strategy,
        settings=settings,
        steps=steps,
        batch_size=4,
        max_length=512,
        warmup_steps=0,
        checkpoint_every=0,
        **overrides,
    )
    with tempfile.TemporaryDirectory() as out:
        result = train_model(base, records, cfg, out, dtype=dtype)
    return {
        "variant": name,
        "strategy": strategy,
        "dtype": dtype,
        "settings": settings,
        **overrides,
        "steps": steps,
        "tokens_per_step": result.real_tokens // steps,
        "seconds_per_step": round(result.seconds / steps, 1),
        "peak_rss_mb": round(result.peak_rss_mb),
        "peak_cuda_mb": round(result.peak_cuda_mb),
        "trainable_parameters": result.trainable_parameters,
        "total_parameters": result.total_parameters,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--only", default=",".join(VARIANTS))
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--variant", help=argparse.SUPPRESS)  # the child process's job
    parser.add_argument("--base", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(run_variant(args.base, args.variant, args.steps)), flush=True)
        return
    shape = TINY if args.tiny else QWEN_05B
    cache = Path(tempfile.gettempdir()) / f"tuneforge-bench-qwen2-{shape['num_hidden_layers']}l"
    base = build_checkpoint(cache, shape)
    for name in args.only.split(","):
        command = [
            sys.executable,
            "-m",
            "benchmarks.memory",
            "--variant",
            name,
            "--base",
            str(base),
            "--steps",
            str(args.steps),
        ]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        lines = done.stdout.strip().splitlines()
        if done.returncode or not lines:
            print(json.dumps({"variant": name, "error": done.stderr.strip()[-500:]}), flush=True)
        else:
            print(lines[-1], flush=True)


if __name__ == "__main__":
    main()
