"""The GPU check: run it the moment a GPU machine is available (`make gpu-check`).

    .venv/bin/python -m benchmarks.gpu [--quick]

On CUDA it builds a random-init checkpoint of the Qwen2.5-0.5B shape (benchmarks/memory.py) and
measures, in bfloat16 on the bundled data (the same validated split and tokens for every loop):
- tuneforge full, LoRA and QLoRA (padding-free, and LoRA padded for comparison): tokens/s,
  MFU against the card's bf16 peak, peak CUDA memory;
- `transformers.Trainer` (bf16) and TRL `SFTTrainer` (its padding-free batches with flash
  attention and Liger kernels where they install) on full and LoRA, the same batches;
- that a padding-free batch gives the same loss as the padded one on the GPU (SDPA, bf16).
On a CPU it runs the same with a 2-layer model and a few steps: a smoke run that the script
works, whose figures mean nothing. Prints a markdown table to paste into benchmarks/RESULTS.md
and, on a GPU, writes benchmarks/results/gpu.json. The GPU machines of this project have torch
and transformers but not tuneforge's other dependencies (prefect, mlflow, pandera, and
bitsandbytes for QLoRA): carry them as wheels (see the device tool's README).

MFU counts 6 x parameters FLOPs per token for full training and 4 x for adapters (no weight
gradients for the frozen base), attention's own FLOPs left out: a slight underestimate.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.memory import QWEN_05B, TINY, build_checkpoint

ROOT = Path(__file__).resolve().parents[1]
# Dense bf16 tensor-core peaks, TFLOPS, from the vendors' data sheets (no sparsity).
PEAK_TFLOPS = {
    "H200": 989.0,
    "H100 PCIe": 756.0,
    "H100": 989.0,
    "A100": 312.0,
    "L40S": 362.0,
    "L4": 121.0,
    "A10": 125.0,
}
TUNEFORGE = {  # name: (strategy, settings, train overrides)
    "full": ("full", {}, {}),
    "lora": ("lora", {}, {}),
    "lora-padded": ("lora", {}, {"padding_free": False}),
    "qlora": ("lora", {"quantize_4bit": True}, {}),
}


def card_peak(name: str) -> float | None:
    return next((peak for card, peak in PEAK_TFLOPS.items() if card in name), None)


def tuneforge_variant(base: str, name: str, quick: bool) -> dict:
    """One tuneforge run of `name` (in a fresh process, like every run here)."""
    import torch

    from benchmarks.common import BenchConfig, load_split
    from tuneforge.training.loop import train_model

    strategy, settings, overrides = TUNEFORGE[name]
    train, _ = load_split()
    cfg = BenchConfig.gpu(base, quick).train_config(
        strategy, settings=settings, precision="bf16", **overrides
    )
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as out:
        result = train_model(base, train, cfg, out, dtype="bfloat16")
    return {
        "loop": f"tuneforge {name}",
        "strategy": strategy,
        "tokens_per_second": result.tokens_per_second,
        "peak_cuda_mb": result.peak_cuda_mb,
        "peak_rss_mb": result.peak_rss_mb,
        "trainable_parameters": result.trainable_parameters,
        "total_parameters": result.total_parameters,
    }


def hf_variant(base: str, runner: str, strategy: str, quick: bool) -> dict:
    """The Trainer or TRL on the same batches, through benchmarks/run_hf.py."""
    with tempfile.TemporaryDirectory() as out:
        env = {**os.environ, "BENCH_BASE": base, "BENCH_QUICK": "1" if quick else "0"}
        command = [sys.executable, "-m", "benchmarks.run_hf", runner, strategy, out, out]
        done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
        if done.returncode:
            return {"loop": f"{runner} {strategy}", "error": done.stderr.strip()[-300:]}
        result = json.loads(Path(out, "result.json").read_text())
    return {
        "loop": f"{runner} {strategy}",
        "strategy": strategy,
        "tokens_per_second": result["real_tokens"] / result["train_seconds"],
    }


def padding_free_equals_padded(base: str) -> dict:
    """One batch of the bundled data: the padding-free loss against the padded one."""
    import torch

    from benchmarks.common import load_split, strategy_for
    from tuneforge.batching import collate
    from tuneforge.models import load_pretrained, pick_device
    from tuneforge.training import padding_free
    from tuneforge.training.losses import token_mean_loss

    model, tokenizer = load_pretrained(base, dtype="bfloat16")
    model.to(pick_device()).eval()
    strategy = strategy_for("lora")
    train, _ = load_split()
    examples = [strategy.build_example(r, tokenizer, 256) for r in train[:16]]
    device = pick_device()

    def loss(batch: dict) -> float:
        batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
        with torch.no_grad(), torch.autocast(device.type, torch.bfloat16):
            return token_mean_loss(model, batch, 1)[1]

    padded = loss(collate(examples, tokenizer.pad_token_id))
    with padding_free.attention(model):
        flat = loss(padding_free.collate_flat(examples, 16, tokenizer.pad_token_id))
    return {"padded_loss": padded, "padding_free_loss": flat, "relative": abs(flat / padded - 1)}


def in_child(function: str, *args: str) -> dict:
    command = [sys.executable, "-m", "benchmarks.gpu", "--child", function, *args]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    lines = done.stdout.strip().splitlines()
    if done.returncode or not lines:
        return {"loop": " ".join(args[1:]), "error": done.stderr.strip()[-300:]}
    return json.loads(lines[-1])


def table(rows: list[dict], card: str, peak: float | None) -> str:
    out = [
        f"GPU: {card} (bf16 peak {peak or 'unknown'} TFLOPS)",
        "",
        "| loop | tokens/s | MFU | peak CUDA MiB |",
        "|---|---|---|---|",
    ]
    for row in rows:
        if "error" in row:
            error = " ".join(row["error"].split()[-12:]).replace("|", "/")
            out.append(f"| {row['loop']} | failed: {error} | | |")
            continue
        mfu = row.get("mfu")
        mfu_text = f"{mfu:.1%}" if mfu is not None else "n/a"
        memory = f"{row['peak_cuda_mb']:.0f}" if row.get("peak_cuda_mb") else "n/a"
        out.append(f"| {row['loop']} | {row['tokens_per_second']:,.0f} | {mfu_text} | {memory} |")
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="a few steps (also on a GPU)")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        function, *rest = args.child
        handlers = {"tuneforge": tuneforge_variant, "hf": hf_variant}
        if function == "check":
            print(json.dumps(padding_free_equals_padded(*rest)))
        else:
            quick = rest[-1] == "quick"
            print(json.dumps(handlers[function](*rest[:-1], quick=quick)))
        return

    import torch

    cuda = torch.cuda.is_available()
    quick = args.quick or not cuda
    card = torch.cuda.get_device_name() if cuda else "none (CPU smoke run)"
    peak = card_peak(card) if cuda else None
    shape = QWEN_05B if cuda else TINY
    cache = Path(tempfile.gettempdir()) / f"tuneforge-bench-qwen2-{shape['num_hidden_layers']}l"
    base = str(build_checkpoint(cache, shape))
    size = "quick" if quick else "full"
    rows = [in_child("tuneforge", base, name, size) for name in TUNEFORGE]
    for runner in ("trainer-bf16", "trl"):
        rows += [in_child("hf", base, runner, strategy, size) for strategy in ("full", "lora")]
    parameters = next((r["total_parameters"] for r in rows if "total_parameters" in r), None)
    for row in rows:
        if "error" not in row and peak and parameters:
            per_token = (6 if row["strategy"] == "full" else 4) * parameters
            row["mfu"] = row["tokens_per_second"] * per_token / (peak * 1e12)
    check = in_child("check", base)
    report = table(rows, card, peak)
    if "error" in check:
        report += f"\n\nPadding-free vs padded loss: failed: {check['error'][-200:]}"
    else:
        report += (
            f"\n\nPadding-free vs padded loss on one batch: {check['padding_free_loss']:.5f} vs "
            f"{check['padded_loss']:.5f} (relative difference {check['relative']:.1e})"
        )
    print(report)
    if not cuda:
        return  # a smoke run: nothing worth keeping
    out = ROOT / "benchmarks" / "results" / "gpu.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"card": card, "rows": rows, "check": check}, indent=1))


if __name__ == "__main__":
    main()
