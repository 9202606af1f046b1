"""Strategy discovery through entry points: built-ins, broken plugins, unknown names."""

from __future__ import annotations

from importlib.metadata import EntryPoint

import pytest

from plugins import registry
from plugins.full import FullStrategy
from plugins.strategy import TuningStrategy


@pytest.fixture
def fake_entry_points(monkeypatch):
    def install(*eps: EntryPoint) -> None:
        monkeypatch.setattr(registry, "_entry_points", lambda: list(eps))
        registry.discover_strategies.cache_clear()

    yield install
    registry.discover_strategies.cache_clear()


def test_builtin_full_is_registered_through_the_entry_point_group():
    # Real package metadata: the installed tuneforge distribution declares `full`.
    info = registry.discover_strategies()["full"]
    assert info.cls is FullStrategy and info.package == "tuneforge"
    assert isinstance(FullStrategy(FullStrategy.Settings()), TuningStrategy)


def test_broken_plugin_warns_and_is_skipped(fake_entry_points):
    fake_entry_points(
        EntryPoint("full", "plugins.full:FullStrategy", registry.ENTRY_POINT_GROUP),
        EntryPoint("broken", "no_such_module_xyz:Strategy", registry.ENTRY_POINT_GROUP),
    )
    with pytest.warns(UserWarning, match="'broken'.*failed to load"):
        found = registry.discover_strategies()
    assert set(found) == {"full"}


def test_unknown_name_lists_available(fake_entry_points):
    fake_entry_points(
        EntryPoint("full", "plugins.full:FullStrategy", registry.ENTRY_POINT_GROUP),
        EntryPoint("other", "plugins.full:FullStrategy", registry.ENTRY_POINT_GROUP),
    )
    with pytest.raises(registry.UnknownStrategyError, match="'lora'; available: full, other"):
        registry.load_strategy("lora")


def test_full_strategy_trains_every_token_and_the_end_of_sequence(tiny_model_dir, bundled_records):
    from tasks.model_source import load_pretrained

    model, tokenizer = load_pretrained(tiny_model_dir)
    strategy = FullStrategy(FullStrategy.Settings())
    example = strategy.build_example(bundled_records[0], tokenizer, max_length=128)
    assert example.labels == example.input_ids
    assert example.input_ids[-1] == tokenizer.eos_token_id
    model.requires_grad_(False)
    assert all(p.requires_grad for p in strategy.prepare_model(model).parameters())
