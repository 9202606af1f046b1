"""Where one training step of tuneforge's loop spends its time, and what a variant changes.

    .venv/bin/python -m benchmarks.profile_step STRATEGY CACHE_DIR [STEPS [VARIANT ...]]

Runs the loop's own pieces (collation, `token_mean_loss`, backward, clipping, fused AdamW) on
the benchmark model and batches, timing each, for: the loop as it is (padding-free batches);
with padded batches (`train.padding_free: false`); the forward without the KV cache
(`use_cache=False`, which `transformers.Trainer` and TRL set for training); one thread instead
of two; bfloat16 autocast (TRL's default, `bf16=True`). Prints one JSON line per variant. Each
variant starts from the same weights and runs the same batches; the first 3 steps are warm-up
and not timed.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import BenchConfig, build_base, load_split, strategy_for


def run_variant(name: str, strategy_name: str, base: Path, steps: int, **options: Any) -> dict:
    from tuneforge.batching import collate
    from tuneforge.models import load_pretrained
    from tuneforge.training import padding_free
    from tuneforge.training.loop import batch_order
    from tuneforge.training.losses import token_mean_loss

    cfg = BenchConfig.from_env()
    torch.set_num_threads(options.get("threads", 2))
    torch.manual_seed(cfg.seed)
    strategy = strategy_for(strategy_name)
    model, tokenizer = load_pretrained(base)
    model = strategy.prepare_model(model).train()
    if options.get("no_cache"):
        model.config.use_cache = False
    if options.get("compile"):
        # dynamic=True: batch widths vary; compile time is counted in the warm-up steps only.
        model = torch.compile(model, dynamic=True)
    train, _ = load_split()
    examples = [strategy.build_example(r, tokenizer, cfg.max_length) for r in train]
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, fused=True)
    parts = dict.fromkeys(("collate", "forward", "backward", "clip", "optimizer"), 0.0)
    real = 0
    order = batch_order(len(examples), cfg.batch_size, steps + 3, cfg.seed)
    flat = not options.get("padded")
    swapped = padding_free.attention(model) if flat else contextlib.nullcontext()
    swapped.__enter__()  # left on: each variant loads its own model
    for step, indices in enumerate(order):
        marks = [time.perf_counter()]
        chosen = [examples[i] for i in indices]
        batch = (
            padding_free.collate_flat(chosen) if flat else collate(chosen, tokenizer.pad_token_id)
        )
        marks.append(time.perf_counter())
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bool(options.get("bf16"))):
            loss, _ = token_mean_loss(model, batch, 1)
        marks.append(time.perf_counter())
        loss.backward()
        marks.append(time.perf_counter())
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        marks.append(time.perf_counter())
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        marks.append(time.perf_counter())
        if step >= 3:
            for key, start, end in zip(parts, marks, marks[1:], strict=False):
                parts[key] += end - start
            real += sum(len(e.input_ids) for e in chosen)
    total = sum(parts.values())
    return {
        "variant": name,
        "strategy": strategy_name,
        "tokens_per_second": round(real / total),
        "seconds": round(total, 2),
        **{f"{k}_share": round(v / total, 3) for k, v in parts.items()},
    }


if __name__ == "__main__":
    strategy, cache = sys.argv[1], Path(sys.argv[2])
    steps = int(sys.argv[3]) if len(sys.argv) > 3 else 20
    base = build_base(BenchConfig.from_env(), cache)
    variants = {
        "as is": {},
        "padded": {"padded": True},
        "use_cache=False": {"no_cache": True},
        "1 thread": {"threads": 1},
        # What TRL's SFTConfig does by default (bf16=True): autocast, a change of precision.
        "bf16 autocast": {"bf16": True},
        "torch.compile": {"compile": True},  # not in the default set: minutes of compiling
    }
    names = sys.argv[4:] or ["as is", "padded", "as is", "padded", "1 thread", "bf16 autocast"]
    for name in names:
        result = run_variant(name, strategy, base, steps, **variants[name])
        print(json.dumps(result), flush=True)
