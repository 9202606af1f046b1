"""The commands about data: checking it, scoring a model on it, announcing it, making it.

tuneforge validate data/instructions.jsonl [--format jsonl] [--quarantine PATH] [--json]
tuneforge evaluate models:/tuneforge-demo@champion data/instructions.jsonl [--json]
tuneforge data push data/instructions.jsonl [--json]
tuneforge sample-data data/instructions.jsonl [--flan-mini | --arithmetic | --guards
                                               | --preferences | --feedback]
"""

from __future__ import annotations

import tempfile
from itertools import islice
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from tuneforge.cli.output import JsonOption, err, fail, out, print_result


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
    as_json: JsonOption = False,
) -> None:
    """Validate a dataset. Exit 0: all rows valid; 1: some quarantined; 2: unusable (no schema
    fits, a column nothing reads, every row rejected, or the file cannot be read)."""
    from tuneforge.data.reading import DataLoadError
    from tuneforge.data.validation import validate_path
    from tuneforge.data_schemas import SCHEMA_NAMES, SchemaError
    from tuneforge.jsonl import iter_jsonl

    if schema not in SCHEMA_NAMES:
        fail(f"--schema {schema!r}: use one of {', '.join(SCHEMA_NAMES)}")
    quarantine = quarantine or default_quarantine(data)
    partial = quarantine.with_name(f".{quarantine.name}.partial")
    # Streamed: read once (twice only if its first rows cannot tell the schema), never whole.
    with tempfile.TemporaryDirectory(prefix="tuneforge-validate-") as tmp:
        try:
            report = validate_path(
                data,
                max_chars,
                Path(tmp, "valid.jsonl"),
                partial,
                format_,
                hf_split,
                schema,
                _column_map(column),
                ignore or [],
            )
        except (DataLoadError, SchemaError) as exc:
            partial.unlink(missing_ok=True)
            fail(str(exc))
        except OSError as exc:
            partial.unlink(missing_ok=True)
            fail(f"{quarantine}: cannot write there ({exc.strerror}); pass --quarantine PATH")
    partial.replace(quarantine)
    for entry in islice(iter_jsonl(quarantine), 20):
        line = f"row {entry['row']}: {entry['reason']}"
        err.print(line, markup=False, highlight=False, soft_wrap=True)
    if report.rejected > 20:
        err.print(f"... and {report.rejected - 20} more in {quarantine}", markup=False)
    summary = {"total": report.total, "valid": report.valid, "rejected": report.rejected}
    summary |= {"quarantine": str(quarantine), "schema": report.schema, "columns": report.columns}

    def render(summary: dict[str, Any]) -> None:
        picked = "recognised" if schema == "auto" else "given"
        mapping = ", ".join(f"{f}={c}" for f, c in report.columns.items())
        out.print(
            f"{data}: schema {report.schema} ({picked}; {mapping}); {report.total} rows, "
            f"{report.valid} valid, {report.rejected} quarantined to {quarantine}",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )

    print_result(summary, render)
    if report.total and not report.valid:
        fail(f"{data}: every row was rejected; nothing is usable (reasons in {quarantine})")
    raise typer.Exit(1 if report.rejected else 0)


def _column_map(columns: list[str] | None) -> dict[str, str]:
    """`--column FIELD=COLUMN` options as a mapping; a malformed one fails in one line."""
    mapping = {}
    for item in columns or []:
        field, sep, column = item.partition("=")
        if not sep or not field.strip() or not column:
            fail(f"--column {item!r}: expected FIELD=COLUMN, e.g. --column output=response")
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


