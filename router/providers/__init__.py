"""Email providers: base classes, the registry, and the IMAP, POP3, SMTP and memory backends."""

from router.providers.base import IncomingProvider, InstanceState, OutgoingProvider, Provider
from router.providers.registry import resolve

__all__ = ["IncomingProvider", "InstanceState", "OutgoingProvider", "Provider", "resolve"]
