"""A poller SIGKILLed at random points delivers every message exactly once and loses none.

A mailbox of 300 messages on the real Dovecot, the Dataverse simulator as the CRM (a separate
process, so it survives the kills) and SQLite state. A poll loop runs in a subprocess and is
SIGKILLed 0.05-0.6 s after it starts working, at least 20 times; after each kill, before the next
run, the test compares the mailbox with the simulator: every message gone from INBOX (moved,
flagged \\Deleted or expunged) must already be an activity. Then ``email-router poll`` runs to
completion without kills: the simulator holds exactly one activity per Message-ID, 300 in all.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from router.models import LedgerState
from router.state.factory import open_store
from tests.integration.incoming_support import (
    Box,
    KilledPoller,
    crm_ids,
    deliver_calls,
    mailbox_ids,
    make_box,
    message_id_of,
    poll_until_drained,
)
from tests.servers.dovecot import Dovecot, message
from tests.servers.simulator import SimulatorServer

pytestmark = [pytest.mark.dovecot, pytest.mark.slow, pytest.mark.timeout(150)]

MESSAGES = 300
MIN_KILLS = 20
#: Few messages per poll and a slow CRM (ms per request): each run gets through only a few
#: polls before it is killed, so the kills fall all along the mailbox, in every step of a poll.
PER_POLL = 2
CRM_LATENCY_MS = 60
#: Kills at most; then one run drains what is left (~5-10 messages get through a run, fewer on a
#: loaded machine, so the mailbox is not drained before MIN_KILLS).
MAX_KILLS = 30


@dataclass
class Checkpoints:
    """What the test saw after each kill."""

    delivered: list[int] = field(default_factory=list)


def check_nothing_left_before_delivery(box: Box, every: set[str], moved_to: str | None) -> None:
    """Every message no longer in INBOX (or flagged \\Deleted there) is an activity already."""
    inbox = mailbox_ids(box.dovecot, box.user)
    moved = mailbox_ids(box.dovecot, box.user, moved_to)["present"] if moved_to else set()
    delivered = set(crm_ids(box.sim))
    gone = every - inbox["present"]
    early = gone - delivered
    assert not early, f"{len(early)} message(s) left INBOX before delivery: {sorted(early)[:3]}"
    if moved_to:
        assert inbox["present"] | inbox["deleted"] | moved == every, "a message was lost"
        assert not inbox["deleted"], "MOVE must not leave \\Deleted copies behind"


def kill_repeatedly(box: Box, every: set[str], moved_to: str | None) -> Checkpoints:
    """Kill runs at random points (at most MAX_KILLS), then let one run drain the mailbox."""
    poller, seen = KilledPoller(box), Checkpoints()
    rng = random.Random()
    drained = False
    while not drained and poller.kills < MAX_KILLS:
        drained = not poller.run_once(rng.uniform(0.05, 0.6))
        if not drained:
            check_nothing_left_before_delivery(box, every, moved_to)
            seen.delivered.append(len(crm_ids(box.sim)))
    assert poller.kills >= MIN_KILLS, f"only {poller.kills} kills before the mailbox was drained"
    if not drained:  # finish without kills (and without the slow CRM)
        box.sim.set_faults(latency_ms=0)
        assert not poller.run_once(delay=90.0), "the last run did not drain the mailbox"
    return seen


def assert_ledger_settled(box: Box) -> None:
    store = open_store(box.state)
    try:
        open_states = [LedgerState.STAGED, LedgerState.DELIVERED, LedgerState.QUARANTINED]
        assert store.list_entries(box.name, open_states) == []
    finally:
        store.close()


@pytest.mark.parametrize(
    ("kind", "after", "moved_to"),
    [
        ("imap", "move:Processed", "Processed"),
        ("imap", "delete", None),
        ("pop3", "delete", None),
    ],
)
def test_killed_poller_delivers_every_message_exactly_once(
    dovecot: Dovecot,
    simulator: SimulatorServer,
    tmp_path: Path,
    kind: str,
    after: str,
    moved_to: str | None,
) -> None:
    started = time.monotonic()
    raws = [message(i, sender=f"s{i}@example.org") for i in range(MESSAGES)]
    every = {message_id_of(raw) for raw in raws}
    box = make_box(tmp_path, dovecot, simulator, raws, kind=kind, after=after, max_count=PER_POLL)
    simulator.set_faults(latency_ms=CRM_LATENCY_MS)

    seen = kill_repeatedly(box, every, moved_to)
    poll_until_drained(box)

    delivered = crm_ids(simulator)
    assert len(delivered) == MESSAGES and set(delivered) == every
    inbox = mailbox_ids(dovecot, box.user)
    assert inbox == {"present": set(), "deleted": set()}
    if moved_to:
        assert mailbox_ids(dovecot, box.user, moved_to)["present"] == every
    assert_ledger_settled(box)
    # the kills fell all along the mailbox, not only at its start or end
    assert len(set(seen.delivered)) >= 5, seen.delivered
    print(
        f"\n{kind} {after}: {len(seen.delivered)} kills, activities after each kill "
        f"{seen.delivered}, DeliverIncomingEmail calls {deliver_calls(simulator)} for "
        f"{MESSAGES} messages, {time.monotonic() - started:.1f}s"
    )
