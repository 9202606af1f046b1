"""Run the benchmarks and write `benchmarks/RESULTS.md`.

    .venv/bin/python -m benchmarks.run                 # everything (~25 min on 2 idle cores)
    BENCH_QUICK=1 .venv/bin/python -m benchmarks.run   # smoke test: tiny sizes, 1 repeat
    .venv/bin/python -m benchmarks.run training flow   # only some suites

Suites: `training` (tuneforge vs Trainer vs TRL per strategy), `flow` (orchestration overhead
of the retrain flow), `validation` (1M rows). Raw results go to benchmarks/results/*.json and
the report is rebuilt from all of them, so a suite can be re-run alone.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

from benchmarks.common import (
    STRATEGIES,
    BenchConfig,
    build_base,
    child_peak_rss_mb,
    load_average,
    now,
    read_result,
    wait_for_idle,
)

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
RUNNERS = ("tuneforge", "trainer", "trl", "tuneforge-grouped", "tuneforge-bf16")
# Length grouping is a config choice that changes which rows share a batch (less padding, but
# single-task batches on the bundled data): measured as a lever for the response-only strategies.
GROUPED_STRATEGIES = ("instruction", "lora")
# tuneforge-bf16: train_model under bfloat16 autocast (TRL's default precision), from outside.
PYTHON = sys.executable


def quick() -> bool:
    return os.environ.get("BENCH_QUICK") == "1"


def run_child(command: list[str]) -> tuple[float, float, float, float]:
    """Runs one benchmark process; returns (seconds, peak RSS in MB, load before, load after).
    os.wait4 gives this child's own rusage (RUSAGE_CHILDREN would be the max over all)."""
    load_start, started = load_average(), now()
    child = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    stderr = child.stderr.read() if child.stderr else b""
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    seconds = now() - started
    if child.returncode:
        tail = "\n".join(stderr.decode(errors="replace").splitlines()[-20:])
        raise RuntimeError(f"{' '.join(command)} failed ({child.returncode}):\n{tail}")
    return seconds, child_peak_rss_mb(usage), load_start, load_average()


def training(repeats: int, runners: tuple[str, ...]) -> list[dict]:
    """Every (strategy, runner) pair `repeats` times, each in its own process. The runner order
    rotates per repeat so a slow drift of the machine does not favour one loop."""
    cache = Path(tempfile.mkdtemp(prefix="tuneforge-bench-"))
    # The shared base model, built once and outside any timed run.
    build_base(BenchConfig.from_env(), cache)
    rows = []
    for repeat in range(repeats):
        order = runners[repeat % len(runners) :] + runners[: repeat % len(runners)]
        for strategy in STRATEGIES:
            for runner in order:
                if runner == "tuneforge-grouped" and strategy not in GROUPED_STRATEGIES:
                    continue
                out = cache / f"{runner}-{strategy}-{repeat}"
                out.mkdir()
                if runner.startswith("tuneforge"):
                    flag = {"tuneforge-grouped": "--group-by-length", "tuneforge-bf16": "--bf16"}
                    extra = [flag[runner]] if runner in flag else []
                    command = [PYTHON, "-m", "benchmarks.run_tuneforge", strategy]
                    command += [str(out), str(cache), *extra]
                else:
                    command = [PYTHON, "-m", "benchmarks.run_hf", runner, strategy]
                    command += [str(out), str(cache)]
                seconds, rss, load_start, load_end = run_child(command)
                result = read_result(out / "result.json")
                result.process_seconds, result.peak_rss_mb = seconds, rss
                result.load_start, result.load_end = load_start, load_end
                rows.append({**asdict(result), "repeat": repeat})
                print(
                    f"{runner:17} {strategy:11} #{repeat} {result.tokens_per_second:8.0f} tok/s "
                    f"loss {result.eval_loss:.4f} rss {rss:.0f} MB load {load_start:.2f}",
                    flush=True,
                )
    return rows


def main(suites: list[str]) -> None:
    from benchmarks import report

    # Quick (smoke) results stay out of the repository.
    results = Path(tempfile.gettempdir(), "tuneforge-bench-quick") if quick() else RESULTS
    results.mkdir(exist_ok=True)
    for suite in suites:
        # Quick mode is a smoke test: it does not wait, and says whether the machine was idle.
        idle = load_average() < 1.2 if quick() else wait_for_idle()
        started_load = load_average()
        if suite == "training":
            runners = RUNNERS if _has_trl() else tuple(r for r in RUNNERS if r != "trl")
            data: object = training(1 if quick() else 3, runners)
        elif suite == "flow":
            from benchmarks import flow_overhead

            data = flow_overhead.measure(quick(), install=not quick())
        elif suite == "validation":
            rows = 20_000 if quick() else 1_000_000
            done = subprocess.run(
                [PYTHON, "-m", "benchmarks.validation", str(rows)],
                cwd=ROOT, check=True, capture_output=True, text=True,
            )  # fmt: skip
            data = json.loads(done.stdout.strip().splitlines()[-1])
        else:
            raise SystemExit(f"unknown suite {suite!r} (training, flow, validation)")
        record = {"idle_at_start": idle, "load_start": started_load, "load_end": load_average()}
        (results / f"{suite}.json").write_text(json.dumps({**record, "data": data}))
    out = results / "RESULTS.md" if quick() else ROOT / "benchmarks" / "RESULTS.md"
    report.write(results, out, quick())
    print(f"wrote {out}")


def _has_trl() -> bool:
    import importlib.util

    return importlib.util.find_spec("trl") is not None


if __name__ == "__main__":
    main(sys.argv[1:] or ["validation", "training", "flow"])
