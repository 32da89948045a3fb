"""OAuth 2.0 client credentials for the Dataverse adapter: :mod:`router.oauth` in CRM terms.

Use :class:`TokenSource` (a :class:`router.oauth.TokenSource` for the one resource
``<CrmServerUrl>/.default``): the same cache and renewal, but failures raise the CRM's errors
(:class:`~router.errors.CrmAuthError` stops the instance, :class:`~router.errors.CrmUnavailable`
retries) and the hints name the Deployment's elements. The adapter hands it its own pinned
session (:func:`router.crm.dataverse_http.make_session`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import ClassVar

import requests

from router.errors import CrmAuthError, CrmUnavailable, RouterError
from router.oauth import MAX_MARGIN, MICROSOFT_AUTHORITY_HOSTS
from router.oauth import TokenSource as OAuthTokenSource


def default_authority(tenant_id: str | None) -> str:
    """The Entra ID authority of ``tenant_id`` in the public cloud."""
    if not tenant_id:
        raise CrmAuthError("Deployment needs <TenantId> (or <Authority>) for client credentials")
    return f"https://login.microsoftonline.com/{tenant_id}"


class TokenSource(OAuthTokenSource):
    """Client-credentials tokens for one resource (``<CrmServerUrl>/.default``)."""

    auth_error: ClassVar[type[RouterError]] = CrmAuthError
    unavailable_error: ClassVar[type[RouterError]] = CrmUnavailable
    hints: ClassVar[dict[str, str]] = {
        "invalid_client": "check <ClientId> and <ClientSecret> (expired secret?)",
        "unauthorized_client": "the app registration is not enabled in this tenant",
        "invalid_scope": "check <CrmServerUrl> (the scope is <CrmServerUrl>/.default)",
        "invalid_request": "check <TenantId> / <Authority>",
    }
    ca_hint: ClassVar[str] = "check <CaBundle>"

    def __init__(
        self,
        authority: str,
        client_id: str,
        client_secret: Callable[[], str],
        resource: str,
        http: requests.Session,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        scopes = [f"{resource}/.default"]
        super().__init__(authority, client_id, client_secret, scopes, http=http, clock=clock)


__all__ = ["MAX_MARGIN", "MICROSOFT_AUTHORITY_HOSTS", "TokenSource", "default_authority"]
