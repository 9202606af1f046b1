"""A sweep's leaderboard: candidates ranked on `registry.metric`, shown in the Prefect UI (a
table artifact), logged to the sweep's MLflow run (`leaderboard.json` as an MLflow table,
`plots/leaderboard.png`, `summary.md`) and printed by `tuneforge sweep`."""

from __future__ import annotations

from pathlib import Path

from prefect import task

from tuneforge import lineage
from tuneforge.config import RunConfig
from tuneforge.reporting import (
    CandidateOutcome,
    leaderboard_markdown,
    leaderboard_rows,
    plot_leaderboard,
)
from tuneforge.run_context import RunContext
from tuneforge.tasks.register import Registration


@task(name="report_sweep")
def report_sweep(
    *,
    sweep: str,
    candidates: list[CandidateOutcome],
    base: dict[str, float],
    config: RunConfig,
    ctx: RunContext,
    registration: Registration | None = None,
) -> str:
    """Logs the leaderboard to the sweep's MLflow run (a table, a plot, `summary.md`, the
    winner's tags and `winner.*` metrics) and to the Prefect UI; returns the summary."""
    import tempfile

    from mlflow.tracking import MlflowClient
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    from tuneforge.tracking import MetricLogger

    metric = config.registry.metric
    rows = leaderboard_rows(candidates, metric)
    client = MlflowClient(ctx.tracking_uri)
    columns = {key: [row[key] for row in rows] for key in rows[0]} if rows else {}
    client.log_table(ctx.run_id, data=columns, artifact_file="leaderboard.json")
    with tempfile.TemporaryDirectory() as tmp:
        plot = Path(tmp) / "leaderboard.png"
        plot_leaderboard(candidates, base, metric, plot)
        client.log_artifact(ctx.run_id, str(plot), artifact_path="plots")
    winner = candidates[0] if candidates and candidates[0].finished else None
    if winner is not None:
        logger = MetricLogger(ctx.tracking_uri, ctx.run_id)
        logger.log({f"winner.{k}": v for k, v in winner.metrics.items()}, step=0)
        logger.flush()
        client.set_tag(ctx.run_id, lineage.SWEEP_WINNER, winner.name)
    if registration is not None:
        client.set_tag(ctx.run_id, lineage.REGISTERED_VERSION, registration.model_uri)
        client.set_tag(ctx.run_id, lineage.DECISION, registration.decision)
    outcome = registration.decision if registration is not None else "nothing registered"
    summary = (
        f"# Sweep {sweep}\n\n**{outcome}**\n\nRanked on {metric} (eval split, "
        f"{'higher' if config.registry.higher_wins else 'lower'} is better); only the winner "
        f"went through the promotion gate.\n\n{leaderboard_markdown(rows, base, metric)}"
    )
    client.log_text(ctx.run_id, summary, "summary.md")
    create_table_artifact(rows, key="sweep-leaderboard", description=f"sweep {sweep}: {outcome}")
    create_markdown_artifact(summary, key="sweep-summary", description="leaderboard")
    return summary
