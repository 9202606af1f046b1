"""One retrain per model name at a time, through a real Prefect global concurrency limit."""

from __future__ import annotations

import pytest

from tests.conftest import BUNDLED_DATA, PRESET

pytestmark = pytest.mark.integration


def test_second_retrain_of_a_busy_model_gives_up_and_says_so(
    prefect_harness, mlflow_server, tmp_path
):
    from mlflow.tracking import MlflowClient
    from prefect.concurrency.sync import concurrency

    from flows.retrain import retrain
    from tuneforge.concurrency import SlotBusyError, one_retrain_at_a_time, slot_name
    from tuneforge.config import load_config

    config = load_config(
        PRESET,
        [
            f"data.path={BUNDLED_DATA}",
            f"output_dir={tmp_path}",
            f"tracking.tracking_uri={mlflow_server}",
            "tracking.experiment=concurrency",
            "registry.model_name=it-busy",
            "registry.wait_for_slot_s=1",
        ],
    )
    # Another retrain of it-busy holds the slot (this test plays that run).
    busy = pytest.raises(SlotBusyError, match="'it-busy': another retrain holds the slot")
    with one_retrain_at_a_time("it-busy", wait_s=5), busy:
        retrain(config)
    # The refused run is recorded as failed, and nothing was registered.
    client = MlflowClient(mlflow_server)
    experiment = client.get_experiment_by_name("concurrency")
    runs = client.search_runs([experiment.experiment_id])
    assert [r.info.status for r in runs] == ["FAILED"]
    assert not client.search_model_versions("name='it-busy'")
    # Once free, the slot can be taken again at once.
    with concurrency(slot_name("it-busy"), occupy=1, strict=True, timeout_seconds=5):
        pass


def test_two_first_runs_creating_the_limit_at_once_both_get_the_slot(prefect_harness, monkeypatch):
    # The upsert reads then creates; two first runs of a new model started together can both
    # read "no limit" and both create it. Played here: the limit exists, the read says it does not.
    from prefect.client.orchestration import SyncPrefectClient
    from prefect.exceptions import ObjectNotFound

    from tuneforge.concurrency import one_retrain_at_a_time

    with one_retrain_at_a_time("it-first-twice", wait_s=5):
        pass  # the other run created the limit

    def not_yet(self, name):
        raise ObjectNotFound(http_exc=None)

    monkeypatch.setattr(SyncPrefectClient, "read_global_concurrency_limit_by_name", not_yet)
    with one_retrain_at_a_time("it-first-twice", wait_s=5):
        pass
