"""Run the benchmarks and write `benchmarks/RESULTS.md`.

    .venv/bin/python -m benchmarks.run                 # everything (~25 min on 2 idle cores)
    BENCH_QUICK=1 .venv/bin/python -m benchmarks.run   # smoke test: tiny sizes, 1 repeat
    .venv/bin/python -m benchmarks.run training flow   # only some suites
    .venv/bin/python -m benchmarks.run training --runners tuneforge,trainer

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
# tuneforge as shipped, the same with padded batches (what padding-free batches buy), with
# bf16 autocast; the Trainer at its default fp32 and with bf16=True; TRL at its defaults (bf16).
# `tuneforge-grouped` (train.group_by_length) is measured when asked for by name:
#   .venv/bin/python -m benchmarks.run training --runners tuneforge,tuneforge-grouped,trainer
RUNNERS = ("tuneforge", "tuneforge-padded", "tuneforge-bf16", "trainer", "trainer-bf16", "trl")
TUNEFORGE_FLAGS = {
    "tuneforge": [],
    "tuneforge-padded": ["--padded"],
    "tuneforge-grouped": ["--group-by-length"],
    "tuneforge-bf16": ["--bf16"],
}
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
                out = cache / f"{runner}-{strategy}-{repeat}"
                out.mkdir()
                if runner in TUNEFORGE_FLAGS:
                    command = [PYTHON, "-m", "benchmarks.run_tuneforge", strategy]
                    command += [str(out), str(cache), *TUNEFORGE_FLAGS[runner]]
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


def main(suites: list[str], chosen: tuple[str, ...] = RUNNERS) -> None:
    from benchmarks import report

    # Quick (smoke) results stay out of the repository.
    results = Path(tempfile.gettempdir(), "tuneforge-bench-quick") if quick() else RESULTS
    results.mkdir(exist_ok=True)
    for suite in suites:
        # Quick mode is a smoke test: it does not wait, and says whether the machine was idle.
        idle = load_average() < 1.2 if quick() else wait_for_idle()
        started_load = load_average()
        if suite == "training":
            runners = chosen if _has_trl() else tuple(r for r in chosen if r != "trl")
            data: object = training(1 if quick() else 3, runners)
        elif suite == "flow":
            from benchmarks import flow_overhead

            data = flow_overhead.measure(quick(), install=not quick())
        elif suite == "validation":
            rows = 20_000 if quick() else 1_000_000
            done = subprocess.run(
                [PYTHON, "-m", "benchmarks.validation", str(rows)],
                cwd=ROOT,
                check=True,
                capture_output=True,
                text=True,
            )
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
    args = sys.argv[1:]
    runners = RUNNERS
    if "--runners" in args:
        at = args.index("--runners")
        runners = tuple(args[at + 1].split(","))
        del args[at : at + 2]
    unknown = set(runners) - {*RUNNERS, *TUNEFORGE_FLAGS}
    if unknown:
        raise SystemExit(f"unknown runners {sorted(unknown)}; known: {', '.join(RUNNERS)}")
    main(args or ["validation", "training", "flow"], runners)
