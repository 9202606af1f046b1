"""How a failure is told in one line: the console's error line, a failed candidate or pipeline
stage, a task's log. (`serving.py` keeps its own copy: it loads without tuneforge.)"""

from __future__ import annotations


def first_line(exc: BaseException, limit: int | None = None) -> str:
    """The first line of `exc`'s message (its type's name when it has none), at most `limit`
    characters."""
    text = str(exc).strip()
    line = text.splitlines()[0] if text else type(exc).__name__
    return line[:limit] if limit else line
