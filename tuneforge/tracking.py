"""MLflow plumbing shared by the flow and its tasks.

Tasks receive the MLflow `run_id` and the tracking URI explicitly and talk to MLflow through a
`MlflowClient`: MLflow's "active run" is per thread, and Prefect may run a task in another
thread (or process) than the flow.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import requests
from mlflow.entities import Metric, Param
from mlflow.protos.service_pb2 import LogBatch
from mlflow.store.tracking.rest_store import RestStore
from mlflow.tracking import MlflowClient
from mlflow.utils.proto_json_utils import message_to_json
from mlflow.utils.rest_utils import http_request, verify_rest_response

from tuneforge.errors import first_line

_log = logging.getLogger(__name__)

# MLflow rejects params longer than this.
_MAX_PARAM_LENGTH = 6000


def resolve_tracking_uri(configured: str | None) -> str:
    """The configured URI, else MLflow's own default (MLFLOW_TRACKING_URI or ./mlflow.db)."""
    import mlflow

    if configured:
        mlflow.set_tracking_uri(configured)
    return mlflow.get_tracking_uri()


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """`{"train": {"steps": 5}}` -> `{"train.steps": "5"}`, for MLflow params."""
    flat: dict[str, str] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat |= flatten(value, f"{name}.")
        else:
            flat[name] = str(value)[:_MAX_PARAM_LENGTH]
    return flat


def start_run(
    tracking_uri: str, experiment: str, run_name: str, params: dict[str, str], tags: dict[str, str]
) -> str:
    """Creates an MLflow run (and its experiment if needed) and returns the run id."""
    client = MlflowClient(tracking_uri)
    run = client.create_run(experiment_id(client, experiment), run_name=run_name, tags=tags)
    items = [Param(k, v) for k, v in params.items()]
    for start in range(0, len(items), 100):  # log_batch takes at most 100 params
        client.log_batch(run.info.run_id, params=items[start : start + 100])
    return run.info.run_id


def experiment_id(client: MlflowClient, name: str) -> str:
    """The id of experiment `name`, created if need be. Runs starting together (a sweep's
    candidates, concurrent retrains) may all find it missing: one creation wins, and the
    others, refused as RESOURCE_ALREADY_EXISTS, take the winner's."""
    from mlflow.exceptions import MlflowException

    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    try:
        return client.create_experiment(name)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
        return client.get_experiment_by_name(name).experiment_id


class TrackingUnavailable(ValueError):
    """The tracking server did not answer in time; the message is one line naming the URI.

    A `ValueError` like every other one-line error, so `tuneforge run` prints it without a
    traceback."""


# What a retry can fix: no connection, no answer in time, or answers MLflow itself would retry
# (429 and 5xx surface as `RetryError` once retries are off). A 4xx is a refusal: raised at once.
_TRANSIENT = (requests.ConnectionError, requests.Timeout, requests.exceptions.RetryError)


def is_unreachable(exc: BaseException) -> bool:
    """Whether `exc` (or what it wraps) says the tracking server did not answer: worth a retry.

    MLflow wraps request errors in `MlflowException`, keeping the original as the cause or
    context, so the whole chain is searched."""
    return any(isinstance(e, (*_TRANSIENT, ConnectionError, TimeoutError)) for e in _chain(exc))


def short_reason(exc: BaseException) -> str:
    """`[Errno 111] Connection refused` rather than three lines of urllib3 repr."""
    text = str(exc)
    if found := re.search(r"\[Errno -?\d+\] [^'\")\]]+", text):
        return found.group(0).strip()
    if any(isinstance(e, requests.Timeout) for e in _chain(exc)):
        return "no answer in time"
    return first_line(exc, limit=200)


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """`exc` and what it wraps, as a traceback would show them."""
    seen: BaseException | None = exc
    while seen is not None:
        yield seen
        hidden = seen.__suppress_context__  # `raise ... from None`
        seen = seen.__cause__ if seen.__cause__ is not None or hidden else seen.__context__


