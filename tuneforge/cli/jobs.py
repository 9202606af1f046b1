"""The commands that run flows: `tuneforge run`, `tuneforge pipeline`, `tuneforge sweep`.

    tuneforge run deployments/presets/tiny-cpu.yaml [--set train.steps=50 ...] [--debug] [--json]
    tuneforge pipeline deployments/pipelines/flan-mini.yaml [--set ...] [--json]
    tuneforge sweep deployments/sweeps/tiny-strategies.yaml [--set ...] [--json]

Each prints a human summary; with --json it ends with one JSON line. A failure ends in one line
saying what went wrong; its traceback is in the Prefect task log (and on the console with
--debug).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from tuneforge.cli.guards import print_guards
from tuneforge.cli.output import JsonOption, err, fail, json_requested, out, print_result
from tuneforge.errors import first_line

DebugOption = Annotated[bool, typer.Option("--debug", help="Show tracebacks on the console too")]


def run(
    config: Annotated[
        Path, typer.Argument(help="YAML preset, e.g. deployments/presets/tiny-cpu.yaml")
    ],
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="Override a key: --set train.steps=50")
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Retrain even if data and config are unchanged")
    ] = False,
    debug: DebugOption = False,
    as_json: JsonOption = False,
) -> None:
    """Run the `retrain` flow: validate, train, evaluate, register.

    A failure ends in one line saying what went wrong; its traceback is in the Prefect task
    log (and on the console with --debug)."""
    from tuneforge.config import ConfigError, load_config
    from tuneforge.preflight import check_run

    _print_config_notes()
    try:
        cfg = load_config(config, [*(set_ or []), *(["force=true"] if force else [])])
        check_run(cfg)
    except ConfigError as exc:
        fail(str(exc))

    from tuneforge.flows.retrain import SkippedRun, retrain

    result = _run_flow(lambda: retrain(cfg), debug)
    if isinstance(result, SkippedRun):
        out.print(f"Skipped: {result.reason}", markup=False)
        print_result(skipped_run_summary(result))
        return
    _print_summary(result)
    print_result(run_summary(result))


def run_summary(result: Any) -> dict[str, Any]:
    """The JSON line `tuneforge run --json` ends with, from the flow's `RetrainResult`."""
    reg, data, training = result.registration, result.data, result.training
    return {
        "model": reg.name,
        "version": reg.version,
        "alias": reg.alias,
        "decision": reg.decision,
        "reason": reg.reason,
        "run_id": result.run_id,
        "tracking_uri": result.tracking_uri,
        "data": {
            "total": data.total,
            "valid": data.valid,
            "rejected": data.rejected,
            "schema": data.schema,
            "quarantine": data.quarantine_path,
        },
        "training": {
            "steps": training.steps,
            "seconds": training.seconds,
            "tokens_per_second": training.tokens_per_second,
            "trainable_parameters": training.trainable_parameters,
            "best_step": training.best_step,
        },
        "metrics": {"base": result.base, "tuned": result.tuned},
        "guards": reg.guards,
    }


def skipped_run_summary(skipped: Any) -> dict[str, Any]:
    """The JSON line of a run that stopped because data and config equal the champion's."""
    return {"skipped": skipped.reason, "version": skipped.version, "run_id": skipped.run_id}


def _run_flow(call: Callable[[], Any], debug: bool) -> Any:
    """Runs `call()` (a flow) under a Prefect API, every failure one line on the console."""
    from transformers.utils import logging as hf_logging

    from tuneforge.prefect_server import PrefectServerError, prefect_api

    hf_logging.disable_progress_bar()
    if not debug:
        _console_without_tracebacks()
    try:
        with prefect_api():
            return call()
    except PrefectServerError as exc:
        fail(str(exc))
    except (ValueError, OSError) as exc:
        # Bad data, a model that cannot load, a strategy that fails, the mask audit, the split,
        # a failed pipeline stage (ValueError); a full disk, an unwritable directory, a lost
        # server (OSError): all say what went wrong in one line; Prefect has logged the details.
        if debug:
            err.print_exception()
        fail(first_line(exc))
    except Exception as exc:
        if line := _refused(exc):  # a server refused or failed mid-run: what to fix, one line
            if debug:
                err.print_exception()
            fail(line)
        # Anything else is a crash, not bad input: its traceback is printed as before, and
        # under --json the last line still says what failed (exit status 1, as a crash's).
        if not json_requested():
            raise
        err.print_exception()
        fail(first_line(exc), code=1)


