"""The `models` group: browse and manage registered models.

    tuneforge models list|show|compare|history|promote|rollback [--tracking-uri URI] [--json]

Works against ./mlflow.db or any tracking server (MLFLOW_TRACKING_URI or --tracking-uri).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from tuneforge.cli.guards import print_guards
from tuneforge.cli.output import JsonOption, fail, out, print_result

models_app = typer.Typer(
    no_args_is_help=True,
    help="Browse and manage registered models (./mlflow.db, or MLFLOW_TRACKING_URI).",
)
TrackingOption = Annotated[
    str | None, typer.Option("--tracking-uri", help="Default: MLFLOW_TRACKING_URI or ./mlflow.db")
]


def _registry_call(
    tracking_uri: str | None, action: Callable[[Any], Any], doing: str | None = None
) -> Any:
    """Runs `action(client)`, turning registry errors into one-line failures; a server's
    refusal (401, 403) names the server, the status and the user (`doing`: what was refused)."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from tuneforge.model_registry import RegistryError
    from tuneforge.tracking import refusal, resolve_tracking_uri

    uri = resolve_tracking_uri(tracking_uri)
    try:
        return action(MlflowClient(uri))
    except RegistryError as exc:
        fail(str(exc))
    except MlflowException as exc:
        fail(refusal(exc, uri, doing) or exc.message.splitlines()[0])


@models_app.command("list")
def models_list(tracking_uri: TrackingOption = None, as_json: JsonOption = False) -> None:
    """Registered models, their aliases and the champion's metrics."""
    from tuneforge import lineage
    from tuneforge.model_registry import list_models

    def render(rows: list[dict]) -> None:
        table = Table("model", "latest", "champion", "aliases", "champion metrics")
        for r in rows:
            aliases = ", ".join(f"{a}=v{v}" for a, v in sorted(r["aliases"].items()))
            scores = lineage.scores_of(lineage.TUNED, r["champion_metrics"])
            headline = ("exact_match", "rouge_l", "eval_loss")
            metrics = ", ".join(f"{k}={scores[k]:.4f}" for k in headline if k in scores)
            table.add_row(r["name"], str(r["latest_version"]), str(r["champion"]), aliases, metrics)
        out.print(table)

    print_result(_registry_call(tracking_uri, list_models), render)


@models_app.command("show")
def models_show(
    name: str,
    version: Annotated[str | None, typer.Argument(help="Default: the champion")] = None,
    tracking_uri: TrackingOption = None,
    as_json: JsonOption = False,
) -> None:
    """A version's metrics, lineage tags and artifacts."""
    from tuneforge import lineage
    from tuneforge.model_registry import show

    def render(v: dict) -> None:
        out.print(f"[bold]{escape(v['name'])} version {v['version']}[/bold] {v['aliases']}")
        out.print(f"run {v['run_id']}  source {v['source']}", markup=False)
        table = Table("metric", "value")
        for key, value in v["metrics"].items():
            table.add_row(key, f"{value:.4f}")
        out.print(table)
        for key, value in v["tags"].items():
            if key != lineage.GUARDS:
                out.print(f"  {key} = {value}", markup=False, highlight=False)
        print_guards(v["guards"])
        out.print(f"artifacts: {', '.join(v['artifacts'])}", markup=False)

    print_result(_registry_call(tracking_uri, lambda c: show(c, name, version)), render)


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

    print_result(_registry_call(tracking_uri, lambda c: compare(c, name, v1, v2)), render)


@models_app.command("history")
def models_history(
    name: str, tracking_uri: TrackingOption = None, as_json: JsonOption = False
) -> None:
    """Every move of NAME's aliases: when, by whom, from which version to which, and why."""
    from datetime import UTC, datetime

    from tuneforge.model_registry import alias_history

    def render(moves: list[dict]) -> None:
        table = Table("when (UTC)", "alias", "from", "to", "by", "why")
        for m in moves:
            when = datetime.fromtimestamp(m["at"], UTC).strftime("%Y-%m-%d %H:%M:%S")
            versions = ["-" if v is None else f"v{v}" for v in (m["from"], m["to"])]
            table.add_row(when, m["alias"], *versions, m["by"], escape(m["why"]))
        out.print(table if moves else f"{name}: no alias moves recorded")

    print_result(_registry_call(tracking_uri, lambda c: alias_history(c, name)), render)


@models_app.command("promote")
def models_promote(
    name: str,
    version: str,
    reason: Annotated[str, typer.Option(help="Why, for the alias history")] = "promoted by hand",
    tracking_uri: TrackingOption = None,
    as_json: JsonOption = False,
) -> None:
    """Make VERSION the champion by hand (recorded in the champion and alias history)."""
    from tuneforge.model_registry import resolve_version, set_champion

    def action(client: Any) -> dict:
        resolve_version(client, f"models:/{name}/{version}")  # must exist
        set_champion(client, name, version, reason)
        return {"name": name, "champion": version}

    print_result(
        _registry_call(tracking_uri, action, f"move the champion alias of {name}"),
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

    print_result(
        _registry_call(tracking_uri, action, f"move the champion alias of {name}"),
        lambda r: out.print(
            f"{r['name']}: champion rolled back from version {r['from']} to {r['champion']}",
            markup=False,
        ),
    )