# MLflow's REST endpoint for a batch (public API, stable since 1.0); at most 1000 metrics a call.
_LOG_BATCH_ENDPOINT = "/api/2.0/mlflow/runs/log-batch"
_MAX_BATCH = 1000


def flush_deadline_s() -> float:
    """How long the final flush keeps retrying: `TUNEFORGE_METRICS_FLUSH_DEADLINE_S`, else
    300 s (about as long as MLflow's own client retries one request)."""
    return float(os.environ.get("TUNEFORGE_METRICS_FLUSH_DEADLINE_S", "300"))


class MetricLogger:
    """Buffers metrics and sends them in batches (one HTTP call per flush, not per value).

    Training calls `log` every step, so a tracking server that goes away must not stall it.
    MLflow's own client retries each request for minutes (MLFLOW_HTTP_REQUEST_MAX_RETRIES=7
    with exponential backoff, a 120 s timeout); during training the logger instead sends each
    batch once, with MLflow retries off and a short timeout, keeps what failed in the buffer and
    waits a growing interval (1 s, or twice what the failed try took, doubling up to 30 s)
    before the next try; `log` only appends in between. `flush` (end of a task) retries with
    the same backoff until `flush_deadline` seconds have passed, then raises
    `TrackingUnavailable`. Nothing is dropped before then.

    Trade-offs: the buffer grows without bound during an outage (about 200 bytes a metric, so
    a long one on a long run costs memory, never data). A batch that timed out may have been
    stored and is sent again: MLflow's SQL store skips metrics it already has.
    """

    # (connect, read) seconds for one send while training: a healthy server answers a batch in
    # well under a second; a hung one costs the training loop at most this per backoff step.
    STEP_TIMEOUT_S = (2.0, 5.0)
    FLUSH_TIMEOUT_S = 30.0
    MIN_BACKOFF_S, MAX_BACKOFF_S = 1.0, 30.0

    def __init__(
        self,
        tracking_uri: str,
        run_id: str,
        flush_every: int = 200,
        flush_deadline: float | None = None,
    ) -> None:
        self.client = MlflowClient(tracking_uri)
        self.tracking_uri = tracking_uri
        self.run_id = run_id
        self.flush_every = flush_every
        self.flush_deadline = flush_deadline_s() if flush_deadline is None else flush_deadline
        self._buffer: list[Metric] = []
        self._backoff = 0.0
        self._retry_at = 0.0  # time.monotonic() before which `log` does not try to send
        self._down_since: float | None = None
        self._last_error = ""

    @property
    def pending(self) -> int:
        """Metrics buffered and not yet stored by MLflow."""
        return len(self._buffer)

    def log(self, values: dict[str, float], step: int) -> None:
        now = int(time.time() * 1000)
        self._buffer += [Metric(k, float(v), now, step) for k, v in values.items()]
        if len(self._buffer) >= self.flush_every and time.monotonic() >= self._retry_at:
            self._try_send(self.STEP_TIMEOUT_S)

    def flush(self) -> None:
        """Sends everything buffered, retrying with backoff for up to `flush_deadline` seconds.

        Raises:
            TrackingUnavailable: the server did not take the metrics in time (they stay
                buffered, so a later `flush` can still send them).
        """
        deadline = time.monotonic() + self.flush_deadline
        self._backoff = 0.0  # probe soon: the outage may have ended while training ran on
        remaining = self.flush_deadline
        while not self._try_send(min(self.FLUSH_TIMEOUT_S, max(remaining, 1.0))):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TrackingUnavailable(
                    f"tracking.tracking_uri: cannot reach {self.tracking_uri} to log "
                    f"{len(self._buffer)} buffered metrics of run {self.run_id} within "
                    f"{self.flush_deadline:g} s ({self._last_error})"
                )
            time.sleep(min(self._backoff, remaining))

    def _try_send(self, timeout: float | tuple[float, float]) -> bool:
        """Sends the buffer; False (and the next try scheduled) when the server is unreachable."""
        started = time.monotonic()
        try:
            while self._buffer:
                self._send(self._buffer[:_MAX_BATCH], timeout)
                del self._buffer[:_MAX_BATCH]  # only once stored
        except Exception as exc:
            if not is_unreachable(exc):
                raise
            # At least twice what the failed try cost: a hung server (every try a timeout)
            # then takes at most a third of the time between tries, less as the wait grows.
            spent = time.monotonic() - started
            self._backoff = min(
                max(2 * self._backoff, 2 * spent, self.MIN_BACKOFF_S), self.MAX_BACKOFF_S
            )
            self._retry_at = time.monotonic() + self._backoff
            self._last_error = short_reason(exc)
            if self._down_since is None:
                self._down_since = time.monotonic()
                _log.warning(
                    "cannot reach %s (%s); buffering metrics of run %s and retrying",
                    self.tracking_uri,
                    self._last_error,
                    self.run_id,
                )
            return False
        if self._down_since is not None:
            _log.warning(
                "reached %s again after %.0f s; buffered metrics sent",
                self.tracking_uri,
                time.monotonic() - self._down_since,
            )
        self._down_since, self._backoff, self._retry_at = None, 0.0, 0.0
        return True

    def _send(self, batch: list[Metric], timeout: float | tuple[float, float]) -> None:
        store = self.client._tracking_client.store  # no public accessor for the store
        if not isinstance(store, RestStore):  # a local store (./mlflow.db): nothing to time out
            self.client.log_batch(self.run_id, metrics=batch)
            return
        # MLflow's own request function (auth headers, TLS settings), with its retries off.
        body = message_to_json(LogBatch(run_id=self.run_id, metrics=[m.to_proto() for m in batch]))
        response = http_request(
            store.get_host_creds(),
            _LOG_BATCH_ENDPOINT,
            "POST",
            max_retries=0,
            timeout=timeout,
            json=json.loads(body),
        )
        verify_rest_response(response, _LOG_BATCH_ENDPOINT)


