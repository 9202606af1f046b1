"""The `stack` group: the shared servers on this machine (tuneforge/stack.py).

tuneforge stack up [--dir .stack] [--workers 1] [--pool cpu] [--pool-limit N] [--json]
tuneforge stack status [--dir .stack] [--json]
tuneforge stack down [--dir .stack] [--json]
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from tuneforge.cli.output import JsonOption, fail, out, print_result

stack_app = typer.Typer(
    no_args_is_help=True,
    help="The shared stack on this machine: PostgreSQL, MLflow (basic auth), Prefect, workers.",
)
DirOption = Annotated[
    Path, typer.Option("--dir", help="The stack's folder: data, logs, credentials, env.sh")
]
DEFAULT_DIR = Path(".stack")


def _render(status: dict[str, Any]) -> None:
    table = Table("service", "running", "pid", "where")
    for name, entry in status["services"].items():
        running = "[green]yes[/green]" if entry["running"] else "[red]no[/red]"
        table.add_row(name, running, str(entry.get("pid") or "-"), entry["url"])
    out.print(table if status["services"] else f"{status['root']}: no stack here")
    if status["services"]:
        out.print(f"clients: source {status['env']}", markup=False, highlight=False)


def _call(action: Any) -> Any:
    from tuneforge.stack import StackError

    try:
        return action()
    except StackError as exc:
        fail(str(exc))


@stack_app.command("up")
def stack_up(
    root: DirOption = DEFAULT_DIR,
    workers: Annotated[
        int | None, typer.Option(min=0, help="Process workers on the pool (first time: 1)")
    ] = None,
    pool: Annotated[
        str | None, typer.Option(help="The process work pool they serve (first time: cpu)")
    ] = None,
    pool_limit: Annotated[
        int | None, typer.Option(min=0, help="Flow runs the pool runs at once; 0: any number")
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Start every service that is not running (after a crash: only the dead ones). Options
    not given keep what the last `up` used."""
    from tuneforge.stack import Stack

    stack = Stack(root)
    status = _call(lambda: stack.up(workers=workers, pool=pool, pool_limit=pool_limit))
    print_result(status, _render)


@stack_app.command("status")
def stack_status(root: DirOption = DEFAULT_DIR, as_json: JsonOption = False) -> None:
    """Each service: running or not, its process and address. Exit 1 when one is down."""
    from tuneforge.stack import Stack

    status = _call(lambda: Stack(root).status())
    print_result(status, _render)
    if not status["services"] or not all(s["running"] for s in status["services"].values()):
        raise typer.Exit(1)


@stack_app.command("down")
def stack_down(root: DirOption = DEFAULT_DIR, as_json: JsonOption = False) -> None:
    """Stop workers, servers and PostgreSQL; the data stays for the next `up`."""
    from tuneforge.stack import Stack

    print_result(_call(lambda: Stack(root).down()), _render)
