"""The CRM's tracking filters (an owner's ``incomingemailfilteringmethod``) as rules.

Dataverse applies a user's or queue's filter itself, in CheckIncomingEmail's ``ShouldDeliver``;
the router only asks (:meth:`router.crm.base.CrmAdapter.screen`). Use :func:`decide` where a
CRM has to be imitated - the memory CRM and the Dataverse simulator - so both answer alike, and
:data:`REASONS` for the names of CheckIncomingEmail's reason codes. The methods:

====  ==========================  =====================================================
code  method                      a message is wanted when
====  ==========================  =====================================================
0     all email messages          always (ReasonCode 6 AcceptAll)
1     responses to CRM email      its subject holds a tracking token (``CRM:`` digits) or
                                  its In-Reply-To / References name an email the
                                  organisation sent (2 CorrelationMatch; else 1)
2     from leads, contacts and    its sender is a lead, contact or account (5 SenderMatch;
      accounts                    else 7 InvalidSender)
3     from email-enabled records  its sender is any email-enabled record (users and queues
                                  too) (5; else 7)
4     no email messages           never (-1 Unknown: Dataverse names no reason for it)
====  ==========================  =====================================================
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from router.crm.base import ACCEPTED, Verdict

ALL, RESPONSES, FROM_RECORDS, FROM_EMAIL_ENABLED, NONE = 0, 1, 2, 3, 4
#: CheckIncomingEmail's ReasonCode values and their names.
REASONS = {
    -1: "Unknown",
    0: "Duplicate",
    1: "NoCorrelationMatch",
    2: "CorrelationMatch",
    3: "NoRecipientMatch",
    4: "InternalEmailReject",
    5: "SenderMatch",
    6: "AcceptAll",
    7: "InvalidSender",
}
#: A tracking token in a subject (the CRM's default prefix ``CRM:`` and its digits).
TOKEN = re.compile(r"CRM:\d+")


def verdict(wanted: bool, code: int) -> Verdict:
    """The :class:`Verdict` of a ReasonCode (its name from :data:`REASONS`)."""
    return Verdict(wanted, code, REASONS.get(code, "Unknown"))


@dataclass(frozen=True, slots=True)
class Facts:
    """What the filters look at in one message: subject, the ids it answers, its sender."""

    subject: str
    answers: tuple[str, ...]
    sender: str


@dataclass(frozen=True, slots=True)
class Lookups:
    """How the imitated CRM answers the filters' questions about its own records."""

    sent_by_org: Callable[[str], bool]
    is_record: Callable[[str], bool]
    is_email_enabled: Callable[[str], bool]


def decide(method: int, facts: Facts, lookups: Lookups) -> Verdict:
    """Whether an owner with filtering ``method`` wants the message described by ``facts``."""
    if method == ALL:
        return ACCEPTED
    if method == RESPONSES:
        correlated = bool(TOKEN.search(facts.subject)) or any(
            lookups.sent_by_org(i) for i in facts.answers
        )
        return verdict(True, 2) if correlated else verdict(False, 1)
    if method in (FROM_RECORDS, FROM_EMAIL_ENABLED):
        ask = lookups.is_record if method == FROM_RECORDS else lookups.is_email_enabled
        return verdict(True, 5) if facts.sender and ask(facts.sender) else verdict(False, 7)
    return verdict(False, -1)


def answered_ids(in_reply_to: str | None, references: Iterable[str]) -> tuple[str, ...]:
    """The Message-IDs a message answers: In-Reply-To first, then References (newest first)."""
    ids = [in_reply_to] if in_reply_to else []
    ids += [r for r in reversed(tuple(references)) if r and r != in_reply_to]
    return tuple(ids)
