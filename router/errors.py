"""The router's exception hierarchy.

Every error the router raises derives from :class:`RouterError`. The second level says what the
caller does next, and the runtimes (Celery tasks, the single-process scheduler, the CLI) act only on
that level, never on a library's own exception types:

* :class:`RetryableError` - a passing fault (network, throttling, a lost lease): try again later.
* :class:`StopError` - the instance cannot work until a person fixes something (credentials,
  configuration): stop it and alert.
* :class:`QuarantineError` - this one message cannot be processed: set it aside with the reason and
  move on with the mailbox.

Concrete classes combine a subsystem (provider, CRM, state) with one of those actions. Messages of
these exceptions never contain secrets or message bodies.
"""

from __future__ import annotations


class RouterError(Exception):
    """Root of every error the router raises on purpose."""


class RetryableError(RouterError):
    """Raised when the operation may succeed if tried again later.

    ``retry_after`` is the minimum delay in seconds the remote side asked for (e.g. a 429's
    Retry-After), or None when the caller should use its own backoff.
    """

    def __init__(self, message: str = "", *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class StopError(RouterError):
    """Raised when the instance must stop until someone fixes its configuration or credentials."""


class QuarantineError(RouterError):
    """Raised when one message cannot be processed; it is set aside with this reason."""


class AuthError(StopError):
    """Raised when an identity provider or a server refuses the credentials (or the TLS
    certificate); the instance stops until someone fixes them. CRM, mail and token-endpoint
    errors of this kind derive from it."""


class ConfigError(StopError):
    """Raised when the configuration file or the environment is invalid.

    ``problems`` holds every problem found, each already formatted as ``FILE:LINE: <Element>: ...``.
    """

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        self.problems = problems if problems is not None else [message]
        super().__init__(message)


class ProviderError(RouterError):
    """Raised by an email provider (mail server side)."""


class ProviderUnavailable(ProviderError, RetryableError):
    """Raised when the mail server cannot be reached or dropped the connection."""


class ProviderAuthError(ProviderError, AuthError):
    """Raised when the mail server refuses the credentials or the TLS certificate."""


class ProviderProtocolError(ProviderError, RetryableError):
    """Raised when the mail server answered something the provider did not expect."""


class MessageRejected(ProviderError, QuarantineError):
    """Raised when the mail server permanently refuses one message (e.g. SMTP 5xx)."""


class CrmError(RouterError):
    """Raised by a CRM adapter."""


class CrmUnavailable(CrmError, RetryableError):
    """Raised when the CRM is throttling (429), unavailable (5xx) or unreachable."""


class CrmRejected(CrmError, QuarantineError):
    """Raised when the CRM refuses one record for good (400/403/404/412)."""


class CrmAuthError(CrmError, AuthError):
    """Raised when the CRM refuses the credentials even after a token refresh."""


class StateError(RouterError):
    """Raised by a state store."""


class StateUnavailable(StateError, RetryableError):
    """Raised when the state store cannot be reached."""


class LeaseLost(StateError, RetryableError):
    """Raised when a write is fenced off because the writer no longer holds the instance's lease."""


class StateCorrupt(StateError, QuarantineError):
    """Raised when one stored entry cannot be decoded; it is isolated, the service goes on."""


class MessageUnusable(QuarantineError):
    """Raised when a message has nothing that can become an activity, or exceeds the size limit."""


def action_of(exc: BaseException) -> str:
    """Return what the runtime does with ``exc``: "retry", "stop", "quarantine" or "crash"."""
    if isinstance(exc, RetryableError):
        return "retry"
    if isinstance(exc, QuarantineError):
        return "quarantine"
    if isinstance(exc, StopError):
        return "stop"
    return "crash"
