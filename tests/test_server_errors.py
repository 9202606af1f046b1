"""One line for a server that refused or failed, built from the errors the clients raise."""

from __future__ import annotations

import httpx
import pytest
from mlflow.exceptions import MlflowException, RestException

from tuneforge.prefect_server import http_error_line
from tuneforge.tracking import refusal

SERVER = "http://mlflow.example:5000"


def _plain(status: int) -> MlflowException:
    """What MLflow's client raises for a non-JSON answer (basic auth's 401 is one)."""
    return MlflowException(
        f"API request to endpoint /api/2.0/mlflow/registered-models/alias failed with error "
        f"code {status} != 200. Response body: 'You are not authenticated.'"
    )


def test_tracking_refusals_name_the_server_status_and_user(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "ana")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "s3cret-password")
    assert refusal(_plain(401), SERVER) == (
        f"{SERVER}: HTTP 401 Unauthorized: it refused the password of ana"
    )
    forbidden = RestException({"error_code": "PERMISSION_DENIED", "message": "Permission denied"})
    assert refusal(forbidden, SERVER, "move the champion alias of m") == (
        f"{SERVER}: HTTP 403 Forbidden: ana may not move the champion alias of m"
    )
    failing = RestException({"error_code": "INTERNAL_ERROR", "message": "connection refused"})
    assert refusal(failing, SERVER).startswith(f"{SERVER}: HTTP 500: the server is up but failing")
    retried = MlflowException(
        f"API request to {SERVER}/api/2.0/mlflow/x failed with exception HTTPConnectionPool: "
        "Max retries exceeded (Caused by ResponseError('too many 503 error responses'))"
    )
    assert refusal(retried, SERVER) == (
        f"{SERVER}: HTTP 503: the server is up but failing (is its database down? its log says)"
    )
    for line in (refusal(_plain(401), SERVER), refusal(forbidden, SERVER)):
        assert "s3cret" not in line


def test_other_errors_keep_their_own_message(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
    missing = RestException({"error_code": "RESOURCE_DOES_NOT_EXIST", "message": "no model"})
    assert refusal(missing, SERVER) is None
    assert refusal(MlflowException("a local error"), SERVER) is None  # INTERNAL_ERROR, not HTTP
    assert refusal(ValueError("x"), SERVER) is None
    assert "without credentials" in refusal(_plain(401), SERVER)


@pytest.mark.parametrize(
    ("status", "expected"),
    [(401, "check PREFECT_API_AUTH_STRING"), (404, "404 Not Found for /api/flows/x")],
)
def test_prefect_errors_are_one_line(status, expected):
    request = httpx.Request("GET", "http://prefect.example:4200/api/flows/x")
    error = httpx.HTTPStatusError(
        "x", request=request, response=httpx.Response(status, request=request)
    )
    line = http_error_line(error)
    assert line.startswith("http://prefect.example:4200: HTTP ") and expected in line
    assert "\n" not in line
