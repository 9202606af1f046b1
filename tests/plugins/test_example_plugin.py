"""A real third-party plugin, installed for real: `examples/tuneforge-bitfit`.

The package is pip-installed into the running environment (from a temporary copy, so its build
files stay out of the repository), found through its entry point by the `tuneforge` command and
by the in-process registry, checked with `tuneforge.plugins.testing.check_strategy`, and used by
the real `retrain` flow. It is uninstalled afterwards, unless it was installed before the tests
started.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import BUNDLED_DATA, PRESET, REPO, set_args
from tests.plugins.installed import installed

pytestmark = pytest.mark.integration

EXAMPLE = REPO / "examples" / "tuneforge-bitfit"
DIST = "tuneforge-bitfit"
MODEL = "it-bitfit"


@pytest.fixture(scope="module")
def bitfit(tmp_path_factory):
    """Installs the example plugin and yields its class."""
    pytest.importorskip("setuptools", reason="building the example plugin needs setuptools")
    with installed(EXAMPLE, DIST, "tuneforge_bitfit", tmp_path_factory.mktemp("plugin-src")):
        from tuneforge.plugins.discovery import load_strategy

        yield load_strategy("bitfit")


def test_cli_lists_the_installed_plugin_with_its_package_and_settings(bitfit):
    cli = Path(sys.executable).parent / "tuneforge"
    done = subprocess.run(
        [str(cli), "strategies", "--json"], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    listing = {item["name"]: item for item in json.loads(done.stdout.strip().splitlines()[-1])}
    entry = listing["bitfit"]
    assert entry["package"] == DIST
    assert entry["description"] == bitfit.description
    assert entry["version"] == "0.1.0"
    include_norms = entry["settings"]["include_norms"]
    assert (include_norms["type"], include_norms["default"]) == ("bool", True)
    assert include_norms["description"].startswith("Also train the weights of normalization")
    assert entry["settings"]["train_prompt"]["default"] is False
    assert listing["full"]["package"] == "tuneforge"

    one = subprocess.run(
        [str(cli), "strategies", "bitfit"], capture_output=True, text=True, timeout=120, check=False
    )
    assert one.returncode == 0, one.stderr[-2000:]
    assert one.stdout.startswith("bitfit (tuneforge-bitfit 0.1.0): BitFit")
    assert "include_norms: bool = True" in one.stdout
    assert "Also train the weights of normalization layers" in one.stdout


def test_the_plugins_own_tests_pass_on_the_public_test_kit(bitfit):
    # They check the contract (check_strategy on tiny_checkpoint and sample_records) and the
    # plugin's own behaviour, importing nothing but tuneforge.plugins(.testing).
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"],
        cwd=EXAMPLE,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "3 passed" in done.stdout


def test_a_strategy_that_fails_ends_the_command_in_one_line(bitfit, prefect_harness, tmp_path):
    from prefect.settings import get_current_settings

    env = {**os.environ, "PREFECT_API_URL": get_current_settings().api.url}
    command = [
        str(Path(sys.executable).parent / "tuneforge"),
        "run",
        str(PRESET),
        *set_args(
            f"data.path={BUNDLED_DATA}",
            f"output_dir={tmp_path}",
            f"tracking.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}",
            "registry.model_name=it-bitfit-broken",
            "train.strategy=bitfit",
            "train.settings.include_norms=false",
        ),
        "--json",
    ]
    quiet = subprocess.run(
        command, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert quiet.returncode == 2, quiet.stdout[-2000:] + quiet.stderr[-2000:]
    errors = [line for line in quiet.stderr.splitlines() if line.startswith("error:")]
    assert errors == [
        "error: strategy 'bitfit' (tuneforge-bitfit 0.1.0): prepare_model: bitfit: "
        "LlamaForCausalLM has no bias parameters, so nothing would train (set include_norms: "
        "true); a plugin's own tests catch this with tuneforge.plugins.testing.check_strategy"
    ]
    assert quiet.stderr.strip().endswith(errors[0])  # the last line, alone
    # --json: the same line as the last one on stdout, as {"error": ...}
    assert json.loads(quiet.stdout.strip().splitlines()[-1]) == {"error": errors[0][7:]}
    assert "Traceback" not in quiet.stdout + quiet.stderr
    # (The traceback on the console with --debug: tests/cli/test_console.py.)


@pytest.fixture(scope="module")
def bitfit_run(bitfit, prefect_harness, mlflow_server, tmp_path_factory):
    from tuneforge.config import load_config
    from tuneforge.flows.retrain import retrain

    config = load_config(
        PRESET,
        [
            f"data.path={BUNDLED_DATA}",
            f"output_dir={tmp_path_factory.mktemp('bitfit-runs')}",
            f"tracking.tracking_uri={mlflow_server}",
            "tracking.experiment=integration",
            f"registry.model_name={MODEL}",
            "train.strategy=bitfit",
            "train.steps=100",
            "evaluation.max_examples=48",
        ],
    )
    return retrain(config)


def test_flow_trains_with_the_plugin_and_registers_the_model(bitfit_run, mlflow_server):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(mlflow_server)
    version = client.get_model_version(MODEL, bitfit_run.registration.version)
    assert version.run_id == bitfit_run.run_id
    # The version's lineage names the code that trained it: the plugin's distribution.
    assert version.tags["tuneforge.strategy_package"] == f"{DIST}==0.1.0"
    assert f"{DIST}==0.1.0" in version.tags["tuneforge.packages"].split(",")
    run = client.get_run(bitfit_run.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["train.strategy"] == "bitfit"
    training = bitfit_run.training
    assert 0 < training.trainable_parameters < training.total_parameters / 100


def test_flow_changed_only_norm_weights(bitfit_run):
    from safetensors.torch import load_file

    run_dir = Path(bitfit_run.run_dir)
    base = load_file(run_dir / "base" / "model.safetensors")
    tuned = load_file(run_dir / "tuned" / "model.safetensors")
    assert base.keys() == tuned.keys()
    trained = {key for key in base if "norm" in key or key.endswith(".bias")}
    frozen = base.keys() - trained
    assert trained and frozen
    changed = {key for key in base if not base[key].equal(tuned[key])}
    assert not changed & frozen, f"frozen weights changed: {sorted(changed & frozen)}"
    assert changed, "no weight changed at all"
