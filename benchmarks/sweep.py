"""Wall time of a strategy sweep: three candidates (full, instruction, LoRA) on the tiny
preset two at a time, against the same three one after the other (and all three at once).

    .venv/bin/python -m benchmarks.sweep            # the preset as shipped (2000 steps each)
    .venv/bin/python -m benchmarks.sweep --steps 300

One Prefect server (started first, not timed) serves every measurement; each gets a fresh
MLflow store and output directory, so none is skipped as unchanged. Measured, in this order:
1. `tuneforge sweep deployments/sweeps/tiny-strategies.yaml` (concurrency 2: each candidate
   trains in a process of its own with cores // 2 threads; evaluation in the flow's threads);
2. the same sweep file with `concurrency: 1` (one candidate at a time, in the flow's process,
   every core);
3. three `tuneforge run` commands one after the other, one per strategy (what a person
   comparing strategies by hand runs: three flows, three base evaluations);
4. the sweep file with `concurrency: 3` (all at once: one thread each, three processes on
   two cores).
Wall time is the command's, from start to exit. Writes benchmarks/results/sweep.json.
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

import yaml

from benchmarks.common import load_average, wait_for_idle
from benchmarks.flow_overhead import start_server

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SWEEP = ROOT / "deployments" / "sweeps" / "tiny-strategies.yaml"
RESULTS = ROOT / "benchmarks" / "results" / "sweep.json"


def _timed(args: list[str], env: dict[str, str]) -> tuple[float, str]:
    started = time.perf_counter()
    done = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - started
    if done.returncode:
        raise SystemExit(f"{' '.join(args)} failed:\n{done.stdout[-3000:]}{done.stderr[-3000:]}")
    return seconds, done.stdout


def _store(tmp: Path, name: str) -> list[str]:
    """--set arguments that give a measurement its own MLflow store and output directory."""
    (tmp / name).mkdir()
    return [
        "--set",
        f"tracking.tracking_uri=sqlite:///{tmp / name / 'mlflow.db'}",
        "--set",
        f"output_dir={tmp / name / 'runs'}",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=None, help="train.steps (default: preset)")
    args = parser.parse_args()
    steps = ["--set", f"train.steps={args.steps}"] if args.steps else []
    idle = wait_for_idle()
    with tempfile.TemporaryDirectory(prefix="tuneforge-bench-sweep-") as name:
        tmp = Path(name)
        server, _ = start_server(tmp / "prefect-home", 4213)
        env = {
            **os.environ,
            "PREFECT_API_URL": "http://127.0.0.1:4213/api",
            "PREFECT_HOME": str(tmp / "prefect-home"),
            "MLFLOW_DISABLE_TELEMETRY": "true",
        }
        try:
            results = _measure(tmp, env, steps)
        finally:
            server.terminate()
            server.wait(timeout=30)
    results |= {
        "steps": args.steps or "preset",
        "cores": os.cpu_count(),
        "idle_at_start": idle,
        "load_at_end": load_average(),
        "command": "python -m benchmarks.sweep" + (f" --steps {args.steps}" if args.steps else ""),
    }
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


def _measure(tmp: Path, env: dict[str, str], steps: list[str]) -> dict[str, object]:
    tuneforge = str(BIN / "tuneforge")
    sweep_args = [tuneforge, "sweep", str(SWEEP), "--json", *steps]
    two, out = _timed([*sweep_args, *_store(tmp, "concurrent")], env)
    concurrent = json.loads(out.strip().splitlines()[-1])

    spec = yaml.safe_load(SWEEP.read_text())
    spec["preset"] = str(SWEEP.parent / spec["preset"])

    def with_concurrency(n: int) -> tuple[float, dict]:
        path = tmp / f"concurrency-{n}.yaml"
        path.write_text(yaml.safe_dump({**spec, "concurrency": n}))
        seconds, out = _timed(
            [tuneforge, "sweep", str(path), "--json", *steps, *_store(tmp, f"concurrency-{n}")],
            env,
        )
        return seconds, json.loads(out.strip().splitlines()[-1])

    one, sequential = with_concurrency(1)

    by_hand = {}
    for candidate in spec["candidates"]:
        overrides = [a for o in candidate["set"] for a in ("--set", o)]
        seconds, _ = _timed(
            [
                tuneforge,
                "run",
                str(SWEEP.parent / spec["preset"]),
                *overrides,
                *steps,
                *_store(tmp, f"run-{candidate['name']}"),
            ],
            env,
        )
        by_hand[candidate["name"]] = round(seconds, 1)
    three, at_once = with_concurrency(3)

    def candidates(summary: dict) -> list[dict]:
        keep = ("candidate", "status", "train_seconds", "tokens_per_second", "threads")
        return [
            {k: c[k] for k in keep} | {"exact_match": c["exact_match"]}
            for c in summary["candidates"]
        ]

    return {
        "sweep_concurrency_2_s": round(two, 1),
        "sweep_concurrency_1_s": round(one, 1),
        "sweep_concurrency_3_s": round(three, 1),
        "three_runs_one_after_another_s": round(sum(by_hand.values()), 1),
        "runs_s": by_hand,
        "concurrency_2": candidates(concurrent),
        "concurrency_1": candidates(sequential),
        "concurrency_3": candidates(at_once),
        "winner": concurrent["winner"],
    }


if __name__ == "__main__":
    main()
