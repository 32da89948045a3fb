"""Recovering from the mail server's surprises, through the whole cycle (``email-router poll``).

* A folder recreated with a new UIDVALIDITY, holding the delivered messages again plus new ones:
  the next poll reads it from the start and creates activities for the new ones only (the
  router's Message-ID index answers for the others, without asking the CRM).
* A connection dropped in the middle of a FETCH: the poll exits 1 with a retryable error, and
  the next poll resumes without losing or duplicating anything.

Dovecot is real, the CRM is the Dataverse simulator, the state is SQLite, the poller a subprocess.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from router.models import LedgerState
from router.state.factory import open_store
from tests.integration.incoming_support import (
    Box,
    Run,
    crm_ids,
    deliver_calls,
    make_box,
    message_id_of,
    poll_until_drained,
    run_cli,
)
from tests.servers.dovecot import Dovecot, DroppingProxy, message
from tests.servers.simulator import SimulatorServer

pytestmark = [pytest.mark.dovecot, pytest.mark.timeout(120)]


def numbered(start: int, count: int, size: int = 0) -> list[bytes]:
    return [message(i, sender=f"s{i}@example.org", size=size) for i in range(start, start + count)]


def poll(box: Box) -> Run:
    return run_cli(["poll", box.name, "--config", str(box.config), "--state", box.state])


def cursor(box: Box) -> dict[str, int] | None:
    store = open_store(box.state)
    try:
        return store.get_cursor(box.name)
    finally:
        store.close()


def staged(box: Box) -> int:
    store = open_store(box.state)
    try:
        return len(store.list_entries(box.name, [LedgerState.STAGED]))
    finally:
        store.close()


def test_a_recreated_folder_yields_activities_for_the_new_messages_only(
    dovecot: Dovecot, simulator: SimulatorServer, tmp_path: Path
) -> None:
    first = numbered(0, 20)
    box = make_box(tmp_path, dovecot, simulator, first, after="seen")
    poll_until_drained(box)
    assert len(crm_ids(simulator)) == 20
    calls_before = deliver_calls(simulator)
    old_validity = dovecot.uidvalidity(box.user)

    dovecot.recreate_folder(box.user)
    new = numbered(20, 5)
    dovecot.append_many(box.user, [*first, *new])  # unread copies of the delivered 20 + 5 new
    run = poll(box)

    assert run.returncode == 0, run.stdout + run.stderr
    assert re.search(r"listed 25, staged 25, delivered 5, duplicates 20,", run.stdout), run.stdout
    delivered = crm_ids(simulator)
    assert len(delivered) == 25
    assert set(delivered) == {message_id_of(raw) for raw in [*first, *new]}
    assert deliver_calls(simulator) - calls_before == 5  # the 20 copies never reached the CRM
    assert (cursor(box) or {}).get("uidvalidity") not in (None, old_validity)
    with dovecot.imap(box.user) as client:  # AfterProcessing applied to the new copies
        client.select_folder("INBOX", readonly=True)
        assert len(client.search("SEEN")) == 25
    assert re.search(r"listed 0,", poll(box).stdout)


@pytest.fixture
def proxy(dovecot: Dovecot) -> Iterator[DroppingProxy]:
    """The plain IMAP port behind a proxy that can cut connections after N bytes."""
    with_proxy = DroppingProxy(dovecot.ports["imap"])
    yield with_proxy
    with_proxy.close()


def cut_mid_fetch(
    dovecot: Dovecot, simulator: SimulatorServer, proxy: DroppingProxy, tmp_path: Path
) -> tuple[Box, list[bytes], Run]:
    """30 messages behind the proxy; the first poll loses its connection in the body FETCH."""
    raws = numbered(0, 30, size=20_000)  # 6 FETCHes of 5 x 20 KB in one poll
    options = {"after": "move:Processed", "port": proxy.port, "fetch_batch": 5}
    box = make_box(tmp_path, dovecot, simulator, raws, **options)
    proxy.arm(250_000)  # every connection is cut after 250 KB from the server: in FETCH 3
    return box, raws, poll(box)


def test_a_connection_dropped_mid_fetch_fails_and_the_next_poll_resumes(
    dovecot: Dovecot, simulator: SimulatorServer, proxy: DroppingProxy, tmp_path: Path
) -> None:
    box, raws, dropped = cut_mid_fetch(dovecot, simulator, proxy, tmp_path)

    assert dropped.returncode == 1, dropped.stdout + dropped.stderr
    assert re.search(r"fetch .* failed: .*EOF", dropped.stderr), dropped.stderr
    assert 0 < staged(box) < 30  # what was downloaded before the cut is kept for the next poll
    assert crm_ids(simulator) == [] and len(dovecot.list_uids(box.user)) == 30

    proxy.limit = None  # the network is back
    poll_until_drained(box)

    delivered = crm_ids(simulator)
    assert len(delivered) == 30 and set(delivered) == {message_id_of(r) for r in raws}
    assert dovecot.list_uids(box.user) == []
    assert len(dovecot.list_uids(box.user, "Processed")) == 30


def test_a_poll_cut_mid_fetch_says_the_error_is_temporary(
    dovecot: Dovecot, simulator: SimulatorServer, proxy: DroppingProxy, tmp_path: Path
) -> None:
    _box, _raws, dropped = cut_mid_fetch(dovecot, simulator, proxy, tmp_path)
    assert dropped.returncode == 1
    assert re.search(r"temporar|retry|retryable", dropped.stderr, re.IGNORECASE), dropped.stderr
