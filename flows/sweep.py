"""The `sweep` flow: several candidates (strategies, settings, learning rates) trained on the
same data and ranked; only the winner goes through the promotion gate.

    tuneforge sweep deployments/sweeps/tiny-strategies.yaml

Steps: check every candidate's config against the world -> take the model's retrain slot ->
open the sweep's MLflow run (ending runs a killed sweep of the same name left open) -> load ->
validate -> stop if the data and the candidates equal those the champion's sweep had (unless
`force`) -> split -> resolve the base -> evaluate the base, once -> the candidates,
`concurrency` at a time, each a `sweep-candidate` subflow (flows/sweep_candidate.py) with its
own MLflow run nested under the sweep's; a failed one is recorded, not raised -> rank them ->
evaluate the champion -> register the winner through the gate (the others too, without an
alias, with `register_others`) -> report the leaderboard (MLflow and the Prefect UI).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from prefect import flow, get_run_logger
from prefect.runtime import flow_run
from prefect.task_runners import ThreadPoolTaskRunner

from tuneforge import lineage
from tuneforge.config import RunConfig
from tuneforge.flows.retrain import SkippedRun
from tuneforge.flows.sweep_candidate import SweepInputs, as_candidate, run_candidate
from tuneforge.lineage import BASE
from tuneforge.reporting import CandidateOutcome, rank
from tuneforge.run_context import RunContext
from tuneforge.slots import RetrainSlot, one_retrain_at_a_time
from tuneforge.sweeps import SweepSpec, check_sweep, sweep_fingerprint, threads_per_candidate
from tuneforge.tasks.evaluate import evaluate_champion, evaluate_model
from tuneforge.tasks.export import export_registered
from tuneforge.tasks.load_data import load_dataset
from tuneforge.tasks.model_source import resolve_base_model
from tuneforge.tasks.register import (
    Registration,
    register_model,
    register_runner_up,
    unchanged_since_champion,
)
from tuneforge.tasks.split_data import replay_parent_data, split_dataset
from tuneforge.tasks.sweep_report import report_sweep
from tuneforge.tasks.sweep_run import start_sweep_run
from tuneforge.tasks.validate_data import validate_dataset
from tuneforge.tracking import resolve_tracking_uri, run_status


@dataclass(frozen=True)
class SweepResult:
    name: str
    run_id: str  # the sweep's MLflow run; the candidates' runs are nested under it
    tracking_uri: str
    metric: str  # registry.metric: what the candidates were ranked on
    base: dict[str, float]
    candidates: list[CandidateOutcome]  # ranked: the winner first, failed ones last
    registration: Registration  # the winner's
    others: list[Registration] = field(default_factory=list)  # with register_others

    @property
    def winner(self) -> CandidateOutcome:
        return self.candidates[0]


class SweepFailed(ValueError):
    """Every candidate failed: one line naming each and why."""


@flow(name="sweep", flow_run_name="{spec.name}")
def sweep(
    spec: SweepSpec, overrides: list[str] | None = None, force: bool = False
) -> SweepResult | SkippedRun:
    """Trains `spec`'s candidates on one split, ranks them, registers the winner."""
    extra = [*(overrides or []), *(["force=true"] if force else [])]
    config, candidates = spec.base_config(extra), spec.candidate_configs(extra)
    check_sweep(config, candidates)  # a bad candidate fails now, not after the base is scored
    tracking_uri = resolve_tracking_uri(config.tracking.tracking_uri)
    with one_retrain_at_a_time(config.registry.model_name, config.registry.wait_for_slot_s) as slot:
        ctx = start_sweep_run(
            sweep=spec.name, config=config, candidates=spec.expanded(), tracking_uri=tracking_uri
        )
        with run_status(tracking_uri, ctx.run_id):
            return _sweep_in(ctx, spec, config, candidates, slot)


