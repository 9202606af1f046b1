"""A million rows end to end: `tuneforge run` on a generated chat dataset, twice.

    .venv/bin/python -m benchmarks.scale [ROWS] [--steps 200] [--out benchmarks/results/scale.json]

Writes ROWS (default 1,000,000) unique chat rows (`{"messages": [...], "task"}`: the bundled
task families, each row's input numbered so no two are equal) to a JSONL file, then runs the
real command on it in a fresh process, in a fresh directory (local Prefect, MLflow on SQLite),
twice:

1. `tuneforge run deployments/presets/tiny-cpu.yaml` with the data, `train.steps`, no periodic
   evaluation and 48 evaluation rows (the tiny model; the whole file is validated, split and
   tokenized);
2. the same command again with `--set force=true` (the data and config are unchanged, so it
   would otherwise stop after validation): what a nightly retrain on unchanged data costs,
   with the token cache (tuneforge/training/token_cache.py) filled by the first run.

Per run: seconds from the command's start to its first training step (the MLflow timestamp of
the step-1 `train.loss`; `train.log_every=1`), to its end, the token cache's state, and the
peak RSS of the largest process the command ran (the training runs in the command's own
process; `wait4` gives the largest descendant's peak). One machine, nothing else running.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tuneforge.sample_data import generate_rows

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "benchmarks" / "results" / "scale.json"


def write_chat_rows(path: Path, rows: int) -> None:
    """`rows` unique chat rows (the bundled families, inputs numbered)."""
    from tuneforge.prompts import instruction_prompt

    base = list(generate_rows(rows_per_family=300, seed=0))
    with path.open("w", encoding="utf-8") as f:
        for i in range(rows):
            row = base[i % len(base)]
            prompt = instruction_prompt(row["instruction"], f"{row['input']} #{i}")
            messages = [
                {"role": "user", "content": prompt},
                {"role": "assistant", "content": row["output"]},
            ]
            f.write(json.dumps({"messages": messages, "task": row["task"]}) + "\n")


def run_once(work: Path, data: Path, steps: int, force: bool) -> dict[str, object]:
    """One `tuneforge run` in `work`; its timings and peak memory."""
    db = work / "mlflow.db"
    command = [
        str(Path(sys.executable).with_name("tuneforge")),
        "run",
        str(REPO / "deployments" / "presets" / "tiny-cpu.yaml"),
        "--json",
        "--set", f"data.path={data}",
        "--set", f"tracking.tracking_uri=sqlite:///{db}",
        "--set", f"output_dir={work / 'runs'}",
        "--set", f"train.steps={steps}",
        "--set", "train.log_every=1",
        "--set", "train.eval_every=0",
        "--set", "evaluation.max_examples=48",
        "--set", "registry.max_p_value=null",
        "--set", "registry.min_correct=0",
    ]  # fmt: skip
    if force:
        command += ["--set", "force=true"]
    env = {
        **os.environ,
        "PREFECT_HOME": str(work / "prefect-home"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }
    started_wall = time.time()
    started = time.perf_counter()
    log = work / f"run-{int(force)}.log"
    with log.open("w") as err:
        proc = subprocess.Popen(command, cwd=work, env=env, stdout=subprocess.PIPE, stderr=err)
        out = proc.stdout.read().decode()
        _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status):
        raise RuntimeError(f"tuneforge run failed: {out[-2000:]}")
    result = json.loads(out.strip().splitlines()[-1])
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{db}")
    first = client.get_metric_history(result["run_id"], "train.loss")[0]
    tags = client.get_run(result["run_id"]).data.tags
    return {
        "seconds": round(seconds, 1),
        "first_step_seconds": round(first.timestamp / 1000 - started_wall, 1),
        "token_cache": tags.get("tuneforge.token_cache"),
        "peak_rss_mb": round(usage.ru_maxrss / 1024),
        "version": result.get("version"),
        "task_seconds": task_seconds(log.read_text()),
    }


def task_seconds(log: str) -> dict[str, float]:
    """Seconds each flow task took, from the command's log: the time between one task's
    "Finished" line and the one before it (the retrain flow runs its tasks one after another;
    the first task's figure includes the command's start-up)."""
    import re
    from datetime import datetime

    finished = re.compile(r"^(\d\d:\d\d:\d\d\.\d+) \| INFO +\| Task run '([\w.]+)-\w+' - Finished")
    seconds: dict[str, float] = {}
    last = None
    for line in log.splitlines():
        match = finished.match(line)
        if not match:
            continue
        at = datetime.strptime(match[1], "%H:%M:%S.%f")
        if last is not None:
            seconds[match[2]] = round((at - last).total_seconds(), 1)
        last = at
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("rows", type=int, nargs="?", default=1_000_000)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tuneforge-scale-") as tmp:
        work = Path(tmp)
        data = work / "chat.jsonl"
        write_chat_rows(data, args.rows)
        size_mb = data.stat().st_size / 2**20
        runs = [run_once(work, data, args.steps, force=i > 0) for i in range(2)]
    report = {
        "rows": args.rows,
        "file_mb": round(size_mb, 1),
        "steps": args.steps,
        "command": f"python -m benchmarks.scale {args.rows} --steps {args.steps}",
        "first_run": runs[0],
        "second_run": runs[1],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report))


if __name__ == "__main__":
    main()
