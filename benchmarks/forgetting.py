"""Forgetting, shown and prevented, measured over seeds: the forgetting pipelines as the README
reports them, and the guard suite's evaluation time.

    .venv/bin/python -m benchmarks.forgetting                  # seeds 0 1 2 (~20 min, 2 cores)
    .venv/bin/python -m benchmarks.forgetting --seeds 0 --variants guarded

Per seed, in its own MLflow store (`runs/forgetting-bench/seed<N>/mlflow.db`), three variants
run through `tuneforge pipeline --json` with `train.seed`, `model.tiny.seed` and `data.seed`
set to N, each under its own model name (so each has its own champion):
- unguarded: `deployments/pipelines/forgetting.yaml` with `registry.guards={}`;
- guarded: the same pipeline as shipped (the bundled guard suite, max drop 0.1);
- replay: `deployments/pipelines/forgetting-replay.yaml` (guards, and data.replay=0.8).
Each pipeline instruction-tunes the tiny model (stage `instruct`), then adapts that version
to arithmetic (stage `arithmetic`). Recorded per run: the arithmetic stage's alias, its exact
match on the arithmetic eval split against its base's (the instruct version), and each guard
metric of the instruct version and of the adapted one. Then the guard suite alone is timed on
the seed-0 instruct version (`LmEvalHarness.evaluate`, three times, and loading its tasks).
Writes `benchmarks/results/forgetting.json`, prints markdown tables (mean and sample standard
deviation over seeds) and saves the plot `docs/forgetting.png`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from benchmarks.common import pipeline_json

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = {
    "unguarded": ("deployments/pipelines/forgetting.yaml", ["registry.guards={}"]),
    "guarded": ("deployments/pipelines/forgetting.yaml", []),
    "replay": ("deployments/pipelines/forgetting-replay.yaml", []),
}
GUARDS = (
    "bench.guard_uppercase.exact_match",
    "bench.guard_first_letter.exact_match",
    "bench.guard_antonym.acc",
)


def run_pipeline(variant: str, seed: int, out: Path) -> dict:
    store = out / f"seed{seed}"
    store.mkdir(parents=True, exist_ok=True)
    pipeline, extra = VARIANTS[variant]
    sets = [
        f"train.seed={seed}",
        f"model.tiny.seed={seed}",
        f"data.seed={seed}",
        f"registry.model_name=forgetting-{variant}",
        f"tracking.tracking_uri=sqlite:///{store / 'mlflow.db'}",
        f"output_dir={store / 'runs'}",
        *extra,
    ]
    result, seconds = pipeline_json(pipeline, sets, f"{variant} seed {seed}")
    instruct, arithmetic = result["stages"]
    return {
        "variant": variant,
        "seed": seed,
        "seconds": round(seconds, 1),
        "alias": arithmetic["alias"],
        "version": f"{arithmetic['model']}/{arithmetic['version']}",
        "instruct_version": f"{instruct['model']}/{instruct['version']}",
        # The arithmetic stage's base is the instruct version, scored on the arithmetic split.
        "arithmetic": {
            "before": arithmetic["base"]["exact_match"],
            "after": arithmetic["tuned"]["exact_match"],
        },
        "guards": {
            g: {"before": arithmetic["base"].get(g), "after": arithmetic["tuned"].get(g)}
            for g in GUARDS
        },
    }


def time_guard_suite(store: Path, version: str, repeats: int = 3) -> dict:
    """The bundled guard suite on one registered version, in this process: loading its tasks
    (the harness imported, task files read, data loaded) and each evaluation's seconds."""
    from tuneforge.models import load_pretrained
    from tuneforge.tasks.model_source import download_registry_model

    started = time.perf_counter()
    from tuneforge.plugins.harness import HarnessSettings, LmEvalHarness

    harness = LmEvalHarness(HarnessSettings(path=str(ROOT / "deployments" / "benchmarks")))
    metrics = harness.metrics()  # loads the tasks once, as a run's config check does
    loading = time.perf_counter() - started
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{store / 'mlflow.db'}")
    model_dir = download_registry_model(f"models:/{version}", store / "timed-version")
    model, tokenizer = load_pretrained(model_dir)
    model.eval()
    seconds = []
    for _ in range(repeats):
        began = time.perf_counter()
        result = harness.evaluate(model, tokenizer)
        seconds.append(round(time.perf_counter() - began, 2))
    return {
        "version": version,
        "metrics": sorted(metrics),
        "documents": len({(r["metric"], r["doc_id"]) for r in result.samples}),
        "loading_seconds": round(loading, 2),
        "evaluate_seconds": seconds,
    }