def _refused(exc: BaseException) -> str | None:
    """The one line for a tracking server's 401/403/5xx, or the Prefect API's 401/403."""
    import httpx

    from tuneforge.prefect_server import http_error_line
    from tuneforge.tracking import refusal, resolve_tracking_uri

    if isinstance(exc, httpx.HTTPStatusError) and exc.response.status_code in (401, 403):
        return f"Prefect API: {http_error_line(exc)}"
    return refusal(exc, resolve_tracking_uri(None))


def pipeline(
    path: Annotated[
        Path, typer.Argument(help="Pipeline file, e.g. deployments/pipelines/flan-mini.yaml")
    ],
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override a key in every stage: --set train.seed=1"),
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Retrain every stage, even unchanged ones")
    ] = False,
    as_json: JsonOption = False,
    debug: DebugOption = False,
) -> None:
    """Run a pipeline: its stages in order, each a `retrain` from the version the one before
    registered. Unchanged stages are skipped, so a re-run resumes where inputs changed."""
    from tuneforge.config import ConfigError
    from tuneforge.pipelines import check_pipeline, load_pipeline

    _print_config_notes()
    overrides = [*(set_ or [])]
    try:
        spec = load_pipeline(path, overrides)
        check_pipeline(spec, overrides)
    except ConfigError as exc:
        fail(str(exc))

    from tuneforge.flows.pipeline import pipeline as pipeline_flow
    from tuneforge.reporting import stages_table

    result = _run_flow(lambda: pipeline_flow(spec, overrides, force), debug)

    out.print()
    out.print(stages_table(result.stages), markup=False, highlight=False, soft_wrap=True)
    out.print(f"Pipeline MLflow run {result.run_id} in {result.tracking_uri}", markup=False)
    stages = [
        {
            "stage": s.stage,
            "model": s.model,
            "version": s.version,
            "alias": s.alias,
            "skipped": s.skipped,
            "run_id": s.run_id,
            "exact_match": s.exact_match(),
            "base": s.base,
            "tuned": s.tuned,
        }
        for s in result.stages
    ]
    print_result({"pipeline": result.name, "run_id": result.run_id, "stages": stages})


def sweep(
    path: Annotated[
        Path, typer.Argument(help="Sweep file, e.g. deployments/sweeps/tiny-strategies.yaml")
    ],
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override a key in every candidate: --set train.steps=50"),
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Sweep even if data and candidates are unchanged")
    ] = False,
    as_json: JsonOption = False,
    debug: DebugOption = False,
) -> None:
    """Run a sweep: train every candidate on the same split (some at once), rank them on
    registry.metric, and put only the winner through the promotion gate."""
    from tuneforge.config import ConfigError
    from tuneforge.sweeps import check_sweep, load_sweep

    _print_config_notes()
    overrides = [*(set_ or [])]
    try:
        spec = load_sweep(path, overrides)
        check_sweep(spec.base_config(overrides), spec.candidate_configs(overrides))
    except ConfigError as exc:
        fail(str(exc))

    from tuneforge.flows.retrain import SkippedRun
    from tuneforge.flows.sweep import sweep as sweep_flow
    from tuneforge.reporting import leaderboard_markdown, leaderboard_rows

    result = _run_flow(lambda: sweep_flow(spec, overrides, force), debug)
    if isinstance(result, SkippedRun):
        out.print(f"Skipped: {result.reason}", markup=False)
        print_result({"sweep": spec.name, "skipped": result.reason})
        return
    metric = result.metric
    rows = leaderboard_rows(result.candidates, metric)
    reg = result.registration
    out.print()
    out.print(leaderboard_markdown(rows, result.base, metric), markup=False, highlight=False)
    winner = f"[bold]Winner[/bold] {escape(result.winner.name)}: {escape(reg.decision)}"
    out.print(winner, soft_wrap=True)
    for other in result.others:
        out.print(f"  also registered: {other.decision}", markup=False, soft_wrap=True)
    out.print(f"Sweep MLflow run {result.run_id} in {result.tracking_uri}", markup=False)
    candidates = [
        {**row, "metrics": c.metrics} for row, c in zip(rows, result.candidates, strict=True)
    ]
    summary = {
        "sweep": result.name,
        "run_id": result.run_id,
        "metric": metric,
        "base": result.base,
        "candidates": candidates,
        "winner": result.winner.name,
        "model": reg.name,
        "version": reg.version,
        "alias": reg.alias,
        "others": [{"version": o.version, "reason": o.reason} for o in result.others],
    }
    print_result(summary)


