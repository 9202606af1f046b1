"""One `retrain` per registered model name at a time, through a Prefect global concurrency
limit (`retrain-<model name>`, limit 1) that works across processes, workers and machines.

A second run of the same model waits for the slot, or gives up after
`registry.wait_for_slot_s` seconds with an error saying which model is busy. A holder that is
killed frees the slot when its lease runs out (Prefect's lease, 300 s by default).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress

from prefect import get_client
from prefect.concurrency.sync import concurrency
from prefect.exceptions import ObjectAlreadyExists
from prefect.logging import get_logger

logger = get_logger("tuneforge")


class SlotBusyError(ValueError):
    """Another retrain of the same model holds the slot."""


def slot_name(model_name: str) -> str:
    return f"retrain-{model_name}"


def _ensure_limit(name: str) -> None:
    """Creates the limit-1 slot if missing (strict=True in `concurrency` then fails on a missing
    limit instead of silently not limiting)."""
    # Prefect's upsert reads, then creates: two first runs of a model started together can
    # both read "missing" and both create; the loser's create is refused (409). The limit then
    # exists, made by the other run with the same limit of 1, so the loser carries on.
    with get_client(sync_client=True) as client, suppress(ObjectAlreadyExists):
        client.upsert_global_concurrency_limit_by_name(name, 1)


@contextmanager
def one_retrain_at_a_time(model_name: str, wait_s: float | None) -> Iterator[None]:
    """Holds the model's retrain slot for the duration of the block."""
    name = slot_name(model_name)
    _ensure_limit(name)
    started = time.monotonic()
    try:
        with concurrency(name, occupy=1, strict=True, timeout_seconds=wait_s):
            waited = time.monotonic() - started
            if waited > 1:
                logger.info("waited %.0f s for the retrain slot of %s", waited, model_name)
            yield
    except TimeoutError:
        raise SlotBusyError(
            f"registry.model_name {model_name!r}: another retrain holds the slot {name!r}; "
            f"gave up after registry.wait_for_slot_s={wait_s}"
        ) from None
