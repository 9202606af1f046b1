"""Turn a finished run into things people look at: plots, a generations table, a summary.

Logged to the MLflow run (`plots/*.png`, `eval/generations_sample.md`, `summary.md`) and shown
in the Prefect UI as a markdown artifact of the flow run.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect import task

from tuneforge import lineage
from tuneforge.run_context import RunContext

SAMPLE_ROWS = 20


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ⏎ ")


def generations_table(base_path: Path, tuned_path: Path, limit: int = SAMPLE_ROWS) -> str:
    """Markdown table: prompt, expected, base answer, tuned answer for the first `limit` rows."""
    base = {r["row"]: r for r in map(json.loads, base_path.read_text("utf-8").splitlines())}
    tuned = [json.loads(line) for line in tuned_path.read_text("utf-8").splitlines()]
    lines = ["| task | prompt | expected | base | tuned |", "|---|---|---|---|---|"]
    for row in tuned[:limit]:
        b = base.get(row["row"], {})
        mark = "✓" if row["exact"] else "✗"
        lines.append(
            f"| {_cell(row['task'])} | {_cell(row['prompt'])} | {_cell(row['expected'])} | "
            f"{_cell(b.get('answer', ''))} | {mark} {_cell(row['answer'])} |"
        )
    return "\n".join(lines) + "\n"


def metrics_table(base: dict[str, float], tuned: dict[str, float]) -> str:
    lines = ["| metric | base | tuned |", "|---|---:|---:|"]
    for key, value in tuned.items():
        if key != "examples":
            lines.append(f"| {key} | {base.get(key, float('nan')):.4f} | {value:.4f} |")
    return "\n".join(lines) + "\n"


def plot_loss(steps: list[int], losses: list[float], base: float, tuned: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(steps, losses, label="training loss")
    ax.axhline(base, color="grey", linestyle="--", label=f"eval loss, base ({base:.2f})")
    ax.axhline(tuned, color="green", linestyle="--", label=f"eval loss, tuned ({tuned:.2f})")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.set_yscale("log")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_by_task(base: dict[str, float], tuned: dict[str, float], path: Path) -> None:
    """Bar chart of exact match per task family (and held-in/held-out), base vs tuned."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [k for k in tuned if k.startswith("exact_match.")] or ["exact_match"]
    labels = [k.removeprefix("exact_match.") for k in keys]
    x = range(len(keys))
    fig, ax = plt.subplots(figsize=(max(6, len(keys) * 1.1), 4))
    ax.bar([i - 0.2 for i in x], [base.get(k, 0.0) for k in keys], width=0.4, label="base")
    ax.bar([i + 0.2 for i in x], [tuned[k] for k in keys], width=0.4, label="tuned")
    ax.set_xticks(list(x), labels, rotation=30, ha="right")
    ax.set_ylim(0, 1)
    ax.set_ylabel("exact match")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# Final training loss this far below the tuned model's eval loss reads as memorising the
# training rows rather than learning the task: both ratio and gap, so that two small losses
# (0.02 against 0.05) do not trip it.
OVERFIT_RATIO = 2.0
OVERFIT_GAP = 0.5


def training_notes(training: Any, tuned: dict[str, float], schema: str | None = None) -> list[str]:
    """What a reader of the summary should know about how the model was trained: the data
    schema read, the step periodic evaluation kept and its scores, and a warning when the
    training loss is far below the eval loss."""
    notes = []
    if schema:
        notes.append(f"Data read as schema {schema}.")
    scores = getattr(training, "best_scores", None) or {}
    if scores:
        shown = ", ".join(f"{k.replace('_', ' ')} {v:.4f}" for k, v in sorted(scores.items()))
        notes.append(
            f"Periodic evaluation kept step {training.best_step} of {training.steps} ({shown} "
            "on the held-back rows; ties in exact match go to the lower eval loss)."
        )
    train_loss, eval_loss = training.final_loss, tuned.get("eval_loss")
    far_below = eval_loss is not None and train_loss == train_loss  # (NaN: no loss logged)
    far_below = far_below and eval_loss > OVERFIT_RATIO * train_loss
    if far_below and eval_loss - train_loss > OVERFIT_GAP:
        notes.append(
            f"Warning: the final training loss ({train_loss:.3f}) is far below the eval "
            f"loss ({eval_loss:.3f}): the model may have memorised its training rows "
            "(overfitting). More data, fewer steps or periodic evaluation "
            "(train.eval_every) help. (Training loss is over the tokens the strategy "
            "trains, eval loss over response tokens.)"
        )
    return notes


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


