"""Builds benchmarks/RESULTS.md from the raw results in benchmarks/results/*.json.

.venv/bin/python -m benchmarks.report
"""

from __future__ import annotations

import json
import os
import platform
import statistics
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks.common import STRATEGIES

TARGET_SPEEDUP = 1.3  # tuneforge real tokens/s over the plain Trainer (instruction, lora)
TARGET_LOSS = 1.02  # tuneforge eval loss at most 2% above the Trainer's
TARGET_OVERHEAD = 0.10  # share of a two-minute flow run
TARGET_VALIDATION_S = 30.0  # for 1M rows


# Table order; a runner missing from the results is skipped.
RUNNER_ORDER = (
    "tuneforge",
    "tuneforge-padded",
    "tuneforge-grouped",
    "tuneforge-bf16",
    "trainer",
    "trainer-bf16",
    "trl",
)
VARIANTS = {
    "tuneforge": "tuneforge as shipped (padding-free, fp32)",
    "tuneforge-padded": "with `train.padding_free: false` (padded batches, as the Trainer's)",
    "tuneforge-grouped": "with `train.group_by_length: true` (a shipped option)",
    "tuneforge-bf16": "with `train.precision: bf16` (opt-in)",
}


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def _speed(row: dict[str, Any]) -> float:
    return row["real_tokens"] / row["train_seconds"]


def _same_precision(runner: str) -> str:
    return "trainer-bf16" if runner.endswith("bf16") or runner == "trl" else "trainer"


def _ratios(
    rows: list[dict[str, Any]], mine: list[dict[str, Any]], baseline: str, value: Any
) -> list[float]:
    """value(run) / value(baseline run of the same strategy and repeat), for each of `mine`."""
    base = {
        r["repeat"]: r
        for r in rows
        if r["strategy"] == mine[0]["strategy"] and r["runner"] == baseline
    }
    return [value(r) / value(base[r["repeat"]]) for r in mine if r["repeat"] in base]


def _machine() -> str:
    import torch

    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    memory = Path("/proc/meminfo").read_text().split()[1]
    return (
        f"{os.cpu_count()} CPU cores ({cpu}), {int(memory) // 1024**2} GiB RAM, no GPU; "
        f"Python {platform.python_version()}, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads)"
    )


