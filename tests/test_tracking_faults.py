"""A tracking server that goes away mid-run: metric logging must neither stall training nor lose
anything, and must give up in one line naming the URI when the server does not come back.

The outage is real: an `mlflow server` process is terminated while metrics are logged, and a new
one is started on the same port over the same SQLite store.
"""

from __future__ import annotations

import threading
import time

import pytest
import requests
from mlflow.exceptions import MlflowException, RestException
from mlflow.tracking import MlflowClient

from tests.conftest import _free_port
from tuneforge.tracking import MetricLogger, TrackingUnavailable, is_unreachable, start_run

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def _mlflow_default_retries(monkeypatch):
    # The logger must be fast with MLflow's own defaults (7 retries, 120 s timeout) in force.
    for name in (
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES",
        "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR",
        "MLFLOW_HTTP_REQUEST_TIMEOUT",
    ):
        monkeypatch.delenv(name, raising=False)


def _values(step: int) -> dict[str, float]:
    return {"train.loss": 10.0 / (step + 1), "train.learning_rate": step * 1e-4}


def test_metrics_logged_during_an_outage_reach_mlflow_when_it_returns(restartable_mlflow_server):
    server = restartable_mlflow_server
    run_id = start_run(server.uri, "faults", "outage", {}, {})
    logger = MetricLogger(server.uri, run_id, flush_every=10, flush_deadline=120)
    for step in range(20):
        logger.log(_values(step), step)
    assert logger.pending < 10  # sent while the server was up

    server.stop()
    seconds = []
    for step in range(20, 220):
        started = time.monotonic()
        logger.log(_values(step), step)  # must neither raise nor wait on MLflow's retries
        seconds.append(time.monotonic() - started)
    assert logger.pending >= 400
    print(
        f"200 log calls with the server down: max {max(seconds) * 1000:.1f} ms, "
        f"total {sum(seconds) * 1000:.1f} ms"
    )
    assert max(seconds) < 1.0 and sum(seconds) < 3.0

    # The final flush retries with backoff while a new server comes up on the same port and
    # store; it returns once everything is stored.
    restart = threading.Thread(target=server.start)
    started = time.monotonic()
    restart.start()
    logger.flush()
    restart.join()
    print(f"final flush waited {time.monotonic() - started:.1f} s for the restarted server")
    assert logger.pending == 0

    _assert_all_stored(server.uri, run_id, range(220))


def _assert_all_stored(uri: str, run_id: str, steps: range) -> None:
    client = MlflowClient(uri)
    for key in _values(0):
        history = client.get_metric_history(run_id, key)
        assert {m.step: m.value for m in history} == {s: _values(s)[key] for s in steps}
        assert len(history) == len(steps)  # a batch sent twice is stored once


def test_a_hung_server_costs_a_bounded_wait_not_minutes(restartable_mlflow_server):
    """A server that accepts connections but never answers (SIGSTOP): MLflow's client would
    wait 120 s a try, 7 tries; the logger waits one short timeout, then backs off."""
    server = restartable_mlflow_server
    run_id = start_run(server.uri, "faults", "hung", {}, {})
    logger = MetricLogger(server.uri, run_id, flush_every=10, flush_deadline=120)
    server.freeze()
    try:
        started = time.monotonic()
        seconds = []
        for step in range(100):
            began = time.monotonic()
            logger.log(_values(step), step)
            seconds.append(time.monotonic() - began)
            time.sleep(0.02)  # a training step
        total = time.monotonic() - started
    finally:
        server.thaw()
    print(
        f"100 steps against a hung server: slowest log call {max(seconds):.1f} s, "
        f"{sum(s > 0.5 for s in seconds)} calls over 0.5 s, {total:.1f} s in all"
    )
    read_timeout = MetricLogger.STEP_TIMEOUT_S[1]
    assert max(seconds) < read_timeout + 1.0
    assert total < 3 * (read_timeout + 1.0)
    logger.flush()
    _assert_all_stored(server.uri, run_id, range(100))


def test_final_flush_gives_up_after_its_deadline_in_one_line_naming_the_uri():
    uri = f"http://127.0.0.1:{_free_port()}"
    logger = MetricLogger(uri, "0123456789abcdef", flush_every=1, flush_deadline=3)
    started = time.monotonic()
    for step in range(50):
        logger.log(_values(step), step)
    assert time.monotonic() - started < 2.0
    started = time.monotonic()
    with pytest.raises(TrackingUnavailable) as raised:
        logger.flush()
    seconds = time.monotonic() - started
    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith(f"tracking.tracking_uri: cannot reach {uri} to log 100 buffered")
    assert "within 3 s (" in message and "Connection refused" in message
    assert 3.0 <= seconds < 8.0, seconds  # retried until the deadline, not for minutes
    assert logger.pending == 100  # kept: a later flush can still send them


def test_a_refusal_is_raised_at_once_not_retried(restartable_mlflow_server):
    logger = MetricLogger(
        restartable_mlflow_server.uri, "0" * 32, flush_every=1000, flush_deadline=60
    )
    logger.log(_values(0), 0)
    started = time.monotonic()
    with pytest.raises(RestException, match=r"RESOURCE_DOES_NOT_EXIST|not found"):
        logger.flush()
    assert time.monotonic() - started < 5.0


@pytest.mark.parametrize(
    ("exc", "transient"),
    [
        (requests.ConnectionError("refused"), True),
        (requests.ReadTimeout("slow"), True),
        (requests.exceptions.RetryError("503"), True),
        (ConnectionRefusedError(111, "Connection refused"), True),
        (RestException({"error_code": "INVALID_PARAMETER_VALUE", "message": "bad"}), False),
        (ValueError("nan"), False),
    ],
)
def test_what_counts_as_unreachable(exc, transient):
    assert is_unreachable(exc) is transient
    try:  # as MLflow raises it: wrapped, the original kept as context
        try:
            raise exc
        except Exception as inner:
            raise MlflowException(f"API request failed with exception {inner}") from None
    except MlflowException as wrapped:
        assert is_unreachable(wrapped) is False  # `from None` hides the cause on purpose
    try:
        try:
            raise exc
        except Exception as inner:
            raise MlflowException(f"API request failed with exception {inner}")  # noqa: B904
    except MlflowException as wrapped:
        assert is_unreachable(wrapped) is transient


def test_runs_starting_together_share_the_experiment_one_of_them_created(mlflow_server):
    """Both see no experiment; the second's creation is refused (RESOURCE_ALREADY_EXISTS over
    HTTP) and it takes the first's. Seen in the suite when three `tuneforge run` started at
    once."""
    from tuneforge.tracking import experiment_id

    first = MlflowClient(mlflow_server)

    class LateToLook(MlflowClient):
        """Looked before the first run created the experiment."""

        def get_experiment_by_name(self, name):
            if not getattr(self, "looked", False):
                self.looked = True
                return None
            return super().get_experiment_by_name(name)

    made = first.create_experiment("started-together")
    assert experiment_id(LateToLook(mlflow_server), "started-together") == made
    assert experiment_id(first, "started-together") == made
