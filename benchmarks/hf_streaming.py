"""A streamed `datasets` source: time and peak memory of a run's copy and validation of it.

    .venv/bin/python -m benchmarks.hf_streaming [ROWS ...] [--out FILE]

For each ROWS (default 300,000 and 1,000,000): a local dataset directory of ten JSONL files
of generated chat rows (`benchmarks.scale`'s), read as `data.path: DIR` with
`data.hf_streaming: true` and without, in a fresh process each: the `load_dataset` task (the
split copied as Parquet, a batch at a time) then `validate_path` on the copy, as a run does.
Prints and writes one JSON line a measurement: seconds for the copy, for copy and validation,
and the process's peak RSS. Memory that stays the same from 300,000 to 1,000,000 rows is
bounded by batches, not by the dataset.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

OUT = Path(__file__).resolve().parent / "results" / "hf_streaming.json"


def write_dataset_dir(directory: Path, rows: int) -> None:
    """`rows` generated chat rows in ten JSONL files under `directory/data`."""
    from benchmarks.scale import write_chat_rows

    whole = directory / "all.jsonl"
    write_chat_rows(whole, rows)
    (directory / "data").mkdir(parents=True)
    per = -(-rows // 10)
    with whole.open(encoding="utf-8") as lines:
        for i in range(10):
            with (directory / "data" / f"train-{i:05d}.jsonl").open("w", encoding="utf-8") as f:
                for _, line in zip(range(per), lines, strict=False):
                    f.write(line)
    whole.unlink()


def measure(directory: Path, streaming: bool) -> dict[str, object]:
    """In this process (run it in a fresh one): copy and validate as a run does."""
    import datasets.config

    from tasks.load_data import load_dataset
    from tuneforge.config import DataConfig
    from tuneforge.data.validation import validate_path
    from tuneforge.run_context import RunContext

    with tempfile.TemporaryDirectory(prefix="tuneforge-hf-") as tmp:
        datasets.config.HF_DATASETS_CACHE = Path(tmp) / "hf-cache"  # nothing cached before
        ctx = RunContext(run_id="0" * 32, tracking_uri="unused", run_dir=str(Path(tmp) / "run"))
        started = time.perf_counter()
        data = DataConfig(path=str(directory), hf_streaming=streaming)
        copy = load_dataset.fn(data=data, ctx=ctx)
        copied = time.perf_counter() - started
        report = validate_path(copy, 4000, Path(tmp) / "valid.jsonl", Path(tmp) / "q.jsonl")
        return {
            "streaming": streaming,
            "copy_seconds": round(copied, 1),
            "copy_and_validate_seconds": round(time.perf_counter() - started, 1),
            "valid_rows": report.valid,
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("rows", type=int, nargs="*", default=[300_000, 1_000_000])
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--measure", nargs=2, help=argparse.SUPPRESS)  # DIR stream|whole
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(Path(args.measure[0]), args.measure[1] == "stream")))
        return
    results = []
    for rows in args.rows:
        with tempfile.TemporaryDirectory(prefix="tuneforge-hf-data-") as tmp:
            write_dataset_dir(Path(tmp), rows)
            for mode in ("stream", "whole"):
                command = [sys.executable, "-m", "benchmarks.hf_streaming", "--measure", tmp, mode]
                out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
                result = {"rows": rows, **json.loads(out.strip().splitlines()[-1])}
                print(json.dumps(result), flush=True)
                results.append(result)
    args.out.write_text("\n".join(json.dumps(r) for r in results) + "\n")


if __name__ == "__main__":
    main()
