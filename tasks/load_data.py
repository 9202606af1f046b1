"""The `load_dataset` task: a run's data source read into numbered raw rows in its run directory
(the readers are `tuneforge.data.reading`)."""

from __future__ import annotations

from pathlib import Path

from prefect import task

from tuneforge.config import DataConfig
from tuneforge.data.reading import iter_rows, write_raw_rows
from tuneforge.run_context import RunContext


@task(name="load_dataset")
def load_dataset(*, data: DataConfig, ctx: RunContext) -> str:
    """Reads `data.path` and stores its numbered rows as `data/loaded.jsonl` in the run
    directory; returns that path."""
    path = Path(ctx.path("data", "loaded.jsonl"))
    write_raw_rows(iter_rows(data.path, data.format, data.hf_split), path)
    return str(path)
