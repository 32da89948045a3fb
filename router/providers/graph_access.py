"""``email-router test-access`` for providers: the steps a provider can check, and Graph's.

``test-access`` (:mod:`router.cli.access`) opens a provider (connect and log in, the check every
provider gets) and then runs its
:meth:`~router.providers.base.Provider.access_steps`. :func:`graph_steps` builds the steps of a
Graph instance:

* ``token`` - a client-credentials token from the authority (MSAL);
* ``mailbox`` - ``GET /users/{mailbox}``; Graph answers 403 when the app may not read the
  directory (``User.Read.All``, which the router does not need), so that is reported as "not
  verified", not as a failure;
* ``folder X`` - ``GET /users/{mailbox}/mailFolders/{X}`` for the folder read and a ``move:``
  target (incoming), which needs ``Mail.ReadWrite`` and a mailbox the application access policy
  allows;
* ``send`` (outgoing) - Graph has no dry-run send, so ``Mail.Send`` can only be proven by
  sending: the step says so and never claims more.
"""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import quote

import requests

from router.errors import ProviderAuthError, ProviderUnavailable
from router.graph.client import GraphClient, error_code, raise_for_status
from router.providers.base import AccessStep

NO_DRY_RUN = (
    "not checked - Graph has no dry-run send, so Mail.Send is proven only by sending (the "
    "first email fails with a 403 saying what is missing if it is not granted)"
)


def graph_steps(
    client: Callable[[], GraphClient], mailbox: str, folders: list[str], sends: bool
) -> list[AccessStep]:
    """The steps of a Graph instance (module docstring); ``client`` gives the opened client."""
    steps = [
        AccessStep("token", lambda: _token(client())),
        AccessStep("mailbox", lambda: _mailbox(client(), mailbox)),
    ]
    steps += [AccessStep(f"folder {f}", _folder_check(client, mailbox, f)) for f in folders]
    if sends:
        steps.append(AccessStep("send", lambda: NO_DRY_RUN))
    return steps


def _token(client: GraphClient) -> str:
    client.tokens.token()
    return f"ok, from {client.tokens.authority}"


def _mailbox(client: GraphClient, mailbox: str) -> str:
    response = client.request("GET", f"users/{_quoted(mailbox)}", params={"$select": "mail"})
    if response.status_code == 403:
        return (
            "not verified - the app may not read the directory (User.Read.All); the router "
            "does not need that, the next steps show whether the mailbox works"
        )
    if response.status_code == 404:
        raise ProviderUnavailable(
            f"mailbox {mailbox}: HTTP 404 {error_code(response)} - check <EmailUser>"
        )
    raise_for_status(response, f"mailbox {mailbox}")
    return f"ok, {_field(response, 'mail') or mailbox}"


def _folder_check(
    client: Callable[[], GraphClient], mailbox: str, folder: str
) -> Callable[[], str]:
    def check() -> str:
        folders = f"users/{_quoted(mailbox)}/mailFolders"
        response = client().request("GET", f"{folders}/{quote(folder, safe='')}")
        if response.status_code in (400, 404):  # Graph takes ids and well-known names only
            response = _by_display_name(client(), folders, folder) or response
        if response.status_code == 404:
            raise ProviderUnavailable(
                f"folder {folder!r}: HTTP 404 {error_code(response)} - no such folder (a "
                "well-known name such as inbox, or a display name) in this mailbox"
            )
        if response.status_code == 403:
            raise ProviderAuthError(
                f"folder {folder!r}: HTTP 403 {error_code(response)} - the app needs "
                "Mail.ReadWrite with admin consent, and the application access policy (or RBAC "
                "for Applications) must include this mailbox"
            )
        raise_for_status(response, f"folder {folder!r}")
        name = _field(response, "displayName") or folder
        return f"ok, {name} ({_field(response, 'totalItemCount') or 0} messages)"

    return check


def _by_display_name(client: GraphClient, folders: str, name: str) -> requests.Response | None:
    """The folder called ``name`` as its own answer (``GET .../mailFolders/{id}``), or None."""
    escaped = name.replace("'", "''")
    found = client.request("GET", folders, params={"$filter": f"displayName eq '{escaped}'"})
    if found.status_code != 200:
        return None
    rows = found.json().get("value") or []
    return (
        client.request("GET", f"{folders}/{quote(str(rows[0]['id']), safe='')}") if rows else None
    )


def _field(response: requests.Response, name: str) -> str:
    try:
        body = response.json()
    except ValueError:
        return ""
    value = body.get(name) if isinstance(body, dict) else None
    return "" if value is None else str(value)


def _quoted(mailbox: str) -> str:
    return quote(mailbox, safe="@")


__all__ = ["NO_DRY_RUN", "graph_steps"]
