"""The `tuneforge` command line.

    tuneforge run deployments/presets/tiny-cpu.yaml [--set train.steps=50 ...] [--debug]
    tuneforge pipeline deployments/pipelines/flan-mini.yaml [--set ...] [--json]
    tuneforge sweep deployments/sweeps/tiny-strategies.yaml [--set ...] [--json]
    tuneforge validate data/instructions.jsonl [--format jsonl] [--quarantine PATH] [--json]
    tuneforge evaluate models:/tuneforge-demo@champion data/instructions.jsonl [--json]
    tuneforge strategies [NAME] [--json]
    tuneforge evaluators [NAME] [--json]
    tuneforge models list|show|compare|promote|rollback [--json]
    tuneforge slots list|release MODEL [--json]
    tuneforge data push data/instructions.jsonl
    tuneforge sample-data data/instructions.jsonl

Errors a user can fix (a bad config key, an unusable data file) print one line and exit 2.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
from itertools import islice
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from tuneforge.secrets import install_redaction

# MLflow's per-file download bars add nothing to a run's output, and neither MLflow nor
# Prefect should phone home from a training job (offline machines log errors trying).
# Prefect's temporary server (no PREFECT_API_URL) gets 90 s to start instead of 20: on a busy
# machine, or with a second run starting beside the first, 20 s is not always enough.
for _name, _value in (
    ("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false"),
    ("MLFLOW_DISABLE_TELEMETRY", "true"),
    ("PREFECT_SERVER_ANALYTICS_ENABLED", "false"),
    ("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90"),
):
    os.environ.setdefault(_name, _value)

# install_redaction runs before every command: secrets in the environment are masked in all
# logs and output (tuneforge/secrets.py).
app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help=__doc__.split("\n\n")[0],
    callback=install_redaction,
)
out = Console()
err = Console(stderr=True)


def _fail(message: str, code: int = 2) -> None:
    err.print(f"[red]error:[/red] {escape(message)}", soft_wrap=True, highlight=False)
    raise typer.Exit(code)


@app.command()
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
    debug: Annotated[
        bool, typer.Option("--debug", help="Show tracebacks on the console too")
    ] = False,
) -> None:
    """Run the `retrain` flow: validate, train, evaluate, register.

    A failure ends in one line saying what went wrong; its traceback is in the Prefect task
    log (and on the console with --debug)."""
    from tuneforge.config import ConfigError, load_config
    from tuneforge.preflight import check_run

    _print_notes("tuneforge.config")
    try:
        cfg = load_config(config, [*(set_ or []), *(["force=true"] if force else [])])
        check_run(cfg)
    except ConfigError as exc:
        _fail(str(exc))

    from tuneforge.flows.retrain import SkippedRun, retrain

    result = _run_flow(lambda: retrain(cfg), debug)
    if isinstance(result, SkippedRun):
        out.print(f"Skipped: {result.reason}", markup=False)
        return
    _print_summary(result)


def _run_flow(call: Any, debug: bool) -> Any:
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
        _fail(str(exc))
    except (ValueError, OSError) as exc:
        # Bad data, a model that cannot load, a strategy that fails, the mask audit, the split,
        # a failed pipeline stage (ValueError); a full disk, an unwritable directory, a lost
        # server (OSError): all say what went wrong in one line; Prefect has logged the details.
        if debug:
            err.print_exception()
        _fail(str(exc).strip().splitlines()[0])


@app.command()
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
    as_json: Annotated[
        bool, typer.Option("--json", help="End with one JSON line: every stage's outcome")
    ] = False,
    debug: Annotated[
        bool, typer.Option("--debug", help="Show tracebacks on the console too")
    ] = False,
) -> None:
    """Run a pipeline: its stages in order, each a `retrain` from the version the one before
    registered. Unchanged stages are skipped, so a re-run resumes where inputs changed."""
    from tuneforge.config import ConfigError
    from tuneforge.pipelines import check_pipeline, load_pipeline

    _print_notes("tuneforge.config")
    overrides = [*(set_ or [])]
    try:
        spec = load_pipeline(path, overrides)
        check_pipeline(spec, overrides)
    except ConfigError as exc:
        _fail(str(exc))

    from tuneforge.flows.pipeline import pipeline as pipeline_flow
    from tuneforge.tasks.report import stages_table

    result = _run_flow(lambda: pipeline_flow(spec, overrides, force), debug)

    out.print()
    out.print(stages_table(result.stages), markup=False, highlight=False, soft_wrap=True)
    out.print(f"Pipeline MLflow run {result.run_id} in {result.tracking_uri}", markup=False)
    if as_json:
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
        print(json.dumps({"pipeline": result.name, "run_id": result.run_id, "stages": stages}))


@app.command()
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
    as_json: Annotated[
        bool,
        typer.Option("--json", help="End with one JSON line: candidates, winner, version"),
    ] = False,
    debug: Annotated[
        bool, typer.Option("--debug", help="Show tracebacks on the console too")
    ] = False,
) -> None:
    """Run a sweep: train every candidate on the same split (some at once), rank them on
    registry.metric, and put only the winner through the promotion gate."""
    from tuneforge.config import ConfigError
    from tuneforge.sweeps import check_sweep, load_sweep

    _print_notes("tuneforge.config")
    overrides = [*(set_ or [])]
    try:
        spec = load_sweep(path, overrides)
        check_sweep(spec.base_config(overrides), spec.candidate_configs(overrides))
    except ConfigError as exc:
        _fail(str(exc))

    from tuneforge.flows.retrain import SkippedRun
    from tuneforge.flows.sweep import sweep as sweep_flow
    from tuneforge.tasks.sweep_report import leaderboard_markdown, leaderboard_rows

    result = _run_flow(lambda: sweep_flow(spec, overrides, force), debug)
    if isinstance(result, SkippedRun):
        out.print(f"Skipped: {result.reason}", markup=False)
        if as_json:
            print(json.dumps({"sweep": spec.name, "skipped": result.reason}))
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
    if as_json:
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
        print(json.dumps(summary))


def _print_notes(logger_name: str) -> None:
    """Shows the INFO lines of `logger_name` on stderr, as `note: ...`."""
    import logging

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("note: %(message)s"))
    logger = logging.getLogger(logger_name)
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
    reg, data, training = result.registration, result.data, result.training
    out.print()
    name, alias = escape(reg.name), reg.alias
    out.print(f"[bold]Registered[/bold] {name} version {reg.version} as [bold]{alias}[/bold]")
    out.print(f"  {reg.reason}", markup=False)
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
    from tuneforge.tasks.report import training_notes

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


def _column_map(columns: list[str] | None) -> dict[str, str]:
    """`--column FIELD=COLUMN` options as a mapping; a malformed one fails in one line."""
    mapping = {}
    for item in columns or []:
        field, sep, column = item.partition("=")
        if not sep or not field.strip() or not column:
            _fail(f"--column {item!r}: expected FIELD=COLUMN, e.g. --column output=response")
        mapping[field.strip()] = column
    return mapping


def default_quarantine(data: str) -> Path:
    """Beside the data file (or dataset directory): DATA.quarantine.jsonl. An `hf:` hub name
    has no place of its own: NAME.quarantine.jsonl in the working directory."""
    if data.startswith("hf:") and not Path(data.removeprefix("hf:")).exists():
        name = Path(data.removeprefix("hf:")).name.strip(".") or "dataset"
        return Path(f"{name}.quarantine.jsonl")
    path = Path(data.removeprefix("hf:"))
    return path.with_name(f"{path.name}.quarantine.jsonl")


@app.command()
def validate(
    data: Annotated[str, typer.Argument(help="Data file, dataset directory, or hf:NAME")],
    format_: Annotated[
        str, typer.Option("--format", help="auto, jsonl, json, csv, parquet or hf")
    ] = "auto",
    schema: Annotated[
        str,
        typer.Option(
            help="auto, alpaca, dolly, sharegpt, openai, prompt_completion or text (data.schema)"
        ),
    ] = "auto",
    column: Annotated[
        list[str] | None,
        typer.Option(help="FIELD=COLUMN: read a field from another column (repeatable)"),
    ] = None,
    ignore: Annotated[
        list[str] | None,
        typer.Option(help="A column training should not read (repeatable)"),
    ] = None,
    quarantine: Annotated[
        Path | None,
        typer.Option(
            help="Where rejected rows go (default: beside the data, DATA.quarantine.jsonl; "
            "for an hf: hub name, NAME.quarantine.jsonl in the working directory)"
        ),
    ] = None,
    max_chars: Annotated[int, typer.Option(help="Longest accepted field, in characters")] = 2000,
    hf_split: Annotated[str, typer.Option(help="Split of a datasets name")] = "train",
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON summary last")] = False,
) -> None:
    """Validate a dataset. Exit 0: all rows valid; 1: some quarantined; 2: unusable (no schema
    fits, a column nothing reads, every row rejected, or the file cannot be read)."""
    from tuneforge.data_schemas import SCHEMA_NAMES, SchemaError
    from tuneforge.jsonl import iter_jsonl
    from tuneforge.tasks.load_data import DataLoadError, iter_rows
    from tuneforge.tasks.validate_data import validate_source

    if schema not in SCHEMA_NAMES:
        _fail(f"--schema {schema!r}: use one of {', '.join(SCHEMA_NAMES)}")
    quarantine = quarantine or default_quarantine(data)
    partial = quarantine.with_name(f".{quarantine.name}.partial")
    # Streamed: read once (twice only if its first rows cannot tell the schema), never whole.
    with tempfile.TemporaryDirectory(prefix="tuneforge-validate-") as tmp:
        try:
            report = validate_source(
                lambda: iter_rows(data, format_, hf_split),
                max_chars,
                Path(tmp, "valid.jsonl"),
                partial,
                data,
                schema,
                _column_map(column),
                ignore or [],
            )
        except (DataLoadError, SchemaError) as exc:
            partial.unlink(missing_ok=True)
            _fail(str(exc))
        except OSError as exc:
            partial.unlink(missing_ok=True)
            _fail(f"{quarantine}: cannot write there ({exc.strerror}); pass --quarantine PATH")
    partial.replace(quarantine)
    for entry in islice(iter_jsonl(quarantine), 20):
        line = f"row {entry['row']}: {entry['reason']}"
        err.print(line, markup=False, highlight=False, soft_wrap=True)
    if report.rejected > 20:
        err.print(f"... and {report.rejected - 20} more in {quarantine}", markup=False)
    summary = {"total": report.total, "valid": report.valid, "rejected": report.rejected}
    summary |= {"quarantine": str(quarantine), "schema": report.schema, "columns": report.columns}
    if as_json:
        print(json.dumps(summary))
    else:
        picked = "recognised" if schema == "auto" else "given"
        mapping = ", ".join(f"{f}={c}" for f, c in report.columns.items())
        out.print(
            f"{data}: schema {report.schema} ({picked}; {mapping}); {report.total} rows, "
            f"{report.valid} valid, {report.rejected} quarantined to {quarantine}",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
    if report.total and not report.valid:
        err.print(
            f"error: {data}: every row was rejected; nothing is usable (reasons in {quarantine})",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
        raise typer.Exit(2)
    raise typer.Exit(1 if report.rejected else 0)


@app.command()
def evaluate(
    model: Annotated[
        str, typer.Argument(help="models:/NAME@ALIAS, models:/NAME/VERSION or a path")
    ],
    data: Annotated[str, typer.Argument(help="Data file, dataset directory, or hf:NAME")],
    max_examples: Annotated[int, typer.Option(help="Rows scored at most")] = 240,
    max_new_tokens: Annotated[int, typer.Option(help="Generation budget per answer")] = 24,
    max_length: Annotated[int, typer.Option(help="Tokens per example for the loss")] = 128,
    holdout: Annotated[
        list[str] | None, typer.Option(help="Task families to report as held out")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the metrics as JSON last")] = False,
    tracking_uri: Annotated[
        str | None,
        typer.Option(help="For models:/ URIs. Default: MLFLOW_TRACKING_URI, ./mlflow.db"),
    ] = None,
) -> None:
    """Score a model on a dataset (every valid row): loss, perplexity, exact match, ROUGE-L."""
    from pydantic import ValidationError

    from tuneforge.config import ConfigError, EvalConfig, ModelConfig
    from tuneforge.data_schemas import SchemaError
    from tuneforge.models import ModelSourceError
    from tuneforge.preflight import check_tracking_server
    from tuneforge.tasks.evaluate import evaluate_records
    from tuneforge.tasks.load_data import DataLoadError, read_rows
    from tuneforge.tasks.model_source import resolve_model_dir
    from tuneforge.tasks.validate_data import validate_rows
    from tuneforge.tracking import resolve_tracking_uri

    try:
        cfg = EvalConfig(max_examples=max_examples, max_new_tokens=max_new_tokens)
    except ValidationError as exc:
        first = exc.errors()[0]
        _fail(f"--{str(first['loc'][0]).replace('_', '-')}: {first['msg']}")
    if max_length <= 8:
        _fail(f"--max-length: {max_length} tokens leave no room for an answer; use more than 8")
    try:
        valid, rejected = validate_rows(read_rows(data), max_chars=100_000, source=data)
    except (DataLoadError, SchemaError) as exc:
        _fail(str(exc))
    if not valid:
        _fail(f"{data}: no valid rows to evaluate ({len(rejected)} rejected)")
    uri = resolve_tracking_uri(tracking_uri)
    if model.startswith("models:/") and uri.startswith(("http://", "https://")):
        try:  # MLflow's client retries a dead server for minutes; this asks once, briefly
            check_tracking_server(uri)
        except ConfigError as exc:
            _fail(f"{model}: {str(exc).removeprefix('tracking.tracking_uri: ')}")
    with tempfile.TemporaryDirectory() as tmp:
        try:
            model_dir = resolve_model_dir(ModelConfig(source=model), [], Path(tmp))
            metrics, _ = evaluate_records(model_dir, valid, cfg, max_length, False, holdout or [])
        except ModelSourceError as exc:
            _fail(str(exc))
    if as_json:
        print(json.dumps(metrics))
        return
    if rejected:
        err.print(f"{len(rejected)} invalid rows skipped (see tuneforge validate)", markup=False)
    table = Table(f"{model} on {data}", "value")
    for key, value in metrics.items():
        table.add_row(key, f"{value:.4f}")
    out.print(table)


@app.command()
def strategies(
    name: Annotated[str | None, typer.Argument(help="One strategy, with its settings")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output")] = False,
) -> None:
    """List the tuning strategies found through the `tuneforge.strategies` entry points."""
    from tuneforge.plugins.registry import discover, strategy_info

    _list_plugins("strategies", discover(), strategy_info, name, as_json)


@app.command()
def evaluators(
    name: Annotated[str | None, typer.Argument(help="One evaluator, with its settings")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output")] = False,
) -> None:
    """List the evaluation metrics found through the `tuneforge.evaluators` entry points."""
    from tuneforge.plugins.registry import discover_evaluators, evaluator_info

    _list_plugins("evaluators", discover_evaluators(), evaluator_info, name, as_json)


def _list_plugins(command: str, found: Any, info_of: Any, name: str | None, as_json: bool) -> None:
    from tuneforge.plugins.registry import UnknownPluginError, describe_settings

    if name is not None:
        try:
            infos = [info_of(name)]
        except UnknownPluginError as exc:
            _fail(str(exc))
    else:
        infos = [found.plugins[key] for key in sorted(found.plugins)]
    listing = []
    for info in infos:
        item = {
            "name": info.name,
            "description": info.cls.description,
            "package": info.package,
            "version": info.version,
            "settings": describe_settings(info.cls.Settings),
        }
        if info.kind == "evaluator":
            item["higher_is_better"] = info.cls.higher_is_better
        listing.append(item)
    if as_json:
        print(json.dumps(listing, default=str))
        return
    for item in listing:
        out.print(
            f"[bold]{escape(item['name'])}[/bold] ({item['package']} {item['version']}): "
            f"{escape(item['description'])}"
        )
        for key, field in item["settings"].items():
            line = f"    {key}: {field['type']} = {field['default']!r}"
            out.print(line, markup=False, highlight=False)
            if name is not None and field["description"]:
                out.print(f"        {field['description']}", markup=False, highlight=False)
    if name is None:
        for conflict in sorted(found.conflicts):
            err.print(f"{conflict}: registered twice, unusable (tuneforge {command} {conflict})")


models_app = typer.Typer(
    no_args_is_help=True,
    help="Browse and manage registered models (./mlflow.db, or MLFLOW_TRACKING_URI).",
)
app.add_typer(models_app, name="models")
TrackingOption = Annotated[
    str | None, typer.Option("--tracking-uri", help="Default: MLFLOW_TRACKING_URI or ./mlflow.db")
]
JsonOption = Annotated[bool, typer.Option("--json", help="Machine-readable output")]


def _registry_call(tracking_uri: str | None, action: Any) -> Any:
    """Runs `action(client)`, turning registry errors into one-line failures."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from tuneforge.model_registry import RegistryError
    from tuneforge.tracking import resolve_tracking_uri

    try:
        return action(MlflowClient(resolve_tracking_uri(tracking_uri)))
    except RegistryError as exc:
        _fail(str(exc))
    except MlflowException as exc:
        _fail(exc.message.splitlines()[0])


