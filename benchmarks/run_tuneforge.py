"""One benchmark run through tuneforge's own training loop (`tuneforge.training.loop.train_model`).

    .venv/bin/python -m benchmarks.run_tuneforge STRATEGY OUT_DIR CACHE_DIR [FLAG ...]

With no flag, tuneforge's defaults (padding-free batches, fp32). `--padded` turns padding-free
batches off (`train.padding_free: false`): the usual right-padded batches, as the Trainer's.
`--group-by-length` sets `train.group_by_length`. `--bf16` sets `train.precision: bf16`: the
forward pass runs under bfloat16 autocast; weights, gradients, optimizer state and the loss
stay float32 (as in TRL, whose default this is).
(Wrapping the whole loop in autocast, backward and optimizer step included, barely trained:
eval loss 6.55 against 3.49 for `full`.)

Called by `benchmarks/run.py`, one process per run; writes OUT_DIR/result.json.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from benchmarks.common import (
    BenchConfig,
    RunResult,
    build_base,
    eval_loss,
    load_split,
    strategy_for,
    write_result,
)


def padded_tokens(
    lengths: list[int],
    cfg: BenchConfig,
    group_by_length: bool,
    padding_free: bool,
    row_multiple: int = 1,
) -> int:
    """What the loop's layers computed, batch by batch in `train_model`'s order (deterministic
    for a seed): padded, every row as wide as the batch's longest; padding-free, the real tokens
    rounded up to `row_multiple` (the filler of `padding_free.collate_flat`). Attention alone
    still works in the padded layout."""
    from tuneforge.training.loop import batch_order

    order = batch_order(
        len(lengths), cfg.batch_size, cfg.steps, cfg.seed, lengths if group_by_length else None
    )
    if padding_free:
        return sum(-(-sum(lengths[i] for i in b) // row_multiple) * row_multiple for b in order)
    return sum(max(lengths[i] for i in batch) * len(batch) for batch in order)


def main(strategy: str, out_dir: Path, cache_dir: Path, flags: list[str]) -> None:
    from tuneforge.models import load_pretrained
    from tuneforge.training import padding_free
    from tuneforge.training.loop import train_model

    unknown = set(flags) - {"--padded", "--group-by-length", "--bf16"}
    if unknown:
        raise SystemExit(f"unknown flags {sorted(unknown)}")
    padded, group_by_length, bf16 = (
        f in flags for f in ("--padded", "--group-by-length", "--bf16")
    )
    cfg = BenchConfig.from_env()
    base = build_base(cfg, cache_dir)
    train, evaluation = load_split()
    train_cfg = cfg.train_config(
        strategy,
        group_by_length=group_by_length,
        padding_free=not padded,
        precision="bf16" if bf16 else "fp32",
    )
    result = train_model(base, train, train_cfg, out_dir / "model")
    # Padding share, for the report: rebuild the examples the loop trained on.
    _, tokenizer = load_pretrained(base)
    strat = strategy_for(strategy)
    lengths = [len(strat.build_example(r, tokenizer, cfg.max_length).input_ids) for r in train]
    write_result(
        RunResult(
            runner="tuneforge"
            + ("-padded" if padded else "")
            + ("-grouped" if group_by_length else "")
            + ("-bf16" if bf16 else ""),
            strategy=strategy,
            steps=result.steps,
            real_tokens=result.real_tokens,
            padded_tokens=padded_tokens(
                lengths,
                cfg,
                group_by_length,
                result.batches == "padding-free",
                padding_free.row_multiple(train_cfg.precision),
            ),
            trained_tokens=result.trained_tokens,
            train_seconds=result.seconds,
            eval_loss=eval_loss(Path(result.model_dir), evaluation, cfg),
            threads=torch.get_num_threads(),
        ),
        out_dir / "result.json",
    )


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4:])
