"""One `retrain` per registered model name at a time, through a Prefect global concurrency
limit (`retrain-<model name>`, limit 1) that works across processes, workers and machines.

The slot is taken with a Prefect lease held by the run's flow run and renewed every
`RENEW_S` seconds; everything that frees a dead holder's slot is Prefect's own:

- **A holder that dies** (SIGKILL, a lost machine) stops renewing; its lease lapses `LEASE_S`
  (60 s, Prefect's shortest) after the last renewal and the server's repossessor service
  revokes it. A plain `tuneforge run` gets a server that keeps leases on disk and runs the
  repossessor (tuneforge/prefect_server.py); a `prefect server` does both when it is started
  with the file-based lease storage (README, "When things go wrong").
- **A holder whose flow run ended** (Crashed, Failed, Cancelled, Completed: marked by a worker,
  a person, or Prefect) but whose lease is still counted: a waiting run releases that lease
  at once and logs which run it was.
- **A server that forgot its leases** (restarted with the default in-memory lease storage):
  the live holder finds its lease gone at the next renewal and takes the slot again under a
  new lease; a count that no flow run holds, seen twice `POLL_S` apart, is released by a
  waiting run.

Who holds the slot is recorded on the holder's flow run as two tags, `tuneforge.slot:<slot>`
and `tuneforge.lease:<lease id>` (Prefect's API does not list a global limit's lease holders),
so a waiting run can say who holds it, and `tuneforge slots list|release` can show and free it.
A waiting run says so at once and every `REPORT_S` seconds, and gives up after
`registry.wait_for_slot_s` naming the holder and the command that frees it.
"""

from __future__ import annotations

import contextvars
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import httpx
from prefect import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags
from prefect.client.schemas.objects import ConcurrencyLeaseHolder
from prefect.client.schemas.sorting import FlowRunSort
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound
from prefect.logging import get_logger

from tuneforge import lineage

logger = get_logger("tuneforge")

LEASE_S = 60.0  # Prefect's shortest lease: a dead holder's slot frees ~1 min after it stops
RENEW_S = 15.0  # four renewals a lease: a server restart of up to ~45 s loses nothing
POLL_S = 5.0  # how often a waiting run asks again
REPORT_S = 60.0  # how often a waiting run says it is still waiting

_LOCKED = 423  # what the server answers when the limit is full
_GONE = (404, 410)  # what it answers when renewing a lease it does not have


class SlotBusyError(ValueError):
    """Another retrain of the same model holds the slot (one line, naming the holder)."""


class SlotLostError(ValueError):
    """The slot was taken by another run while this one could not renew its lease."""


def slot_name(model_name: str) -> str:
    return f"{lineage.RETRAIN_SLOT}{model_name}"


@dataclass(frozen=True)
class Holder:
    """A flow run recorded as holding a slot, as Prefect sees it now."""

    flow_run_id: UUID
    name: str
    state: str  # Prefect's state name: Running, Crashed, ...
    final: bool  # the run has ended (its process may still hold the lease)
    start_time: datetime | None
    lease_id: UUID

    def describe(self) -> str:
        started = f", started {self.start_time:%Y-%m-%d %H:%M:%S %Z}" if self.start_time else ""
        return f"flow run {self.name!r} ({self.flow_run_id}, {self.state}{started})"


def _ensure_limit(client: Any, name: str) -> None:
    """Creates the limit-1 slot if missing."""
    # Prefect's upsert reads, then creates: two first runs of a model started together can
    # both read "missing" and both create; the loser's create is refused (409). The limit then
    # exists, made by the other run with the same limit of 1, so the loser carries on.
    with suppress(ObjectAlreadyExists):
        client.upsert_global_concurrency_limit_by_name(name, 1)


def _current_flow_run_id() -> UUID | None:
    from prefect.context import FlowRunContext

    context = FlowRunContext.get()
    return context.flow_run.id if context and context.flow_run else None


def holders(client: Any, slot: str) -> list[Holder]:
    """Flow runs recorded as holding `slot`, newest first."""
    runs = client.read_flow_runs(
        flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=[f"{lineage.SLOT_TAG}{slot}"])),
        sort=FlowRunSort.START_TIME_DESC,
        limit=50,
    )
    found = []
    for run in runs:
        lease = next(
            (
                t.removeprefix(lineage.LEASE_TAG)
                for t in run.tags
                if t.startswith(lineage.LEASE_TAG)
            ),
            "",
        )
        if not lease:
            continue  # held the slot once and released it
        state = run.state
        found.append(
            Holder(
                flow_run_id=run.id,
                name=run.name,
                state=state.name if state else "unknown",
                final=bool(state and state.is_final()),
                start_time=run.start_time,
                lease_id=UUID(lease),
            )
        )
    return found