def _emit(data: Any, as_json: bool, render: Any) -> None:
    if as_json:
        print(json.dumps(data, default=str))
    else:
        render(data)


@models_app.command("list")
def models_list(tracking_uri: TrackingOption = None, as_json: JsonOption = False) -> None:
    """Registered models, their aliases and the champion's metrics."""
    from tuneforge.model_registry import list_models

    def render(rows: list[dict]) -> None:
        table = Table("model", "latest", "champion", "aliases", "champion metrics")
        for r in rows:
            aliases = ", ".join(f"{a}=v{v}" for a, v in sorted(r["aliases"].items()))
            headline = ("tuned.exact_match", "tuned.rouge_l", "tuned.eval_loss")
            metrics = ", ".join(
                f"{k.removeprefix('tuned.')}={r['champion_metrics'][k]:.4f}"
                for k in headline
                if k in r["champion_metrics"]
            )
            table.add_row(r["name"], str(r["latest_version"]), str(r["champion"]), aliases, metrics)
        out.print(table)

    _emit(_registry_call(tracking_uri, list_models), as_json, render)


@models_app.command("show")
def models_show(
    name: str,
    version: Annotated[str | None, typer.Argument(help="Default: the champion")] = None,
    tracking_uri: TrackingOption = None,
    as_json: JsonOption = False,
) -> None:
    """A version's metrics, lineage tags and artifacts."""
    from tuneforge.model_registry import show

    def render(v: dict) -> None:
        out.print(f"[bold]{escape(v['name'])} version {v['version']}[/bold] {v['aliases']}")
        out.print(f"run {v['run_id']}  source {v['source']}", markup=False)
        table = Table("metric", "value")
        for key, value in v["metrics"].items():
            table.add_row(key, f"{value:.4f}")
        out.print(table)
        for key, value in v["tags"].items():
            out.print(f"  {key} = {value}", markup=False, highlight=False)
        out.print(f"artifacts: {', '.join(v['artifacts'])}", markup=False)

    _emit(_registry_call(tracking_uri, lambda c: show(c, name, version)), as_json, render)