def evaluate(
    model: Annotated[
        str, typer.Argument(help="models:/NAME@ALIAS, models:/NAME/VERSION or a path")
    ],
    data: Annotated[
        str | None,
        typer.Argument(
            help="Data file, dataset directory, or hf:NAME (optional with --benchmarks)"
        ),
    ] = None,
    max_examples: Annotated[int, typer.Option(help="Rows scored at most")] = 240,
    max_new_tokens: Annotated[int, typer.Option(help="Generation budget per answer")] = 24,
    max_length: Annotated[int, typer.Option(help="Tokens per example for the loss")] = 128,
    holdout: Annotated[
        list[str] | None, typer.Option(help="Task families to report as held out")
    ] = None,
    benchmarks: Annotated[
        Path | None,
        typer.Option(help="lm-evaluation-harness task files (a folder): bench.<task>.<metric>"),
    ] = None,
    task: Annotated[
        list[str] | None, typer.Option(help="With --benchmarks: run only this task (repeatable)")
    ] = None,
    limit: Annotated[
        int | None, typer.Option(help="With --benchmarks: documents per task at most")
    ] = None,
    chat_template: Annotated[
        bool, typer.Option(help="With --benchmarks: prompts through the chat template")
    ] = False,
    as_json: JsonOption = False,
    tracking_uri: Annotated[
        str | None,
        typer.Option(help="For models:/ URIs. Default: MLFLOW_TRACKING_URI, ./mlflow.db"),
    ] = None,
) -> None:
    """Score a model on a dataset (every valid row: loss, perplexity, exact match, ROUGE-L)
    and/or on benchmark tasks (--benchmarks: lm-evaluation-harness task files)."""
    from pydantic import ValidationError

    from tuneforge.config import ConfigError, EvalConfig, ModelConfig
    from tuneforge.models import ModelSourceError
    from tuneforge.preflight import check_tracking_server
    from tuneforge.tasks.model_source import resolve_model_dir
    from tuneforge.tracking import resolve_tracking_uri

    if data is None and benchmarks is None:
        fail("give a data file to score, --benchmarks PATH, or both")
    harness = {"path": str(benchmarks), "tasks": task or None, "limit": limit}
    harness |= {"apply_chat_template": chat_template}
    try:
        cfg = EvalConfig(
            max_examples=max_examples,
            max_new_tokens=max_new_tokens,
            benchmarks={"lm_eval": harness} if benchmarks is not None else {},
        )
        cfg.benchmark_settings()
    except ValidationError as exc:
        first = exc.errors()[0]
        option = {"path": "benchmarks", "tasks": "task", "apply_chat_template": "chat-template"}
        name = str(first["loc"][0]) if first["loc"] else "benchmarks"
        message = first["msg"].removeprefix("Value error, ")
        fail(f"--{option.get(name, name).replace('_', '-')}: {message}")
    if max_length <= 8:
        fail(f"--max-length: {max_length} tokens leave no room for an answer; use more than 8")
    if benchmarks is not None:
        _check_benchmarks(cfg)
    valid, rejected = _valid_rows(data) if data is not None else ([], [])
    uri = resolve_tracking_uri(tracking_uri)
    if model.startswith("models:/") and uri.startswith(("http://", "https://")):
        try:  # MLflow's client retries a dead server for minutes; this asks once, briefly
            check_tracking_server(uri)
        except ConfigError as exc:
            fail(f"{model}: {str(exc).removeprefix('tracking.tracking_uri: ')}")
    with tempfile.TemporaryDirectory() as tmp:
        try:
            model_dir = resolve_model_dir(ModelConfig(source=model), [], Path(tmp))
            metrics = _scores(model_dir, valid, cfg, max_length, holdout or [])
        except ModelSourceError as exc:
            fail(str(exc))

    def render(metrics: dict[str, float]) -> None:
        if rejected:
            skipped = f"{len(rejected)} invalid rows skipped (see tuneforge validate)"
            err.print(skipped, markup=False)
        table = Table(f"{model} on {data or benchmarks}", "value")
        for key, value in metrics.items():
            table.add_row(key, f"{value:.4f}")
        out.print(table)

    print_result(metrics, render)


def _check_benchmarks(cfg: Any) -> None:
    """The task files, tasks and their data exist, in one line otherwise (before any model
    is loaded)."""
    from tuneforge.config import ConfigError, RunConfig
    from tuneforge.preflight import check_benchmarks

    try:
        check_benchmarks(RunConfig(data={"path": "-"}, evaluation=cfg))
    except ConfigError as exc:
        message = str(exc).replace("evaluation.benchmarks.lm_eval.tasks", "--task", 1)
        fail(message.replace("evaluation.benchmarks.lm_eval", "--benchmarks", 1))


def _valid_rows(data: str) -> tuple[list[dict], list[dict]]:
    from tuneforge.data.reading import DataLoadError, read_rows
    from tuneforge.data.validation import validate_rows
    from tuneforge.data_schemas import SchemaError

    try:
        valid, rejected = validate_rows(read_rows(data), max_chars=100_000, source=data)
    except (DataLoadError, SchemaError) as exc:
        fail(str(exc))
    if not valid:
        fail(f"{data}: no valid rows to evaluate ({len(rejected)} rejected)")
    return valid, rejected


def _scores(
    model_dir: Path, records: list[dict], cfg: Any, max_length: int, holdout: list[str]
) -> dict[str, float]:
    """The eval metrics on `records` (with the benchmarks'), or the benchmarks' alone."""
    from tuneforge.evaluation import evaluate_records, run_benchmarks
    from tuneforge.models import load_pretrained, pick_device

    if records:
        return evaluate_records(model_dir, records, cfg, max_length, False, holdout).metrics
    model, tokenizer = load_pretrained(model_dir)
    model.to(pick_device()).eval()
    return run_benchmarks(model, tokenizer, cfg)[0]


