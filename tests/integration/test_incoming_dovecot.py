"""The whole incoming cycle (router.incoming.poll_instance) against a real Dovecot.

IMAP and POP3 mailboxes are filled with hundreds of messages; polling delivers each exactly once,
in order, to a MemoryCrm with the right subject and sender, a further poll delivers nothing, and
AfterProcessing is visible on the server. The state store is SQLite (as in single-process mode).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from router.config import Configuration, Deployment
from router.context import Context
from router.crm.memory import MemoryCrm
from router.incoming import poll_instance
from router.state.sqlite import SqliteStore
from tests.servers.dovecot import Dovecot, message

pytestmark = pytest.mark.dovecot

#: Polls allowed to drain a mailbox (MaxMessageCount 200: 500 messages need 3).
MAX_POLLS = 6


class Rig:
    """One incoming instance on Dovecot, a MemoryCrm deployment and a SQLite state store."""

    def __init__(
        self, dovecot: Dovecot, user: str, kind: str, action: str, db: Path, **params: Any
    ) -> None:
        self.dovecot, self.user = dovecot, user
        cfg = dovecot.provider_config(
            user,
            kind,
            name="box",
            after_processing=action,
            max_message_count=200,
            **params,
        )
        dep = Deployment(name="test", adapter="memory", crm_server_url="https://crm.invalid")
        self.ctx = Context(Configuration(deployments=(dep,), providers=(cfg,)), SqliteStore(db))
        self.crm = MemoryCrm()
        self.ctx._crms["test"] = self.crm

    def drain(self) -> int:
        """Poll until a poll lists nothing; return how many polls delivered something."""
        for polls in range(MAX_POLLS):
            report = poll_instance(self.ctx, "box")
            assert report.error is None
            if report.listed == 0:
                return polls
        raise AssertionError(f"mailbox not drained after {MAX_POLLS} polls")

    def delivered(self) -> list[tuple[str, str]]:
        """(subject, sender address) of every activity, in delivery order."""
        return [
            (a.subject, a.sender.email if a.sender else "")
            for _, a, _ in self.crm.activities.values()
        ]

    def close(self) -> None:
        self.ctx.close()


MakeRig = Callable[..., Rig]


@pytest.fixture
def make_rig(dovecot: Dovecot, tmp_path: Path) -> Iterator[MakeRig]:
    rigs: list[Rig] = []

    def make(kind: str, action: str = "leave", count: int = 0, **params: Any) -> Rig:
        user = dovecot.new_user()
        if count:
            dovecot.append_many(
                user, [message(i, sender=f"s{i}@example.org") for i in range(count)]
            )
        rig = Rig(dovecot, user, kind, action, tmp_path / f"state-{len(rigs)}.db", **params)
        rigs.append(rig)
        return rig

    yield make
    for rig in rigs:
        rig.close()


def numbered(numbers: range) -> list[bytes]:
    return [message(i, sender=f"s{i}@example.org") for i in numbers]


def expected(count: int) -> list[tuple[str, str]]:
    return [(f"message {i}", f"s{i}@example.org") for i in range(count)]


@pytest.mark.parametrize("kind", ["imap", "pop3"])
def test_every_message_is_delivered_once_in_order(make_rig: MakeRig, kind: str) -> None:
    rig = make_rig(kind, count=500)
    assert rig.drain() == 3
    assert rig.delivered() == expected(500)
    report = poll_instance(rig.ctx, "box")
    assert (report.listed, report.delivered) == (0, 0)
    assert len(rig.crm.activities) == 500


def test_imap_leave_keeps_messages_unread(make_rig: MakeRig, dovecot: Dovecot) -> None:
    rig = make_rig("imap", "leave", count=20)
    rig.drain()
    uids = dovecot.list_uids(rig.user)
    assert len(uids) == 20
    assert "\\Seen" not in dovecot.flags(rig.user, uids[0])


def test_imap_seen_marks_delivered_messages_read(make_rig: MakeRig, dovecot: Dovecot) -> None:
    rig = make_rig("imap", "seen", count=20)
    rig.drain()
    with dovecot.imap(rig.user) as client:
        client.select_folder("INBOX", readonly=True)
        assert len(client.search("SEEN")) == 20


def test_imap_move_files_delivered_messages(make_rig: MakeRig, dovecot: Dovecot) -> None:
    rig = make_rig("imap", "move:Processed/CRM", count=20)
    rig.drain()
    assert dovecot.list_uids(rig.user) == []
    assert len(dovecot.list_uids(rig.user, "Processed.CRM")) == 20
    assert len(rig.crm.activities) == 20


@pytest.mark.parametrize("kind", ["imap", "pop3"])
def test_delete_empties_the_mailbox_after_delivery(
    make_rig: MakeRig, dovecot: Dovecot, kind: str
) -> None:
    rig = make_rig(kind, "delete", count=30)
    rig.drain()
    assert dovecot.list_uids(rig.user) == []
    assert rig.delivered() == expected(30)


def test_mail_arriving_between_polls_is_delivered_next(make_rig: MakeRig, dovecot: Dovecot) -> None:
    rig = make_rig("imap", count=5)
    rig.drain()
    dovecot.append_many(rig.user, numbered(range(5, 8)))
    rig.drain()
    assert rig.delivered() == expected(8)


def test_uidvalidity_change_creates_no_duplicates(make_rig: MakeRig, dovecot: Dovecot) -> None:
    rig = make_rig("imap", "seen", count=10)
    rig.drain()
    dovecot.change_uidvalidity(rig.user)
    with dovecot.imap(rig.user) as client:  # so we can see the re-listed copies handled again
        client.select_folder("INBOX")
        client.remove_flags(client.search("ALL"), ["\\Seen"], silent=True)
    rig.drain()
    assert rig.delivered() == expected(10)
    with dovecot.imap(rig.user) as client:
        client.select_folder("INBOX", readonly=True)
        assert len(client.search("SEEN")) == 10
