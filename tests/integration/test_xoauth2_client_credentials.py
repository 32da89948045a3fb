"""XOAUTH2 without a hand-made token: IMAP, POP3 (Dovecot) and SMTP (aiosmtpd) log in with a
token the router gets itself from an HTTPS OAuth2 token endpoint (client credentials, MSAL).

The token endpoint here is a small one the test controls (trustme CA, scripted tokens), because
the mail servers need tokens they can check: Dovecot's test introspection accepts ``tok-<user>``,
the aiosmtpd sink the tokens it is given.
"""

from __future__ import annotations

import http.server
import json
import ssl
import threading
import urllib.parse
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from router.config import Parameter, Parameters, ProviderConfiguration, Secret
from router.errors import ProviderAuthError
from router.models import Direction
from router.oauth import OUTLOOK_SCOPE
from router.providers.base import InstanceState
from router.providers.credentials import SOURCES
from router.providers.imap import ImapProvider
from router.providers.pop3 import Pop3Provider
from router.providers.smtp import SmtpProvider
from tests.servers.dovecot import Dovecot, message, oauth_token
from tests.servers.smtp import Certs, SmtpSink

TENANT = "contoso-test"
CLIENT_ID = "11111111-2222-3333-4444-555555555555"
CLIENT_SECRET = "app-secret-\u00e9-value"
MAILBOX = "crm@contoso.com"