def _retag(client: Any, flow_run_id: UUID, slot: str, lease_id: UUID | None) -> None:
    """Records (or, with `lease_id=None`, clears) the lease a flow run holds `slot` under."""
    run = client.read_flow_run(flow_run_id)
    tags = [t for t in run.tags if not t.startswith(lineage.LEASE_TAG)]
    if lease_id is not None:
        tags = [
            *dict.fromkeys([*tags, f"{lineage.SLOT_TAG}{slot}"]),
            f"{lineage.LEASE_TAG}{lease_id}",
        ]
    client.update_flow_run(flow_run_id, tags=tags)


def _try_acquire(client: Any, slot: str, me: UUID | None) -> UUID | None:
    """Takes the slot under a new lease at once, or returns None when it is taken."""
    holder = ConcurrencyLeaseHolder(type="flow_run", id=me) if me else None
    try:
        response = client.increment_concurrency_slots_with_lease(
            names=[slot], slots=1, mode="concurrency", lease_duration=LEASE_S, holder=holder
        )
    except httpx.HTTPStatusError as exc:
        if exc.response.status_code == _LOCKED:
            return None
        raise
    return UUID(response.json()["lease_id"])


def release_dead_holders(client: Any, slot: str, me: UUID | None = None) -> list[Holder]:
    """Releases the leases of recorded holders whose flow runs have ended; returns them.

    Releasing a lease that is already gone (expired, revoked) is a no-op in Prefect, so this
    never frees a slot twice."""
    released = []
    for holder in holders(client, slot):
        if holder.final and holder.flow_run_id != me:
            client.release_concurrency_slots_with_lease(holder.lease_id)
            _retag(client, holder.flow_run_id, slot, None)
            released.append(holder)
    return released


def _slot_count(client: Any, slot: str) -> tuple[int, int]:
    limit = client.read_global_concurrency_limit_by_name(slot)
    return limit.active_slots, limit.limit