@models_app.command("compare")
def models_compare(
    name: str, v1: str, v2: str, tracking_uri: TrackingOption = None, as_json: JsonOption = False
) -> None:
    """Two versions' metrics side by side."""
    from tuneforge.model_registry import compare

    def render(result: dict) -> None:
        table = Table("metric", f"v{v1}", f"v{v2}", "delta")
        for row in result["metrics"]:
            cells = [row[v1], row[v2], row["delta"]]
            table.add_row(row["metric"], *("-" if c is None else f"{c:+.4f}" for c in cells))
        out.print(table)

    _emit(_registry_call(tracking_uri, lambda c: compare(c, name, v1, v2)), as_json, render)


@models_app.command("promote")
def models_promote(
    name: str, version: str, tracking_uri: TrackingOption = None, as_json: JsonOption = False
) -> None:
    """Make VERSION the champion by hand (recorded in the champion history)."""
    from tuneforge.model_registry import resolve_version, set_champion

    def action(client: Any) -> dict:
        resolve_version(client, f"models:/{name}/{version}")  # must exist
        set_champion(client, name, version, "promoted by hand")
        return {"name": name, "champion": version}

    _emit(
        _registry_call(tracking_uri, action),
        as_json,
        lambda r: out.print(f"{r['name']}: champion is now version {r['champion']}", markup=False),
    )