class TokenEndpoint:
    """An HTTPS Entra-ID-like token endpoint: discovery + client credentials, scripted tokens.

    ``tokens`` are handed out in order (the last one repeats); ``requests`` records each token
    request's client id and scope (never the secret, which is only compared).
    """

    def __init__(self, certs: Certs) -> None:
        self.tokens: list[str] = []
        self.requests: list[dict[str, str]] = []
        self.lock = threading.Lock()
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(str(certs.cert_pem), str(certs.key_pem))
        self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True)
        self.ca_path = str(certs.ca_pem)
        self.authority = f"https://localhost:{self.server.server_address[1]}/{TENANT}"
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def issue(self, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        with self.lock:
            self.requests.append({k: form.get(k, "") for k in ("client_id", "scope")})
            if form.get("client_secret") != CLIENT_SECRET or form.get("client_id") != CLIENT_ID:
                error = "AADSTS7000215: Invalid client secret provided."
                return 401, {"error": "invalid_client", "error_description": error}
            token = self.tokens.pop(0) if len(self.tokens) > 1 else self.tokens[0]
        return 200, {"token_type": "Bearer", "expires_in": 3599, "access_token": token}

    def _handler(self) -> type[http.server.BaseHTTPRequestHandler]:
        endpoint = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                base = endpoint.authority
                self._reply(200, {
                    "issuer": f"{base}/v2.0", "token_endpoint": f"{base}/oauth2/v2.0/token",
                    "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
                })  # fmt: skip

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                form = dict(urllib.parse.parse_qsl(self.rfile.read(length).decode()))
                self._reply(*endpoint.issue(form))

            def _reply(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler


@pytest.fixture
def token_endpoint(smtp_certs: Certs) -> Iterator[TokenEndpoint]:
    SOURCES.clear()  # every test starts without a cached token
    endpoint = TokenEndpoint(smtp_certs)
    yield endpoint
    endpoint.close()
    SOURCES.clear()


def client_credentials(
    endpoint: TokenEndpoint, secret: str = CLIENT_SECRET, **params: str
) -> Parameters:
    values = {
        "tenant_id": TENANT,
        "client_id": CLIENT_ID,
        "authority": endpoint.authority,
        "ca_bundle": endpoint.ca_path,
        **params,
    }
    return Parameters(items=tuple(Parameter(name=k, value=v) for k, v in values.items()))


def smtp_cfg(sink: SmtpSink, endpoint: TokenEndpoint, **kw: Any) -> ProviderConfiguration:
    return ProviderConfiguration(
        name="m365-out",
        provider_class="smtp",
        direction=Direction.OUTGOING,
        email_server="127.0.0.1",
        email_port=sink.port,
        email_security="none",
        email_auth_mode="xoauth2",
        email_user=MAILBOX,
        email_password=Secret(value=kw.pop("secret", CLIENT_SECRET)),
        parameters=client_credentials(endpoint, **kw),
    )


def opened_and_closed(provider: Any) -> None:
    provider.open()
    provider.close()


def test_smtp_logs_in_with_an_acquired_token_and_reuses_it_across_cycles(
    smtp_server: Callable[..., SmtpSink], token_endpoint: TokenEndpoint
) -> None:
    # Given an SMTP server that accepts one bearer token, which only the token endpoint knows
    sink = smtp_server(tokens={MAILBOX: "eyJ-good"})
    token_endpoint.tokens = ["eyJ-good"]

    # When three cycles (three providers, as the runtimes build them) log in
    for _ in range(3):
        opened_and_closed(SmtpProvider(smtp_cfg(sink, token_endpoint)))

    # Then one token was requested, for Exchange Online's scope, and used three times
    assert token_endpoint.requests == [{"client_id": CLIENT_ID, "scope": OUTLOOK_SCOPE}]


def test_a_token_the_smtp_server_refuses_is_renewed_once(
    smtp_server: Callable[..., SmtpSink], token_endpoint: TokenEndpoint
) -> None:
    sink = smtp_server(tokens={MAILBOX: "eyJ-fresh"})
    token_endpoint.tokens = ["eyJ-revoked", "eyJ-fresh"]

    opened_and_closed(SmtpProvider(smtp_cfg(sink, token_endpoint)))

    assert len(token_endpoint.requests) == 2


def test_a_token_refused_again_after_renewal_is_an_auth_error(
    smtp_server: Callable[..., SmtpSink], token_endpoint: TokenEndpoint
) -> None:
    sink = smtp_server(tokens={MAILBOX: "eyJ-never-issued"})
    token_endpoint.tokens = ["eyJ-a", "eyJ-b", "eyJ-c"]

    with pytest.raises(ProviderAuthError):
        opened_and_closed(SmtpProvider(smtp_cfg(sink, token_endpoint)))

    assert len(token_endpoint.requests) == 2  # one renewal, not a loop


def test_a_wrong_client_secret_stops_with_a_hint_and_without_the_secret(
    smtp_server: Callable[..., SmtpSink], token_endpoint: TokenEndpoint
) -> None:
    sink = smtp_server(tokens={MAILBOX: "eyJ-good"})
    token_endpoint.tokens = ["eyJ-good"]

    with pytest.raises(ProviderAuthError) as caught:
        opened_and_closed(SmtpProvider(smtp_cfg(sink, token_endpoint, secret="wrong-secret")))

    text = str(caught.value)
    assert "invalid_client" in text and "client_id and the client secret" in text
    assert "wrong-secret" not in text and sink.messages == []


def test_the_token_endpoints_certificate_is_verified(
    smtp_server: Callable[..., SmtpSink], token_endpoint: TokenEndpoint
) -> None:
    # Without the test CA, the system trust store does not know the endpoint's certificate
    sink = smtp_server(tokens={MAILBOX: "eyJ-good"})
    token_endpoint.tokens = ["eyJ-good"]
    cfg = smtp_cfg(sink, token_endpoint)
    params = tuple(p for p in cfg.parameters.items if p.name != "ca_bundle")
    cfg = cfg.model_copy(update={"parameters": Parameters(items=params)})

    with pytest.raises(ProviderAuthError, match="TLS verification failed"):
        opened_and_closed(SmtpProvider(cfg))
    assert token_endpoint.requests == []


@pytest.fixture
def user_with_mail(dovecot: Dovecot, dovecot_user: str) -> str:
    dovecot.append_many(dovecot_user, [message(i) for i in range(1, 6)])
    return dovecot_user


def _dovecot_cfg(
    dovecot: Dovecot, user: str, endpoint: TokenEndpoint, provider: str
) -> ProviderConfiguration:
    cfg = dovecot.provider_config(user, password=CLIENT_SECRET)
    update: dict[str, Any] = {
        "email_auth_mode": "xoauth2",
        "parameters": client_credentials(endpoint),
    }
    if provider == "pop3":
        port = dovecot.ports["pop3"]
        update.update(provider_class="pop3", email_port=port, after_processing="leave")
    return cfg.model_copy(update=update)


@pytest.mark.parametrize("provider", ["imap", "pop3"])
def test_imap_and_pop3_log_in_to_dovecot_with_an_acquired_token(
    dovecot: Dovecot, user_with_mail: str, token_endpoint: TokenEndpoint, provider: str
) -> None:
    # Given Dovecot, which accepts tok-<user> (checked by its introspection endpoint), and a
    # token endpoint that first hands out a revoked token
    token_endpoint.tokens = ["tok-revoked-but-not-for-this-user!", oauth_token(user_with_mail)]
    cfg = _dovecot_cfg(dovecot, user_with_mail, token_endpoint, provider)
    cls = ImapProvider if provider == "imap" else Pop3Provider

    # When the provider logs in and lists the mailbox, twice
    for _ in range(2):
        with cls(cfg) as box:
            assert isinstance(box, (ImapProvider, Pop3Provider))
            listed = box.list_new(InstanceState(cursor=None, data={}), 100)

    # Then it read the mail, after one renewal of the refused token and no other request
    assert len(listed) == 5
    assert len(token_endpoint.requests) == 2
