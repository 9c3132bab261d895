"""Housekeeping: the real connection count and the sweep of stale state.

Run once a minute (the ``HousekeepingFunction`` Lambda on AWS; ``rtstream dev``
and the fan-out worker can run the same :meth:`Housekeeping.run`):

- **count**: live connections per transport, read from the registry, so
  ``realtime_streaming.active_connections`` is a real figure rather than a sum
  of increments that a lost ``$disconnect`` would skew forever;
- **sweep the registry**: connection records past their TTL (their
  ``$disconnect`` never came) with their subscriptions, and subscription records
  past their TTL whose connection record is already gone. DynamoDB's own TTL
  deletes lazily (up to days later) and emulators may not delete at all, so
  without this the registry would grow without bound;
- **repair the admission counters**: a counter whose connections have all
  expired is recounted from the records still there (and deleted at 0), so a
  connect that died between its writes cannot hold a slot for ever;
- **sweep presence**: members whose heartbeats stopped are dropped and their
  users' ``offline`` events published on the ``presence`` topic.

Every part reads only what expired since the last run (DynamoDB: the
``byExpiry`` index) plus one small item per active entity for the count, so its
cost does not grow with the table.

Pure: works through the ports only. Each sweep is bounded (``batch`` records,
``max_batches`` rounds, and ``budget_seconds`` of wall time: removing one stale
connection is ~5 registry calls) so one run always fits in its Lambda timeout;
what is left is taken by the next run.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from . import metrics as names
from .errors import RealtimeError
from .metrics import TRANSPORTS
from .ports import Clock, ConnectionRegistry, EventLog, PresenceStore, SystemClock
from .topics import PRESENCE

log = logging.getLogger("rtstream.hygiene")

SWEEP_BATCH = 200
SWEEP_MAX_BATCHES = 10
# Time one run may spend sweeping (the Lambda's Timeout is 60 s; the count follows).
SWEEP_BUDGET_SECONDS = 40.0
# The Lambda's schedule; `rtstream dev` and the worker use the same period.
INTERVAL_SECONDS = 60.0


@dataclass(slots=True)
class HousekeepingReport:
    active: dict[str, int] = field(default_factory=dict)  # live connections by transport
    connections_swept: int = 0
    subscriptions_swept: int = 0
    counters_checked: int = 0
    counters_corrected: int = 0  # admission counters that had drifted
    presence_expired: int = 0  # users announced offline by the presence sweep
    errors: list[str] = field(default_factory=list)  # coded errors of the parts that failed
    incomplete: bool = False  # the sweep stopped at its bounds; the next run goes on

    @property
    def active_total(self) -> int:
        return sum(self.active.values())


class Housekeeping:
    def __init__(
        self,
        *,
        registry: ConnectionRegistry,
        presence: PresenceStore | None = None,
        event_log: EventLog | None = None,
        clock: Clock = SystemClock(),
        batch: int = SWEEP_BATCH,
        max_batches: int = SWEEP_MAX_BATCHES,
        budget_seconds: float = SWEEP_BUDGET_SECONDS,
    ):
        self.registry = registry
        self.presence = presence
        self.event_log = event_log
        self.clock = clock
        self.batch = batch
        self.max_batches = max_batches
        self.budget_seconds = budget_seconds
        self._deadline = 0.0

    def run(self) -> HousekeepingReport:
        """Sweep, then count (so the count never includes what was just swept).
        A failing part is logged and reported; the others still run."""
        report = HousekeepingReport()
        self._deadline = time.monotonic() + self.budget_seconds
        for part in (self._sweep_connections, self._sweep_subscriptions, self._repair_counters, self._sweep_presence, self._count):
            try:
                part(report)
            except RealtimeError as exc:
                log.warning("housekeeping step %s failed: %s", part.__name__.lstrip("_"), exc.code)
                report.errors.append(exc.code)
        return report

    def count_active(self) -> dict[str, int]:
        counts = self.registry.count_connections(self._now_s())
        # every known transport, 0 included: a dashboard line must not vanish at 0
        return {t: counts.get(t, 0) for t in (*TRANSPORTS, *sorted(set(counts) - set(TRANSPORTS)))}

    # ---- parts -------------------------------------------------------------------

    def _now_s(self) -> int:
        return self.clock.now_ms() // 1000

    def _count(self, report: HousekeepingReport) -> None:
        report.active = self.count_active()

    def _out_of_time(self, report: HousekeepingReport) -> bool:
        if time.monotonic() < self._deadline:
            return False
        report.incomplete = True
        return True

    def _sweep_connections(self, report: HousekeepingReport) -> None:
        # No subscription-change notice here: a stale connection's subscriptions
        # expired with it, so no registry read returns them any more.
        for round_ in range(self.max_batches):
            stale = self.registry.stale_connections(self._now_s(), self.batch)
            for connection_id in stale:
                if self._out_of_time(report):
                    break
                self.registry.remove_connection(connection_id)  # and every subscription of it
                report.connections_swept += 1
            if len(stale) < self.batch or report.incomplete:
                return
            report.incomplete = round_ == self.max_batches - 1

    def _sweep_subscriptions(self, report: HousekeepingReport) -> None:
        for round_ in range(self.max_batches):
            stale = self.registry.stale_subscriptions(self._now_s(), self.batch)
            changed: dict[str, set[str]] = {}
            for sub in stale:
                if self._out_of_time(report):
                    break
                self.registry.remove_subscription(sub.connection_id, sub.entity_id, sub.topic)
                changed.setdefault(sub.entity_id, set()).add(sub.topic)
                report.subscriptions_swept += 1
            self._notify(changed)
            if len(stale) < self.batch or report.incomplete:
                return
            report.incomplete = round_ == self.max_batches - 1

    def _repair_counters(self, report: HousekeepingReport) -> None:
        # After the connection sweep (the counters it released are right already).
        # One bounded batch per run: a counter whose records are still being
        # swept stays due, and would only be read again within this run.
        if self._out_of_time(report):
            return
        checked, corrected = self.registry.repair_counters(self._now_s(), self.batch)
        report.counters_checked += checked
        report.counters_corrected += corrected

    def _sweep_presence(self, report: HousekeepingReport) -> None:
        if self.presence is None:
            return
        for entity_id, changes in self.presence.sweep().items():
            report.presence_expired += sum(1 for c in changes if c.get("state") == "offline")
            self._publish_presence(entity_id, changes)

    # ---- notifications (best effort: the sweep itself already stands) ---------------

    def _notify(self, changed: dict[str, set[str]]) -> None:
        """Subscriber caches of the fan-out drop the swept subscriptions."""
        if self.event_log is None:
            return
        for entity_id, topics in changed.items():
            try:
                self.event_log.notify_changed(entity_id, sorted(topics), "housekeeping")
            except RealtimeError as exc:
                log.warning("subscription change of entity %s not queued: %s", entity_id, exc.code)

    def _publish_presence(self, entity_id: str, changes: list[dict[str, Any]]) -> None:
        if self.event_log is None:
            return
        for data in changes:
            try:
                self.event_log.append(entity_id, PRESENCE, data, "rtstream", record_history=False)
            except RealtimeError as exc:
                log.warning("presence event for entity %s not published: %s", entity_id, exc.code)


async def run_periodically(
    housekeeping: Housekeeping, *, interval: float = INTERVAL_SECONDS, on_report: Callable[[HousekeepingReport], None] | None = None
) -> None:
    """Run :meth:`Housekeeping.run` every ``interval`` seconds (in a thread: the
    ports are synchronous) until cancelled; for `rtstream dev` and long-running
    containers. A failed run is logged and the next one tries again."""
    while True:
        try:
            report = await asyncio.to_thread(housekeeping.run)
            if on_report is not None:
                on_report(report)
        except Exception:  # noqa: BLE001 - one bad run must not end the loop
            log.exception("housekeeping run failed")
        await asyncio.sleep(interval)
