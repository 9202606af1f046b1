"""The `retrain` flow: fresh data in, a registered (and maybe promoted) model out.

    tuneforge run deployments/presets/tiny-cpu.yaml

Steps: take the model's retrain slot -> open an MLflow run (or continue a crashed one) ->
load -> validate (quarantine bad rows) -> stop if data and config equal the current champion's
(unless `force`) -> split -> resolve the base model (and replay some of its parent's training
rows, `data.replay`) -> train with the configured strategy -> evaluate base, tuned and the
current champion on the same split and benchmarks -> register, and move the `champion` alias
only when the tuned model beats both base and champion and its guards hold -> export it for
serving engines (`registry.export`) -> report (plots,
sample generations, a markdown summary in MLflow and the Prefect UI).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from prefect import flow

from tuneforge.config import RunConfig
from tuneforge.lineage import BASE, TUNED
from tuneforge.preflight import check_run
from tuneforge.reporting import training_notes
from tuneforge.run_context import RunContext
from tuneforge.slots import RetrainSlot, one_retrain_at_a_time
from tuneforge.tasks.evaluate import evaluate_champion, evaluate_model
from tuneforge.tasks.export import export_registered
from tuneforge.tasks.load_data import load_dataset
from tuneforge.tasks.model_source import resolve_base_model
from tuneforge.tasks.register import Registration, register_model, unchanged_since_champion
from tuneforge.tasks.report import report_run
from tuneforge.tasks.split_data import SplitPaths, replay_parent_data, split_dataset
from tuneforge.tasks.tracking_run import start_tracking_run
from tuneforge.tasks.train import train_here_or_on_pool
from tuneforge.tasks.validate_data import ValidationReport, validate_dataset
from tuneforge.tracking import resolve_tracking_uri, run_status
from tuneforge.training.loop import TrainResult


@dataclass(frozen=True)
class RetrainResult:
    ctx: RunContext
    data: ValidationReport
    split: SplitPaths
    training: TrainResult
    base: dict[str, float]
    tuned: dict[str, float]
    registration: Registration

    @property
    def run_id(self) -> str:
        return self.ctx.run_id

    @property
    def tracking_uri(self) -> str:
        return self.ctx.tracking_uri

    @property
    def run_dir(self) -> str:
        return self.ctx.run_dir


@dataclass(frozen=True)
class SkippedRun:
    run_id: str
    tracking_uri: str
    reason: str
    version: str  # the champion whose data and config this run's equal: models:/NAME/VERSION


@flow(name="retrain", flow_run_name="{config.name}")
def retrain(config: RunConfig) -> RetrainResult | SkippedRun:
    """Validates fresh data, fine-tunes, evaluates base vs tuned, registers the tuned model."""
    config.train.strategy_settings()  # bad strategy settings fail here, before any work
    check_run(config)
    tracking_uri = resolve_tracking_uri(config.tracking.tracking_uri)
    # The slot first: holding it, any unfinished MLflow run of this model is a crashed one,
    # which start_tracking_run continues instead of opening another.
    with one_retrain_at_a_time(config.registry.model_name, config.registry.wait_for_slot_s) as slot:
        ctx = start_tracking_run(config=config, tracking_uri=tracking_uri)
        with run_status(tracking_uri, ctx.run_id):
            return _retrain_in(ctx, config, slot)


def _retrain_in(
    ctx: RunContext, config: RunConfig, slot: RetrainSlot
) -> RetrainResult | SkippedRun:
    """The steps, inside the model's retrain slot and the open MLflow run."""
    loaded = load_dataset(data=config.data, ctx=ctx)
    validation = validate_dataset(loaded_path=loaded, data=config.data, ctx=ctx)
    if not (config.force or ctx.resumed):
        unchanged = unchanged_since_champion(
            model_name=config.registry.model_name,
            data_fingerprint=validation.fingerprint,
            config_hash=config.fingerprint(),
            ctx=ctx,
        )
        if unchanged:
            return SkippedRun(ctx.run_id, ctx.tracking_uri, unchanged.reason, unchanged.version)
    split = split_dataset(valid_path=validation.valid_path, data=config.data)
    base_dir = resolve_base_model(model=config.model, train_path=split.train_path, ctx=ctx)
    if config.data.replay:  # a share of the parent version's training rows, against forgetting
        split = replay_parent_data(split=split, data=config.data, ctx=ctx)
    trained = train_here_or_on_pool(
        config=config,
        base_dir=base_dir,
        train_path=split.train_path,
        eval_path=split.eval_path,
        ctx=ctx,
    )
    scores = {
        label: evaluate_model(
            model_dir=model_dir, label=label, eval_path=split.eval_path, config=config, ctx=ctx
        )
        for label, model_dir in ((BASE, base_dir), (TUNED, trained.model_dir))
    }
    champion = evaluate_champion(
        eval_path=split.eval_path, base_metrics=scores[BASE], config=config, ctx=ctx
    )
    slot.check_held()  # registration is the one step two runs must never both take
    registration = register_model(
        model_dir=trained.model_dir,
        base_metrics=scores[BASE],
        tuned_metrics=scores[TUNED],
        champion=champion,
        registry=config.registry,
        ctx=ctx,
        eval_dir=str(Path(split.eval_path).parent),
        max_new_tokens=config.evaluation.max_new_tokens,
    )
    if config.registry.export:  # merged, adapter, GGUF: for serving engines
        export_registered(registration=registration, registry=config.registry, ctx=ctx)
    report_run(
        eval_dir=str(Path(split.eval_path).parent),
        base=scores[BASE],
        tuned=scores[TUNED],
        decision=registration.decision,
        notes=training_notes(trained, scores[TUNED], validation.schema),
        ctx=ctx,
    )
    return RetrainResult(ctx, validation, split, trained, scores[BASE], scores[TUNED], registration)