@dataclass(frozen=True)
class StageOutcome:
    """What one pipeline stage left: its version (new, or the unchanged champion) and scores."""

    stage: str
    model: str
    version: str
    alias: str  # champion or challenger
    skipped: bool  # data and config equal the champion's: nothing retrained
    run_id: str  # the run that trained the version (for a skipped stage, the champion's)
    base: dict[str, float]
    tuned: dict[str, float]
    # Aggregates over task families worth showing: held_in, held_out, evaluation.groups.
    aggregates: tuple[str, ...] = ()

    def exact_match(self) -> dict[str, dict[str, float]]:
        """`{"base": {"all": .., "held_in": .., "held_out": .., <group>: ..}, "tuned": {..}}`
        from the exact-match metrics the stage has (empty for raw text)."""
        out: dict[str, dict[str, float]] = {}
        for label, metrics in (("base", self.base), ("tuned", self.tuned)):
            keys = {"all": "exact_match", **{a: f"exact_match.{a}" for a in self.aggregates}}
            picked = {short: metrics[key] for short, key in keys.items() if key in metrics}
            if picked:
                out[label] = picked
        return out


def stage_outcome(stage: str, config: Any, result: Any) -> StageOutcome:
    """A stage's outcome from its `retrain` result; a skipped stage's scores are those its
    champion's own run logged."""
    from mlflow.tracking import MlflowClient

    name = config.registry.model_name
    aggregates = ("held_in", "held_out", *config.evaluation.groups)
    if not hasattr(result, "registration"):  # SkippedRun
        client = MlflowClient(result.tracking_uri)
        run_id = client.get_model_version(name, result.version).run_id
        logged = client.get_run(run_id).data.metrics
        base = lineage.scores_of(lineage.BASE, logged)
        tuned = lineage.scores_of(lineage.TUNED, logged)
        return StageOutcome(
            stage, name, result.version, "champion", True, run_id, base, tuned, aggregates
        )
    reg = result.registration
    return StageOutcome(
        stage,
        name,
        reg.version,
        reg.alias,
        False,
        result.run_id,
        result.base,
        result.tuned,
        aggregates,
    )


def plot_stages(stages: list[StageOutcome], path: Path) -> None:
    """One panel per stage: exact match (overall, held-in, held-out, groups) base vs tuned for
    a stage with answers, perplexity base vs tuned for raw text."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(stages), figsize=(4.5 * len(stages), 4), squeeze=False)
    for ax, stage in zip(axes[0], stages, strict=True):
        scores = stage.exact_match()
        if scores:
            names = list(scores.get("tuned", {}))
            xs = range(len(names))
            for offset, label in ((-0.2, "base"), (0.2, "tuned")):
                values = [scores.get(label, {}).get(n, 0.0) for n in names]
                ax.bar([x + offset for x in xs], values, width=0.4, label=label)
            ax.set_xticks(list(xs), names, rotation=30, ha="right")
            ax.set_ylim(0, 1)
            ax.set_ylabel("exact match")
        else:
            values = [stage.base.get("perplexity", 0.0), stage.tuned.get("perplexity", 0.0)]
            ax.bar(["base", "tuned"], values, color=["C0", "C1"])
            ax.set_yscale("log")
            ax.set_ylabel("perplexity (held-back text)")
        ax.set_title(f"{stage.stage}: {stage.model} v{stage.version}")
        if scores:
            ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def stages_table(stages: list[StageOutcome]) -> str:
    lines = [
        "| stage | version | alias | skipped | metric | base | tuned |",
        "|---|---|---|---|---|---:|---:|",
    ]
    for s in stages:
        scores = s.exact_match()
        shown = (
            {f"exact_match.{k}": k for k in scores.get("tuned", {})}
            if scores
            else {"perplexity": "perplexity"}
        )
        for key, short in shown.items():
            base = scores["base"].get(short) if scores else s.base.get(key)
            tuned = scores["tuned"].get(short) if scores else s.tuned.get(key)
            lines.append(
                f"| {s.stage} | {s.model} v{s.version} | {s.alias} | {'yes' if s.skipped else 'no'}"
                f" | {key.replace('.all', '')} | {format_score(base)} | {format_score(tuned)} |"
            )
    return "\n".join(lines) + "\n"


def format_score(value: float | None) -> str:
    """A score in a markdown table: four decimals, or n/a."""
    return "n/a" if value is None else f"{value:.4f}"


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
        for label, metrics in (("base", s.base), ("tuned", s.tuned)):
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
