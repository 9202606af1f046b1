"""What people look at after a run, a pipeline or a sweep: plots, markdown tables, notes.

- a run: base vs tuned metrics, per task family, the loss curve, a sample of generations,
  notes on how training went (`training_notes`);
- a pipeline: each stage's outcome (`StageOutcome`), a table and a plot of its stages;
- a sweep: its candidates (`CandidateOutcome`) ranked on `registry.metric`, a leaderboard.

Plain functions over paths and metric dicts; the report tasks (`tasks/report.py`,
`tasks/sweep_report.py`) log what they make to MLflow and the Prefect UI.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from tuneforge import lineage
from tuneforge.config import RegistryConfig
from tuneforge.run_context import RunContext

# A run ---------------------------------------------------------------------------------------

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


# A pipeline --------------------------------------------------------------------------------


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
        for label, metrics in ((lineage.BASE, self.base), (lineage.TUNED, self.tuned)):
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
            names = list(scores.get(lineage.TUNED, {}))
            xs = range(len(names))
            for offset, label in ((-0.2, lineage.BASE), (0.2, lineage.TUNED)):
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
            {f"exact_match.{k}": k for k in scores.get(lineage.TUNED, {})}
            if scores
            else {"perplexity": "perplexity"}
        )
        if "preference_accuracy" in s.tuned:  # preference pairs: the model's own ranking too
            shown["preference_accuracy"] = ""
        for key, short in shown.items():
            from_scores = scores and short
            base = scores[lineage.BASE].get(short) if from_scores else s.base.get(key)
            tuned = scores[lineage.TUNED].get(short) if from_scores else s.tuned.get(key)
            lines.append(
                f"| {s.stage} | {s.model} v{s.version} | {s.alias} | {'yes' if s.skipped else 'no'}"
                f" | {key.replace('.all', '')} | {format_score(base)} | {format_score(tuned)} |"
            )
    return "\n".join(lines) + "\n"


def format_score(value: float | None) -> str:
    """A score in a markdown table: four decimals, or n/a."""
    return "n/a" if value is None else f"{value:.4f}"


# A sweep -----------------------------------------------------------------------------------


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
