"""Data validation throughput: N generated rows through `tasks/validate_data.py`.

    .venv/bin/python -m benchmarks.validation [ROWS] [--profile]

Times what the `validate_dataset` task does (read the loaded rows, validate, write valid and
quarantine files), minus the MLflow logging, and prints one JSON line. `--profile` adds the ten
most expensive functions by cumulative time (cProfile; it slows the run down, so the throughput
printed with it is not the one to report).
"""

from __future__ import annotations

import cProfile
import io
import json
import pstats
import sys
import tempfile
import time
from pathlib import Path

from tuneforge.sample_data import generate_rows
from tuneforge.tasks.load_data import RawRow, read_raw_rows, write_raw_rows
from tuneforge.tasks.validate_data import validate_file


def make_rows(n: int) -> list[RawRow]:
    """`n` rows like the bundled data, made unique by a running number (duplicates would be
    quarantined, which is cheaper than validating); every 10th is chat-shaped and every 100th
    is bad (a blank output), so both row shapes and the quarantine path are exercised."""
    base = list(generate_rows(rows_per_family=300, seed=0))
    rows = []
    for i in range(n):
        rec = dict(base[i % len(base)])
        rec["input"] = f"{rec.get('input', '')} {i}"
        if i % 100 == 99:
            rec["output"] = "  "
        elif i % 10 == 9:
            user = f"{rec.pop('instruction')}\n\n{rec.pop('input')}"
            rec["messages"] = [
                {"role": "user", "content": user},
                {"role": "assistant", "content": rec.pop("output")},
            ]
        rows.append(RawRow(row=i + 1, record=rec))
    return rows


def measure(n: int, profile: bool) -> dict[str, object]:
    with tempfile.TemporaryDirectory(prefix="tuneforge-bench-") as tmp:
        loaded = Path(tmp, "loaded.jsonl")
        write_raw_rows(make_rows(n), loaded)
        profiler = cProfile.Profile() if profile else None
        started = time.perf_counter()
        if profiler:
            profiler.enable()
        rows = read_raw_rows(loaded)
        read_s = time.perf_counter() - started
        report = validate_file(rows, 2000, Path(tmp, "valid.jsonl"), Path(tmp, "quarantine.jsonl"))
        if profiler:
            profiler.disable()
        seconds = time.perf_counter() - started
    result: dict[str, object] = {
        "rows": n,
        "valid": report.valid,
        "rejected": report.rejected,
        "seconds": round(seconds, 2),
        "read_seconds": round(read_s, 2),
        "rows_per_second": round(n / seconds),
    }
    if profiler:
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats("cumulative").print_stats(25)
        result["profile"] = out.getvalue()
    return result


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    outcome = measure(int(args[0]) if args else 1_000_000, "--profile" in sys.argv)
    text = outcome.pop("profile", None)
    print(json.dumps(outcome))
    if text:
        print(text, file=sys.stderr)
