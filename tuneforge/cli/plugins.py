"""The commands that list plugins found through entry points, with their settings.

tuneforge strategies [NAME] [--json]
tuneforge evaluators [NAME] [--json]
"""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.markup import escape

from tuneforge.cli.output import JsonOption, err, fail, out, print_result


def strategies(
    name: Annotated[str | None, typer.Argument(help="One strategy, with its settings")] = None,
    as_json: JsonOption = False,
) -> None:
    """List the tuning strategies found through the `tuneforge.strategies` entry points."""
    from tuneforge.plugins.discovery import discover, strategy_info

    _list_plugins("strategies", discover(), strategy_info, name)


def evaluators(
    name: Annotated[str | None, typer.Argument(help="One evaluator, with its settings")] = None,
    as_json: JsonOption = False,
) -> None:
    """List the evaluation metrics found through the `tuneforge.evaluators` entry points."""
    from tuneforge.plugins.discovery import discover_evaluators, evaluator_info

    _list_plugins("evaluators", discover_evaluators(), evaluator_info, name)


def _list_plugins(command: str, found: Any, info_of: Any, name: str | None) -> None:
    from tuneforge.describe import describe_fields
    from tuneforge.plugins.discovery import UnknownPluginError

    if name is not None:
        try:
            infos = [info_of(name)]
        except UnknownPluginError as exc:
            fail(str(exc))
    else:
        infos = [found.plugins[key] for key in sorted(found.plugins)]
    listing = []
    for info in infos:
        item = {
            "name": info.name,
            "description": info.cls.description,
            "package": info.package,
            "version": info.version,
            "settings": describe_fields(info.cls.Settings),
        }
        if info.kind == "strategy":  # what data it trains on (its capabilities)
            trains = info.cls.capabilities
            kinds = ("chat", "text", "pairs", "feedback")
            item["trains"] = [kind for kind in kinds if getattr(trains, kind)]
        if info.kind == "evaluator":  # what it scores: each answer, or the model (benchmarks)
            item["scores"] = "model" if info.scores_model else "answers"
            if not info.scores_model:
                item["higher_is_better"] = info.cls.higher_is_better
        listing.append(item)

    def render(listing: list[dict[str, Any]]) -> None:
        for item in listing:
            out.print(
                f"[bold]{escape(item['name'])}[/bold] ({item['package']} {item['version']}): "
                f"{escape(item['description'])}"
            )
            if "trains" in item:
                out.print(f"    trains: {', '.join(item['trains'])}", markup=False)
            for key, field in item["settings"].items():
                default = "(required)" if field["required"] else f"= {field['default']!r}"
                line = f"    {key}: {field['type']} {default}"
                out.print(line, markup=False, highlight=False)
                if name is not None and field["description"]:
                    out.print(f"        {field['description']}", markup=False, highlight=False)
        if name is None:
            for conflict in sorted(found.conflicts):
                unusable = f"unusable (tuneforge {command} {conflict})"
                err.print(f"{conflict}: registered twice, {unusable}")

    print_result(listing, render)
