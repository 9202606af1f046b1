"""Data validation: throughput and peak memory of `tuneforge validate` on a generated JSONL file.

    .venv/bin/python -m benchmarks.validation [ROWS] [--size-mb MB] [--row-path] [--profile]

Writes a JSONL file of ROWS rows like the bundled data (default 1,000,000), or of about MB
megabytes with `--size-mb` (each row padded to fit), then runs the real command on it in a
fresh process: `python -m tuneforge.cli validate FILE --json`. Prints one JSON line: rows,
file size; what the `validate_dataset` task does on the file, timed in this process
(`seconds`, `rows_per_second`; with `--row-path` also `row_path_*`, the same file read and
judged row by row, as before the columnar reader); and the whole
command (`command_seconds`, `command_rows_per_second`, `peak_rss_mb`: the kernel's count for
that process, from wait4). `--profile` instead profiles `validate_file` in this process (cProfile
slows it down: not the throughput to report).

`TUNEFORGE_SOURCE=DIR` runs the command from another checkout's layout (DIR holds a
`tuneforge/` tree, e.g. made by `benchmarks.validation --layout COMMIT DIR`), to measure an
earlier version on the same file.
"""

from __future__ import annotations

import cProfile
import io
import json
import os
import pstats
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tuneforge.sample_data import generate_rows

BAD_EVERY = 100  # one row in a hundred has a blank output: the quarantine path is exercised


def write_file(path: Path, rows: int, size_mb: float | None = None) -> int:
    """Writes `rows` unique alpaca rows (or as many as fill `size_mb`); returns the count."""
    base = list(generate_rows(rows_per_family=300, seed=0))
    pad = ""
    if size_mb:
        average = sum(len(json.dumps(r)) for r in base[:200]) / 200 + 12
        rows = int(size_mb * 2**20 / (average + 256))
        pad = " " + "lorem ipsum " * 21  # ~256 characters of context per row
    with path.open("w", encoding="utf-8") as f:
        for i in range(rows):
            rec = dict(base[i % len(base)])
            rec["input"] = f"{rec.get('input', '')} {i}{pad}"
            if i % BAD_EVERY == BAD_EVERY - 1:
                rec["output"] = "  "
            f.write(json.dumps(rec) + "\n")
    return rows


def run_command(path: Path, quarantine: Path) -> dict[str, object]:
    """`tuneforge validate` in a fresh process: wall seconds and that process's peak RSS."""
    env = dict(os.environ)
    source = os.environ.get("TUNEFORGE_SOURCE")
    if source:
        env["PYTHONPATH"] = source + os.pathsep + env.get("PYTHONPATH", "")
    command = [sys.executable, "-m", "tuneforge.cli", "validate", str(path), "--json"]
    command += ["--quarantine", str(quarantine)]
    started = time.perf_counter()
    # cwd: `python -m` puts it first on sys.path, and a checkout there would shadow SOURCE.
    proc = subprocess.Popen(
        command, cwd=path.parent, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    )
    out = proc.stdout.read().decode()
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - started
    summary = json.loads(out.strip().splitlines()[-1])
    return {
        "valid": summary["valid"],
        "rejected": summary["rejected"],
        "exit": os.waitstatus_to_exitcode(status),
        "seconds": round(seconds, 1),
        "peak_rss_mb": round(usage.ru_maxrss / 1024),  # ru_maxrss is in KiB on Linux
    }


def validate_task(path: Path, tmp: Path, columnar_reading: bool) -> dict[str, object]:
    """What the `validate_dataset` task does, in this process: read the file, validate, write
    valid and quarantine files (columnar, or row by row). Seconds."""
    from tuneforge.data.validation import validate_path

    started = time.perf_counter()
    report = validate_path(
        str(path),
        2000,
        tmp / "valid.jsonl",
        tmp / "task-quarantine.jsonl",
        columnar_reading=columnar_reading,
    )
    seconds = time.perf_counter() - started
    return {"seconds": round(seconds, 1), "rows_per_second": round(report.total / seconds)}


def profile(path: Path) -> str:
    from tuneforge.data.validation import validate_path

    profiler = cProfile.Profile()
    with tempfile.TemporaryDirectory() as tmp:
        profiler.enable()
        validate_path(str(path), 2000, Path(tmp, "v"), Path(tmp, "q"))
        profiler.disable()
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("cumulative").print_stats(25)
    return text.getvalue()


def layout(commit: str, directory: Path) -> None:
    """The installed `tuneforge` package tree of `commit`, for `TUNEFORGE_SOURCE`."""
    import tarfile

    repo = Path(__file__).resolve().parents[1]
    archive = subprocess.run(
        ["git", "-C", str(repo), "archive", commit], capture_output=True, check=True
    ).stdout
    source = directory / "checkout"
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(source, filter="data")
    package = directory / "tuneforge"
    package.mkdir(parents=True)
    for module in (source / "tuneforge").glob("*.py"):
        (package / module.name).symlink_to(module)
    for part in ("flows", "tasks", "plugins"):
        (package / part).symlink_to(source / part)


def main(argv: list[str]) -> None:
    if argv[:1] == ["--layout"]:
        layout(argv[1], Path(argv[2]))
        return
    size_mb = float(argv[argv.index("--size-mb") + 1]) if "--size-mb" in argv else None
    numbers = [a for a in argv if not a.startswith("--") and a != str(size_mb or "")]
    rows = int(numbers[0]) if numbers and not size_mb else 1_000_000
    with tempfile.TemporaryDirectory(prefix="tuneforge-bench-") as tmp:
        path = Path(tmp, "data.jsonl")
        rows = write_file(path, rows, size_mb)
        if "--profile" in argv:
            print(profile(path), file=sys.stderr)
            return
        result = {"rows": rows, "file_mb": round(path.stat().st_size / 2**20)}
        if not os.environ.get("TUNEFORGE_SOURCE"):
            result |= validate_task(path, Path(tmp), columnar_reading=True)
            if "--row-path" in argv:  # the row-by-row path on the same file, for comparison
                rows_only = validate_task(path, Path(tmp), columnar_reading=False)
                result |= {f"row_path_{k}": v for k, v in rows_only.items()}
        command = run_command(path, Path(tmp, "quarantine.jsonl"))
        result |= {f"command_{k}" if k in ("seconds", "exit") else k: v for k, v in command.items()}
        result["command_rows_per_second"] = round(rows / command["seconds"])
        print(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1:])
