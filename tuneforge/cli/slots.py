"""The `slots` group: one retrain per model at a time, and freeing a slot by hand.

    tuneforge slots list [--json]
    tuneforge slots release MODEL [--force] [--json]

Talks to PREFECT_API_URL, or to a local Prefect server started for the command.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

import typer
from rich.table import Table

from tuneforge.cli.output import JsonOption, fail, out, print_result

slots_app = typer.Typer(
    no_args_is_help=True,
    help="Retrain slots: one retrain per model at a time (PREFECT_API_URL, or a local server).",
)


def _with_prefect(action: Callable[[Any], Any]) -> Any:
    """Runs `action(client)` against the Prefect API, failing in one line when it cannot."""
    import httpx
    from prefect import get_client

    from tuneforge.prefect_server import PrefectServerError, http_error_line, prefect_api
    from tuneforge.slots import SlotBusyError

    try:
        with prefect_api(), get_client(sync_client=True) as client:
            return action(client)
    except (SlotBusyError, PrefectServerError) as exc:
        fail(str(exc))
    except httpx.HTTPError as exc:
        fail(f"Prefect API: {http_error_line(exc)}")


@slots_app.command("list")
def slots_list(as_json: JsonOption = False) -> None:
    """Each model's retrain slot: taken or free, and the flow run recorded as holding it."""
    from tuneforge.slots import list_slots

    def render(rows: list[dict]) -> None:
        table = Table("model", "taken", "holder (flow run)", "state", "started")
        for row in rows:
            holder = row["holders"][0] if row["holders"] else {}
            run = f"{holder.get('flow_run', '-')} {holder.get('flow_run_id', '')}".strip()
            taken = f"{row['taken']}/{row['limit']}"
            started = holder.get("started") or "-"
            table.add_row(row["model"], taken, run, holder.get("state", "-"), started)
        out.print(table)

    print_result(_with_prefect(list_slots), render)


@slots_app.command("release")
def slots_release(
    model: Annotated[str, typer.Argument(help="The registered model name")],
    force: Annotated[
        bool, typer.Option("--force", help="Also when the holder's flow run has not ended")
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Free a model's retrain slot by hand, e.g. after its holder's machine was lost."""
    from tuneforge.slots import release_slot

    def render(result: dict) -> None:
        held = "; ".join(result["released_holders"]) or "no recorded holder"
        out.print(f"{result['model']}: retrain slot released ({held})", markup=False)

    print_result(_with_prefect(lambda client: release_slot(client, model, force)), render)
