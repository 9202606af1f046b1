"""The Prefect server a `tuneforge` command starts for itself when PREFECT_API_URL is unset.

    with prefect_api() as api_url:   # PREFECT_API_URL, or a local server of this command's
        retrain(config)

Why not Prefect's own temporary server (what a flow starts without PREFECT_API_URL): it keeps
concurrency-slot leases in its memory and does not run the service that expires them. A run
killed while holding its model's retrain slot took the lease to its grave with that server, and
the slot's count stayed taken in the database for every later server: the model was locked
for good. This is the same Prefect server application, started as `prefect server start`
starts it, on the same database (PREFECT_HOME), with three settings of Prefect's own:

- leases in Prefect's file-based lease storage under PREFECT_HOME, so a lease outlives the
  server that granted it and the next command's server sees it;
- the repossessor service, which revokes a lease its holder stopped renewing (checked every
  5 s here instead of 15 s), freeing a killed run's slot about a minute after its last renewal;
- no scheduler, late-runs, foreman, pause or cancellation services: they would act on
  deployments and runs in the same database that are not this command's.

Start-up takes about as long as Prefect's temporary server (measured in the issue notes).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

LEASE_STORAGE = "prefect.server.concurrency.lease_storage.filesystem"
REPOSSESSOR_LOOP_S = 5

# Settings of the server process, on top of the caller's environment.
SERVER_SETTINGS = {
    "PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE": LEASE_STORAGE,
    "PREFECT_SERVER_SERVICES_REPOSSESSOR_ENABLED": "true",
    "PREFECT_SERVER_SERVICES_REPOSSESSOR_LOOP_SECONDS": str(REPOSSESSOR_LOOP_S),
    "PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED": "false",
    "PREFECT_SERVER_SERVICES_LATE_RUNS_ENABLED": "false",
    "PREFECT_SERVER_SERVICES_FOREMAN_ENABLED": "false",
    "PREFECT_SERVER_SERVICES_PAUSE_EXPIRATIONS_ENABLED": "false",
    "PREFECT_SERVER_SERVICES_CANCELLATION_CLEANUP_ENABLED": "false",
    "PREFECT_UI_ENABLED": "false",
}


class PrefectServerError(RuntimeError):
    """The local Prefect server did not start (one line, with the tail of its log)."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    """Linux: the server gets SIGTERM when the command that started it dies, even by SIGKILL
    of that process alone (a killed process group takes it down anyway)."""
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL(None).prctl(pr_set_pdeathsig, signal.SIGTERM)


def _healthy(api_url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{api_url}/health", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def start_server(log_path: Path, timeout_s: float) -> tuple[subprocess.Popen, str]:
    """Starts the server on a free loopback port; returns the process and its API URL."""
    from prefect.settings import get_current_settings

    port = _free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    env = {
        **os.environ,
        # The caller's Prefect settings (PREFECT_HOME, database URL, profile values) first,
        # then ours: the server must use the same database the caller's runs would.
        **get_current_settings().to_environment_variables(exclude_unset=True),
        **SERVER_SETTINGS,
    }
    env.pop("PREFECT_API_URL", None)
    # Prefect's server app under uvicorn, as its temporary server runs it, minus the flag
    # (PREFECT__SERVER_EPHEMERAL) that makes it temporary.
    app = ["--factory", "prefect.server.api.server:create_app", "--lifespan", "on"]
    address = ["--host", "127.0.0.1", "--port", str(port), "--log-level", "error"]
    command = [sys.executable, "-m", "uvicorn", *app, *address]
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            command,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        )
    deadline = time.monotonic() + timeout_s
    while not _healthy(api_url):
        if process.poll() is not None or time.monotonic() > deadline:
            stop_server(process)
            tail = " | ".join(log_path.read_text(errors="replace").strip().splitlines()[-3:])
            raise PrefectServerError(
                f"the local Prefect server did not start within {timeout_s:.0f} s "
                f"(log {log_path}: {tail or 'empty'}); set PREFECT_API_URL to use another"
            )
        time.sleep(0.2)
    return process, api_url


def stop_server(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextmanager
def prefect_api() -> Iterator[str]:
    """Yields the Prefect API URL every flow and client in the block uses: PREFECT_API_URL
    when set, else a local server started for the block and stopped after it."""
    from prefect.settings import (
        PREFECT_API_URL,
        PREFECT_HOME,
        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS,
        PREFECT_UI_URL,
        temporary_settings,
    )

    configured = PREFECT_API_URL.value()
    if configured:
        yield configured
        return
    log_path = Path(PREFECT_HOME.value()) / "tuneforge-server.log"
    timeout_s = PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value()
    process, api_url = start_server(log_path, timeout_s)
    try:
        # No UI URL: this server has no UI, and it stops with the command.
        with temporary_settings(updates={PREFECT_API_URL: api_url, PREFECT_UI_URL: ""}):
            try:
                yield api_url
            finally:
                _drain_to(api_url)
    finally:
        stop_server(process)


def _drain_to(api_url: str) -> None:
    """Sends the logs and events still queued for the server before it stops (they would
    otherwise be retried against a closed port for a minute, then lost)."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for worker in (APILogWorker, EventsWorker):
        worker.drain_all(timeout=10)


def http_error_line(exc: Exception) -> str:
    """One line for a failed request to the Prefect API: the server and the status (a 401
    names the setting to fix, never its value), or why it could not be reached."""
    import httpx

    if isinstance(exc, httpx.HTTPStatusError):
        url, status = exc.request.url, exc.response.status_code
        server = f"{url.scheme}://{url.netloc.decode()}"
        if status == 401:
            from prefect.settings import PREFECT_API_AUTH_STRING

            given = os.environ.get("PREFECT_API_AUTH_STRING") or PREFECT_API_AUTH_STRING.value()
            fix = "it was refused" if given else "it is not set"
            return f"{server}: HTTP 401 Unauthorized: check PREFECT_API_AUTH_STRING ({fix})"
        return f"{server}: HTTP {status} {exc.response.reason_phrase} for {url.path}"
    if isinstance(exc, httpx.RequestError):
        return f"{exc.request.url.scheme}://{exc.request.url.netloc.decode()}: {exc}".splitlines()[
            0
        ]
    return str(exc).splitlines()[0]