@contextmanager
def run_status(tracking_uri: str, run_id: str) -> Iterator[None]:
    """Ends the MLflow run as FINISHED, or FAILED when the block raises."""
    client = MlflowClient(tracking_uri)
    try:
        yield
    except BaseException:
        client.set_terminated(run_id, status="FAILED")
        raise
    client.set_terminated(run_id, status="FINISHED")


def refusal(exc: BaseException, server: str, doing: str | None = None) -> str | None:
    """One line for a tracking server that refused the request (HTTP 401 or 403: the server,
    the status and who asked, never the password) or failed (5xx); None for other errors."""
    from mlflow.exceptions import MlflowException, RestException

    if not isinstance(exc, MlflowException):
        return None
    # A plain-text answer: "... failed with error code 401 != 200. Response body: ...";
    # a JSON one: a RestException carrying the server's error code.
    # Retried answers (429, 5xx) end as "... (too many 503 error responses)".
    found = re.search(r"error code (\d{3}) != 200|too many (5\d\d) error responses", exc.message)
    if found:
        status = int(found.group(1) or found.group(2))
    elif isinstance(exc, RestException) or exc.error_code in _REFUSALS:
        status = exc.get_http_status_code()
    else:
        return None
    user = os.environ.get("MLFLOW_TRACKING_USERNAME")
    if status == 401:
        who = f"the password of {user}" if user else "a request without credentials"
        hint = "" if user else " (set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD)"
        return f"{server}: HTTP 401 Unauthorized: it refused {who}{hint}"
    if status == 403:
        endpoint = re.search(r"endpoint (\S+)", exc.message)
        what = doing or (endpoint.group(1) if endpoint else "this request")
        return f"{server}: HTTP 403 Forbidden: {user or 'this user'} may not {what}"
    if status >= 500:
        reason = exc.message.splitlines()[0][:160] if not found else ""
        return (
            f"{server}: HTTP {status}: the server is up but failing (is its database down? "
            f"its log says){f': {reason}' if reason else ''}"
        )
    return None


_REFUSALS = {"UNAUTHENTICATED", "PERMISSION_DENIED", "CUSTOMER_UNAUTHORIZED"}
