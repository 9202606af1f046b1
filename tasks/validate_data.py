"""The `validate_dataset` task: a run's copy of its data validated
(`tuneforge.data.validation`), bad rows quarantined, the counts, schema and data fingerprint
logged to the MLflow run."""

from __future__ import annotations

from pathlib import Path

from prefect import task

from tuneforge import lineage
from tuneforge.config import DataConfig
from tuneforge.data.validation import ValidationReport, check_rejected_fraction, validate_path
from tuneforge.run_context import RunContext


@task(name="validate_dataset")
def validate_dataset(*, loaded_path: str, data: DataConfig, ctx: RunContext) -> ValidationReport:
    """Matches the run's copy of the data (`load_dataset`) to `data.schema` / `data.columns`,
    validates it, writes `valid.jsonl` and `quarantine.jsonl` beside it, logs the counts, the
    schema (and the quarantine file) to MLflow, and fails when the rejected share is above
    `data.max_rejected_fraction`. Errors name `data.path`, not the copy."""
    from tuneforge.tracking import MetricLogger

    out = Path(loaded_path).parent
    report = validate_path(
        loaded_path,
        data.max_chars,
        out / "valid.jsonl",
        out / "quarantine.jsonl",
        schema=data.schema_,
        columns=data.columns,
        ignore=data.ignore_columns,
        name=data.path,
    )
    metrics = MetricLogger(ctx.tracking_uri, ctx.run_id)
    counts = {"total": report.total, "valid": report.valid, "rejected": report.rejected}
    metrics.log({f"data.{k}": v for k, v in counts.items()}, step=0)
    metrics.flush()
    metrics.client.set_tag(ctx.run_id, lineage.DATA_FINGERPRINT, report.fingerprint)
    mapping = ",".join(f"{f}={c}" for f, c in report.columns.items())
    metrics.client.set_tag(ctx.run_id, lineage.DATA_SCHEMA, f"{report.schema} ({mapping})")
    if report.rejected:
        metrics.client.log_artifact(ctx.run_id, report.quarantine_path, artifact_path="data")
    check_rejected_fraction(report, data.max_rejected_fraction, data.path)
    return report
