"""The `sweep` flow: several candidates (strategies, settings, learning rates) trained on the
same data and ranked; only the winner goes through the promotion gate.

    tuneforge sweep deployments/sweeps/tiny-strategies.yaml

Steps: take the model's retrain slot -> open the sweep's MLflow run -> load -> validate ->
stop if the data and the candidates equal those the champion's sweep had (unless `force`) ->
split -> resolve the base -> evaluate the base, once -> the candidates, `concurrency` at a
time, each a `sweep-candidate` subflow with its own MLflow run nested under the sweep's:
train (in a process of its own, the cores divided between the candidates; or on a work pool),
evaluate on the same eval split; a failed candidate is recorded, not raised -> rank them ->
evaluate the champion -> register the winner through the gate (the others too, without an
alias, with `register_others`) -> report the leaderboard (MLflow and the Prefect UI).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.runtime import flow_run
from prefect.task_runners import ThreadPoolTaskRunner

from tuneforge.concurrency import RetrainSlot, one_retrain_at_a_time
from tuneforge.config import RunConfig
from tuneforge.flows.retrain import SkippedRun, checkpoint_dir
from tuneforge.preflight import check_run
from tuneforge.run_context import RunContext
from tuneforge.sweeps import SweepSpec, sweep_fingerprint, threads_per_candidate
from tuneforge.tasks.evaluate import evaluate_champion, evaluate_model
from tuneforge.tasks.load_data import load_dataset
from tuneforge.tasks.model_source import resolve_base_model
from tuneforge.tasks.register import Registration, register_model, unchanged_since_champion
from tuneforge.tasks.report import report_run, training_notes
from tuneforge.tasks.split_data import split_dataset
from tuneforge.tasks.sweep_report import Candidate, rank, report_sweep
from tuneforge.tasks.sweep_run import adopt_sweep_inputs, candidate_run, start_sweep_run
from tuneforge.tasks.tracking_run import start_tracking_run
from tuneforge.tasks.train import train_with_strategy
from tuneforge.tasks.train_remote import train_on_pool
from tuneforge.tasks.validate_data import validate_dataset
from tuneforge.tracking import resolve_tracking_uri, run_status


@dataclass(frozen=True)
class Shared:
    """What every candidate of one sweep starts from: the sweep's run, its split, the base."""

    sweep: str
    run_id: str  # the sweep's MLflow run
    tracking_uri: str
    flow_run_id: str  # the sweep's flow run
    fingerprint: str  # of the candidates (sweep_fingerprint)
    split_dir: str  # train.jsonl, eval.jsonl, base_scores.jsonl, base_generations.jsonl
    base_dir: str
    base: dict[str, float]
    threads: int  # train.num_threads of a candidate training here (0: leave as configured)


@dataclass(frozen=True)
class SweepResult:
    name: str
    run_id: str  # the sweep's MLflow run; the candidates' runs are nested under it
    tracking_uri: str
    base: dict[str, float]
    candidates: list[Candidate]  # ranked: the winner first, failed ones last
    registration: Registration | None  # the winner's
    others: list[Registration] = field(default_factory=list)  # with register_others

    @property
    def winner(self) -> Candidate | None:
        first = self.candidates[0] if self.candidates else None
        return first if first and first.finished else None


class SweepFailed(ValueError):
    """Every candidate failed: one line naming each and why."""


@flow(name="sweep", flow_run_name="{spec.name}")
def sweep(
    spec: SweepSpec, overrides: list[str] | None = None, force: bool = False
) -> SweepResult | SkippedRun:
    """Trains `spec`'s candidates on one split, ranks them, registers the winner."""
    extra = [*(overrides or []), *(["force=true"] if force else [])]
    config = spec.base_config(extra)
    candidates = spec.candidate_configs(extra)
    check_run(config)
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
            config_tag="tuneforge.sweep_fingerprint",
            ctx=ctx,
        )
        if unchanged:
            return SkippedRun(ctx.run_id, ctx.tracking_uri, unchanged.reason, unchanged.version)
    split = split_dataset(valid_path=validation.valid_path, data=config.data)
    base_dir = resolve_base_model(model=config.model, train_path=split.train_path, ctx=ctx)
    base = evaluate_model(
        model_dir=base_dir, label="base", eval_path=split.eval_path, config=config, ctx=ctx
    )
    shared = Shared(
        sweep=spec.name,
        run_id=ctx.run_id,
        tracking_uri=ctx.tracking_uri,
        flow_run_id=str(flow_run.id or ""),
        fingerprint=fingerprint,
        split_dir=str(Path(split.eval_path).parent),
        base_dir=base_dir,
        base=base,
        threads=threads_per_candidate(spec.concurrency) if spec.concurrency > 1 else 0,
    )
    ranked = rank(_train_candidates(candidates, shared, config, spec.concurrency), config.registry)
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
    finished = [c for c in ranked if c.finished]
    others = [
        register_model(
            model_dir=c.model_dir,
            base_metrics=base,
            tuned_metrics=c.metrics,
            champion=None,
            registry=config.registry,
            ctx=c.ctx,
            max_new_tokens=config.evaluation.max_new_tokens,
            runner_up=f"rank {c.rank} of {len(finished)} in sweep {spec.name}, not gated",
        )
        for c in finished[1:]
        if spec.register_others
    ]
    report_sweep(
        sweep=spec.name,
        candidates=ranked,
        base=base,
        config=config,
        ctx=ctx,
        registration=registration,
    )
    return SweepResult(spec.name, ctx.run_id, ctx.tracking_uri, base, ranked, registration, others)


