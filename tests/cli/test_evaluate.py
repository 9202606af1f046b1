"""`tuneforge evaluate`: scoring a model on a dataset outside any flow."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from tests.conftest import REPO
from tuneforge.cli import app

ALPACA = REPO / "tests" / "fixtures" / "alpaca.json"


def test_evaluate_a_local_checkpoint_prints_metrics_as_json(tiny_model_dir):
    done = CliRunner().invoke(
        app, ["evaluate", str(tiny_model_dir), str(ALPACA), "--max-new-tokens", "4", "--json"]
    )
    assert done.exit_code == 0, done.output
    metrics = json.loads(done.output.strip().splitlines()[-1])
    assert metrics["examples"] == 3  # the fixture's fourth element is not a row
    assert metrics["exact_match"] == 0.0  # random weights
    assert {"eval_loss", "perplexity", "rouge_l"} <= set(metrics)


def test_evaluate_refuses_a_missing_model_with_one_line(tmp_path):
    done = CliRunner().invoke(app, ["evaluate", str(tmp_path / "nope"), str(ALPACA)])
    assert done.exit_code == 2
    assert "no such model directory" in done.output and "Traceback" not in done.output
