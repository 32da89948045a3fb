"""Request and response shapes of the Dataverse adapter (pure functions, no I/O).

* Incoming: :func:`check_incoming_path` (CheckIncomingEmail with ``@p`` aliases; the id the
  message answers in ``ExtraProperties`` for the owners' tracking filters),
  :func:`filtering_method_path` (an owner's ``incomingemailfilteringmethod``),
  :func:`deliver_params` (DeliverIncomingEmail), :func:`extra_properties`,
  :func:`attachment_entity`.
* Outgoing: :func:`pending_fetchxml` (the BackgroundSendEmail query for an instance's owners),
  :func:`entities_of` and :func:`outbound_email` (the answer back to :class:`OutboundEmail`).

Column names marked (unconfirmed) follow the Dataverse documentation where it is explicit and
the most plausible reading where it is not; they are kept here, in one place, for that reason.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote
from xml.sax.saxutils import quoteattr

from router.crm.base import DeliveryTarget, Owners
from router.crm.tracking import answered_ids
from router.mail.limits import SENDER_MAX, SUBJECT_MAX, TO_MAX, clip, fit_addresses, fit_message_id
from router.models import Activity, Address, Attachment, OutboundEmail

NS = "Microsoft.Dynamics.CRM."
FETCH_MAX = 5000  # the most records one FetchXML page returns
PENDING_SEND, SENT, FAILED = 6, 3, 8
PRIORITY_TO_IMPORTANCE = {0: "low", 1: "normal", 2: "high"}
PARTY_MASKS = {"from": 1, "to": 2, "cc": 3, "bcc": 4}
PENDING_COLUMNS = (
    "activityid",
    "subject",
    "description",
    "messageid",
    "trackingtoken",
    "deliveryattempts",
    "prioritycode",
    "sender",
    "torecipients",
    "createdon",
)
CHECK_PARAMS = ("MessageId", "Subject", "From", "To", "Cc", "Bcc")


def odata_string(value: str) -> str:
    """An OData string literal for a URL: quoted, ``'`` doubled, percent-encoded."""
    return quote("'" + value.replace("'", "''") + "'", safe="'@")


@dataclass(frozen=True)
class Shapes:
    """The wire-format choices the documentation leaves open, in one place to change them.

    ``address_separator`` joins several addresses in From/To/Cc/Bcc (unconfirmed: ``;``; only
    addresses are sent, since display names may hold ``;`` or ``,``). ``owner_binding`` and
    ``queue_binding`` are the ExtraProperties columns that name the receiving user
    (``ownerid@odata.bind`` -> ``/systemusers(id)``) and queue (unconfirmed column name;
    ``None`` leaves it out and lets Dataverse route by recipient address).
    """

    address_separator: str = ";"
    owner_binding: str | None = "ownerid@odata.bind"
    queue_binding: str | None = "queueid@odata.bind"
    #: CheckIncomingEmail's ``ExtraProperties`` (an email entity) carries ``inreplyto`` - the
    #: id the message answers - so "responses to CRM email" filters can correlate (unconfirmed:
    #: the SDK request has ExtraProperties; False leaves it out, the subject's token remains).
    check_in_reply_to: bool = True
    #: Where an owner's tracking filter is read: users keep it in ``usersettings`` (keyed by
    #: the systemuserid), queues on the queue itself.
    user_filter_table: str = "usersettingscollection"
    queue_filter_table: str = "queues"


DEFAULT_SHAPES = Shapes()


def _check_values(activity: Activity, shapes: Shapes) -> list[str]:
    """CheckIncomingEmail's MessageId, Subject, From, To, Cc, Bcc.

    Function parameters are not columns: the address lists go whole (the CRM matches its users
    and queues against every recipient; a long URL goes through $batch), only the Message-ID
    and the subject take the values the activity will be stored with.
    """
    sender = activity.sender.email if activity.sender else ""
    join = shapes.address_separator.join
    return [
        fit_message_id(activity.message_id),
        clip(activity.subject, SUBJECT_MAX),
        sender,
        join(a.email for a in activity.to),
        join(a.email for a in activity.cc),
        join(a.email for a in activity.bcc),
    ]