data_app = typer.Typer(no_args_is_help=True, help="Announce new data to scheduled retraining.")


@data_app.command("push")
def data_push(
    path: Annotated[Path, typer.Argument(help="The new dataset file")],
    format_: Annotated[
        str, typer.Option("--format", help="auto, jsonl, json, csv, parquet")
    ] = "auto",
    as_json: JsonOption = False,
) -> None:
    """Emit a `tuneforge.data.pushed` event for PATH; the on-new-data deployment retrains on it.

    The file is validated first: unusable data is refused here, not in a worker at night.
    """
    from prefect.events import emit_event
    from prefect.settings import PREFECT_API_URL

    from tuneforge import lineage
    from tuneforge.data.reading import DataLoadError, read_rows
    from tuneforge.data.validation import resolve_rows, validate_rows
    from tuneforge.data_schemas import SchemaError

    if not PREFECT_API_URL.value():
        fail("PREFECT_API_URL is not set: point it at the Prefect server the deployments are on")
    try:
        rows = read_rows(str(path), format_)
        cmap = resolve_rows(rows, str(path))
        valid, rejected = validate_rows(rows, max_chars=100_000, cmap=cmap, source=str(path))
    except (DataLoadError, SchemaError) as exc:
        fail(str(exc))
    schema = cmap.schema if cmap else "none"
    resource = lineage.dataset_resource(str(path.resolve()), path.name, schema)
    resource_id = resource["prefect.resource.id"]
    counts = {"rows": len(rows), "valid": len(valid), "rejected": len(rejected)}
    event = emit_event(event=lineage.DATA_PUSHED, resource=resource, payload=counts)
    if event is None:
        fail("the event was not sent (Prefect events are disabled in this environment)")
    print_result(
        {"resource_id": resource_id, "schema": schema, **counts},
        lambda r: out.print(
            f"pushed {r['resource_id']} ({r['valid']} valid of {r['rows']} rows)", markup=False
        ),
    )


def sample_data(
    path: Annotated[Path, typer.Argument(help="Output JSONL")] = Path("data/instructions.jsonl"),
    rows_per_family: Annotated[
        int | None,
        typer.Option(help="Rows per task family (default 300; 100 with --preferences/--feedback)"),
    ] = None,
    seed: int = 0,
    flan_mini: Annotated[
        bool,
        typer.Option("--flan-mini", help="Write the FLAN-in-miniature corpus into the folder PATH"),
    ] = False,
    arithmetic: Annotated[
        bool, typer.Option("--arithmetic", help="Write the arithmetic domain to PATH")
    ] = False,
    guards: Annotated[
        bool, typer.Option("--guards", help="Write the guard suite's data under the folder PATH")
    ] = False,
    preferences: Annotated[
        bool,
        typer.Option("--preferences", help="Write preference pairs (prompt, chosen, rejected)"),
    ] = False,
    feedback: Annotated[
        bool,
        typer.Option("--feedback", help="Write unpaired feedback (prompt, completion, label)"),
    ] = False,
) -> None:
    """Regenerate the bundled instruction dataset (or, with --flan-mini, data/flan-mini; with
    --arithmetic, data/arithmetic.jsonl; with --guards, deployments/benchmarks/data; with
    --preferences, data/preferences.jsonl; with --feedback, data/feedback.jsonl)."""
    if preferences or feedback:
        from tuneforge.preference_data import write_preferences

        per_family = 100 if rows_per_family is None else rows_per_family
        n = write_preferences(path, per_family, seed, feedback=feedback)
        out.print(f"wrote {n} rows to {path}")
        return
    if flan_mini or guards:
        from tuneforge.flan_mini import write_flan_mini
        from tuneforge.guard_suite import write_guard_suite

        written = write_flan_mini(path, seed) if flan_mini else write_guard_suite(path)
        folder = path if flan_mini else path / "data"
        for name, n in written.items():
            out.print(f"wrote {n} rows to {folder / name}")
        return
    if arithmetic:
        from tuneforge.sample_data import write_arithmetic

        out.print(f"wrote {write_arithmetic(path, seed=seed)} rows to {path}")
        return
    from tuneforge.sample_data import write_sample

    n = write_sample(path, 300 if rows_per_family is None else rows_per_family, seed)
    out.print(f"wrote {n} rows to {path}")
