"""How the CLI shows a version's guards (`registry.guards`): one line each, failed ones first."""

from __future__ import annotations

from typing import Any

from tuneforge.cli.output import out


def print_guards(guards: list[dict[str, Any]], indent: str = "  ") -> None:
    """Each checked guard (`GuardResult.as_dict()`), as `guard ... passed` / `FAILED`."""
    from tuneforge.promotion import GuardResult

    for data in sorted(guards, key=lambda g: g["passed"]):
        guard = GuardResult.from_dict(data)
        verdict = "passed" if guard.passed else "FAILED"
        out.print(f"{indent}{guard.describe()}: {verdict}", markup=False, highlight=False)
