"""Strategy discovery through entry points: built-ins, broken plugins, unknown names."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import EntryPoint

import pytest

from tuneforge.plugins import discovery
from tuneforge.plugins.full import FullStrategy
from tuneforge.plugins.strategy import TuningStrategy


def _only_strategies(eps: list):
    """Fake strategy entry points; every other group (evaluators) stays the real one."""
    real = discovery._entry_points

    def fake(group: str = discovery.STRATEGIES) -> list:
        return list(eps) if group == discovery.STRATEGIES else real(group)

    return fake


@pytest.fixture
def fake_entry_points(monkeypatch):
    def install(*eps: EntryPoint) -> None:
        monkeypatch.setattr(discovery, "_entry_points", _only_strategies(list(eps)))
        discovery.discover.cache_clear()

    yield install
    discovery.discover.cache_clear()


def test_builtin_full_is_registered_through_the_entry_point_group():
    # Real package metadata: the installed tuneforge distribution declares `full`.
    info = discovery.discover_strategies()["full"]
    assert info.cls is FullStrategy and info.package == "tuneforge"
    assert isinstance(FullStrategy(FullStrategy.Settings()), TuningStrategy)


def test_broken_plugin_warns_and_is_skipped(fake_entry_points):
    fake_entry_points(
        EntryPoint("full", "tuneforge.plugins.full:FullStrategy", discovery.STRATEGIES),
        EntryPoint("broken", "no_such_module_xyz:Strategy", discovery.STRATEGIES),
    )
    with pytest.warns(UserWarning, match="'broken'.*failed to load"):
        found = discovery.discover_strategies()
    assert set(found) == {"full"}


def test_unknown_name_lists_available(fake_entry_points):
    fake_entry_points(
        EntryPoint("full", "tuneforge.plugins.full:FullStrategy", discovery.STRATEGIES),
        EntryPoint("other", "tuneforge.plugins.full:FullStrategy", discovery.STRATEGIES),
    )
    with pytest.raises(discovery.UnknownStrategyError, match="'lora'; available: full, other"):
        discovery.load_strategy("lora")


def test_full_strategy_trains_every_token_and_the_end_of_sequence(tiny_model_dir, bundled_records):
    from tuneforge.models import load_pretrained

    model, tokenizer = load_pretrained(tiny_model_dir)
    strategy = FullStrategy(FullStrategy.Settings())
    example = strategy.build_example(bundled_records[0], tokenizer, max_length=128)
    assert example.labels == example.input_ids
    assert example.input_ids[-1] == tokenizer.eos_token_id
    model.requires_grad_(False)
    assert all(p.requires_grad for p in strategy.prepare_model(model).parameters())


class _FakeDist:
    def __init__(self, name: str, version: str) -> None:
        self.name, self.version = name, version


class _FakeEntryPoint:
    """An entry point of an installed distribution (importlib's own needs real metadata)."""

    def __init__(self, name: str, value: str, dist: _FakeDist) -> None:
        self.name, self.value, self.dist = name, value, dist

    def load(self) -> object:
        return EntryPoint(self.name, self.value, discovery.STRATEGIES).load()


def test_a_name_two_distributions_register_is_an_error_naming_both(monkeypatch):
    eps = [
        _FakeEntryPoint(
            "full", "tuneforge.plugins.full:FullStrategy", _FakeDist("tuneforge", "0.1.0")
        ),
        _FakeEntryPoint("x", "tuneforge.plugins.full:FullStrategy", _FakeDist("pkg-a", "1.0")),
        _FakeEntryPoint("x", "tuneforge.plugins.lora:LoraStrategy", _FakeDist("pkg-b", "2.1")),
    ]
    monkeypatch.setattr(discovery, "_entry_points", _only_strategies(eps))
    discovery.discover.cache_clear()
    try:
        with pytest.warns(UserWarning, match="'x' is registered by pkg-a 1.0"):
            found = discovery.discover_strategies()
        assert set(found) == {"full"}  # the other names still work
        with pytest.raises(discovery.StrategyConflictError) as raised:
            discovery.load_strategy("x")
        message = str(raised.value)
        assert "pkg-a 1.0 (tuneforge.plugins.full:FullStrategy)" in message
        assert "pkg-b 2.1 (tuneforge.plugins.lora:LoraStrategy)" in message
        assert discovery.strategy_info("full").label == "strategy 'full' (tuneforge 0.1.0)"
    finally:
        discovery.discover.cache_clear()


def test_settings_are_parsed_in_one_place():
    from pydantic import ValidationError

    from tuneforge.config import TrainConfig

    settings = TrainConfig(strategy="lora", settings={"rank": 4}).strategy_settings()
    assert type(settings).__name__ == "LoraSettings" and settings.rank == 4
    with pytest.raises(ValidationError, match="rnak"):
        discovery.parse_settings("lora", {"rnak": 4})


def test_listing_the_strategies_loads_no_torch():
    """Every command and config check lists the strategies: loading torch there (2 s a
    process) would slow them all. The built-in strategies import it when they train."""
    code = (
        "import sys; from tuneforge.plugins.discovery import discover_strategies; "
        "discover_strategies(); print('torch' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"
