"""Delivery overlapping the fetch (router.pipeline) against the real servers.

A poll of more than one delivery chunk, on Dovecot, the Dataverse simulator and SQLite state:
the first chunk goes to the CRM from the pipeline's thread while the poll still fetches, and
every message is still one activity, post-processed once.
"""

from __future__ import annotations

import threading
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from router import pipeline
from router.context import open_context
from router.delivery import DELIVERY_CHUNK
from router.incoming import poll_instance
from router.models import LedgerState
from tests.integration.incoming_support import (
    PASSWORD_ENV,
    SECRET_ENV,
    crm_ids,
    mailbox_ids,
    make_box,
    message_id_of,
)
from tests.servers.dovecot import PASSWORD, Dovecot, message
from tests.servers.simulator import CLIENT_SECRET, SimulatorServer

pytestmark = [pytest.mark.dovecot]

COUNT = 2 * DELIVERY_CHUNK + 20


def test_a_poll_larger_than_a_chunk_delivers_beside_the_fetch_and_each_message_once(
    tmp_path: Path,
    dovecot: Dovecot,
    simulator: SimulatorServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given a mailbox holding more than two delivery chunks, read by one poll
    raws = [message(n) for n in range(COUNT)]
    box = make_box(tmp_path, dovecot, simulator, raws, after="delete", max_count=COUNT)
    monkeypatch.setenv(SECRET_ENV, CLIENT_SECRET)
    monkeypatch.setenv(PASSWORD_ENV, PASSWORD)
    runs: list[tuple[str, int]] = []
    deliver = pipeline.deliver_staged

    def recorded(*args: Any, **kwargs: Any) -> Any:
        report = deliver(*args, **kwargs)
        runs.append((threading.current_thread().name, report.delivered))
        return report

    monkeypatch.setattr(pipeline, "deliver_staged", recorded)
    ctx = open_context(box.config, box.state)
    try:
        # When it runs
        report = poll_instance(ctx, box.name)
        counts = ctx.store.count_entries(box.name)
    finally:
        ctx.close()
    # Then part of the mail went to the CRM from the pipeline's thread, the rest at the end
    assert runs[0][0].startswith("deliver-box") and runs[0][1] >= DELIVERY_CHUNK, runs
    assert runs[-1][0] == threading.current_thread().name, runs
    assert sum(delivered for _, delivered in runs) == report.delivered == COUNT
    # And every message is exactly one activity, and was deleted from the server after it
    assert Counter(crm_ids(simulator)) == Counter(message_id_of(raw) for raw in raws)
    assert counts == {LedgerState.DONE: COUNT}
    assert mailbox_ids(dovecot, box.user)["present"] == set()
