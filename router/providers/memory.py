"""In-process mailboxes: the ``memory`` (incoming) and ``memory-out`` (outgoing) providers.

Use them in tests, demos and the contract suite. A :class:`Mailbox` is a list of raw messages
with sequence numbers that only grow (like IMAP UIDs); mailboxes live in a process-wide table
keyed by the instance's ``<EmailAddress>`` (or its name), so a test can append messages and then
run a poll cycle. ``memory-out`` records what it was asked to send in :data:`OUTBOX`.

Options: ``mailbox`` - the key of the mailbox to read (default: EmailAddress, else the name).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

from pydantic import BaseModel, ConfigDict

from router.config import ProviderConfiguration
from router.errors import MessageRejected
from router.models import MessageRef, OutboundEmail
from router.providers.base import (
    IncomingProvider,
    InstanceState,
    JsonDict,
    OutgoingProvider,
    SubmitResult,
)


@dataclass
class Mailbox:
    """A list of (uid, raw, flags) with UIDs that only grow."""

    messages: dict[int, bytes] = field(default_factory=dict)
    flags: dict[int, set[str]] = field(default_factory=dict)
    next_uid: int = 1
    lock: threading.Lock = field(default_factory=threading.Lock)

    def append(self, raw: bytes) -> int:
        """Deliver ``raw`` to the mailbox (tests do); return its UID."""
        with self.lock:
            uid = self.next_uid
            self.messages[uid], self.flags[uid] = raw, set()
            self.next_uid += 1
            return uid


MAILBOXES: dict[str, Mailbox] = {}
OUTBOX: list[tuple[str, OutboundEmail, bytes, str]] = []
_TABLE_LOCK = threading.Lock()


def mailbox(key: str) -> Mailbox:
    """Return (creating it if needed) the shared mailbox called ``key``."""
    with _TABLE_LOCK:
        return MAILBOXES.setdefault(key, Mailbox())


class MemoryOptions(BaseModel):
    """``<Parameters>`` of the memory providers."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    mailbox: str | None = None


class MemoryIncomingProvider(IncomingProvider):
    """Reads a :class:`Mailbox`; cursor ``{"last": uid}``."""

    alias = "memory"
    options_model = MemoryOptions

    def __init__(self, config: ProviderConfiguration) -> None:
        super().__init__(config)
        self.box = mailbox(self.options.mailbox or config.email_address or config.name)

    def _connect(self) -> None:
        pass

    def _close(self) -> None:
        pass

    def _list_new(self, state: InstanceState, limit: int) -> Sequence[MessageRef]:
        last = int((state.cursor or {}).get("last", 0))
        with self.box.lock:
            uids = sorted(u for u in self.box.messages if u > last)[:limit]
            return [MessageRef(str(u), len(self.box.messages[u])) for u in uids]

    def _fetch(self, ref: MessageRef) -> bytes:
        with self.box.lock:
            return self.box.messages[int(ref.key)]

    def _advance(self, state: InstanceState, refs: Sequence[MessageRef]) -> JsonDict:
        last = int((state.cursor or {}).get("last", 0))
        return {"last": max([last, *(int(r.key) for r in refs)])}

    def _post_process(self, refs: Sequence[MessageRef], action: str) -> None:
        with self.box.lock:
            for ref in refs:
                uid = int(ref.key)
                if action == "delete":
                    self.box.messages.pop(uid, None)
                elif uid in self.box.flags:
                    self.box.flags[uid].add("\\Seen" if action == "seen" else action)


class MemoryOutgoingProvider(OutgoingProvider):
    """Appends what it sends to :data:`OUTBOX`; recipients at ``reject.invalid`` are refused.

    It has no commit point: the base records "submitted" before ``_submit`` (at-most-once),
    and ``email`` names only the recipients of the attempt (a retry: the 4xx-refused ones).
    """

    alias = "memory-out"
    options_model = MemoryOptions

    def _connect(self) -> None:
        pass

    def _close(self) -> None:
        pass

    def _submit(self, email: OutboundEmail, message: bytes, envelope_from: str) -> SubmitResult:
        rcpts = [a.email for a in (*email.to, *email.cc, *email.bcc)]
        refused = {r: (550, "rejected") for r in rcpts if r.endswith("@reject.invalid")}
        if len(refused) == len(rcpts):
            raise MessageRejected(f"{self.name}: all recipients refused (550 rejected)")
        OUTBOX.append((self.name, email, message, envelope_from))
        return SubmitResult(tuple(r for r in rcpts if r not in refused), refused)
