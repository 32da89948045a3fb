"""Faxes, voice mail, InfoPath forms and meeting requests in a real Dovecot mailbox.

A mailbox holds ordinary mail (one of them a reply that quotes an invitation) and one message of
each kind that is not an email. Polling it (router.incoming.poll_instance, SQLite state, a
MemoryCrm) turns only the ordinary mail into activities; each of the others is counted under its
class in the cycle report and handled by ``<NonEmailPolicy>`` (skip, quarantine or deliver).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from router.config import Configuration, Deployment
from router.context import Context
from router.crm.memory import MemoryCrm
from router.incoming import poll_instance
from router.models import LedgerState
from router.report import format_report
from router.state.sqlite import SqliteStore
from tests.servers.dovecot import Dovecot, message

pytestmark = pytest.mark.dovecot

CLASSES = {"fax": 1, "voice_mail": 1, "infopath_form": 1, "meeting_request": 1}
REASONS = sorted(f"classified as {kind}" for kind in CLASSES)


def _head(subject: str, extra: str = "") -> str:
    return (
        f"From: Desk <desk@example.org>\r\nTo: sales@example.com\r\nSubject: {subject}\r\n"
        f"Message-ID: <{uuid.uuid4().hex}@example.org>\r\n"
        f"Date: Mon, 02 Mar 2026 10:00:00 +0000\r\nMIME-Version: 1.0\r\n{extra}"
    )


def _with_attachment(subject: str, content_class: str, ctype: str, name: str) -> bytes:
    return (
        _head(subject, f"Content-Class: {content_class}\r\n")
        + 'Content-Type: multipart/mixed; boundary="p"\r\n\r\n'
        "--p\r\nContent-Type: text/plain\r\n\r\nSee the attachment.\r\n"
        f"--p\r\nContent-Type: {ctype}\r\nContent-Transfer-Encoding: base64\r\n"
        f'Content-Disposition: attachment; filename="{name}"\r\n\r\nAAECAwQF\r\n--p--\r\n'
    ).encode()


def _invitation() -> bytes:
    return (
        _head("Invitation: quarterly review")
        + 'Content-Type: multipart/alternative; boundary="a"\r\n\r\n'
        "--a\r\nContent-Type: text/plain\r\n\r\nYou are invited.\r\n"
        "--a\r\nContent-Type: text/calendar; charset=utf-8; method=REQUEST\r\n\r\n"
        "BEGIN:VCALENDAR\r\nMETHOD:REQUEST\r\nBEGIN:VEVENT\r\nSUMMARY:Review\r\n"
        "END:VEVENT\r\nEND:VCALENDAR\r\n--a--\r\n"
    ).encode()


def _reply_quoting_an_invitation() -> bytes:
    return (
        _head("Re: Invitation: quarterly review", "In-Reply-To: <invite@example.org>\r\n")
        + "Content-Type: text/plain\r\n\r\nI will be there.\r\n\r\n> BEGIN:VCALENDAR\r\n"
        "> METHOD:REQUEST\r\n> END:VCALENDAR\r\n"
    ).encode()


def mailbox() -> list[bytes]:
    """Ordinary mail and one message of each kind that is not an email, interleaved."""
    return [
        message(0),
        _with_attachment("Fax from +44 20 7946 0000", "fax", "image/tiff", "fax.tif"),
        message(1),
        _with_attachment("Voice mail from Bob", "voice-uc", "audio/wav", "voicemail.wav"),
        _with_attachment(
            "Expense report", "InfoPathForm.{5D5AC1B2-0000-4000-8000-000000000001}.1",
            "application/xml", "form.xml",
        ),
        _invitation(),
        message(2),
        _reply_quoting_an_invitation(),
    ]  # fmt: skip


class Box:
    """An IMAP instance on a fresh Dovecot mailbox, delivering to a MemoryCrm."""

    def __init__(self, dovecot: Dovecot, db: Path, policy: str) -> None:
        user = dovecot.new_user()
        dovecot.append_many(user, mailbox())
        cfg = dovecot.provider_config(user, "imap", name="box", max_message_count=50)
        cfg = cfg.model_copy(update={"non_email_policy": policy})
        dep = Deployment(name="test", adapter="memory", crm_server_url="https://crm.invalid")
        self.ctx = Context(Configuration(deployments=(dep,), providers=(cfg,)), SqliteStore(db))
        self.crm = MemoryCrm()
        self.ctx._crms["test"] = self.crm

    def subjects(self) -> list[str]:
        return sorted(a.subject for _, a, _ in self.crm.activities.values())

    def reasons(self, *states: LedgerState) -> list[str]:
        """The reasons recorded with the ledger entries in ``states``, sorted."""
        entries = self.ctx.store.list_entries("box", states)
        return sorted(e.reason for e in entries if e.reason)


MakeBox = Callable[[str], Box]


@pytest.fixture
def make_box(dovecot: Dovecot, tmp_path: Path) -> Iterator[MakeBox]:
    boxes: list[Box] = []

    def make(policy: str) -> Box:
        box = Box(dovecot, tmp_path / f"state-{len(boxes)}.db", policy)
        boxes.append(box)
        return box

    yield make
    for box in boxes:
        box.ctx.close()


ORDINARY_SUBJECTS = sorted(
    ["message 0", "message 1", "message 2", "Re: Invitation: quarterly review"]
)


def test_only_ordinary_mail_becomes_activities_and_the_rest_is_counted_by_class(
    make_box: MakeBox,
) -> None:
    box = make_box("skip")  # the default policy
    report = poll_instance(box.ctx, "box")
    assert report.error is None and report.listed == 8
    assert box.subjects() == ORDINARY_SUBJECTS
    assert report.classified == CLASSES
    assert (report.delivered, report.filtered, report.quarantined) == (4, 4, 0)
    # skipped, then post-processed like a delivered message (DONE keeps the reason)
    assert box.reasons(LedgerState.SKIPPED, LedgerState.DONE) == REASONS
    assert "fax 1, infopath_form 1, meeting_request 1, voice_mail 1" in format_report(report)
    again = poll_instance(box.ctx, "box")
    assert (again.listed, again.delivered, again.classified) == (0, 0, {})
    assert len(box.crm.activities) == 4


def test_the_quarantine_policy_keeps_each_non_email_with_its_class(make_box: MakeBox) -> None:
    box = make_box("quarantine")
    report = poll_instance(box.ctx, "box")
    assert box.subjects() == ORDINARY_SUBJECTS
    assert report.classified == CLASSES
    assert (report.filtered, report.quarantined) == (0, 4)
    assert box.reasons(LedgerState.QUARANTINED) == REASONS


def test_the_deliver_policy_turns_every_message_into_an_activity(make_box: MakeBox) -> None:
    box = make_box("deliver")
    report = poll_instance(box.ctx, "box")
    assert (report.delivered, report.classified) == (8, {})
    assert len(box.subjects()) == 8