def _deliver_values(activity: Activity, shapes: Shapes) -> list[str]:
    """DeliverIncomingEmail's MessageId, Subject, From, To, Cc, Bcc, fitted to their columns.

    Dataverse refuses a value longer than its column (router.mail.limits), so the Message-ID is
    shortened by the router's one rule and the subject, sender and To list are cut with a
    marker. Cc and Bcc become activity parties only (the email table has no column for them),
    so they go whole.
    """
    message_id, subject, sender, to, cc, bcc = _check_values(activity, shapes)
    to = fit_addresses((a.email for a in activity.to), TO_MAX, shapes.address_separator)
    return [message_id, subject, clip(sender, SENDER_MAX), to, cc, bcc]


def check_incoming_path(
    activity: Activity, shapes: Shapes = DEFAULT_SHAPES, *, correlate: bool = False
) -> str:
    """``CheckIncomingEmail(MessageId=@p1,...)?@p1='...'&...`` for ``activity``.

    ``correlate`` (the tracking filters' check) adds the id the message answers; the
    duplicate check before a repeated delivery does without it.
    """
    names = [f"{n}=@p{i}" for i, n in enumerate(CHECK_PARAMS, 1)]
    values = [odata_string(v) for v in _check_values(activity, shapes)]
    answers = answered_ids(activity.in_reply_to, activity.references)
    if correlate and shapes.check_in_reply_to and answers:
        names.append(f"ExtraProperties=@p{len(names) + 1}")
        entity = {"@odata.type": f"{NS}email", "inreplyto": fit_message_id(answers[0])}
        values.append(quote(json.dumps(entity, separators=(",", ":")), safe=""))
    query = "&".join(f"@p{i}={v}" for i, v in enumerate(values, 1))
    return f"CheckIncomingEmail({','.join(names)})?{query}"


def filtering_method_path(kind: str, owner_id: str, shapes: Shapes = DEFAULT_SHAPES) -> str:
    """The GET of a user's (``kind`` "user") or queue's ``incomingemailfilteringmethod``."""
    table = shapes.user_filter_table if kind == "user" else shapes.queue_filter_table
    return f"{table}({owner_id})?$select=incomingemailfilteringmethod"


def extra_properties(target: DeliveryTarget, shapes: Shapes = DEFAULT_SHAPES) -> dict[str, Any]:
    """The ``ExtraProperties`` email entity: direction and the receiving user or queue.

    The receiving mailbox address goes in DeliverIncomingEmail's own ``SubmittedBy``.
    """
    extra: dict[str, Any] = {"@odata.type": f"{NS}email", "directioncode": False}
    if target.user_id and shapes.owner_binding:
        extra[shapes.owner_binding] = f"/systemusers({target.user_id})"
    if target.queue_id and shapes.queue_binding:
        extra[shapes.queue_binding] = f"/queues({target.queue_id})"
    return extra


def deliver_params(
    activity: Activity, target: DeliveryTarget, inline: bool, shapes: Shapes = DEFAULT_SHAPES
) -> dict[str, Any]:
    """The DeliverIncomingEmail parameters; attachments inline only when ``inline``."""
    received = activity.received_on or datetime.now(UTC)
    if received.tzinfo is None:
        received = received.replace(tzinfo=UTC)
    message_id, subject, sender, to, cc, bcc = _deliver_values(activity, shapes)
    return {
        "MessageId": message_id,
        "Subject": subject,
        "From": sender,
        "To": to,
        "Cc": cc,
        "Bcc": bcc,
        "ReceivedOn": received.astimezone(UTC).isoformat().replace("+00:00", "Z"),
        "SubmittedBy": target.mailbox,
        "Importance": activity.importance or "normal",
        "Body": activity.body_html,
        "Attachments": [attachment_entity(a) for a in activity.attachments] if inline else [],
        "ExtraProperties": extra_properties(target, shapes),
    }


def attachment_entity(att: Attachment, email_id: str | None = None) -> dict[str, Any]:
    """An ``activitymimeattachment``: inline in DeliverIncomingEmail, or bound to ``email_id``."""
    entity: dict[str, Any] = {
        "@odata.type": f"{NS}activitymimeattachment",
        "filename": att.filename or "attachment",
        "mimetype": att.mimetype or "application/octet-stream",
        "body": base64.b64encode(att.content).decode("ascii"),
    }
    if att.content_id:
        entity["attachmentcontentid"] = att.content_id
    if email_id is not None:
        entity["objectid_activitypointer@odata.bind"] = f"/activitypointers({email_id})"
        entity["objecttypecode"] = "email"
    return entity


