"""The `retrain` flow: fresh data in, a registered (and maybe promoted) model out.

    tuneforge run deployments/presets/tiny-cpu.yaml

Steps: open an MLflow run -> load -> validate (quarantine bad rows) -> stop if data and config
equal the current champion's (unless `force`) -> split -> resolve the
base model -> train with the configured strategy -> evaluate base, tuned and the current
champion on the same split -> register, and move the `champion` alias only when the tuned
model beats both base and champion -> report (plots,
sample generations, a markdown summary in MLflow and the Prefect UI).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from prefect import flow

from tasks.evaluate import evaluate_champion, evaluate_model
from tasks.load_data import load_dataset
from tasks.model_source import resolve_base_model
from tasks.register import Registration, register_model, unchanged_since_champion
from tasks.report import report_run
from tasks.split_data import SplitPaths, split_dataset
from tasks.tracking_run import start_tracking_run
from tasks.train import TrainResult, train_with_strategy
from tasks.train_remote import train_on_pool
from tasks.validate_data import ValidationReport, validate_dataset
from tuneforge.concurrency import one_retrain_at_a_time
from tuneforge.config import RunConfig
from tuneforge.paths import inside, safe_component
from tuneforge.preflight import check_run
from tuneforge.tracking import resolve_tracking_uri, run_status


@dataclass(frozen=True)
class RetrainResult:
    run_id: str
    tracking_uri: str
    run_dir: str
    data: ValidationReport
    split: SplitPaths
    training: TrainResult
    base: dict[str, float]
    tuned: dict[str, float]
    registration: Registration


@dataclass(frozen=True)
class SkippedRun:
    run_id: str
    tracking_uri: str
    reason: str


def checkpoint_dir(config: RunConfig) -> str:
    """One checkpoint directory per registered model: only one retrain of a model runs at a
    time, and a re-run after a crash (a new flow run) finds the checkpoints of the last one."""
    name = safe_component(config.registry.model_name)
    return str(inside(config.output_dir, "checkpoints", name))


@flow(name="retrain", flow_run_name="{config.name}")
def retrain(config: RunConfig) -> RetrainResult | SkippedRun:
    """Validates fresh data, fine-tunes, evaluates base vs tuned, registers the tuned model."""
    config.strategy_settings()  # bad strategy settings fail here, before any work
    check_run(config)
    tracking_uri = resolve_tracking_uri(config.tracking.tracking_uri)
    data, model, train, evaluation = config.data, config.model, config.train, config.evaluation
    remote_code = model.trust_remote_code
    registry = config.registry

    # The slot first: holding it, any unfinished MLflow run of this model is a crashed one,
    # which start_tracking_run continues instead of opening another.
    with one_retrain_at_a_time(registry.model_name, registry.wait_for_slot_s) as slot:
        tracking = start_tracking_run(config, tracking_uri)
        run_id = tracking.run_id
        run_dir = str(Path(config.output_dir).resolve() / run_id)
        with run_status(tracking_uri, run_id):
            loaded = load_dataset(data.path, data.format, data.hf_split, f"{run_dir}/data")
            validation = validate_dataset(
                loaded, data.max_chars, data.max_rejected_fraction, data.path, run_id, tracking_uri
            )
            if not (config.force or tracking.resumed):
                unchanged = unchanged_since_champion(
                    registry.model_name, validation.fingerprint, config.fingerprint(),
                    tracking_uri, run_id,
                )  # fmt: skip
                if unchanged:
                    return SkippedRun(run_id, tracking_uri, unchanged)
            split = split_dataset(
                validation.valid_path, data.eval_fraction, data.seed, data.holdout_tasks
            )
            base_dir = resolve_base_model(model, split.train_path, run_dir, run_id, tracking_uri)
            if train.deployment:  # training on another work pool, e.g. GPUs
                trained = train_on_pool(
                    config, run_id, tracking_uri, split.train_path, split.eval_path, run_dir
                )
            else:
                trained = train_with_strategy.with_options(retries=train.retries)(
                    base_dir, split.train_path, train, f"{run_dir}/tuned", run_id,
                    tracking_uri, remote_code, split.eval_path, checkpoint_dir(config),
                )  # fmt: skip
            scores = {
                label: evaluate_model(
                    model_dir, split.eval_path, label, evaluation, train.max_length, run_id,
                    tracking_uri, remote_code, data.holdout_tasks,
                )
                for label, model_dir in (("base", base_dir), ("tuned", trained.model_dir))
            }  # fmt: skip
            champion = evaluate_champion(
                registry.model_name, split.eval_path, evaluation, train.max_length, run_id,
                tracking_uri, run_dir, scores["base"], data.holdout_tasks,
            )  # fmt: skip
            slot.check_held()  # registration is the one step two runs must never both take
            registration = register_model(
                trained.model_dir, run_id, scores["base"], scores["tuned"], champion,
                registry, tracking_uri, remote_code,
            )  # fmt: skip
            report_run(
                run_id, tracking_uri, str(Path(split.eval_path).parent), scores["base"],
                scores["tuned"], registration.decision,
            )  # fmt: skip

    return RetrainResult(
        run_id, tracking_uri, run_dir, validation, split, trained, scores["base"], scores["tuned"],
        registration,
    )  # fmt: skip