class RetrainSlot:
    """The retrain slot of one model, taken by this process for one flow run."""

    def __init__(self, model_name: str) -> None:
        self.model_name = model_name
        self.slot = slot_name(model_name)
        self.me = _current_flow_run_id()
        self.lease_id: UUID | None = None
        self.lost_to: str | None = None  # set when another run took the slot meanwhile
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None

    # Taking the slot --------------------------------------------------------------------

    def acquire(self, wait_s: float | None) -> None:
        """Waits for the slot (freeing it from dead holders), or raises `SlotBusyError`."""
        started = time.monotonic()
        next_report = started
        unheld_seen = False  # a count no flow run holds, seen at the previous poll
        with get_client(sync_client=True) as client:
            _ensure_limit(client, self.slot)
            while True:
                lease = _try_acquire(client, self.slot, self.me)
                if lease is not None:
                    self._took(client, lease)
                    waited = time.monotonic() - started
                    if waited > 1:
                        logger.info(
                            "took the retrain slot of %s after waiting %.0f s",
                            self.model_name,
                            waited,
                        )
                    return
                live, unheld_seen, freed = self._free_stale(client, unheld_seen)
                if freed:
                    continue
                waited = time.monotonic() - started
                holder = f"held by {live[0].describe()}" if live else _UNRECORDED
                if wait_s is not None and waited >= wait_s:
                    raise SlotBusyError(
                        f"registry.model_name {self.model_name!r}: the retrain slot is {holder}; "
                        f"gave up after registry.wait_for_slot_s={wait_s:g}. If that run is "
                        f"dead, free the slot: tuneforge slots release {self.model_name}"
                        + (" --force" if live else "")
                    )
                if time.monotonic() >= next_report:
                    limit = f"{wait_s:g} s" if wait_s is not None else "no limit"
                    logger.info(
                        "waiting for the retrain slot of %s, %s; waited %.0f s of %s (a killed "
                        "holder's slot frees about %.0f s after its last lease renewal)",
                        self.model_name,
                        holder,
                        waited,
                        limit,
                        LEASE_S,
                    )
                    next_report += REPORT_S
                pause = POLL_S if wait_s is None else min(POLL_S, max(wait_s - waited, 0.05))
                time.sleep(pause)

    def _free_stale(self, client: Any, unheld_seen: bool) -> tuple[list[Holder], bool, bool]:
        """Frees the slot from holders that are gone. Returns the live recorded holders,
        whether a count no run holds was seen now, and whether anything was freed."""
        released = release_dead_holders(client, self.slot, self.me)
        for holder in released:
            logger.warning(
                "released the retrain slot of %s held by %s: the run has ended but its lease "
                "was still counted",
                self.model_name,
                holder.describe(),
            )
        if released:
            return [], False, True
        live = [h for h in holders(client, self.slot) if h.flow_run_id != self.me and not h.final]
        active, limit = _slot_count(client, self.slot)
        if live or active < limit:  # held, or freed since the last try (a lease lapsed)
            return live, False, False
        if not unheld_seen:
            # A holder records itself right after taking the slot: wait one poll before
            # calling a count that no run records an orphan.
            return live, True, False
        client.release_concurrency_slots(names=[self.slot], slots=active, occupancy_seconds=None)
        logger.warning(
            "released the retrain slot of %s: Prefect counted it as taken, but no flow run "
            "holds it (a lease lost when the Prefect server restarted, or a holder outside a "
            "flow run)",
            self.model_name,
        )
        return [], False, True

    def _took(self, client: Any, lease_id: UUID) -> None:
        """Records the new lease on this flow run; any other run still recorded as holding
        the slot lost it when its lease lapsed (it stopped renewing: killed, or cut off)."""
        self.lease_id = lease_id
        if self.me is None:
            return
        _retag(client, self.me, self.slot, lease_id)
        for stale in holders(client, self.slot):
            if stale.flow_run_id != self.me:
                _retag(client, stale.flow_run_id, self.slot, None)
                logger.warning(
                    "the retrain slot of %s was freed by the expiry of the lease of %s: it "
                    "stopped renewing it (killed, or cut off from the Prefect server)",
                    self.model_name,
                    stale.describe(),
                )

    # Holding it -------------------------------------------------------------------------

    def start_renewing(self) -> None:
        # The thread runs in a copy of this context: it sees the same Prefect settings
        # (the API URL of `prefect_api`) and run context.
        context = contextvars.copy_context()
        self._renewer = threading.Thread(
            target=context.run, args=(self._renew_loop,), name=self.slot, daemon=True
        )
        self._renewer.start()

    def _renew_loop(self) -> None:
        outage_logged = False
        with get_client(sync_client=True) as client:
            while not self._stop.wait(RENEW_S):
                try:
                    client.renew_concurrency_lease(self.lease_id, LEASE_S)
                    outage_logged = False
                except httpx.HTTPStatusError as exc:
                    if exc.response.status_code not in _GONE:
                        logger.warning("renewing the retrain slot's lease: %s", exc)
                        continue
                    if not self._take_back(client):
                        return
                except (httpx.TransportError, OSError) as exc:
                    if not outage_logged:  # a server restart: keep trying, quietly
                        logger.warning("cannot renew the retrain slot's lease yet: %s", exc)
                        outage_logged = True

    def _take_back(self, client: Any) -> bool:
        """The server no longer has our lease: take the slot again. Returns False if another
        run holds it now."""
        if not self._drop_lost_lease(client):
            return False
        lease = _try_acquire(client, self.slot, self.me)
        if lease is None:  # a waiting run polled between the release and this call
            self.lost_to = "another run"
            logger.error("lost the retrain slot of %s to another run", self.model_name)
            return False
        self._took(client, lease)
        logger.warning(
            "the Prefect server no longer had this run's lease on the retrain slot of %s "
            "(restarted, or unreachable for over %.0f s); took the slot again",
            self.model_name,
            LEASE_S,
        )
        return True

    def _drop_lost_lease(self, client: Any) -> bool:
        """Our lease is gone from the server. If the slot is still counted as taken and no
        other live run records holding it, the count is our own, left by a server that
        restarted and forgot the lease: release it. Returns False (and records the loss) if
        another run holds the slot now (our lease lapsed and was revoked meanwhile)."""
        live = [h for h in holders(client, self.slot) if h.flow_run_id != self.me and not h.final]
        if live:
            self.lost_to = live[0].describe()
            logger.error(
                "lost the retrain slot of %s to %s while this run could not renew its lease; "
                "this run will not register its model",
                self.model_name,
                self.lost_to,
            )
            return False
        active, _ = _slot_count(client, self.slot)
        if active:
            client.release_concurrency_slots(names=[self.slot], slots=1, occupancy_seconds=None)
        return True

    def _lease_gone(self, client: Any) -> bool:
        """Whether the server has forgotten our lease (a renewal tells, and costs nothing)."""
        try:
            client.renew_concurrency_lease(self.lease_id, LEASE_S)
        except httpx.HTTPStatusError as exc:
            if exc.response.status_code in _GONE:
                return True
            raise
        return False

    def check_held(self) -> None:
        """Raises `SlotLostError` if another run took the slot while this one held it."""
        if self.lost_to:
            raise SlotLostError(
                f"registry.model_name {self.model_name!r}: lost the retrain slot to "
                f"{self.lost_to} while this run could not renew its lease; not registering"
            )

    # Giving it back ---------------------------------------------------------------------

    def release(self) -> None:
        self._stop.set()
        if self._renewer is not None:
            self._renewer.join(timeout=5)
        if self.lease_id is None or self.lost_to:
            return
        try:
            with get_client(sync_client=True) as client:
                # Releasing a lease the server forgot is a silent no-op that would leave the
                # count taken: ask first (a run that ends before its next renewal).
                if self._lease_gone(client):
                    self._drop_lost_lease(client)
                else:
                    client.release_concurrency_slots_with_lease(self.lease_id)
                if self.me is not None:
                    _retag(client, self.me, self.slot, None)
        except (httpx.HTTPError, OSError) as exc:
            # Unreachable now: the lease lapses on its own within LEASE_S.
            logger.warning(
                "could not release the retrain slot of %s (%s); it frees when its lease "
                "lapses, within %.0f s",
                self.model_name,
                exc,
                LEASE_S,
            )