# -- outgoing -------------------------------------------------------------------------------


def _values(name: str, ids: tuple[str, ...]) -> str:
    values = "".join(f"<value>{_xml_text(i)}</value>" for i in ids)
    return f'<condition attribute="{name}" operator="in">{values}</condition>'


def _xml_text(value: str) -> str:
    return quoteattr(value)[1:-1]


def owners_filter(owners: Owners) -> str:
    """FetchXML conditions for the emails of ``owners`` (nothing: every pending email).

    Users own the emails they send (``ownerid``); a queue is the From party of what it sends
    (``emailsender``); with neither, the instance's mailbox address is matched to ``sender``.
    """
    conditions = []
    if owners.user_ids:
        conditions.append(_values("ownerid", owners.user_ids))
    if owners.queue_ids:
        conditions.append(_values("emailsender", owners.queue_ids))
    if not conditions and owners.mailbox:
        conditions.append(
            f'<condition attribute="sender" operator="eq" value={quoteattr(owners.mailbox)}/>'
        )
    return f'<filter type="or">{"".join(conditions)}</filter>' if conditions else ""


def pending_fetchxml(owners: Owners, limit: int) -> str:
    """The FetchXML of BackgroundSendEmail: Pending Send, outgoing, of ``owners``, oldest first."""
    attributes = "".join(f'<attribute name="{c}"/>' for c in PENDING_COLUMNS)
    return (
        f'<fetch version="1.0" mapping="logical" count="{max(1, min(int(limit), FETCH_MAX))}">'
        f'<entity name="email">{attributes}<filter type="and">'
        f'<condition attribute="statuscode" operator="eq" value="{PENDING_SEND}"/>'
        '<condition attribute="directioncode" operator="eq" value="1"/>'
        f"{owners_filter(owners)}</filter>"
        '<order attribute="createdon" descending="false"/></entity></fetch>'
    )


def entities_of(answer: dict[str, Any]) -> tuple[list[dict[str, Any]], list[bool]]:
    """Entities and HasAttachments of a BackgroundSendEmail answer (both nestings accepted)."""
    collection = answer.get("EntityCollection", answer.get("value", []))
    entities = collection.get("Entities", []) if isinstance(collection, dict) else collection
    has = answer.get("HasAttachments") or []
    flags = [bool(has[i]) if i < len(has) else True for i in range(len(entities))]
    return list(entities), flags


def outbound_email(
    entity: dict[str, Any], parties: list[dict[str, Any]], attachments: list[dict[str, Any]]
) -> OutboundEmail:
    """An :class:`OutboundEmail` from the email entity, its parties and its attachments.

    Each party's ``addressused`` is kept as the CRM wrote it - it may be ``Name <a@b>`` or
    hostile text - and parsed when the email is composed (:mod:`router.mail.addresses`): parsing
    here would have to refuse the whole pending list for one bad address, while there it fails
    only the email it belongs to.
    """
    by_mask: dict[int, list[Address]] = {1: [], 2: [], 3: [], 4: []}
    for party in parties:
        address = party.get("addressused")
        if address and party.get("participationtypemask") in by_mask:
            by_mask[party["participationtypemask"]].append(Address(address))
    sender = by_mask[1][0] if by_mask[1] else Address(entity.get("sender") or "")
    return OutboundEmail(
        email_id=entity["activityid"],
        subject=entity.get("subject") or "",
        body_html=entity.get("description") or "",
        sender=sender,
        to=tuple(by_mask[2]),
        cc=tuple(by_mask[3]),
        bcc=tuple(by_mask[4]),
        attachments=tuple(_attachment(a) for a in attachments),
        tracking_token=entity.get("trackingtoken") or None,
        message_id=entity.get("messageid") or None,
        delivery_attempts=int(entity.get("deliveryattempts") or 0),
        importance=PRIORITY_TO_IMPORTANCE.get(_int(entity.get("prioritycode"), 1), "normal"),
    )


def _int(value: Any, default: int) -> int:
    return default if value is None else int(value)


def _attachment(row: dict[str, Any]) -> Attachment:
    content_id = row.get("attachmentcontentid") or None
    return Attachment(
        filename=row.get("filename") or "attachment",
        mimetype=row.get("mimetype") or "application/octet-stream",
        content=base64.b64decode(row.get("body") or ""),
        content_id=content_id,
        inline=bool(content_id),
    )
