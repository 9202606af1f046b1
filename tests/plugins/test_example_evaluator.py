"""A real third-party evaluator, installed for real: `examples/tuneforge-jsonvalid`.

Found through its entry point by `tuneforge evaluators --json` and the in-process registry, its
own tests passing on the public test kit, and gating a real `retrain`: the registered
version's decision names its metric.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import BUNDLED_DATA, PRESET, REPO
from tests.plugins.installed import installed

pytestmark = pytest.mark.integration

EXAMPLE = REPO / "examples" / "tuneforge-jsonvalid"
MODEL = "it-jsonvalid"


@pytest.fixture(scope="module")
def json_valid(tmp_path_factory):
    pytest.importorskip("setuptools", reason="building the example plugin needs setuptools")
    scratch = tmp_path_factory.mktemp("evaluator-src")
    with installed(EXAMPLE, "tuneforge-jsonvalid", "tuneforge_jsonvalid", scratch):
        from tuneforge.plugins.discovery import evaluator_info

        yield evaluator_info("json_valid").cls


def test_cli_lists_the_builtins_and_the_installed_evaluator(json_valid):
    cli = Path(sys.executable).parent / "tuneforge"
    done = subprocess.run(
        [str(cli), "evaluators", "--json"], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    listing = {item["name"]: item for item in json.loads(done.stdout.strip().splitlines()[-1])}
    assert {"exact_match", "rouge_l", "json_valid"} <= set(listing)
    assert listing["json_valid"]["package"] == "tuneforge-jsonvalid"
    assert listing["json_valid"]["higher_is_better"] is True
    assert listing["json_valid"]["settings"]["required_keys"]["default"] == []
    assert listing["exact_match"]["package"] == "tuneforge"


def test_the_plugins_own_tests_pass_on_the_public_test_kit(json_valid):
    spec = importlib.util.spec_from_file_location(
        "jsonvalid_tests", EXAMPLE / "tests" / "test_metric.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    tests = [getattr(module, name) for name in dir(module) if name.startswith("test_")]
    assert len(tests) == 2
    for test in tests:
        test()


def test_a_retrain_gated_on_the_plugins_metric_names_it(
    json_valid, prefect_harness, mlflow_server, tmp_path
):
    from mlflow.tracking import MlflowClient

    from tuneforge.config import load_config
    from tuneforge.flows.retrain import retrain

    config = load_config(
        PRESET,
        [
            f"data.path={BUNDLED_DATA}",
            f"output_dir={tmp_path}",
            f"tracking.tracking_uri={mlflow_server}",
            "tracking.experiment=integration",
            f"registry.model_name={MODEL}",
            "train.steps=300",
            "train.eval_every=0",
            "evaluation.max_examples=48",
            "evaluation.metrics=[rouge_l, json_valid]",
            "registry.metric=json_valid",
            "registry.min_correct=0",
        ],
    )
    result = retrain(config)
    # The "add" family's answers are numbers, valid JSON; the untrained base answers noise.
    assert result.tuned["json_valid"] > result.base["json_valid"]
    assert "json_valid.add" in result.tuned and "json_valid" in result.registration.reason
    version = MlflowClient(mlflow_server).get_model_version(MODEL, result.registration.version)
    assert "json_valid" in version.tags["tuneforge.decision"]
    rows = (Path(result.split.eval_path).parent / "tuned_scores.jsonl").read_text().splitlines()
    assert all("json_valid" in json.loads(row) for row in rows if '"answer"' in row)
