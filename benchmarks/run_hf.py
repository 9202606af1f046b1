"""One benchmark run through Hugging Face's loops: a plain `transformers.Trainer` with the usual
dynamic padding (`DataCollatorForSeq2Seq`), or TRL's `SFTTrainer` with its own collator.

    .venv/bin/python -m benchmarks.run_hf trainer|trainer-bf16|trl STRATEGY OUT_DIR CACHE_DIR

`trainer-bf16` is the same Trainer with `bf16=True` (bfloat16 autocast of the forward, as
tuneforge's `precision: bf16`): the equal-precision comparison for that setting.

Called by `benchmarks/run.py`, one process per run; writes OUT_DIR/result.json. The model is
prepared and the examples are tokenized by the same tuneforge strategy (so the same weights train
and the same tokens carry loss); the optimizer is the one tuneforge uses (fused AdamW, weight
decay 0, linear warmup and decay, gradient clipping at 1.0).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import (
    BenchConfig,
    RunResult,
    build_base,
    eval_loss,
    load_split,
    now,
    strategy_for,
    write_result,
)
from tuneforge.batching import IGNORE_INDEX


class Counters:
    """Counts what each step computed, and times the loop from its first step to its end."""

    def __init__(self) -> None:
        self.real = self.padded = self.trained = 0
        self.started = self.ended = 0.0

    def count(self, inputs: dict[str, torch.Tensor]) -> None:
        self.real += int(inputs["attention_mask"].sum())
        self.padded += inputs["input_ids"].numel()
        self.trained += int((inputs["labels"][:, 1:] != IGNORE_INDEX).sum())


def counting(base: type) -> type:
    """`base` (Trainer or SFTTrainer) with a compute_loss that counts tokens first: one sum per
    step, negligible next to a forward pass."""

    class Counting(base):  # type: ignore[misc, valid-type]
        counters = Counters()

        def compute_loss(self, model: Any, inputs: Any, *args: Any, **kwargs: Any) -> Any:
            self.counters.count(inputs)
            return super().compute_loss(model, inputs, *args, **kwargs)

    return Counting


def training_args(cfg: BenchConfig, out_dir: Path) -> dict[str, Any]:
    """The arguments both loops share; everything else stays at the library's default."""
    return {
        "output_dir": str(out_dir / "hf"),
        "max_steps": cfg.steps,
        "per_device_train_batch_size": cfg.batch_size,
        "learning_rate": cfg.learning_rate,
        "lr_scheduler_type": "linear",
        "warmup_steps": cfg.warmup_steps,
        "weight_decay": 0.0,
        "max_grad_norm": 1.0,
        "optim": "adamw_torch_fused",
        "seed": cfg.seed,
        "logging_steps": cfg.steps,
        "save_strategy": "no",
        "report_to": "none",
        "use_cpu": not torch.cuda.is_available(),
        "dataloader_num_workers": 0,
        "disable_tqdm": True,
    }


def main(runner: str, strategy_name: str, out_dir: Path, cache_dir: Path) -> None:
    from datasets import Dataset
    from transformers import TrainerCallback

    from tuneforge.models import load_pretrained

    cfg = BenchConfig.from_env()
    base = build_base(cfg, cache_dir)
    train, evaluation = load_split()
    torch.manual_seed(cfg.seed)  # as train_model does before preparing the model
    strategy = strategy_for(strategy_name)
    flash = cfg.base_dir is not None and runner == "trl" and _installed("flash_attn")
    extra = {"attn_implementation": "flash_attention_2"} if flash else {}
    model, tokenizer = load_pretrained(base, dtype=cfg.dtype, **extra)
    model = strategy.prepare_model(model)
    examples = [strategy.build_example(r, tokenizer, cfg.max_length) for r in train]

    if runner in ("trainer", "trainer-bf16"):
        from transformers import DataCollatorForSeq2Seq, Trainer, TrainingArguments

        rows = [
            {"input_ids": e.input_ids, "attention_mask": [1] * len(e.input_ids), "labels": e.labels}
            for e in examples
        ]
        trainer = counting(Trainer)(
            model=model,
            args=TrainingArguments(**training_args(cfg, out_dir), bf16=runner == "trainer-bf16"),
            train_dataset=Dataset.from_list(rows),
            data_collator=DataCollatorForSeq2Seq(tokenizer, padding=True),
            processing_class=tokenizer,
        )
    elif runner == "trl":
        from trl import SFTConfig, SFTTrainer

        # Pre-tokenized rows: SFTTrainer skips its own tokenization, and its collator trains
        # the tokens of `completion_mask` (the response, or every token for `full`).
        rows = [
            {
                "input_ids": e.input_ids,
                "completion_mask": [int(label != IGNORE_INDEX) for label in e.labels],
            }
            for e in examples
        ]
        trainer = counting(SFTTrainer)(
            model=model,
            args=SFTConfig(
                **training_args(cfg, out_dir),
                max_length=cfg.max_length,
                # Inferred only for prompt/completion text columns; pre-tokenized rows must say it.
                completion_only_loss=strategy_name != "full",
                # On a GPU (benchmarks/gpu.py): TRL's fastest settings where they install.
                # Padding-free is correct only with flash attention (positions alone do not
                # keep SDPA's attention within each example).
                padding_free=flash,
                use_liger_kernel=cfg.base_dir is not None and _installed("liger_kernel"),
            ),
            train_dataset=Dataset.from_list(rows),
            processing_class=tokenizer,
        )

    else:
        raise SystemExit(f"unknown runner {runner!r} (trainer, trainer-bf16, trl)")
    counters = trainer.counters

    class Clock(TrainerCallback):
        def on_train_begin(self, *args: Any, **kwargs: Any) -> None:
            counters.started = now()

        def on_train_end(self, *args: Any, **kwargs: Any) -> None:
            counters.ended = now()

    trainer.add_callback(Clock())
    trainer.train()
    trainer.save_model(str(out_dir / "model"))
    write_result(
        RunResult(
            runner=runner,
            strategy=strategy_name,
            steps=trainer.state.global_step,
            real_tokens=counters.real,
            padded_tokens=counters.padded,
            trained_tokens=counters.trained,
            train_seconds=counters.ended - counters.started,
            eval_loss=eval_loss(out_dir / "model", evaluation, cfg),
            threads=torch.get_num_threads(),
        ),
        out_dir / "result.json",
    )


def _installed(module: str) -> bool:
    from importlib.util import find_spec

    return find_spec(module) is not None


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], Path(sys.argv[3]), Path(sys.argv[4]))
