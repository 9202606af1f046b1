"""FLAN in miniature, measured: the pipelines over several seeds, as the README reports them.

    .venv/bin/python -m benchmarks.flan_mini                  # seeds 0 1 2 (~25 min, 2 cores)
    .venv/bin/python -m benchmarks.flan_mini --seeds 0 --variants instruction

Per seed, in its own MLflow store (`runs/flan-mini-bench/seed<N>/mlflow.db`), the pipelines
`deployments/pipelines/flan-mini{,-full,-lora}.yaml` run through `tuneforge pipeline --json`
with `train.seed`, `model.tiny.seed` and `data.seed` set to N. They share the pretrain stage:
the first pipeline trains it, the others find it unchanged and start from the same version.
Writes `benchmarks/results/flan-mini.json`, prints a markdown table (mean and sample standard
deviation over seeds), saves the per-seed plot `docs/flan-mini.png` and logs it, with the
table, to an MLflow run `flan-mini-benchmark` in seed 0's store.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from benchmarks.common import pipeline_json

ROOT = Path(__file__).resolve().parents[1]
PIPELINES = {
    "instruction": "deployments/pipelines/flan-mini.yaml",
    "full": "deployments/pipelines/flan-mini-full.yaml",
    "lora": "deployments/pipelines/flan-mini-lora.yaml",
}
# Evaluation rows by what the model saw in instruction tuning (tuneforge/flan_mini.py).
COLUMNS = ("held_in", "new_phrasing", "new_fact", "unseen_tasks", "opposite", "baby")


def run_pipeline(variant: str, seed: int, out: Path) -> dict:
    store = out / f"seed{seed}"
    store.mkdir(parents=True, exist_ok=True)
    sets = [
        f"train.seed={seed}",
        f"model.tiny.seed={seed}",
        f"data.seed={seed}",
        f"tracking.tracking_uri=sqlite:///{store / 'mlflow.db'}",
        f"output_dir={store / 'runs'}",
    ]
    result, seconds = pipeline_json(PIPELINES[variant], sets, f"{variant} seed {seed}")
    pretrain, tune = result["stages"]
    return {
        "variant": variant,
        "seed": seed,
        "seconds": round(seconds, 1),
        "pretrain_trained": not pretrain["skipped"],
        "pretrain_perplexity": pretrain["tuned"]["perplexity"],
        "trainable_fraction": _trainable_fraction(store / "mlflow.db", tune["run_id"]),
        "base": {c: tune["base"].get(f"exact_match.{c}") for c in COLUMNS},
        "tuned": {c: tune["tuned"].get(f"exact_match.{c}") for c in COLUMNS},
        "version": f"{tune['model']}/{tune['version']}",
    }


def _trainable_fraction(db: Path, run_id: str) -> float | None:
    from mlflow.tracking import MlflowClient

    metrics = MlflowClient(f"sqlite:///{db}").get_run(run_id).data.metrics
    return metrics.get("train.trainable_fraction")


def _mean_sd(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def table(rows: list[dict]) -> str:
    lines = [
        "| tuning (stage 2) | model | " + " | ".join(COLUMNS) + " |",
        "|---|---|" + "---:|" * len(COLUMNS),
    ]
    base = [r for r in rows if r["variant"] == "instruction"] or rows
    cells = [_mean_sd([r["base"][c] for r in base]) for c in COLUMNS]
    lines.append("| none (pretrained base) | | " + " | ".join(cells) + " |")
    for variant in PIPELINES:
        picked = [r for r in rows if r["variant"] == variant]
        if not picked:
            continue
        cells = [_mean_sd([r["tuned"][c] for r in picked]) for c in COLUMNS]
        fraction = picked[0]["trainable_fraction"]
        share = f"{fraction:.1%} trainable" if fraction is not None else ""
        lines.append(f"| {variant} | {share} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = ("held_in", "new_phrasing", "new_fact", "unseen_tasks")
    variants = [v for v in PIPELINES if any(r["variant"] == v for r in rows)]
    fig, axes = plt.subplots(1, len(shown), figsize=(4 * len(shown), 4), sharey=True)
    for ax, column in zip(axes, shown, strict=True):
        labels = ["base", *variants]
        for x, label in enumerate(labels):
            picked = [
                r for r in rows if r["variant"] == (label if label != "base" else "instruction")
            ]
            key = "base" if label == "base" else "tuned"
            values = [r[key][column] for r in picked]
            ax.scatter([x] * len(values), values, zorder=3, color=f"C{x}")
            if values:
                ax.bar(x, statistics.mean(values), alpha=0.4, color=f"C{x}")
        ax.set_xticks(range(len(labels)), labels, rotation=20)
        ax.set_title(column)
        ax.set_ylim(0, 1.05)
    axes[0].set_ylabel("exact match (dots: seeds, bars: mean)")
    fig.suptitle("FLAN in miniature: pretrained base vs stage-2 tuning")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def log_to_mlflow(db: Path, markdown: str, image: Path, rows: list[dict]) -> str:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{db}")
    found = client.get_experiment_by_name("tuneforge")
    experiment = found.experiment_id if found else client.create_experiment("tuneforge")
    run = client.create_run(experiment, run_name="flan-mini-benchmark")
    client.log_text(run.info.run_id, markdown, "flan-mini.md")
    client.log_dict(run.info.run_id, rows, "flan-mini.json")
    client.log_artifact(run.info.run_id, str(image), "plots")
    client.set_terminated(run.info.run_id)
    return run.info.run_id


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--variants", nargs="+", default=list(PIPELINES), choices=PIPELINES)
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "flan-mini-bench")
    args = parser.parse_args()
    rows = []
    for seed in args.seeds:
        for variant in args.variants:
            rows.append(run_pipeline(variant, seed, args.out))
            print(json.dumps(rows[-1]), flush=True)
    results = ROOT / "benchmarks" / "results" / "flan-mini.json"
    results.write_text(json.dumps(rows, indent=1) + "\n", encoding="utf-8")
    markdown = table(rows)
    image = ROOT / "docs" / "flan-mini.png"
    plot(rows, image)
    run_id = log_to_mlflow(args.out / f"seed{args.seeds[0]}" / "mlflow.db", markdown, image, rows)
    print(markdown)
    print(f"results: {results}; plot: {image}; MLflow run {run_id}")


if __name__ == "__main__":
    main()
