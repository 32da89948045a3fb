"""router.oauth.TokenSource: cached tokens renewed before expiry, errors in the caller's terms.

The token endpoint is the Graph simulator's (HTTPS, its own CA), which issues tokens for the
Graph and the Outlook (IMAP/POP3/SMTP XOAUTH2) scopes.
"""

from __future__ import annotations

from typing import Any

import pytest
import requests

from router.crm.dataverse_auth import TokenSource as DataverseTokens
from router.errors import AuthError, CrmAuthError, CrmUnavailable, RetryableError
from router.oauth import GRAPH_SCOPE, OUTLOOK_SCOPE, TokenSource, https_session
from router.testing.graphsim import CLIENT_ID, CLIENT_SECRET, GraphSimulator


@pytest.mark.parametrize("scope", [GRAPH_SCOPE, OUTLOOK_SCOPE])
def test_a_token_is_fetched_once_and_then_served_from_the_cache(
    graphsim: GraphSimulator, scope: str
) -> None:
    source = TokenSource(
        graphsim.authority, CLIENT_ID, CLIENT_SECRET, [scope], str(graphsim.ca_path)
    )

    first, second = source.token(), source.token()

    assert first == second and source.acquired == 1


def test_a_short_lived_token_is_renewed_before_it_expires(graphsim: GraphSimulator) -> None:
    graphsim.set_faults(token_lifetime=10)
    now = [0.0]
    source = TokenSource(
        graphsim.authority, CLIENT_ID, CLIENT_SECRET, [GRAPH_SCOPE], str(graphsim.ca_path),
        clock=lambda: now[0],
    )  # fmt: skip
    first = source.token()
    now[0] = 8.9
    assert source.token() == first
    now[0] = 9.1  # within the last tenth of its lifetime

    assert source.token() != first and source.acquired == 2


def test_refresh_replaces_only_the_stale_token(graphsim: GraphSimulator) -> None:
    source = TokenSource(
        graphsim.authority, CLIENT_ID, CLIENT_SECRET, [GRAPH_SCOPE], str(graphsim.ca_path)
    )
    stale = source.token()
    fresh = source.refresh(stale)

    assert fresh != stale
    assert source.refresh(stale) == fresh and source.acquired == 2  # another thread's stale


def test_a_wrong_secret_is_an_auth_error_with_a_hint_and_without_the_secret(
    graphsim: GraphSimulator,
) -> None:
    source = TokenSource(
        graphsim.authority, CLIENT_ID, "wrong-secret-123", [GRAPH_SCOPE], str(graphsim.ca_path)
    )

    with pytest.raises(AuthError, match=r"invalid_client.*client secret") as caught:
        source.token()

    assert "wrong-secret-123" not in str(caught.value)
    assert "wrong-secret-123" not in repr(source)


def test_the_dataverse_subclass_raises_crm_errors_that_are_still_auth_errors(
    graphsim: GraphSimulator,
) -> None:
    session = https_session(str(graphsim.ca_path))
    source = DataverseTokens(
        graphsim.authority, "no-such-client", lambda: "x", "https://org", session
    )

    with pytest.raises(CrmAuthError, match=r"invalid_scope.*check <CrmServerUrl>") as caught:
        source.token()

    assert isinstance(caught.value, AuthError)


def test_an_unreachable_token_endpoint_is_retryable() -> None:
    source = TokenSource("https://127.0.0.1:9/t", CLIENT_ID, CLIENT_SECRET, [GRAPH_SCOPE])
    with pytest.raises(RetryableError):
        source.token()
    crm = DataverseTokens(
        "https://127.0.0.1:9/t", "c", lambda: "s", "https://org", requests.Session()
    )
    with pytest.raises(CrmUnavailable):
        crm.token()


def test_an_http_authority_is_refused_before_the_secret_leaves(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    built: list[Any] = []
    monkeypatch.setattr("msal.ConfidentialClientApplication", lambda *a, **k: built.append(a))

    with pytest.raises(AuthError, match=r"refusing http://login\.example"):
        TokenSource("http://login.example/t", CLIENT_ID, CLIENT_SECRET, [GRAPH_SCOPE])

    assert built == []
