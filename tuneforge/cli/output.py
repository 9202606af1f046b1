"""How every command ends: the human output or one JSON line, and errors in one line.

A command that finishes a job takes `as_json: JsonOption = False` and ends with
`print_result(summary, render)`; a failure anywhere in it is `fail(message)`. Neither is passed
the flag: the option itself records it for the command being run.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from contextvars import ContextVar
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape

out = Console()
err = Console(stderr=True)

# Whether the command being run was given --json. Typer (0.26 on) runs commands on its own
# copy of click, so click.get_current_context() does not see them; the option records itself.
_as_json: ContextVar[bool] = ContextVar("tuneforge_as_json", default=False)


def _record_json(ctx: typer.Context, value: bool) -> bool:
    """The --json option's callback (run for every command that has it, given or not): holds
    the flag until the command's context closes, so the next command in-process starts clean."""
    _as_json.set(value)
    ctx.call_on_close(lambda: _as_json.set(False))
    return value


# The one declaration of --json.
JsonOption = Annotated[
    bool,
    typer.Option(
        "--json",
        help='End with one JSON line: the result, or {"error": ...} when the command fails',
        callback=_record_json,
    ),
]


def json_requested() -> bool:
    """Whether the command being run was given --json (False outside such a command)."""
    return _as_json.get()


def print_result(data: Any, render: Callable[[Any], None] | None = None) -> None:
    """Ends a command: `data` as one JSON line under --json, otherwise `render(data)`.

    Commands whose human summary shows under --json too (run, pipeline, sweep) print it first
    and pass no `render`.
    """
    if json_requested():
        print(json.dumps(data, default=str))
    elif render is not None:
        render(data)


def fail(message: str, code: int = 2) -> NoReturn:
    """Ends a command with `error: MESSAGE` on stderr, one line, and exit status `code`; under
    --json the last line on stdout is also `{"error": MESSAGE}`."""
    err.print(f"[red]error:[/red] {escape(message)}", soft_wrap=True, highlight=False)
    if json_requested():
        print(json.dumps({"error": message}))
    raise typer.Exit(code)
