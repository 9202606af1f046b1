"""Finds tuning strategies through the `tuneforge.strategies` entry-point group.

Built-in strategies are registered in tuneforge's own pyproject.toml exactly like a third-party
plugin's, so there is one way in. A plugin that fails to import is skipped with a warning (one
broken package must not take down every run); asking for an unknown name fails with the list
of names that are available.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from functools import cache
from importlib.metadata import EntryPoint, entry_points

from plugins.strategy import TuningStrategy

ENTRY_POINT_GROUP = "tuneforge.strategies"


class UnknownStrategyError(LookupError):
    def __str__(self) -> str:  # LookupError would quote the message
        return str(self.args[0])


@dataclass(frozen=True)
class StrategyInfo:
    name: str
    cls: type[TuningStrategy]
    package: str  # the distribution that registered it


def _entry_points() -> list[EntryPoint]:
    return list(entry_points(group=ENTRY_POINT_GROUP))


@cache
def discover_strategies() -> dict[str, StrategyInfo]:
    """Imports every registered strategy; broken ones warn and are left out."""
    found: dict[str, StrategyInfo] = {}
    for ep in _entry_points():
        try:
            cls = ep.load()
        except Exception as exc:  # any import-time failure of third-party code
            warnings.warn(
                f"tuneforge strategy plugin {ep.name!r} ({ep.value}) failed to load and is "
                f"skipped: {type(exc).__name__}: {exc}",
                stacklevel=2,
            )
            continue
        package = ep.dist.name if ep.dist else "unknown"
        found[ep.name] = StrategyInfo(name=ep.name, cls=cls, package=package)
    return found


def load_strategy(name: str) -> type[TuningStrategy]:
    """Returns the strategy class registered as `name`."""
    strategies = discover_strategies()
    if name not in strategies:
        available = ", ".join(sorted(strategies)) or "none"
        raise UnknownStrategyError(f"unknown strategy {name!r}; available: {available}")
    return strategies[name].cls
