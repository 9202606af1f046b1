"""Finds plugins through entry-point groups, `tuneforge.strategies` (tuning strategies) and
`tuneforge.evaluators` (evaluation metrics), and parses strategies' settings.

Built-in strategies and evaluators are registered in tuneforge's own pyproject.toml exactly like
a third-party plugin's, so there is one way in. A plugin that fails to import is skipped with a
warning (one broken package must not take down every run); asking for an unknown name fails
with the list of names that are available; a name two distributions register fails naming both.
`parse_settings` is the one place `train.settings` becomes a strategy's own `Settings`.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from functools import cache
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from pydantic import BaseModel

from tuneforge.lineage import EVALUATORS, STRATEGIES
from tuneforge.plugins.evaluator import is_benchmark
from tuneforge.plugins.strategy import TuningStrategy, with_defaults

_KINDS = {STRATEGIES: "strategy", EVALUATORS: "evaluator"}


class UnknownPluginError(LookupError):
    def __str__(self) -> str:  # LookupError would quote the message
        return str(self.args[0])


class UnknownStrategyError(UnknownPluginError):
    pass


class StrategyConflictError(UnknownStrategyError):
    """Two installed distributions register the same strategy name."""


class UnknownEvaluatorError(UnknownPluginError):
    """No evaluator of that name, or two distributions register it."""


@dataclass(frozen=True)
class PluginInfo:
    name: str
    cls: type[Any]
    package: str  # the distribution that registered it
    version: str  # that distribution's version
    target: str  # the entry point's `module:Class`
    kind: str = "strategy"  # or evaluator

    @property
    def scores_model(self) -> bool:
        """An evaluator that scores the model on tasks of its own (`BenchmarkEvaluator`),
        configured under `evaluation.benchmarks`, rather than each answer."""
        return is_benchmark(self.cls)

    @property
    def label(self) -> str:
        """`strategy 'bitfit' (tuneforge-bitfit 0.1.0)`: how errors name it."""
        return f"{self.kind} {self.name!r} ({self.package} {self.version})"


def _entry_points(group: str = STRATEGIES) -> list[EntryPoint]:
    return list(entry_points(group=group))


@dataclass(frozen=True)
class Discovery:
    plugins: dict[str, PluginInfo]
    conflicts: dict[str, list[PluginInfo]]  # names registered more than once


def _discover(group: str) -> Discovery:
    """Imports every plugin registered in `group`; broken ones warn and are left out, and a
    name registered by two distributions is set aside as a conflict (it warns, and using it
    fails)."""
    kind = _KINDS[group]
    seen: dict[str, list[PluginInfo]] = {}
    for ep in _entry_points(group):
        try:
            cls = ep.load()
        except Exception as exc:  # any import-time failure of third-party code
            warnings.warn(
                f"tuneforge {kind} plugin {ep.name!r} ({ep.value}) failed to load and is "
                f"skipped: {type(exc).__name__}: {exc}",
                stacklevel=3,
            )
            continue
        if group == STRATEGIES:  # the defaults of optional members it does not define
            cls = with_defaults(cls)
        dist = ep.dist
        info = PluginInfo(
            name=ep.name,
            cls=cls,
            package=dist.name if dist else "unknown",
            version=dist.version if dist else "unknown",
            target=ep.value,
            kind=kind,
        )
        seen.setdefault(ep.name, []).append(info)
    conflicts = {name: infos for name, infos in seen.items() if len(infos) > 1}
    for name, infos in conflicts.items():
        warnings.warn(_conflict_message(name, infos), stacklevel=3)
    plugins = {name: infos[0] for name, infos in seen.items() if name not in conflicts}
    return Discovery(plugins, conflicts)


@cache
def discover() -> Discovery:
    """Every registered strategy (`tuneforge.strategies`), imported."""
    return _discover(STRATEGIES)


@cache
def discover_evaluators() -> Discovery:
    """Every registered evaluator (`tuneforge.evaluators`), imported."""
    return _discover(EVALUATORS)


def _conflict_message(name: str, infos: list[PluginInfo]) -> str:
    both = " and ".join(f"{i.package} {i.version} ({i.target})" for i in infos)
    return f"{infos[0].kind} {name!r} is registered by {both}; uninstall one of them to use it"


def _info(found: Discovery, name: str, kind: str, unknown: type, conflict: type) -> PluginInfo:
    if name in found.conflicts:
        raise conflict(_conflict_message(name, found.conflicts[name]))
    if name not in found.plugins:
        available = ", ".join(sorted(found.plugins)) or "none"
        raise unknown(f"unknown {kind} {name!r}; available: {available}")
    return found.plugins[name]


def discover_strategies() -> dict[str, PluginInfo]:
    """Every usable strategy by name (conflicting names left out)."""
    return discover().plugins


def strategy_info(name: str) -> PluginInfo:
    """The registration of strategy `name`; `UnknownStrategyError` (or its subclass
    `StrategyConflictError`) in one line otherwise."""
    return _info(discover(), name, "strategy", UnknownStrategyError, StrategyConflictError)


def evaluator_info(name: str) -> PluginInfo:
    """The registration of evaluator `name`; `UnknownEvaluatorError` in one line otherwise."""
    return _info(
        discover_evaluators(), name, "evaluator", UnknownEvaluatorError, UnknownEvaluatorError
    )


def load_strategy(name: str) -> type[TuningStrategy]:
    """Returns the strategy class registered as `name`."""
    return strategy_info(name).cls


def parse_settings(name: str, raw: dict[str, Any]) -> BaseModel:
    """`train.settings` as strategy `name`'s own `Settings` model (pydantic's
    `ValidationError` for bad keys or values)."""
    return load_strategy(name).Settings.model_validate(raw)
