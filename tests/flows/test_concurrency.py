"""One retrain per model name at a time, through a real Prefect global concurrency limit, and
how the slot is freed from holders that are gone (tuneforge/slots.py).

All against the session's Prefect test server. The holders here are flow runs (as retrain's
are): a slot taken outside any flow run is recorded nowhere, and counts as an orphan.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from uuid import UUID

import pytest
from prefect import flow

from tests.conftest import BUNDLED_DATA, PRESET

pytestmark = pytest.mark.integration


@pytest.fixture
def tuneforge_logs(caplog):
    caplog.set_level(logging.INFO, logger="prefect.tuneforge")
    return caplog


def _client():
    from prefect import get_client

    return get_client(sync_client=True)


def _taken(slot: str) -> int:
    with _client() as client:
        return client.read_global_concurrency_limit_by_name(slot).active_slots


@flow
def _take_and_die(model_name: str) -> str:
    """Takes the slot and records it, as retrain does, then ends without releasing it: a run
    whose process died before its `finally` (its lease is still counted)."""
    from tuneforge.slots import _current_flow_run_id, _ensure_limit, _retag, _try_acquire

    slot = f"retrain-{model_name}"
    me = _current_flow_run_id()
    with _client() as client:
        _ensure_limit(client, slot)
        lease = _try_acquire(client, slot, me)
        assert lease is not None
        _retag(client, me, slot, lease)
    return str(me)


def test_second_retrain_of_a_busy_model_gives_up_naming_the_holder(
    prefect_harness, mlflow_server, tmp_path, tuneforge_logs
):
    from mlflow.tracking import MlflowClient

    from tuneforge.config import load_config
    from tuneforge.flows.retrain import retrain
    from tuneforge.slots import SlotBusyError, one_retrain_at_a_time, release_slot

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

    @flow(flow_run_name="the-holder")
    def holder() -> str:
        # Another retrain of it-busy holds the slot (this flow plays that run).
        with one_retrain_at_a_time("it-busy", wait_s=5):
            with pytest.raises(SlotBusyError) as refused:
                retrain(config)
            with _client() as client, pytest.raises(SlotBusyError, match="add --force"):
                release_slot(client, "it-busy", force=False)  # the holder is alive
        return str(refused.value)

    message = holder()
    assert "registry.model_name 'it-busy': the retrain slot is held by flow run 'the-holder'" in (
        message
    )
    assert "Running, started" in message
    assert message.endswith("tuneforge slots release it-busy --force")
    assert "\n" not in message
    waiting = [r.getMessage() for r in tuneforge_logs.records if "waiting for" in r.getMessage()]
    assert waiting and "flow run 'the-holder'" in waiting[0]
    # Nothing of the refused run reached MLflow: it never held the slot.
    experiment = MlflowClient(mlflow_server).get_experiment_by_name("concurrency")
    assert experiment is None or not MlflowClient(mlflow_server).search_runs(
        [experiment.experiment_id]
    )
    # The holder released the slot on the way out, and its flow run no longer records it.
    assert _taken("retrain-it-busy") == 0
    with one_retrain_at_a_time("it-busy", wait_s=0):
        pass


def test_a_slot_whose_holder_ended_is_released_at_once_naming_it(prefect_harness, tuneforge_logs):
    from prefect.states import Crashed

    from tuneforge.slots import holders, one_retrain_at_a_time

    dead = _take_and_die("it-dead")
    with _client() as client:
        client.set_flow_run_state(UUID(dead), Crashed(message="killed"), force=True)
    assert _taken("retrain-it-dead") == 1

    started = time.monotonic()
    with one_retrain_at_a_time("it-dead", wait_s=30):
        waited = time.monotonic() - started
        assert _taken("retrain-it-dead") == 1  # ours now
    assert waited < 5  # released at the first look, not when the lease lapses (60 s)
    released = [r.getMessage() for r in tuneforge_logs.records if "released" in r.getMessage()]
    assert len(released) == 1 and dead in released[0] and "Crashed" in released[0]
    with _client() as client:
        assert holders(client, "retrain-it-dead") == []  # the dead run's record is cleared
    assert _taken("retrain-it-dead") == 0


def test_a_count_no_run_holds_is_released_after_a_second_look(prefect_harness, tuneforge_logs):
    # What a Prefect server restarted with in-memory leases leaves: the count, no lease.
    from tuneforge.slots import POLL_S, _ensure_limit, one_retrain_at_a_time

    with _client() as client:
        _ensure_limit(client, "retrain-it-orphan")
        client.increment_concurrency_slots(names=["retrain-it-orphan"], slots=1, mode="concurrency")
    started = time.monotonic()
    with one_retrain_at_a_time("it-orphan", wait_s=60):
        waited = time.monotonic() - started
    assert POLL_S <= waited < 60
    assert any("no flow run holds it" in r.getMessage() for r in tuneforge_logs.records)
    assert _taken("retrain-it-orphan") == 0


def test_a_holder_whose_lease_the_server_forgot_takes_the_slot_back(
    prefect_harness, tuneforge_logs
):
    from tuneforge.slots import RetrainSlot, holders

    @flow
    def hold() -> tuple[UUID, UUID, UUID]:
        slot = RetrainSlot("it-forgot")
        slot.acquire(wait_s=5)
        first = slot.lease_id
        with _client() as client:
            # A restart with in-memory leases: the lease is gone, the count stays.
            client.release_concurrency_slots_with_lease(first)
            client.increment_concurrency_slots(names=[slot.slot], slots=1, mode="concurrency")
            assert slot._take_back(client)  # what the renewal thread does on "lease gone"
            recorded = holders(client, slot.slot)
        slot.check_held()
        slot.release()
        return first, slot.lease_id, recorded[0].lease_id

    first, second, recorded = hold()
    assert second != first and recorded == second
    assert any("took the slot again" in r.getMessage() for r in tuneforge_logs.records)
    assert _taken("retrain-it-forgot") == 0  # one count, not two, and released


def test_a_run_that_ends_before_noticing_its_lease_is_gone_leaves_the_slot_free(
    prefect_harness,
):
    # The server restarted (in-memory leases) and the run ended before its next renewal:
    # releasing the forgotten lease alone is a no-op that would leave the slot taken.
    from tuneforge.slots import one_retrain_at_a_time

    @flow
    def hold_through_a_restart() -> None:
        with one_retrain_at_a_time("it-ended", wait_s=5) as slot, _client() as client:
            client.release_concurrency_slots_with_lease(slot.lease_id)
            client.increment_concurrency_slots(names=[slot.slot], slots=1, mode="concurrency")

    hold_through_a_restart()
    assert _taken("retrain-it-ended") == 0


def test_slots_commands_list_and_release(prefect_harness):
    from prefect.settings import get_current_settings

    dead = _take_and_die("it-listed")
    env = {**os.environ, "PREFECT_API_URL": get_current_settings().api.url}

    def tuneforge(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "tuneforge.cli", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    listed = tuneforge("slots", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    row = next(r for r in json.loads(listed.stdout) if r["model"] == "it-listed")
    assert row["taken"] == 1 and row["holders"][0]["flow_run_id"] == dead
    # Its flow run completed (the process "died" after), so no --force is needed.
    released = tuneforge("slots", "release", "it-listed")
    assert released.returncode == 0, released.stderr
    assert dead in released.stdout
    assert _taken("retrain-it-listed") == 0
    unknown = tuneforge("slots", "release", "never-ran")
    assert unknown.returncode == 2
    assert unknown.stderr.strip().splitlines() == [
        "error: 'never-ran': no retrain slot (it never ran)"
    ]


def test_two_first_runs_creating_the_limit_at_once_both_get_the_slot(prefect_harness, monkeypatch):
    # The upsert reads then creates; two first runs of a new model started together can both
    # read "no limit" and both create it. Played here: the limit exists, the read says it does not.
    from prefect.client.orchestration import SyncPrefectClient
    from prefect.exceptions import ObjectNotFound

    from tuneforge.slots import one_retrain_at_a_time

    with one_retrain_at_a_time("it-first-twice", wait_s=5):
        pass  # the other run created the limit

    def not_yet(self, name):
        raise ObjectNotFound(http_exc=None)

    monkeypatch.setattr(SyncPrefectClient, "read_global_concurrency_limit_by_name", not_yet)
    with one_retrain_at_a_time("it-first-twice", wait_s=5):
        pass


def test_trainings_queue_for_a_concurrency_limits_slots(prefect_harness):
    """train.concurrency_limit: with one slot, two trainings (threads here, as a sweep's
    candidates are) hold it one after the other, and the slot is free again after both."""
    from concurrent.futures import ThreadPoolExecutor

    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate

    from tuneforge.slots import training_slot

    with _client() as client:
        client.create_global_concurrency_limit(
            GlobalConcurrencyLimitCreate(name="it-one-gpu", limit=1)
        )
    spans: list[tuple[float, float]] = []

    def train() -> None:
        with training_slot("it-one-gpu", "training"):
            start = time.monotonic()
            time.sleep(1.0)
            spans.append((start, time.monotonic()))

    with ThreadPoolExecutor(2) as pool:
        list(pool.map(lambda _: train(), range(2)))
    first, second = sorted(spans)
    assert second[0] >= first[1]  # never both at once
    assert _taken("it-one-gpu") == 0


def test_a_missing_concurrency_limit_fails_in_one_line_naming_it(prefect_harness):
    from tuneforge.slots import training_slot

    with pytest.raises(ValueError) as info, training_slot("it-no-such-limit", "training"):
        pass
    assert str(info.value).startswith("train.concurrency_limit: no Prefect concurrency limit")
    assert "'it-no-such-limit'" in str(info.value) and "prefect gcl create" in str(info.value)
