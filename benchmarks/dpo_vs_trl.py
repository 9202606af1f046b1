"""DPO through tuneforge's loop against TRL's `DPOTrainer`: speed, memory and loss.

    .venv/bin/python -m benchmarks.dpo_vs_trl [--steps 100]
        [--out benchmarks/results/dpo_vs_trl.json] [--systems tuneforge,trl,trl-precompute]
        [--lr 5e-4] [--no-wait]

Systems, each in a process of its own, one after the other (never two at once), 2 threads:

- `tuneforge`: `train_model` with `train.strategy: dpo` (its defaults: padding-free batches,
  the reference's log-probabilities computed once before the first step);
- `trl`: `DPOTrainer` with its default reference: a second copy of the model, run forward
  every step;
- `trl-precompute`: the same with `precompute_ref_log_probs=True` (16 pairs a forward, as
  tuneforge's precompute): the reference's log-probabilities computed once, like tuneforge's;
- `tuneforge-padded` (only when named): tuneforge with `train.padding_free: false`, padded
  batches as TRL's: what padding-free batches buy here.

What is equal: the model (the tiny-cpu preset's: Llama, 2 layers, hidden 128, random init, a
byte-level BPE tokenizer trained on the pairs), the pairs (data/preferences.jsonl, validated
as a run validates them), the tokens (TRL gets tuneforge's `dpo` examples pre-tokenized: the
same prompt, answers and end-of-turn token, the same pairs left out as too long), fp32, full
weights, beta 0.1, sigmoid loss, max_length 128, batch 8 pairs, the steps, fused AdamW at the
same learning rate, weight decay 0, linear warmup (a tenth of the steps) and decay, clipping at
1.0, seed 0. TRL runs at fp32 without gradient checkpointing (its defaults are bf16 and
checkpointing on), as tuneforge does.

Per system: real tokens/s (non-padding tokens of every pair's chosen and rejected sequences,
prompt included, that the trained model ran forward on, summed over the steps, over the
training loop's seconds; counted from the batches for TRL and by `train_model` for tuneforge),
peak RSS of the process (MiB, from the parent's `wait4`), the final loss (mean of the last 10
steps' losses), the reference precompute's seconds, the wall seconds from the start of setup
(tokenizing, models, reference) to the end of training, and the whole process's seconds
(imports included). The JSON goes to `--out`; a markdown table is printed.

The model is random-init, so the loss says whether both loops optimise the same objective
equally well (the step-1 loss is ln 2 = 0.6931 for every system), not how good a model DPO
makes. For seed 0 both samplers draw the same batches (the real-token counts agree), but the
schedules are one step apart: transformers' warmup gives the first step a learning rate of 0,
tuneforge's 1/warmup of it, so TRL's losses trail tuneforge's by about a step.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PAIRS = ROOT / "data" / "preferences.jsonl"
PRESET = ROOT / "deployments" / "presets" / "tiny-cpu.yaml"
OUT = ROOT / "benchmarks" / "results" / "dpo_vs_trl.json"
SYSTEMS = ("tuneforge", "trl", "trl-precompute")
KNOWN = (*SYSTEMS, "tuneforge-padded")
THREADS = 2
BATCH_PAIRS = 8
BETA = 0.1
MAX_LENGTH = 128
REFERENCE_BATCH = 16  # pairs per reference forward while precomputing (tuneforge's value)
LAST = 10  # the final loss is the mean of this many last steps


def load_pairs() -> list[dict[str, Any]]:
    """The bundled pairs, validated as a run validates them (data.max_chars 2000)."""
    from tuneforge.data.reading import read_rows
    from tuneforge.data.validation import validate_rows

    valid, _ = validate_rows(read_rows(str(PAIRS)), 2000)
    return valid


def build_base(cache: Path) -> Path:
    """The tiny-cpu preset's model (`model.tiny`), its tokenizer trained on the pairs, as the
    preset's `source: tiny` builds it from the run's training data."""
    import yaml

    from tuneforge.models import TinyModelConfig, build_tiny_model

    tiny = yaml.safe_load(PRESET.read_text())["model"]["tiny"]
    return build_tiny_model(TinyModelConfig(**tiny), load_pairs(), cache / "base")


# Children: one system, one process ------------------------------------------------------


def run_tuneforge(base: Path, work: Path, steps: int, lr: float, padded: bool) -> dict[str, Any]:
    from tuneforge.config import TrainConfig
    from tuneforge.lineage import TRAIN_LOSS
    from tuneforge.training.loop import train_model

    records = load_pairs()
    cfg = TrainConfig(
        strategy="dpo",
        settings={"beta": BETA, "loss_type": "sigmoid"},
        steps=steps,
        batch_size=BATCH_PAIRS,
        learning_rate=lr,
        warmup_steps=max(1, steps // 10),
        max_length=MAX_LENGTH,
        padding_free=not padded,
        num_threads=THREADS,
        seed=0,
        log_every=1,  # every step's loss, for the mean of the last ten
        checkpoint_every=0,
    )
    losses: list[float] = []

    def on_metrics(step: int, metrics: dict[str, float]) -> None:
        if TRAIN_LOSS in metrics:
            losses.append(metrics[TRAIN_LOSS])

    started = time.perf_counter()
    result = train_model(base, records, cfg, work / "model", on_metrics=on_metrics)
    wall = time.perf_counter() - started
    return {
        "steps": result.steps,
        "pairs": result.examples // 2,
        "left_out": result.too_long,
        "real_tokens": result.real_tokens,
        "train_seconds": result.seconds,
        "reference_seconds": result.reference_seconds,
        "wall_seconds": wall,
        "losses": losses,
        "batches": result.batches,
    }


def trl_rows(tokenizer: Any) -> tuple[list[dict[str, list[int]]], int]:
    """tuneforge's `dpo` examples as TRL's pre-tokenized columns (`prompt_ids`, `chosen_ids`,
    `rejected_ids`), the same pairs left out; and how many were left out."""
    from tuneforge.plugins.dpo import DpoStrategy
    from tuneforge.plugins.preference import answer_start
    from tuneforge.training.preference import PreferenceObjective

    strategy = DpoStrategy(DpoStrategy.Settings(beta=BETA, loss_type="sigmoid"))
    objective = PreferenceObjective(strategy, load_pairs(), tokenizer, MAX_LENGTH)
    rows = []
    for first, second in objective.units:
        chosen, rejected = objective.examples[first], objective.examples[second]
        start = answer_start(chosen)
        assert rejected.input_ids[:start] == chosen.input_ids[:start], "prompts differ"
        rows.append(
            {
                "prompt_ids": chosen.input_ids[:start],
                "chosen_ids": chosen.input_ids[start:],
                "rejected_ids": rejected.input_ids[start:],
            }
        )
    return rows, len(objective.too_long)


def run_trl(base: Path, work: Path, steps: int, lr: float, precompute: bool) -> dict[str, Any]:
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import DPOConfig, DPOTrainer

    from tuneforge.models import load_pretrained

    clock: dict[str, float] = {"reference": 0.0}
    losses: list[float] = []
    tokens = [0]

    class Benchmarked(DPOTrainer):
        def _prepare_dataset(self, dataset: Any, *args: Any, **kwargs: Any) -> Any:
            return dataset  # already tokenized, by tuneforge's dpo strategy

        def _precompute_ref_logps(self, *args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return super()._precompute_ref_logps(*args, **kwargs)
            finally:
                clock["reference"] += time.perf_counter() - started

        def compute_loss(self, model: Any, inputs: Any, *args: Any, **kwargs: Any) -> Any:
            tokens[0] += int(inputs["attention_mask"].sum())  # chosen and rejected rows
            loss = super().compute_loss(model, inputs, *args, **kwargs)
            losses.append(float(loss.detach()))
            return loss

    class Clock(TrainerCallback):
        def on_train_begin(self, *args: Any, **kwargs: Any) -> None:
            clock["begin"] = time.perf_counter()

        def on_train_end(self, *args: Any, **kwargs: Any) -> None:
            clock["end"] = time.perf_counter()

    started = time.perf_counter()
    torch.manual_seed(0)
    model, tokenizer = load_pretrained(base)  # float32
    rows, left_out = trl_rows(tokenizer)
    args = DPOConfig(
        output_dir=str(work / "trl"),
        max_steps=steps,
        per_device_train_batch_size=BATCH_PAIRS,
        learning_rate=lr,
        lr_scheduler_type="linear",
        warmup_steps=max(1, steps // 10),
        weight_decay=0.0,
        max_grad_norm=1.0,
        optim="adamw_torch_fused",
        seed=0,
        beta=BETA,
        loss_type=["sigmoid"],
        max_length=MAX_LENGTH,
        precompute_ref_log_probs=precompute,
        precompute_ref_batch_size=REFERENCE_BATCH if precompute else None,
        bf16=False,
        gradient_checkpointing=False,
        use_cpu=True,
        dataloader_num_workers=0,
        logging_steps=steps,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
    )
    trainer = Benchmarked(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
    )
    trainer.add_callback(Clock())
    trainer.train()
    wall = time.perf_counter() - started
    return {
        "steps": trainer.state.global_step,
        "pairs": len(rows),
        "left_out": left_out,
        "real_tokens": tokens[0],
        "train_seconds": clock["end"] - clock["begin"],
        "reference_seconds": clock["reference"],
        "wall_seconds": wall,
        "losses": losses,
        "batches": "padded",
    }


def child(system: str, base: Path, work: Path, steps: int, lr: float, result: Path) -> None:
    import torch

    torch.set_num_threads(THREADS)
    if system.startswith("tuneforge"):
        figures = run_tuneforge(base, work, steps, lr, padded=system == "tuneforge-padded")
    else:
        figures = run_trl(base, work, steps, lr, precompute=system == "trl-precompute")
    figures["threads"] = torch.get_num_threads()
    result.write_text(json.dumps(figures))


# Parent: one child per system, in turn ---------------------------------------------------


def measure(system: str, base: Path, cache: Path, steps: int, lr: float) -> dict[str, Any]:
    from benchmarks.run import run_child

    work = cache / system
    work.mkdir()
    result = work / "result.json"
    command = [sys.executable, "-m", "benchmarks.dpo_vs_trl", "--child", system]
    command += ["--base", str(base), "--work", str(work), "--steps", str(steps)]
    command += ["--lr", str(lr), "--result", str(result)]
    seconds, rss, load_start, load_end = run_child(command)
    figures = json.loads(result.read_text())
    losses = figures["losses"]
    return {
        "system": system,
        **{k: v for k, v in figures.items() if k != "losses"},
        "tokens_per_second": figures["real_tokens"] / figures["train_seconds"],
        "final_loss": sum(losses[-LAST:]) / len(losses[-LAST:]),
        "first_losses": losses[:3],
        "peak_rss_mb": rss,
        "process_seconds": seconds,
        "load_start": load_start,
        "load_end": load_end,
    }


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| system | real tok/s | train s | reference s | wall s | process s | peak RSS MiB "
        f"| final loss (last {LAST}) | real tokens |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['system']} | {r['tokens_per_second']:,.0f} | {r['train_seconds']:.2f} "
            f"| {r['reference_seconds']:.2f} | {r['wall_seconds']:.2f} "
            f"| {r['process_seconds']:.2f} | {r['peak_rss_mb']:.0f} | {r['final_loss']:.4f} "
            f"| {r['real_tokens']:,} |"
        )
    return "\n".join(lines)


def main(steps: int, out: Path, systems: tuple[str, ...], lr: float, wait: bool) -> None:
    from benchmarks.common import load_average, wait_for_idle

    idle = wait_for_idle() if wait else load_average() < 1.2
    cache = Path(tempfile.mkdtemp(prefix="tuneforge-dpo-bench-"))
    base = build_base(cache)  # once, outside every measured process
    started_load = load_average()
    rows = []
    for system in systems:
        rows.append(measure(system, base, cache, steps, lr))
        print(f"{system}: done, load {rows[-1]['load_end']:.2f}", flush=True)
    record = {
        "steps": steps,
        "batch_pairs": BATCH_PAIRS,
        "learning_rate": lr,
        "beta": BETA,
        "loss_type": "sigmoid",
        "max_length": MAX_LENGTH,
        "threads": THREADS,
        "data": str(PAIRS.relative_to(ROOT)),
        "idle_at_start": idle,
        "load_start": started_load,
        "load_end": load_average(),
        "rows": rows,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(table(rows))
    print(f"wrote {out}")


def _arguments(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.dpo_vs_trl")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--systems", default=",".join(SYSTEMS), help=f"of {', '.join(KNOWN)}")
    parser.add_argument("--lr", type=float, default=5e-4, help="the same for every system")
    parser.add_argument(
        "--no-wait", action="store_true", help="measure now, not once the load is below 1.2"
    )
    # A child run (the parent starts these): one system, figures to --result.
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--base", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    arguments = _arguments(sys.argv[1:])
    if arguments.child:
        child(
            arguments.child,
            arguments.base,
            arguments.work,
            arguments.steps,
            arguments.lr,
            arguments.result,
        )
    else:
        chosen = tuple(arguments.systems.split(","))
        unknown = set(chosen) - set(KNOWN)
        if unknown:
            raise SystemExit(f"unknown systems {sorted(unknown)}; known: {', '.join(KNOWN)}")
        main(arguments.steps, arguments.out, chosen, arguments.lr, not arguments.no_wait)
