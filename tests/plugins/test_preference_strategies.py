"""The built-in preference strategies (dpo, simpo, kto) are listed with what they train and
keep the plugin contract, full weights and LoRA alike (`check_strategy`)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from tuneforge.cli import app
from tuneforge.plugins.discovery import strategy_info
from tuneforge.plugins.testing import check_strategy


def test_strategies_json_lists_the_preference_strategies_and_their_data():
    result = CliRunner().invoke(app, ["strategies", "--json"])

    assert result.exit_code == 0, result.output
    listed = {item["name"]: item for item in json.loads(result.stdout.strip().splitlines()[-1])}
    assert listed["dpo"]["trains"] == listed["simpo"]["trains"] == ["pairs"]
    assert listed["kto"]["trains"] == ["feedback"]
    assert listed["full"]["trains"] == ["chat", "text"]
    assert set(listed["dpo"]["settings"]) == {"beta", "lora", "loss_type"}
    assert set(listed["simpo"]["settings"]) == {"beta", "lora", "gamma"}


@pytest.mark.parametrize(
    ("name", "settings"),
    [
        ("dpo", {}),
        ("dpo", {"loss_type": "ipo", "lora": {"rank": 4}}),
        ("dpo", {"loss_type": "hinge"}),
        ("simpo", {"lora": {"rank": 4}}),
        ("kto", {}),
    ],
)
def test_each_preference_strategy_keeps_the_contract(
    tiny_model_dir, bundled_records, name, settings
):
    check_strategy(strategy_info(name).cls, tiny_model_dir, bundled_records[:8], settings)
