"""Email providers: base classes, the registry, and the IMAP, POP3, SMTP and memory backends.

A provider author imports everything needed from here: the base classes, the values the core
hands over or expects back (:class:`MessageRef`, :class:`SubmitResult`, :class:`InstanceState`),
the commit hook type, the retry policy and the errors a provider raises (guide:
``docs/providers.md``).
"""

from router.errors import (
    MessageRejected,
    ProviderAuthError,
    ProviderError,
    ProviderProtocolError,
    ProviderUnavailable,
)
from router.models import MessageRef
from router.providers.base import (
    AccessStep,
    CommitHook,
    IncomingProvider,
    InstanceState,
    NoOptions,
    OutgoingProvider,
    Provider,
    RetryBackoff,
    SubmitResult,
)
from router.providers.registry import resolve

__all__ = [
    "AccessStep",
    "CommitHook",
    "IncomingProvider",
    "InstanceState",
    "MessageRef",
    "MessageRejected",
    "NoOptions",
    "OutgoingProvider",
    "Provider",
    "ProviderAuthError",
    "ProviderError",
    "ProviderProtocolError",
    "ProviderUnavailable",
    "RetryBackoff",
    "SubmitResult",
    "resolve",
]
