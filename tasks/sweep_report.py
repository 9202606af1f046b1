"""A sweep's leaderboard: candidates ranked on `registry.metric`, shown in the Prefect UI (a
table artifact), logged to the sweep's MLflow run (`leaderboard.json` as an MLflow table,
`plots/leaderboard.png`, `summary.md`) and printed by `tuneforge sweep`."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from prefect import task

from tuneforge import lineage
from tuneforge.config import RegistryConfig, RunConfig
from tuneforge.run_context import RunContext
from tuneforge.tasks.register import Registration
from tuneforge.tasks.report import format_score


@dataclass(frozen=True)
class CandidateOutcome:
    """One candidate's outcome: finished (with its run, model and scores) or failed."""

    name: str
    strategy: str
    error: str | None = None  # the first line of what went wrong; None when it finished
    ctx: RunContext | None = None  # its MLflow run (None when it failed before opening one)
    metrics: dict[str, float] = field(default_factory=dict)  # tuned, on the sweep's eval split
    model_dir: str = ""
    eval_path: str = ""
    seconds: float = 0.0  # training time
    tokens_per_second: float = 0.0
    threads: int = 0  # train.num_threads it trained with (0: torch's default, every core)
    rank: int = 0  # 1 = the winner; failed candidates rank after every finished one

    @property
    def finished(self) -> bool:
        return self.error is None

    @property
    def status(self) -> str:
        return "finished" if self.finished else f"failed: {self.error}"


def rank(candidates: list[CandidateOutcome], registry: RegistryConfig) -> list[CandidateOutcome]:
    """Finished candidates best first on `registry.metric` (its own direction), ties to the
    lower eval loss, then to the earlier candidate in the file; failed ones after them."""
    sign = -1.0 if registry.higher_wins else 1.0

    def key(item: tuple[int, CandidateOutcome]) -> tuple[float, float, float, int]:
        order, c = item
        value = c.metrics.get(registry.metric, math.nan)
        missing = not c.finished or math.isnan(value)
        loss = c.metrics.get("eval_loss", math.inf)
        return (float(missing), 0.0 if missing else sign * value, loss, order)

    ordered = [c for _, c in sorted(enumerate(candidates), key=key)]
    return [replace(c, rank=i) for i, c in enumerate(ordered, start=1)]


def leaderboard_rows(candidates: list[CandidateOutcome], metric: str) -> list[dict[str, Any]]:
    """One row per candidate, in rank order: what the table artifact and `--json` show."""
    rows = []
    for c in candidates:
        rows.append(
            {
                "rank": c.rank,
                "candidate": c.name,
                "strategy": c.strategy,
                "status": c.status,
                metric: _rounded(c.metrics.get(metric)),
                "eval_loss": _rounded(c.metrics.get("eval_loss")),
                "train_seconds": round(c.seconds, 1),
                "tokens_per_second": round(c.tokens_per_second),
                "threads": c.threads,
                "run_id": c.ctx.run_id if c.ctx else None,
            }
        )
    return rows


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def leaderboard_markdown(rows: list[dict[str, Any]], base: dict[str, float], metric: str) -> str:
    lines = [
        f"| rank | candidate | strategy | {metric} | eval_loss | train s | status |",
        "|---:|---|---|---:|---:|---:|---|",
        f"| | base | | {format_score(base.get(metric))} | "
        f"{format_score(base.get('eval_loss'))} | | |",
    ]
    for r in rows:
        lines.append(
            f"| {r['rank']} | {r['candidate']} | {r['strategy']} | {format_score(r[metric])} | "
            f"{format_score(r['eval_loss'])} | {r['train_seconds']:.1f} | "
            f"{r['status'].replace('|', '/')} |"
        )
    return "\n".join(lines) + "\n"


def plot_leaderboard(
    candidates: list[CandidateOutcome], base: dict[str, float], metric: str, path: Path
) -> None:
    """Horizontal bars of `metric` per finished candidate, best on top, the base as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [c for c in candidates if c.finished and metric in c.metrics]
    fig, ax = plt.subplots(figsize=(7, 1.2 + 0.45 * max(len(shown), 1)))
    names = [c.name for c in reversed(shown)]
    values = [c.metrics[metric] for c in reversed(shown)]
    colors = ["C2" if c.rank == 1 else "C0" for c in reversed(shown)]
    ax.barh(names, values, color=colors)
    if metric in base:
        ax.axvline(base[metric], color="grey", linestyle="--", label=f"base ({base[metric]:.3f})")
        ax.legend(loc="lower right")
    ax.set_xlabel(f"{metric} (eval split)")
    failed = [c.name for c in candidates if not c.finished]
    ax.set_title("sweep leaderboard" + (f" (failed: {', '.join(failed)})" if failed else ""))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


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