def _load(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.exists() else None


def _conditions(record: dict[str, Any]) -> str:
    idle = "idle at start" if record["idle_at_start"] else "**taken under load**"
    return (
        f"1-min load {record['load_start']:.2f} at start, {record['load_end']:.2f} at end ({idle})"
    )


def training_section(record: dict[str, Any]) -> list[str]:
    rows = record["data"]
    lines = [
        "## Training throughput: tuneforge vs `transformers.Trainer` vs TRL `SFTTrainer`",
        "",
        _conditions(record),
        "",
        "Median over repeats (each run its own process, runner order rotated per repeat). "
        "tokens/s counts real (non-padding) tokens over the training loop alone; wall is the "
        "loop to N steps; process is the whole child (imports, model load, loop, save, eval); "
        "eval loss is per response token on the held-out rows "
        "(`tuneforge.training.losses.response_loss`, the same call for every runner). Ratios are "
        "per repeat, tuneforge / Trainer, then the median, against the fp32 Trainer (its "
        "default) and against the Trainer at the same precision (`trainer-bf16` for bf16 "
        "runners; TRL runs bf16 by default). The load range is the 1-minute load average at the "
        "start and end of each run; a running benchmark itself (2 threads) holds it near 1.6, so"
        " only a start well above that means other work. Variants: `-padded` turns tuneforge's "
        "padding-free batches off, `-bf16` sets `train.precision: bf16` (opt-in), `-grouped` "
        "sets `train.group_by_length`.",
        "",
        "| strategy | runner | real tok/s | padding | loop wall s | process s | peak RSS MB "
        "| eval loss | tok/s vs Trainer | same precision | loss ratio | load (start-end) |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    verdicts = []
    for strategy in ("full", "instruction", "lora"):
        for runner in RUNNER_ORDER:
            mine = [r for r in rows if r["strategy"] == strategy and r["runner"] == runner]
            if not mine:
                continue
            speed = [_speed(r) for r in mine]
            ratios = _ratios(rows, mine, "trainer", _speed)
            same = _ratios(rows, mine, _same_precision(runner), _speed)
            loss_ratios = _ratios(rows, mine, "trainer", lambda r: r["eval_loss"])
            pad = 1 - sum(r["real_tokens"] for r in mine) / sum(r["padded_tokens"] for r in mine)
            loads = (
                f"{min(r['load_start'] for r in mine):.2f}-{max(r['load_end'] for r in mine):.2f}"
            )
            lines.append(
                f"| {strategy} | {runner} | {_median(speed):,.0f} | {pad:.0%} "
                f"| {_median([r['train_seconds'] for r in mine]):.1f} "
                f"| {_median([r['process_seconds'] for r in mine]):.1f} "
                f"| {_median([r['peak_rss_mb'] for r in mine]):,.0f} "
                f"| {_median([r['eval_loss'] for r in mine]):.4f} "
                f"| {_median(ratios):.2f}x | {_median(same):.2f}x "
                f"| {_median(loss_ratios):.3f} | {loads} |"
            )
            if runner in VARIANTS and strategy in ("instruction", "lora"):
                ok = _median(ratios) >= TARGET_SPEEDUP and _median(loss_ratios) <= TARGET_LOSS
                verdicts.append(
                    f"- {strategy}, {VARIANTS[runner]}: {_median(ratios):.2f}x the Trainer's "
                    f"tokens/s (target {TARGET_SPEEDUP}x), eval loss ratio "
                    f"{_median(loss_ratios):.3f} (target <= {TARGET_LOSS}): "
                    f"**{'met' if ok else 'not met'}**; at the same precision "
                    f"{_median(same):.2f}x"
                )
    # Grouped batches hold other rows, so only the ungrouped runners must agree.
    trained = {
        s: {
            r["trained_tokens"] for r in rows if r["strategy"] == s and "grouped" not in r["runner"]
        }
        for s in STRATEGIES
    }
    same = all(len(counts) == 1 for counts in trained.values())
    lines += [
        "",
        f"{rows[0]['steps']} steps per run; "
        + (
            "every runner trained the same number of tokens per strategy (the loss is on the "
            "same tokens)."
            if same
            else f"**trained tokens differ between runners**: {trained}"
        ),
        "",
        *verdicts,
    ]
    return lines


def flow_section(record: dict[str, Any]) -> list[str]:
    data = record["data"]
    lines = [
        "## Orchestration overhead of the retrain flow",
        "",
        _conditions(record),
        "",
        f"Prefect server start (`prefect server start`, until /api/health answers): "
        f"{data['server_start_seconds']:.1f} s. `tuneforge run` without PREFECT_API_URL starts "
        "a temporary server of the same kind inside the command.",
    ]
    if data.get("install_seconds"):
        lines.append(
            f"Fresh install (`make install` steps into a new venv, pip cache warm): "
            f"{data['install_seconds']:.0f} s."
        )
    lines += [
        "",
        "| run | command s | flow run s | train loop s | evaluate s | overhead s "
        "| overhead / flow | (command - loop - eval) / command |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for run in data["runs"]:
        lines.append(
            f"| {run['label']} | {run['command_seconds']:.1f} | {run['flow_seconds']:.1f} "
            f"| {run['train_loop_seconds']:.1f} | {run['evaluate_seconds']:.1f} "
            f"| {run['overhead_seconds']:.1f} | {run['overhead_share']:.1%} "
            f"| {run['command_overhead_share']:.1%} |"
        )
    lines += ["", "Stage split (task run wall times from Prefect's API, seconds):", ""]
    stages = ("data", "train", "evaluate", "register", "other")
    lines += [
        "| run | install | server start | " + " | ".join(stages) + " | CLI + engine |",
        "| --- | ---: | ---: | " + " | ".join("---:" for _ in stages) + " | ---: |",
    ]
    install = f"{data['install_seconds']:.0f}" if data.get("install_seconds") else "-"
    for run in data["runs"]:
        cells = [f"{run['stages'].get(s, 0.0):.1f}" for s in stages]
        engine = run["command_seconds"] - sum(run["stages"].values())
        lines.append(
            f"| {run['label']} | {install} | {data['server_start_seconds']:.1f} | "
            + " | ".join(cells)
            + f" | {engine:.1f} |"
        )
    lines += ["", *(f"- `{run['command']}`" for run in data["runs"])]
    return lines


def validation_section(record: dict[str, Any]) -> list[str]:
    data = record["data"]
    verdict = "met" if data["seconds"] < TARGET_VALIDATION_S else "not met"
    verdict = verdict if data["rows"] >= 1_000_000 else "not measured (fewer rows)"
    line = (
        f"{data['rows']:,} generated rows ({data['valid']:,} valid, {data['rejected']:,} "
        f"quarantined) through `tuneforge.data.validation.validate_file` on the loaded "
        f"rows (streamed, as the validate task reads them): {data['seconds']:.1f} s, "
        f"**{data['rows_per_second']:,} rows/s** (one pass over the loaded rows: "
        f"{data['read_seconds']:.1f} s). Target < {TARGET_VALIDATION_S:.0f} s for 1M rows: "
        f"**{verdict}**."
    )
    if "command_seconds" in data:  # records written before the command was timed lack it
        line += (
            f" The whole `tuneforge validate` command on the {data['file_mb']} MB file: "
            f"{data['command_seconds']:.1f} s, peak RSS {data['peak_rss_mb']} MB."
        )
    return ["## Data validation throughput", "", _conditions(record), "", line]


def sweep_section(record: dict[str, Any]) -> list[str]:
    """`benchmarks/sweep.py`'s record (its own format: one run of three commands)."""
    lines = [
        "## A sweep of three candidates, two at a time",
        "",
        f"`{record['command']}` on {record['cores']} cores (idle at start: "
        f"{record['idle_at_start']}; train.steps: {record['steps']}). Wall time of each command:",
        "",
        "| how | wall time |",
        "|---|---:|",
        f"| `tuneforge sweep`, concurrency 2 | {record['sweep_concurrency_2_s']:.1f} s |",
        f"| `tuneforge sweep`, concurrency 1 | {record['sweep_concurrency_1_s']:.1f} s |",
        f"| `tuneforge sweep`, concurrency 3 | {record['sweep_concurrency_3_s']:.1f} s |",
        "| three `tuneforge run`, one after the other "
        f"({', '.join(f'{k} {v:.1f} s' for k, v in record['runs_s'].items())}) | "
        f"{record['three_runs_one_after_another_s']:.1f} s |",
        "",
        "| candidate | concurrency | threads | train s | tokens/s | exact match |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for concurrency in (2, 1, 3):
        for c in record[f"concurrency_{concurrency}"]:
            threads = c["threads"] or "all"
            lines.append(
                f"| {c['candidate']} | {concurrency} | {threads} | {c['train_seconds']:.1f} | "
                f"{c['tokens_per_second']:,} | {c['exact_match']:.4f} |"
            )
    return lines


def forgetting_section(record: dict[str, Any]) -> list[str]:
    """`benchmarks/forgetting.py`'s record: the forgetting pipelines over seeds, and the bundled
    guard suite's evaluation time."""
    from benchmarks.forgetting import table

    suite = record["guard_suite"]
    seconds = ", ".join(f"{s:.2f}" for s in suite["evaluate_seconds"])
    seeds = sorted({r["seed"] for r in record["runs"]})
    return [
        "## Guards: forgetting caught, replay against it, and what the guard suite costs",
        "",
        "`.venv/bin/python -m benchmarks.forgetting` (seeds "
        f"{', '.join(map(str, seeds))}): `deployments/pipelines/forgetting.yaml` without guards "
        "(`--set registry.guards={}`), as shipped, and `forgetting-replay.yaml`; the arithmetic "
        "stage's alias, its exact match on arithmetic and each guard metric, before (the "
        "instruct version) and after (mean ± sd over seeds):",
        "",
        table(record["runs"]),
        "",
        f"The bundled guard suite ({suite['documents']} documents: "
        f"{', '.join(suite['metrics'])}) on {suite['version']} (the tiny model), in one "
        f"process: {suite['loading_seconds']:.2f} s to import the harness and load the tasks "
        f"(once per run, at the config check), then {seconds} s per evaluation (three repeats): "
        "the cost of a benchmark per model scored (base, tuned and champion: three per run).",
    ]


def serving_section(record: dict[str, Any]) -> list[str]:
    """`benchmarks/serving.py`'s record: `tuneforge serve` against `mlflow models serve`."""
    from benchmarks.serving import table

    settings = record["settings"]
    return [
        "## Serving: `tuneforge serve` against MLflow's scoring server",
        "",
        f"`.venv/bin/python -m benchmarks.serving` ({record['date']}): "
        f"{', '.join(map(str, settings['clients']))} clients at once, each sending "
        f"{settings['requests_per_client']} chat requests one after another "
        f"(max_tokens {settings['max_tokens']}); the run of median wall time of "
        f"{settings['repeats']}. tuneforge batches up to {settings['tuneforge_max_batch']} "
        f"waiting requests on {settings['tuneforge_torch_threads']} torch thread(s); MLflow's "
        f"server computes on {settings['mlflow_torch_threads']}.",
        "",
        table(record["rows"]),
    ]


def write(results: Path, out: Path, quick: bool = False) -> None:
    lines = [
        "# Benchmarks",
        "",
        f"Written from `benchmarks/results/` by `make bench{' BENCH_QUICK=1' if quick else ''}` "
        f"or `.venv/bin/python -m benchmarks.report` ({datetime.now(UTC):%Y-%m-%d %H:%M} UTC); "
        f"each section gives the date it was measured. Machine: {_machine()}.",
        "",
        "Commands: `make bench` (everything), or `.venv/bin/python -m benchmarks.run "
        "[training|flow|validation]`; each suite waits until the 1-minute load average is "
        "below 1.2 before it starts (timings shared with other work are worthless). Alone: "
        "`.venv/bin/python -m benchmarks.validation [ROWS]`, "
        "`.venv/bin/python -m benchmarks.sweep [--steps N]`, "
        "`.venv/bin/python -m benchmarks.forgetting [--seeds ...]`, "
        "`.venv/bin/python -m benchmarks.serving [--quick]`, "
        "`.venv/bin/python -m benchmarks.profile_step STRATEGY CACHE_DIR [STEPS [VARIANT ...]]`.",
        "",
    ]
    if quick:
        lines += ["**Quick mode: smoke-test sizes, the figures mean nothing.**", ""]
    for name, section in (
        ("training", training_section),
        ("flow", flow_section),
        ("validation", validation_section),
        ("sweep", sweep_section),
        ("forgetting", forgetting_section),
        ("serving", serving_section),
    ):
        record = _load(results / f"{name}.json")
        if record:
            lines += [*section(record), ""]
    notes = Path(__file__).resolve().parent / "NOTES.md"  # the analysis, written by hand
    if notes.exists() and not quick:
        lines += [notes.read_text()]
    out.write_text("\n".join(lines).rstrip() + "\n")


if __name__ == "__main__":
    here = Path(__file__).resolve().parent
    write(here / "results", here / "RESULTS.md")