_UNRECORDED = "taken, and no flow run records holding it"


@contextmanager
def one_retrain_at_a_time(model_name: str, wait_s: float | None) -> Iterator[RetrainSlot]:
    """Holds the model's retrain slot for the duration of the block."""
    slot = RetrainSlot(model_name)
    slot.acquire(wait_s)
    slot.start_renewing()
    try:
        yield slot
    finally:
        slot.release()


@contextmanager
def training_slot(limit: str | None, what: str) -> Iterator[None]:
    """Holds one slot of the Prefect global concurrency limit `limit` (`train.concurrency_limit`)
    for the block, waiting for one while all are taken; does nothing without a limit. Prefect
    renews the lease while the block runs; a killed holder's slot frees when it lapses.

    Raises a one-line `ValueError` (not retried) when the limit does not exist."""
    if not limit:
        yield
        return
    from prefect.concurrency.sync import concurrency

    with get_client(sync_client=True) as client:
        try:
            slots = client.read_global_concurrency_limit_by_name(limit).limit
        except ObjectNotFound:
            raise ValueError(
                f"train.concurrency_limit: no Prefect concurrency limit {limit!r}; create it "
                f"(prefect gcl create {limit} --limit N, N trainings at once) or unset it"
            ) from None
    logger.info(
        "%s: taking one of the %d slots of %r (waits while all are taken)", what, slots, limit
    )
    started = time.monotonic()
    with concurrency(limit, occupy=1, strict=True, raise_on_lease_renewal_failure=False):
        logger.info("%s: took a slot of %r after %.0f s", what, limit, time.monotonic() - started)
        yield


# For `tuneforge slots` ----------------------------------------------------------------------


def list_slots(client: Any) -> list[dict[str, Any]]:
    """Every model's retrain slot: how many are taken, and the recorded holder."""
    limits = client.read_global_concurrency_limits(limit=200)
    rows = []
    for limit in sorted(limits, key=lambda lim: lim.name):
        if not limit.name.startswith(lineage.RETRAIN_SLOT):
            continue
        recorded = holders(client, limit.name)
        rows.append(
            {
                "model": limit.name.removeprefix(lineage.RETRAIN_SLOT),
                "slot": limit.name,
                "taken": limit.active_slots,
                "limit": limit.limit,
                "holders": [
                    {
                        "flow_run_id": str(h.flow_run_id),
                        "flow_run": h.name,
                        "state": h.state,
                        "started": h.start_time.isoformat() if h.start_time else None,
                        "lease_id": str(h.lease_id),
                    }
                    for h in recorded
                ],
            }
        )
    return rows


def release_slot(client: Any, model_name: str, force: bool) -> dict[str, Any]:
    """Frees a model's slot by hand. Refuses (`SlotBusyError`) while a recorded holder's flow
    run has not ended, unless `force` (the person knows it is dead)."""
    slot = slot_name(model_name)
    try:
        active, _ = _slot_count(client, slot)
    except ObjectNotFound:
        raise SlotBusyError(f"{model_name!r}: no retrain slot (it never ran)") from None
    recorded = holders(client, slot)
    live = [h for h in recorded if not h.final]
    if live and not force:
        raise SlotBusyError(
            f"{model_name!r}: the retrain slot is held by {live[0].describe()}; if that run "
            f"is dead, add --force"
        )
    for holder in recorded:
        client.release_concurrency_slots_with_lease(holder.lease_id)
        _retag(client, holder.flow_run_id, slot, None)
    left, _ = _slot_count(client, slot)
    if left:  # counted without a lease the server still has
        client.release_concurrency_slots(names=[slot], slots=left, occupancy_seconds=None)
    return {
        "model": model_name,
        "slot": slot,
        "was_taken": active,
        "released_holders": [h.describe() for h in recorded],
    }
