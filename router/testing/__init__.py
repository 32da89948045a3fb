"""The provider contract kit: the tests every email provider must pass, for provider authors.

Use it from your own test suite (the pytest plugin is registered by installing email-router)::

    from router.testing import IncomingProviderContract, MailboxBackend

    class TestMyProvider(IncomingProviderContract):
        @pytest.fixture
        def mailbox(self, tmp_path) -> MailboxBackend:
            return MyMailbox(tmp_path)

:class:`IncomingProviderContract` needs a ``mailbox`` fixture (a :class:`MailboxBackend`);
:class:`OutgoingProviderContract` a ``sent_mail`` fixture (a :class:`SentMailBackend`). The
tests run the router's own cycles against the kit's CRM (an in-memory CRM kept in a file) and
a SQLite state store, in child processes where a test kills the router at every step.
See docs/providers.md.
"""

from __future__ import annotations

from router.testing.crm import KitCrm
from router.testing.incoming import IncomingProviderContract, MailboxBackend
from router.testing.messages import POISON_SUBJECT, sample_email, sample_message, subject_of
from router.testing.outgoing import OutgoingProviderContract, SentMailBackend
from router.testing.rig import KitRig

__all__ = [
    "POISON_SUBJECT",
    "IncomingProviderContract",
    "KitCrm",
    "KitRig",
    "MailboxBackend",
    "OutgoingProviderContract",
    "SentMailBackend",
    "sample_email",
    "sample_message",
    "subject_of",
]
