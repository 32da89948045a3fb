"""Values longer than Dataverse's columns, through a real Dovecot and the Dataverse simulator.

The simulator refuses what a real organisation refuses (``messageid`` over 320 characters,
``subject`` over 800, ``torecipients`` over 500: a 400). A message whose Message-ID has 1,000
characters, refused once and quarantined, is delivered once under the shortened id when it is
replayed; a copy of it in another mailbox is found to be the same message: exactly one activity.
A long subject and a long To list arrive cut with the marker.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from router.config import Configuration, ProviderConfiguration
from router.context import Context
from router.incoming import poll_instance
from router.mail.limits import COLUMN_LIMITS, MARKER, fit_message_id
from router.models import LedgerState
from router.quarantine import replay
from router.state.sqlite import SqliteStore
from tests.servers.dovecot import Dovecot
from tests.servers.simulator import SimulatorServer

pytestmark = pytest.mark.dovecot

LONG_ID = (
    "<" + ("0123456789abcdef-" * 60)[: 1000 - len("@mail.example.org") - 2] + "@mail.example.org>"
)
RECIPIENTS = [f"colleague{i:03d}@example.com" for i in range(80)]


def raw(message_id: str, subject: str = "a long id", to: str = "inbox@example.com") -> bytes:
    return (
        f"From: Ann <ann@example.org>\r\nTo: {to}\r\nSubject: {subject}\r\n"
        f"Message-ID: {message_id}\r\nDate: Mon, 02 Mar 2026 10:00:00 +0000\r\n"
        "MIME-Version: 1.0\r\nContent-Type: text/plain\r\n\r\nhello\r\n"
    ).encode()


@pytest.fixture
def rig(dovecot: Dovecot, simulator: SimulatorServer, tmp_path: Path) -> Iterator[Context]:
    """Instance ``a`` holds the long-id message and a long subject/To one; ``b`` a copy of the
    long-id message (another Received line: the id, not the bytes, makes it the same). A
    message fails once before it is quarantined."""
    first, second = dovecot.new_user(), dovecot.new_user()
    long_to = ",\r\n ".join(RECIPIENTS)
    dovecot.append_many(
        first, [raw(LONG_ID), raw("<wide@example.org>", "Quarterly numbers " * 100, long_to)]
    )
    dovecot.append_many(second, [b"Received: from relay.example.net\r\n" + raw(LONG_ID)])
    providers = (_instance(dovecot, first, "a"), _instance(dovecot, second, "b"))
    config = Configuration(deployments=(simulator.deployment(),), providers=providers)
    ctx = Context(config, SqliteStore(tmp_path / "state.db"))
    yield ctx
    ctx.close()


def _instance(dovecot: Dovecot, user: str, name: str) -> ProviderConfiguration:
    cfg = dovecot.provider_config(user, "imap", name=name, deployment="sim")
    return cfg.model_copy(update={"max_message_attempts": 1})


def rows_with(simulator: SimulatorServer, message_id: str) -> list[dict[str, object]]:
    return [row for row in simulator.emails() if row["messageid"] == message_id]


def test_a_1000_character_message_id_is_delivered_once_even_after_a_replay(
    rig: Context, simulator: SimulatorServer
) -> None:
    short = fit_message_id(LONG_ID)
    assert len(LONG_ID) == 1000 and len(short) <= COLUMN_LIMITS["messageid"]

    # refused once by the CRM (under the shortened id it was sent with): quarantined
    simulator.set_faults(reject_message_ids=[short])
    first = poll_instance(rig, "a")
    assert (first.error, first.delivered, first.quarantined) == (None, 1, 1)
    assert rows_with(simulator, short) == []
    (held,) = rig.store.list_entries("a", [LedgerState.QUARANTINED])

    simulator.reset_faults()
    replayed = replay(rig, "a", held.key)
    assert (replayed.delivered, replayed.quarantined) == (1, 0)
    assert len(rows_with(simulator, short)) == 1

    # the same message in another mailbox is the same activity: the CRM finds it by the
    # shortened id and answers with the existing one
    other = poll_instance(rig, "b")
    assert (other.error, other.delivered + other.duplicates, other.quarantined) == (None, 1, 0)
    assert len(rows_with(simulator, short)) == 1
    assert len(simulator.emails()) == 2


def test_a_long_subject_and_a_long_to_list_arrive_cut_with_the_marker(
    rig: Context, simulator: SimulatorServer
) -> None:
    assert poll_instance(rig, "a").delivered == 2
    (row,) = rows_with(simulator, "<wide@example.org>")
    subject, to = str(row["subject"]), str(row["torecipients"])
    assert len(subject) == COLUMN_LIMITS["subject"] and subject.endswith(MARKER)
    assert subject.startswith("Quarterly numbers Quarterly numbers")
    assert len(to) <= COLUMN_LIMITS["torecipients"] and to.endswith(";" + MARKER)
    kept = to.removesuffix(";" + MARKER).split(";")
    assert kept == RECIPIENTS[: len(kept)] and len(kept) >= 15
