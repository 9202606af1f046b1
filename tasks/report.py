"""Report a finished run or pipeline: plots, a generations table and a summary
(`tuneforge/reporting.py` makes them), logged to the MLflow run (`plots/*.png`,
`eval/generations_sample.md`, `summary.md`) and shown in the Prefect UI as a markdown artifact
of the flow run.
"""

from __future__ import annotations

from pathlib import Path

from prefect import task

from tuneforge import lineage
from tuneforge.reporting import (
    StageOutcome,
    generations_table,
    metrics_table,
    plot_by_task,
    plot_loss,
    plot_stages,
    stages_table,
)
from tuneforge.run_context import RunContext


@task(name="report_run")
def report_run(
    *,
    eval_dir: str,
    base: dict[str, float],
    tuned: dict[str, float],
    decision: str,
    notes: list[str],
    ctx: RunContext,
) -> str:
    """Logs plots, the generations sample and a markdown summary; returns the summary."""
    from mlflow.tracking import MlflowClient
    from prefect.artifacts import create_markdown_artifact

    client, run_id = MlflowClient(ctx.tracking_uri), ctx.run_id
    out = Path(eval_dir)
    history = client.get_metric_history(run_id, lineage.TRAIN_LOSS)
    plot_loss(
        [m.step for m in history],
        [m.value for m in history],
        base["eval_loss"],
        tuned["eval_loss"],
        out / "loss.png",
    )
    plots = ["loss.png"]
    generated = (out / "tuned_generations.jsonl").exists()  # raw text has no answers
    if generated:
        plot_by_task(base, tuned, out / "exact_match_by_task.png")
        plots.append("exact_match_by_task.png")
    for name in plots:
        client.log_artifact(run_id, str(out / name), artifact_path="plots")
    summary = f"# Retrain run {run_id}\n\n**{decision}**\n\n"
    if notes:
        summary += "## Training\n\n" + "".join(f"- {note}\n" for note in notes) + "\n"
    summary += f"## Base vs tuned\n\n{metrics_table(base, tuned)}"
    if generated:
        sample = generations_table(out / "base_generations.jsonl", out / "tuned_generations.jsonl")
        client.log_text(run_id, sample, "eval/generations_sample.md")
        summary += f"\n## Sample generations\n\n{sample}"
    client.log_text(run_id, summary, "summary.md")
    create_markdown_artifact(summary, key="retrain-summary", description="base vs tuned")
    return summary


@task(name="report_pipeline")
def report_pipeline(
    *, spec_name: str, stages: list[StageOutcome], tracking_uri: str, run_id: str
) -> str:
    """Logs the stages' scores (`<stage>.<base|tuned>.<metric>`), `pipeline.json`, the plot
    `plots/pipeline.png` and a summary table to the pipeline's MLflow run and the Prefect UI."""
    import tempfile
    from dataclasses import asdict

    from mlflow.tracking import MlflowClient
    from prefect.artifacts import create_markdown_artifact

    from tuneforge.tracking import MetricLogger

    logger = MetricLogger(tracking_uri, run_id)
    for s in stages:
        for label, metrics in ((lineage.BASE, s.base), (lineage.TUNED, s.tuned)):
            logger.log({f"{s.stage}.{label}.{k}": v for k, v in metrics.items()}, step=0)
    logger.flush()
    client = MlflowClient(tracking_uri)
    client.log_dict(
        run_id, {"pipeline": spec_name, "stages": [asdict(s) for s in stages]}, "pipeline.json"
    )
    with tempfile.TemporaryDirectory() as tmp:
        plot = Path(tmp) / "pipeline.png"
        plot_stages(stages, plot)
        client.log_artifact(run_id, str(plot), artifact_path="plots")
    summary = f"# Pipeline {spec_name}\n\n{stages_table(stages)}"
    client.log_text(run_id, summary, "summary.md")
    create_markdown_artifact(summary, key="pipeline-summary", description="stages, base vs tuned")
    return summary