def _sweep_in(
    ctx: RunContext,
    spec: SweepSpec,
    config: RunConfig,
    candidates: list[tuple[str, RunConfig]],
    slot: RetrainSlot,
) -> SweepResult | SkippedRun:
    """The steps, inside the model's retrain slot and the sweep's open MLflow run."""
    loaded = load_dataset(data=config.data, ctx=ctx)
    validation = validate_dataset(loaded_path=loaded, data=config.data, ctx=ctx)
    fingerprint = sweep_fingerprint(candidates, spec.register_others)
    if not config.force:
        unchanged = unchanged_since_champion(
            model_name=config.registry.model_name,
            data_fingerprint=validation.fingerprint,
            config_hash=fingerprint,
            config_tag=lineage.SWEEP_FINGERPRINT,
            ctx=ctx,
        )
        if unchanged:
            return SkippedRun(ctx.run_id, ctx.tracking_uri, unchanged.reason, unchanged.version)
    split = split_dataset(valid_path=validation.valid_path, data=config.data)
    base_dir = resolve_base_model(model=config.model, train_path=split.train_path, ctx=ctx)
    if config.data.replay:  # a share of the parent version's training rows, against forgetting
        split = replay_parent_data(split=split, data=config.data, ctx=ctx)
    base = evaluate_model(
        model_dir=base_dir, label=BASE, eval_path=split.eval_path, config=config, ctx=ctx
    )
    inputs = SweepInputs(
        sweep=spec.name,
        run_id=ctx.run_id,
        tracking_uri=ctx.tracking_uri,
        flow_run_id=str(flow_run.id or ""),
        fingerprint=fingerprint,
        split_dir=str(Path(split.eval_path).parent),
        base_dir=base_dir,
        base=base,
        threads=threads_per_candidate(spec.at_once()) if spec.at_once() > 1 else 0,
    )
    ranked = rank(_train_candidates(candidates, inputs, spec.at_once()), config.registry)
    if not ranked[0].finished:
        report_sweep(sweep=spec.name, candidates=ranked, base=base, config=config, ctx=ctx)
        failures = "; ".join(f"{c.name}: {c.error}" for c in ranked)
        raise SweepFailed(f"sweep {spec.name}: every candidate failed ({failures})")
    winner = ranked[0]
    champion = evaluate_champion(
        eval_path=winner.eval_path, base_metrics=base, config=config, ctx=winner.ctx
    )
    slot.check_held()  # registration is the one step two runs must never both take
    registration = register_model(
        model_dir=winner.model_dir,
        base_metrics=base,
        tuned_metrics=winner.metrics,
        champion=champion,
        registry=config.registry,
        ctx=winner.ctx,
        eval_dir=str(Path(winner.eval_path).parent),
        max_new_tokens=config.evaluation.max_new_tokens,
    )
    if config.registry.export:  # the winner's exports, for serving engines
        export_registered(registration=registration, registry=config.registry, ctx=winner.ctx)
    others = _register_others(spec, ranked, base, config) if spec.register_others else []
    report_sweep(
        sweep=spec.name,
        candidates=ranked,
        base=base,
        config=config,
        ctx=ctx,
        registration=registration,
    )
    metric = config.registry.metric
    return SweepResult(
        spec.name, ctx.run_id, ctx.tracking_uri, metric, base, ranked, registration, others
    )


def _train_candidates(
    candidates: list[tuple[str, RunConfig]], inputs: SweepInputs, at_once: int
) -> list[CandidateOutcome]:
    """Runs every candidate, `at_once` at a time; the outcomes in the candidates' order.

    Evaluation runs in this process, in the task runner's threads: torch's thread count is
    process-wide, so it is divided here as it is for the training processes."""
    import torch

    for name, cfg in candidates:
        if inputs.threads and cfg.train.num_threads and not cfg.train.deployment:
            get_run_logger().warning(
                "candidate %s: train.num_threads=%d is kept; %d candidates at once on this "
                "machine would get %d each",
                name,
                cfg.train.num_threads,
                at_once,
                inputs.threads,
            )
    before = torch.get_num_threads()
    if inputs.threads:
        torch.set_num_threads(inputs.threads)
    try:
        with ThreadPoolTaskRunner(max_workers=at_once) as runner:
            futures = [
                runner.submit(
                    run_candidate,
                    {"name": name, "config": as_candidate(name, cfg, inputs), "inputs": inputs},
                )
                for name, cfg in candidates
            ]
            return [future.result() for future in futures]
    finally:
        torch.set_num_threads(before)


def _register_others(
    spec: SweepSpec, ranked: list[CandidateOutcome], base: dict[str, float], config: RunConfig
) -> list[Registration]:
    """Every finished candidate but the winner, as a version without an alias."""
    finished = [c for c in ranked if c.finished]
    return [
        register_runner_up(
            model_dir=c.model_dir,
            base_metrics=base,
            tuned_metrics=c.metrics,
            registry=config.registry,
            ctx=c.ctx,
            reason=f"rank {c.rank} of {len(finished)} in sweep {spec.name}, not gated",
            max_new_tokens=config.evaluation.max_new_tokens,
        )
        for c in finished[1:]
    ]