@models_app.command("rollback")
def models_rollback(
    name: str, tracking_uri: TrackingOption = None, as_json: JsonOption = False
) -> None:
    """Give the champion alias back to the previous champion."""
    from tuneforge.model_registry import rollback

    def action(client: Any) -> dict:
        before, after = rollback(client, name)
        return {"name": name, "from": before, "champion": after}

    _emit(
        _registry_call(tracking_uri, action),
        as_json,
        lambda r: out.print(
            f"{r['name']}: champion rolled back from version {r['from']} to {r['champion']}",
            markup=False,
        ),
    )


slots_app = typer.Typer(
    no_args_is_help=True,
    help="Retrain slots: one retrain per model at a time (PREFECT_API_URL, or a local server).",
)
app.add_typer(slots_app, name="slots")


def _with_prefect(action: Any) -> Any:
    """Runs `action(client)` against the Prefect API, failing in one line when it cannot."""
    import httpx
    from prefect import get_client

    from tuneforge.concurrency import SlotBusyError
    from tuneforge.prefect_server import PrefectServerError, prefect_api

    try:
        with prefect_api(), get_client(sync_client=True) as client:
            return action(client)
    except (SlotBusyError, PrefectServerError) as exc:
        _fail(str(exc))
    except httpx.HTTPError as exc:
        _fail(f"Prefect API: {exc}")


