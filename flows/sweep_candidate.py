"""One candidate of a sweep, as the `sweep` flow runs it: a `sweep-candidate` subflow with an
MLflow run of its own, nested under the sweep's, on the split and base the sweep prepared.

Steps: open the candidate's run -> take the sweep's split, base scores and lineage tags ->
train (in a process of its own with its share of the cores, beside the other candidates; or
on `train.deployment`'s work pool) -> evaluate on the sweep's eval split -> report.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from prefect import flow, get_run_logger, task

from tuneforge import lineage
from tuneforge.config import RunConfig
from tuneforge.errors import first_line
from tuneforge.lineage import TUNED
from tuneforge.reporting import CandidateOutcome, training_notes
from tuneforge.tasks.evaluate import evaluate_model
from tuneforge.tasks.report import report_run
from tuneforge.tasks.sweep_run import adopt_sweep_inputs, candidate_run
from tuneforge.tasks.tracking_run import start_tracking_run
from tuneforge.tasks.train import train_here_or_on_pool


@dataclass(frozen=True)
class SweepInputs:
    """What every candidate of one sweep starts from: the sweep's run, its split, the base."""

    sweep: str
    run_id: str  # the sweep's MLflow run
    tracking_uri: str
    flow_run_id: str  # the sweep's flow run
    fingerprint: str  # of the candidates (sweep_fingerprint)
    split_dir: str  # train.jsonl, eval.jsonl, base_scores.jsonl, base_generations.jsonl
    base_dir: str
    base: dict[str, float]
    # Threads of a candidate training here beside others (cores // candidates at once);
    # 0: one at a time, as configured.
    threads: int


def as_candidate(name: str, config: RunConfig, inputs: SweepInputs) -> RunConfig:
    """The candidate's config as its run records it: the sweep's tags (its MLflow run nests
    under the sweep's; its checkpoints get a directory of their own) and, training here beside
    others, its share of the cores (split between its processes)."""
    tags = {
        **config.tracking.tags,
        "mlflow.parentRunId": inputs.run_id,
        lineage.SWEEP: inputs.sweep,
        lineage.SWEEP_CANDIDATE: name,
        lineage.SWEEP_FINGERPRINT: inputs.fingerprint,
        lineage.SWEEP_FLOW_RUN_ID: inputs.flow_run_id,
    }
    train = config.train
    if inputs.threads and not train.deployment and not train.num_threads:
        threads = max(1, inputs.threads // train.num_processes)
        train = train.model_copy(update={"num_threads": threads})
    tracking = config.tracking.model_copy(update={"tags": tags})
    return config.model_copy(update={"tracking": tracking, "train": train, "name": name})


@task(name="run_candidate")
def run_candidate(*, name: str, config: RunConfig, inputs: SweepInputs) -> CandidateOutcome:
    """The candidate as a subflow; a failure becomes a failed outcome naming its first line
    (the traceback is in the subflow's log), so the other candidates carry on."""
    try:
        return sweep_candidate.with_options(flow_run_name=f"{inputs.sweep}.{name}")(
            name=name, config=config, inputs=inputs
        )
    except Exception as exc:
        reason = first_line(exc)
        get_run_logger().error("candidate %s failed: %s", name, reason)
        ctx = candidate_run(inputs.tracking_uri, inputs.run_id, name)
        return CandidateOutcome(name, config.train.strategy, error=reason, ctx=ctx)


@flow(name="sweep-candidate")
def sweep_candidate(*, name: str, config: RunConfig, inputs: SweepInputs) -> CandidateOutcome:
    """Trains and evaluates one candidate in its own MLflow run."""
    from tuneforge.tracking import run_status

    ctx = start_tracking_run(config=config, tracking_uri=inputs.tracking_uri)
    with run_status(ctx.tracking_uri, ctx.run_id):
        split = adopt_sweep_inputs(
            sweep_run_id=inputs.run_id, split_dir=inputs.split_dir, base=inputs.base, ctx=ctx
        )
        trained = train_here_or_on_pool(
            config=config,
            base_dir=inputs.base_dir,
            train_path=split.train_path,
            eval_path=split.eval_path,
            ctx=ctx,
            isolated=bool(inputs.threads),  # beside other candidates: a process of its own
        )
        tuned = evaluate_model(
            model_dir=trained.model_dir,
            label=TUNED,
            eval_path=split.eval_path,
            config=config,
            ctx=ctx,
        )
        report_run(
            eval_dir=str(Path(split.eval_path).parent),
            base=inputs.base,
            tuned=tuned,
            decision=f"candidate {name} of sweep {inputs.sweep} (ranked in run {inputs.run_id})",
            notes=training_notes(trained, tuned, None),
            ctx=ctx,
        )
    return CandidateOutcome(
        name,
        config.train.strategy,
        ctx=ctx,
        metrics=tuned,
        model_dir=trained.model_dir,
        eval_path=split.eval_path,
        seconds=trained.seconds,
        tokens_per_second=trained.tokens_per_second,
        threads=config.train.num_threads,
    )
