"""Deployment entrypoints: run `retrain` from a YAML preset, or a pipeline or a sweep from its
file, as schedules and triggers call them.

    prefect --no-prompt deploy --prefect-file deployments/prefect.yaml --all

Deployment parameters must be JSON, so these flows take a file path plus `KEY=VALUE`
overrides instead of a `RunConfig`; a data trigger passes the pushed dataset's resource id.
"""

from __future__ import annotations

from prefect import flow

from tuneforge import lineage
from tuneforge.config import load_config
from tuneforge.flows.pipeline import pipeline
from tuneforge.flows.retrain import RetrainResult, SkippedRun, retrain
from tuneforge.flows.sweep import sweep
from tuneforge.pipelines import load_pipeline
from tuneforge.sweeps import load_sweep


@flow(name="retrain-preset")
def retrain_preset(
    preset: str, overrides: list[str] | None = None, dataset: str | None = None, force: bool = False
) -> dict[str, str]:
    """Loads `preset` (relative to the working directory), applies `overrides`, points
    `data.path` at `dataset` when a data event names one, and runs `retrain`."""
    extra = [*(overrides or [])]
    if dataset:
        extra.append(f"data.path={dataset.removeprefix(lineage.DATASET_RESOURCE)}")
    if force:
        extra.append("force=true")
    result: RetrainResult | SkippedRun = retrain(load_config(preset, extra))
    if isinstance(result, SkippedRun):
        return {"run_id": result.run_id, "skipped": result.reason}
    reg = result.registration
    return {"run_id": result.run_id, "model": reg.name, "version": reg.version, "alias": reg.alias}


@flow(name="pipeline-file")
def pipeline_file(
    path: str, overrides: list[str] | None = None, force: bool = False
) -> list[dict[str, str]]:
    """Loads the pipeline file `path` (relative to the working directory), applies `overrides`
    to every stage, and runs `pipeline`: per stage, its version and whether it was skipped."""
    extra = [*(overrides or [])]
    result = pipeline(load_pipeline(path, extra), extra, force)
    return [
        {"stage": s.stage, "model": s.model, "version": s.version, "skipped": str(s.skipped)}
        for s in result.stages
    ]


@flow(name="sweep-file")
def sweep_file(
    path: str, overrides: list[str] | None = None, force: bool = False
) -> dict[str, object]:
    """Loads the sweep file `path` (relative to the working directory), applies `overrides`
    to every candidate, and runs `sweep`: the leaderboard, the winner and its version."""
    extra = [*(overrides or [])]
    result = sweep(load_sweep(path, extra), extra, force)
    if isinstance(result, SkippedRun):
        return {"run_id": result.run_id, "skipped": result.reason}
    reg = result.registration
    return {
        "run_id": result.run_id,
        "candidates": [
            {"name": c.name, "rank": c.rank, "status": c.status} for c in result.candidates
        ],
        "winner": result.winner.name,
        "version": reg.version,
        "alias": reg.alias,
    }
