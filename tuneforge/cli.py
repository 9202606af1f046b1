"""The `tuneforge` command line.

    tuneforge run deployments/presets/tiny-cpu.yaml [--set train.steps=50 ...]
    tuneforge validate data/instructions.jsonl [--format jsonl] [--quarantine PATH] [--json]
    tuneforge strategies [--json]
    tuneforge sample-data data/instructions.jsonl

Errors a user can fix (a bad config key, an unusable data file) print one line and exit 2.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

# MLflow's per-file download bars add nothing to a run's output.
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__.split("\n\n")[0])
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
) -> None:
    """Run the `retrain` flow: validate, train, evaluate, register."""
    from tuneforge.config import ConfigError, load_config

    try:
        cfg = load_config(config, set_ or [])
    except ConfigError as exc:
        _fail(str(exc))

    from flows.retrain import retrain
    from tasks.load_data import DataLoadError
    from tasks.model_source import ModelSourceError
    from tasks.validate_data import TooManyRejectedError

    try:
        result = retrain(cfg)
    except (DataLoadError, ModelSourceError, TooManyRejectedError) as exc:
        _fail(str(exc))
    _print_summary(result)


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
    out.print(f"Browse runs and the model registry: [bold]{escape(ui)}[/bold]")


@app.command()
def validate(
    data: Annotated[str, typer.Argument(help="Data file, dataset directory, or hf:NAME")],
    format_: Annotated[
        str, typer.Option("--format", help="auto, jsonl, json, csv, parquet or hf")
    ] = "auto",
    quarantine: Annotated[
        Path | None, typer.Option(help="Where rejected rows go (default: DATA.quarantine.jsonl)")
    ] = None,
    max_chars: Annotated[int, typer.Option(help="Longest accepted field, in characters")] = 2000,
    hf_split: Annotated[str, typer.Option(help="Split of a datasets name")] = "train",
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON summary last")] = False,
) -> None:
    """Validate a dataset. Exit 0: all rows valid; 1: some quarantined; 2: unusable input."""
    from tasks.load_data import DataLoadError, read_rows
    from tasks.validate_data import validate_rows, write_jsonl

    try:
        rows = read_rows(data, format_, hf_split)
    except DataLoadError as exc:
        _fail(str(exc))
    valid, rejected = validate_rows(rows, max_chars)
    if quarantine is None:
        quarantine = Path(f"{Path(data.removeprefix('hf:')).name}.quarantine.jsonl")
    write_jsonl(rejected, quarantine)
    for entry in rejected[:20]:
        line = f"row {entry['row']}: {entry['reason']}"
        err.print(line, markup=False, highlight=False, soft_wrap=True)
    if len(rejected) > 20:
        err.print(f"... and {len(rejected) - 20} more in {quarantine}", markup=False)
    summary = {"total": len(rows), "valid": len(valid), "rejected": len(rejected)}
    summary["quarantine"] = str(quarantine)
    if as_json:
        print(json.dumps(summary))
    else:
        out.print(
            f"{data}: {summary['total']} rows, {summary['valid']} valid, "
            f"{summary['rejected']} quarantined to {quarantine}",
            markup=False,
            highlight=False,
        )
    raise typer.Exit(1 if rejected else 0)


@app.command()
def strategies(
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output")] = False,
) -> None:
    """List the tuning strategies found through the `tuneforge.strategies` entry points."""
    from plugins.registry import discover_strategies

    listing = []
    for name, info in sorted(discover_strategies().items()):
        settings = {
            key: {
                "default": field.get_default(call_default_factory=True),
                "type": str(field.annotation),
            }
            for key, field in info.cls.Settings.model_fields.items()
        }
        listing.append(
            {"name": name, "description": info.cls.description, "package": info.package,
             "settings": settings}
        )  # fmt: skip
    if as_json:
        print(json.dumps(listing, default=str))
        return
    for item in listing:
        out.print(f"[bold]{item['name']}[/bold] ({item['package']}): {item['description']}")
        for key, field in item["settings"].items():
            out.print(f"    {key} = {field['default']!r}", highlight=False)


@app.command("sample-data")
def sample_data(
    path: Annotated[Path, typer.Argument(help="Output JSONL")] = Path("data/instructions.jsonl"),
    rows_per_family: int = 300,
    seed: int = 0,
) -> None:
    """Regenerate the bundled instruction dataset."""
    from tuneforge.sample_data import write_sample

    n = write_sample(path, rows_per_family, seed)
    out.print(f"wrote {n} rows to {path}")


def main() -> None:  # pragma: no cover - console-script shim for `python -m`
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