def _print_config_notes() -> None:
    """Shows the config loader's INFO lines on stderr, as `note: ...`."""
    from tuneforge.config import logger

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("note: %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False


class _WithoutTraceback(logging.Formatter):
    """Formats a record as `inner` does, leaving out its traceback (kept for other handlers:
    the Prefect API handler still sends it to the task log)."""

    def __init__(self, inner: logging.Formatter | None) -> None:
        super().__init__()
        self.inner = inner or logging.Formatter()

    def format(self, record: logging.LogRecord) -> str:
        saved = record.exc_info, record.exc_text, record.stack_info
        record.exc_info, record.exc_text, record.stack_info = None, None, None
        try:
            return self.inner.format(record)
        finally:
            record.exc_info, record.exc_text, record.stack_info = saved


def _console_without_tracebacks() -> None:
    """Prefect prints a failed task's or flow's traceback on the console, tens of lines above
    the one line that says what went wrong; this keeps them in the task log only."""
    for handler in prefect_console_handlers():
        handler.setFormatter(_WithoutTraceback(handler.formatter))


def prefect_console_handlers() -> list[logging.Handler]:
    """Prefect's console handlers, on whichever loggers its logging setup put them."""
    from prefect.logging.handlers import PrefectConsoleHandler

    loggers = [logging.getLogger(), *map(logging.getLogger, logging.root.manager.loggerDict)]
    handlers = [h for logger in loggers for h in getattr(logger, "handlers", [])]
    return [h for h in handlers if isinstance(h, PrefectConsoleHandler)]


def _print_summary(result: Any) -> None:
    """The human summary of a finished `retrain`: registration, data, training, metrics."""
    from tuneforge.reporting import training_notes

    reg, data, training = result.registration, result.data, result.training
    out.print()
    name, alias = escape(reg.name), reg.alias
    out.print(f"[bold]Registered[/bold] {name} version {reg.version} as [bold]{alias}[/bold]")
    out.print(f"  {reg.reason}", markup=False)
    print_guards(reg.guards)
    out.print(
        f"Data: {data.total} rows, {data.valid} valid, {data.rejected} quarantined"
        + (f" ({data.quarantine_path})" if data.rejected else ""),
        markup=False,
    )
    out.print(
        f"Training: {training.steps} steps in {training.seconds:.1f} s, "
        f"{training.tokens_per_second:,.0f} tokens/s, "
        f"{training.trainable_parameters:,} trainable parameters"
    )
    for note in training_notes(training, result.tuned, data.schema):
        out.print(f"  {note}", markup=False, highlight=False, soft_wrap=True)
    table = Table(title="base vs tuned (eval split)")
    for column in ("metric", "base", "tuned"):
        table.add_column(column, justify="left" if column == "metric" else "right")
    for key in result.tuned:
        if key == "examples":
            continue
        table.add_row(key, f"{result.base.get(key, float('nan')):.4f}", f"{result.tuned[key]:.4f}")
    out.print(table)
    uri = result.tracking_uri
    out.print(f"MLflow run {result.run_id} in {uri}", markup=False)
    if uri.startswith("sqlite:///"):
        db = Path(uri.removeprefix("sqlite:///"))
        if db.is_relative_to(Path.cwd()):
            uri = f"sqlite:///{db.relative_to(Path.cwd())}"
    ui = f"mlflow ui --backend-store-uri {uri}" if uri.startswith("sqlite:") else uri
    out.print("Browse runs and the model registry:")
    out.print(f"  [bold]{escape(ui)}[/bold]", soft_wrap=True)