def _mean_sd(values: list[float], digits: int = 2) -> str:
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def table(runs: list[dict]) -> str:
    head = "| variant | champion taken | arithmetic before → after | " + " | ".join(
        g.split(".")[1].removeprefix("guard_") + " before → after" for g in GUARDS
    )
    lines = [head + " |", "|---" * (3 + len(GUARDS)) + "|"]
    for variant in VARIANTS:
        mine = [r for r in runs if r["variant"] == variant]
        if not mine:
            continue
        taken = f"{sum(r['alias'] == 'champion' for r in mine)} of {len(mine)}"
        cells = [variant, taken, _pair(mine, lambda r: r["arithmetic"])]
        cells += [_pair(mine, lambda r, g=g: r["guards"][g]) for g in GUARDS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _pair(runs: list[dict], pick) -> str:
    before = [pick(r)["before"] for r in runs]
    after = [pick(r)["after"] for r in runs]
    return f"{_mean_sd(before)} → {_mean_sd(after)}"


def plot(runs: list[dict], path: Path) -> None:
    """The instruct version, and the version adapted to arithmetic without and with replay
    (the unguarded and guarded runs train the same model: only the gate differs)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = ["arithmetic", *(g.split(".")[1].removeprefix("guard_") for g in GUARDS)]
    plain = [r for r in runs if r["variant"] in ("guarded", "unguarded")]
    plain = [r for r in plain if r["variant"] == plain[0]["variant"]] if plain else []
    bars = [
        ("instruct version (the champion)", runs, "before"),
        ("adapted: takes champion unguarded, stays challenger guarded", plain, "after"),
        ("adapted with replay: takes champion, guards pass", _of(runs, "replay"), "after"),
    ]
    bars = [b for b in bars if b[1]]
    fig, ax = plt.subplots(figsize=(8, 3.8))
    width = 0.8 / len(bars)
    for offset, (label, mine, key) in enumerate(bars):
        values = [
            statistics.mean(
                (r["arithmetic"] if name == "arithmetic" else _guard(r, name))[key] for r in mine
            )
            for name in names
        ]
        xs = [i + (offset - (len(bars) - 1) / 2) * width for i in range(len(names))]
        ax.bar(xs, values, width=width, label=label)
    ax.set_xticks(range(len(names)), ["arithmetic (new data)", *names[1:]])
    ax.set_ylim(0, 1.3)
    ax.set_ylabel(f"score, mean of {len({r['seed'] for r in runs})} seeds")
    ax.set_title("Adapting to arithmetic: what the guards watch, without and with replay")
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _of(runs: list[dict], variant: str) -> list[dict]:
    return [r for r in runs if r["variant"] == variant]


def _guard(run: dict, name: str) -> dict:
    return next(v for g, v in run["guards"].items() if name in g)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "forgetting-bench")
    parser.add_argument(
        "--report", action="store_true", help="Only redraw the table and plot from the results"
    )
    args = parser.parse_args()
    if args.report:
        runs = json.loads((ROOT / "benchmarks" / "results" / "forgetting.json").read_text())["runs"]
        plot(runs, ROOT / "docs" / "forgetting.png")
        print(table(runs))
        return
    runs = []
    for seed in args.seeds:
        for variant in args.variants:
            run = run_pipeline(variant, seed, args.out)
            print(json.dumps(run), flush=True)
            runs.append(run)
    first = runs[0]
    timing = time_guard_suite(args.out / f"seed{first['seed']}", first["instruct_version"])
    print(json.dumps({"guard_suite": timing}), flush=True)
    results = {"runs": runs, "guard_suite": timing}
    (ROOT / "benchmarks" / "results" / "forgetting.json").write_text(
        json.dumps(results, indent=1) + "\n"
    )
    plot(runs, ROOT / "docs" / "forgetting.png")
    print(table(runs))


if __name__ == "__main__":
    main()