def _train_candidates(
    candidates: list[tuple[str, RunConfig]], shared: Shared, config: RunConfig, concurrency: int
) -> list[Candidate]:
    """Runs every candidate, `concurrency` at a time; the outcomes in the candidates' order.

    Evaluation runs in this process, in the task runner's threads: torch's thread count is
    process-wide, so it is divided here as it is for the training processes."""
    import torch

    before = torch.get_num_threads()
    if shared.threads:
        torch.set_num_threads(shared.threads)
    try:
        with ThreadPoolTaskRunner(max_workers=concurrency) as runner:
            futures = [
                runner.submit(
                    run_candidate,
                    {"name": name, "config": _as_candidate(name, cfg, shared), "shared": shared},
                )
                for name, cfg in candidates
            ]
            return [future.result() for future in futures]
    finally:
        torch.set_num_threads(before)


def _as_candidate(name: str, config: RunConfig, shared: Shared) -> RunConfig:
    """The candidate's config as its run records it: the sweep's tags (its MLflow run nests
    under the sweep's) and, training here beside others, its share of the cores."""
    tags = {
        **config.tracking.tags,
        "mlflow.parentRunId": shared.run_id,
        "tuneforge.sweep": shared.sweep,
        "tuneforge.sweep_candidate": name,
        "tuneforge.sweep_fingerprint": shared.fingerprint,
        "tuneforge.sweep_flow_run_id": shared.flow_run_id,
    }
    train = config.train
    if shared.threads and not train.deployment and not train.num_threads:
        train = train.model_copy(update={"num_threads": shared.threads})
    tracking = config.tracking.model_copy(update={"tags": tags})
    return config.model_copy(update={"tracking": tracking, "train": train, "name": name})


@task(name="run_candidate")
def run_candidate(*, name: str, config: RunConfig, shared: Shared) -> Candidate:
    """One candidate as a subflow; a failure becomes a `failed` outcome naming its first line
    (the traceback is in the subflow's log), so the other candidates carry on."""
    try:
        return sweep_candidate.with_options(flow_run_name=f"{shared.sweep}.{name}")(
            name=name, config=config, shared=shared
        )
    except Exception as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        get_run_logger().error("candidate %s failed: %s", name, reason)
        ctx = candidate_run(shared.tracking_uri, shared.run_id, name)
        return Candidate(name=name, strategy=config.train.strategy, error=reason, ctx=ctx)


@flow(name="sweep-candidate")
def sweep_candidate(*, name: str, config: RunConfig, shared: Shared) -> Candidate:
    """Open the candidate's run -> take the sweep's split and base -> train -> evaluate ->
    report (plots and summary on the candidate's run)."""
    ctx = start_tracking_run(config=config, tracking_uri=shared.tracking_uri)
    with run_status(ctx.tracking_uri, ctx.run_id):
        split = adopt_sweep_inputs(
            sweep_run_id=shared.run_id, split_dir=shared.split_dir, base=shared.base, ctx=ctx
        )
        if config.train.deployment:  # training on another work pool, e.g. GPUs
            trained = train_on_pool(
                config=config, train_path=split.train_path, eval_path=split.eval_path, ctx=ctx
            )
        else:
            trained = train_with_strategy.with_options(retries=config.train.retries)(
                base_dir=shared.base_dir,
                train_path=split.train_path,
                eval_path=split.eval_path,
                train=config.train,
                checkpoint_dir=checkpoint_dir(config),
                ctx=ctx,
                isolated=bool(shared.threads),
            )
        tuned = evaluate_model(
            model_dir=trained.model_dir,
            label="tuned",
            eval_path=split.eval_path,
            config=config,
            ctx=ctx,
        )
        report_run(
            eval_dir=str(Path(split.eval_path).parent),
            base=shared.base,
            tuned=tuned,
            decision=f"candidate {name} of sweep {shared.sweep} (ranked in run {shared.run_id})",
            notes=training_notes(trained, tuned, None),
            ctx=ctx,
        )
    return replace(
        Candidate(name=name, strategy=config.train.strategy),
        ctx=ctx,
        metrics=tuned,
        model_dir=trained.model_dir,
        eval_path=split.eval_path,
        seconds=trained.seconds,
        tokens_per_second=trained.tokens_per_second,
        threads=config.train.num_threads,
    )
