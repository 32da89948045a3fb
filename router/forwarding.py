"""Forward mailboxes: the originals a carrier holds, and the CRM user or queue each one is for.

An incoming instance with ``<ForwardMailbox>true</ForwardMailbox>`` reads a mailbox that users'
server rules forward their mail to. :mod:`router.delivery` calls :func:`pieces` for each staged
carrier and delivers every piece for its owner; this module decides, the delivery acts.

* :class:`OwnerDirectory` - the users and queues of a ``<Deployment>``, by address: every
  instance of that Deployment (hand-written, or loaded from the CRM's mailboxes) that names an
  ``<EmailAddress>`` and a ``<UserId>`` or ``<QueueId>``.
* :func:`pieces` - unwraps the carrier (:mod:`router.mail.forward`), parses each original and
  finds its owner: the carrier's sender first (the user whose rule forwarded it), then the
  original's To, Cc and Bcc. A carrier that forwards nothing is its own original (mail sent
  straight to the forward mailbox).
* :func:`plan` - which originals go to the CRM (not those for no known owner, those a policy
  keeps out, or those delivered before); :func:`tally` - what the CRM step made of them, and so
  how the carrier is settled: only once every original it holds is.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from router.config import Configuration, ProviderConfiguration
from router.context import delivery_target
from router.crm.base import DeliveryTarget, Verdict
from router.mail.forward import unwrap
from router.mail.parse import parse_message
from router.models import Activity, Classification, DeliveryResult


class OwnerDirectory:
    """The CRM users and queues mail can be delivered for, by email address (case-insensitive).

    Build it with :meth:`of` once per delivery run: it is a snapshot of the configuration.
    """

    __slots__ = ("_by_address",)

    def __init__(self, by_address: Mapping[str, DeliveryTarget]) -> None:
        self._by_address = {a.strip().lower(): t for a, t in by_address.items()}

    @classmethod
    def of(cls, config: Configuration, deployment: str | None) -> OwnerDirectory:
        """The owners of ``deployment``'s instances (the first instance naming an address wins)."""
        found: dict[str, DeliveryTarget] = {}
        for cfg in config.providers:
            if cfg.deployment == deployment and _names_an_owner(cfg):
                assert cfg.email_address is not None
                found.setdefault(cfg.email_address.strip().lower(), delivery_target(cfg))
        return cls(found)

    def __len__(self) -> int:
        return len(self._by_address)

    def find(self, address: str) -> DeliveryTarget | None:
        """The owner whose address is ``address``, or None."""
        return self._by_address.get(address.strip().lower()) if address else None

    def owner_for(self, sender: str, activity: Activity) -> DeliveryTarget | None:
        """Whose ``activity`` is: the carrier's ``sender``, else the first known recipient."""
        for address in _candidates(sender, activity):
            owner = self.find(address)
            if owner is not None:
                return owner
        return None


def _names_an_owner(cfg: ProviderConfiguration) -> bool:
    return bool(cfg.email_address and (cfg.user_ids or cfg.queue_ids))


def _candidates(sender: str, activity: Activity) -> Iterable[str]:
    yield sender
    for address in (*activity.to, *activity.cc, *activity.bcc):
        yield address.email


@dataclass(frozen=True, slots=True)
class Piece:
    """One original of a carrier, parsed, with its owner (None: no known user or queue)."""

    activity: Activity
    target: DeliveryTarget | None


@dataclass(frozen=True, slots=True)
class Carrier:
    """A carrier's own Message-ID and the pieces it holds (at least one)."""

    message_id: str
    pieces: tuple[Piece, ...]


def pieces(
    raw: bytes,
    cfg: ProviderConfiguration,
    directory: OwnerDirectory,
    received_on: datetime | None = None,
) -> Carrier:
    """Unwrap and parse the carrier ``raw`` of forward instance ``cfg``; find each owner.

    Raises:
        MessageUnusable: the carrier, or one of its originals, cannot be parsed at all (the
            carrier is quarantined whole: replaying it later delivers nothing twice).
    """
    unwrapped = unwrap(raw, max_size=cfg.max_message_size)
    size = cfg.max_message_size
    raws = [o.raw for o in unwrapped.originals] or [raw]
    activities = [parse_message(r, max_size=size, received_on=received_on) for r in raws]
    found = tuple(Piece(a, directory.owner_for(unwrapped.sender, a)) for a in activities)
    carrier_id = unwrapped.message_id or activities[0].message_id
    return Carrier(carrier_id, found)


@dataclass
class Plan:
    """What a carrier's originals need: those to deliver, and those counted and left out."""

    items: list[tuple[Activity, DeliveryTarget]] = field(default_factory=list)
    #: originals for no known user or queue (``<ForwardUnknownPolicy>`` decides)
    unknown: int = 0
    #: originals delivered by an earlier run (the ledger's Message-ID index knows them)
    earlier: int = 0
    #: the classes of originals their policy keeps from the CRM (auto-replies, faxes, ...)
    held_back: list[Classification] = field(default_factory=list)


def plan(
    carrier: Carrier,
    delivered_before: Callable[[str], bool],
    wanted: Callable[[Classification], bool],
) -> Plan:
    """Sort ``carrier``'s pieces: ``wanted`` says whether a class goes to the CRM."""
    todo = Plan()
    for piece in carrier.pieces:
        kind = piece.activity.classification
        if piece.target is None:
            todo.unknown += 1
        elif not wanted(kind):
            todo.held_back.append(kind)
        elif delivered_before(piece.activity.message_id):
            todo.earlier += 1
        else:
            todo.items.append((piece.activity, piece.target))
    return todo


@dataclass
class Tally:
    """What the CRM step made of a carrier's originals.

    ``failure`` is the first outcome that is neither a delivery nor a filter's verdict (an
    error the incoming cycle counts or quarantines the carrier for); the Message-IDs in
    ``delivered`` and ``duplicates`` are held by the CRM either way.
    """

    delivered: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    declined: list[Verdict] = field(default_factory=list)
    failure: object | None = None
    earlier: int = 0

    @property
    def settlement(self) -> str:
        """How the carrier is settled: ``forwarded`` (something reached the CRM, now or
        before), ``filtered`` (the owners' filters declined all) or ``skipped`` (nothing left)."""
        if self.delivered or self.duplicates or self.earlier:
            return "forwarded"
        return "filtered" if self.declined else "skipped"

    @property
    def summary(self) -> str:
        """Counts for the cycle report (no content)."""
        earlier = len(self.duplicates) + self.earlier
        return f"{len(self.delivered)} delivered, {earlier} earlier, {len(self.declined)} filtered"


def tally(
    items: Sequence[tuple[Activity, DeliveryTarget]], outcomes: Sequence[object], earlier: int = 0
) -> Tally:
    """Sort the CRM step's ``outcomes`` (one per item, in order) for the carrier's settlement."""
    result = Tally(earlier=earlier)
    for (activity, _), outcome in zip(items, outcomes, strict=True):
        if isinstance(outcome, DeliveryResult):
            held = result.duplicates if outcome.duplicate else result.delivered
            held.append(activity.message_id)
        elif isinstance(outcome, Verdict):
            result.declined.append(outcome)
        elif result.failure is None:
            result.failure = outcome
    return result
