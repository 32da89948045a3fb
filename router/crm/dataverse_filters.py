"""The owners' tracking filters through the Dataverse Web API, batched and cached.

Use :class:`TrackingFilters` from :meth:`router.crm.dataverse.DataverseAdapter.screen`. It reads
each receiving owner's ``incomingemailfilteringmethod`` (users: ``usersettings``; queues: the
queue; :class:`~router.crm.dataverse_payloads.Shapes` names the tables) once per
:data:`FILTER_TTL` seconds, all owners missing from the cache in one ``$batch``, and asks
CheckIncomingEmail only about messages whose owner does not take every message - those too in
``$batch`` requests of up to :data:`CHECK_BATCH` GETs. When every owner takes all messages a
delivery chunk costs no request at all (after the first read of the owners).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from router.crm.base import ACCEPTED, DeliveryTarget, Verdict
from router.crm.dataverse_batch import Part, PartResult
from router.crm.dataverse_payloads import Shapes, check_incoming_path, filtering_method_path
from router.crm.tracking import ALL, verdict
from router.models import Activity

log = logging.getLogger(__name__)

#: Seconds an owner's filtering method is trusted before it is read again (the original
#: router refreshed its users every ConfigUpdatePeriod, 5 minutes by default).
FILTER_TTL = 300.0
#: CheckIncomingEmail GETs per ``$batch`` request (Dataverse allows 1,000 parts).
CHECK_BATCH = 100
#: Owner reads per ``$batch`` request.
READ_BATCH = 500

Batch = Callable[[list[Part], str], list[PartResult]]
PartError = Callable[[PartResult, str], Exception]
OwnerKey = tuple[str, str]  # ("user" | "queue", id)


def owner_key(target: DeliveryTarget) -> OwnerKey | None:
    """The owner whose filter applies to ``target``: its user, else its queue (None: neither)."""
    if target.user_id:
        return ("user", target.user_id)
    if target.queue_id:
        return ("queue", target.queue_id)
    return None


class TrackingFilters:
    """The filtering methods of the owners seen so far, and the screening of activities."""

    def __init__(
        self, batch: Batch, part_error: PartError, shapes: Shapes, ttl: float = FILTER_TTL
    ) -> None:
        self._batch, self._part_error, self._shapes, self._ttl = batch, part_error, shapes, ttl
        self._methods: dict[OwnerKey, tuple[int, float]] = {}
        self._lock = threading.Lock()

    def screen(self, items: Sequence[tuple[Activity, DeliveryTarget]]) -> list[Verdict]:
        """One verdict per item; CheckIncomingEmail only for owners who filter."""
        keys = [owner_key(t) for _, t in items]
        methods = self.methods(keys)
        asked = [i for i, k in enumerate(keys) if k is not None and methods.get(k, ALL) != ALL]
        verdicts = [ACCEPTED] * len(items)
        for start in range(0, len(asked), CHECK_BATCH):
            chunk = asked[start : start + CHECK_BATCH]
            parts = [Part("GET", self._check_path(items[i][0])) for i in chunk]
            answers = self._batch(parts, f"$batch of {len(parts)} CheckIncomingEmail")
            for index, part in zip(chunk, answers, strict=True):
                verdicts[index] = self._verdict(part)
        return verdicts

    def _check_path(self, activity: Activity) -> str:
        return check_incoming_path(activity, self._shapes, correlate=True)

    def _verdict(self, part: PartResult) -> Verdict:
        if part.status >= 300:
            raise self._part_error(part, "CheckIncomingEmail")
        code = int(part.body.get("ReasonCode", -1))
        if code == 0:
            return ACCEPTED  # a duplicate is wanted: delivery finds the existing activity
        return verdict(bool(part.body.get("ShouldDeliver")), code)

    def methods(self, keys: Sequence[OwnerKey | None]) -> dict[OwnerKey, int]:
        """The filtering method of each owner in ``keys``, read from the CRM when not cached."""
        now = time.monotonic()
        wanted = {k for k in keys if k is not None}
        with self._lock:
            known = {k: m for k, (m, at) in self._methods.items() if k in wanted and at > now}
        missing = sorted(wanted - set(known))
        for start in range(0, len(missing), READ_BATCH):
            known.update(self._read(missing[start : start + READ_BATCH], now))
        return known

    def _read(self, keys: list[OwnerKey], now: float) -> dict[OwnerKey, int]:
        parts = [Part("GET", filtering_method_path(kind, i, self._shapes)) for kind, i in keys]
        answers = self._batch(parts, f"$batch of {len(parts)} tracking filter reads")
        found = {k: self._method(k, part) for k, part in zip(keys, answers, strict=True)}
        with self._lock:
            self._methods.update({k: (m, now + self._ttl) for k, m in found.items()})
        return found

    def _method(self, key: OwnerKey, part: PartResult) -> int:
        if part.status == 404:  # no such record (or no settings): nothing to filter by
            log.info("no tracking filter found for %s %s: taking all its messages", *key)
            return ALL
        if part.status >= 300:
            raise self._part_error(part, "read tracking filter")
        return _int(part.body.get("incomingemailfilteringmethod"))


def _int(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return ALL
