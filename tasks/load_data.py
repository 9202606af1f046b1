"""The `load_dataset` task: a run's data source copied into its run directory
(`tuneforge.data.reading.snapshot`), so that what the run validates and trains on stays what
it was when the run began."""

from __future__ import annotations

from pathlib import Path

from prefect import task

from tuneforge.config import DataConfig
from tuneforge.data.reading import snapshot
from tuneforge.run_context import RunContext


@task(name="load_dataset")
def load_dataset(*, data: DataConfig, ctx: RunContext) -> str:
    """Copies `data.path` into the run directory as `data/source.<format>` (a `datasets`
    split as Parquet); returns that path. Rows are read, and judged, by `validate_dataset`."""
    directory = Path(ctx.path("data"))
    return str(snapshot(data.path, data.format, data.hf_split, directory, data.hf_streaming))
