"""The benchmark scripts' pure parts: padding accounting and the report (no training, no timing)."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks import report
from benchmarks.common import BenchConfig
from benchmarks.run_tuneforge import padded_tokens


def test_padded_tokens_counts_each_batch_at_its_widest_row() -> None:
    cfg = BenchConfig.quick()
    lengths = [10] * 7 + [40]
    padded = padded_tokens(lengths, cfg, group_by_length=False)
    # quick() has batch 8: every batch holds all eight rows, so each is 40 wide.
    assert padded == cfg.steps * 8 * 40


def _row(runner: str, strategy: str, repeat: int, seconds: float, loss: float) -> dict:
    return {
        "runner": runner, "strategy": strategy, "repeat": repeat, "steps": 4,
        "real_tokens": 1000, "padded_tokens": 1250, "trained_tokens": 300,
        "train_seconds": seconds, "eval_loss": loss, "threads": 2, "process_seconds": 9.0,
        "peak_rss_mb": 600.0, "load_start": 0.3, "load_end": 0.9,
    }  # fmt: skip


def test_report_gives_ratios_against_the_trainer_of_the_same_repeat(tmp_path: Path) -> None:
    rows = [
        _row(runner, strategy, 0, seconds, loss)
        for strategy in ("full", "instruction", "lora")
        for runner, seconds, loss in (("tuneforge", 1.0, 2.0), ("trainer", 1.5, 2.0))
    ]
    record = {"idle_at_start": True, "load_start": 0.3, "load_end": 0.9, "data": rows}
    (tmp_path / "training.json").write_text(json.dumps(record))
    out = tmp_path / "RESULTS.md"
    report.write(tmp_path, out, quick=True)
    text = out.read_text()
    assert "| lora | tuneforge | 1,000 | 20% |" in text
    assert "1.50x" in text
    assert "lora, tuneforge as shipped: 1.50x the Trainer's tokens/s (target 1.3x)" in text
    assert "**met**" in text