@slots_app.command("list")
def slots_list(as_json: JsonOption = False) -> None:
    """Each model's retrain slot: taken or free, and the flow run recorded as holding it."""
    from tuneforge.concurrency import list_slots

    def render(rows: list[dict]) -> None:
        table = Table("model", "taken", "holder (flow run)", "state", "started")
        for row in rows:
            holder = row["holders"][0] if row["holders"] else {}
            run = f"{holder.get('flow_run', '-')} {holder.get('flow_run_id', '')}".strip()
            taken = f"{row['taken']}/{row['limit']}"
            started = holder.get("started") or "-"
            table.add_row(row["model"], taken, run, holder.get("state", "-"), started)
        out.print(table)

    _emit(_with_prefect(list_slots), as_json, render)


@slots_app.command("release")
def slots_release(
    model: Annotated[str, typer.Argument(help="The registered model name")],
    force: Annotated[
        bool, typer.Option("--force", help="Also when the holder's flow run has not ended")
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Free a model's retrain slot by hand, e.g. after its holder's machine was lost."""
    from tuneforge.concurrency import release_slot

    def render(result: dict) -> None:
        held = "; ".join(result["released_holders"]) or "no recorded holder"
        out.print(f"{result['model']}: retrain slot released ({held})", markup=False)

    _emit(_with_prefect(lambda client: release_slot(client, model, force)), as_json, render)


data_app = typer.Typer(no_args_is_help=True, help="Announce new data to scheduled retraining.")
app.add_typer(data_app, name="data")


@data_app.command("push")
def data_push(
    path: Annotated[Path, typer.Argument(help="The new dataset file")],
    format_: Annotated[
        str, typer.Option("--format", help="auto, jsonl, json, csv, parquet")
    ] = "auto",
) -> None:
    """Emit a `tuneforge.data.pushed` event for PATH; the on-new-data deployment retrains on it.

    The file is validated first: unusable data is refused here, not in a worker at night.
    """
    from prefect.events import emit_event
    from prefect.settings import PREFECT_API_URL

    from tuneforge.data_schemas import SchemaError
    from tuneforge.flows.scheduled import DATASET_PREFIX
    from tuneforge.tasks.load_data import DataLoadError, read_rows
    from tuneforge.tasks.validate_data import validate_rows

    if not PREFECT_API_URL.value():
        _fail("PREFECT_API_URL is not set: point it at the Prefect server the deployments are on")
    try:
        rows = read_rows(str(path), format_)
        valid, rejected = validate_rows(rows, max_chars=100_000, source=str(path))
    except (DataLoadError, SchemaError) as exc:
        _fail(str(exc))
    resource_id = f"{DATASET_PREFIX}{path.resolve()}"
    event = emit_event(
        event="tuneforge.data.pushed",
        resource={"prefect.resource.id": resource_id, "prefect.resource.name": path.name},
        payload={"rows": len(rows), "valid": len(valid), "rejected": len(rejected)},
    )
    if event is None:
        _fail("the event was not sent (Prefect events are disabled in this environment)")
    out.print(f"pushed {resource_id} ({len(valid)} valid of {len(rows)} rows)", markup=False)


@app.command("sample-data")
def sample_data(
    path: Annotated[Path, typer.Argument(help="Output JSONL")] = Path("data/instructions.jsonl"),
    rows_per_family: int = 300,
    seed: int = 0,
    flan_mini: Annotated[
        bool,
        typer.Option("--flan-mini", help="Write the FLAN-in-miniature corpus into the folder PATH"),
    ] = False,
) -> None:
    """Regenerate the bundled instruction dataset (or, with --flan-mini, data/flan-mini)."""
    if flan_mini:
        from tuneforge.flan_mini import write_flan_mini

        for name, n in write_flan_mini(path, seed).items():
            out.print(f"wrote {n} rows to {path / name}")
        return
    from tuneforge.sample_data import write_sample

    n = write_sample(path, rows_per_family, seed)
    out.print(f"wrote {n} rows to {path}")


def main() -> None:  # pragma: no cover - console-script shim for `python -m`
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
