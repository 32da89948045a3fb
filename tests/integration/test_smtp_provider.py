"""The smtp provider against aiosmtpd: TLS modes, certificate checks, AUTH, connection reuse."""

from __future__ import annotations

import socket
import time
from typing import Any

import pytest

from router.errors import MessageRejected, ProviderAuthError, ProviderUnavailable
from router.mail.compose import compose_message
from router.models import Address, OutboundEmail
from router.providers.smtp import SmtpProvider
from tests.integration.send_support import declared, outgoing_cfg
from tests.servers.common import free_port

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

EMAIL = declared(
    OutboundEmail(
        "e1",
        "Grüße",
        "<p>Hallo</p>",
        Address("sales@example.com", "Vertrieb"),
        to=(Address("to@example.com"),),
        bcc=(Address("hidden@example.com"),),
    )
)


def _send(provider: SmtpProvider, email: OutboundEmail = EMAIL) -> Any:
    composed = compose_message(email)
    with provider:
        return provider.submit(email, composed.raw, "bounce@example.com")


@pytest.mark.parametrize("security", ["ssl", "starttls"])
def test_tls_delivers_when_the_private_ca_is_trusted(
    smtp_server: Any, smtp_certs: Any, security: str
) -> None:
    sink = smtp_server(security=security)
    cfg = outgoing_cfg(sink.port, security=security, params={"ca_bundle": str(smtp_certs.ca_pem)})

    result = _send(SmtpProvider(cfg))

    assert result.accepted == ("to@example.com", "hidden@example.com")
    assert [m.rcpt_tos for m in sink.messages] == [("to@example.com", "hidden@example.com")]
    assert sink.messages[0].mail_from == "bounce@example.com"


@pytest.mark.parametrize("security", ["ssl", "starttls"])
def test_untrusted_certificate_is_refused_by_default(smtp_server: Any, security: str) -> None:
    sink = smtp_server(security=security)
    cfg = outgoing_cfg(sink.port, security=security)  # no ca_bundle: the system trust store

    with pytest.raises(ProviderAuthError, match=r"CERTIFICATE_VERIFY_FAILED|certificate verify"):
        _send(SmtpProvider(cfg))
    assert sink.messages == []


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
def test_password_auth_with_each_mechanism(
    smtp_server: Any, smtp_certs: Any, mechanism: str
) -> None:
    sink = smtp_server(security="starttls", users={"sales": "s3cret"})
    cfg = outgoing_cfg(
        sink.port,
        security="starttls",
        auth="password",
        user="sales",
        password="s3cret",
        params={"ca_bundle": str(smtp_certs.ca_pem), "auth_mechanism": mechanism},
    )
    _send(SmtpProvider(cfg))
    assert len(sink.messages) == 1


def test_wrong_password_is_an_auth_error_that_does_not_show_the_password(
    smtp_server: Any,
) -> None:
    sink = smtp_server(users={"sales": "s3cret"})
    cfg = outgoing_cfg(sink.port, auth="password", user="sales", password="hunter2-wrong")

    with pytest.raises(ProviderAuthError) as err:
        _send(SmtpProvider(cfg))

    assert "535" in str(err.value)
    assert "hunter2" not in str(err.value) and "hunter2" not in repr(cfg)


def test_xoauth2_access_token_is_accepted_and_a_wrong_one_refused(smtp_server: Any) -> None:
    sink = smtp_server(tokens={"sales@example.com": "tok-123"})
    good = outgoing_cfg(sink.port, auth="xoauth2", user="sales@example.com", password="tok-123")
    bad = outgoing_cfg(sink.port, auth="xoauth2", user="sales@example.com", password="tok-999")

    _send(SmtpProvider(good))
    with pytest.raises(ProviderAuthError):
        _send(SmtpProvider(bad))
    assert len(sink.messages) == 1


def test_one_connection_carries_the_whole_batch(smtp_server: Any) -> None:
    sink = smtp_server()
    provider = SmtpProvider(outgoing_cfg(sink.port))
    composed = compose_message(EMAIL)
    with provider:
        for _ in range(5):
            provider.submit(EMAIL, composed.raw, "bounce@example.com")
    assert len(sink.messages) == 5
    assert len({m.peer for m in sink.messages}) == 1


def test_every_recipient_refused_for_good_raises_message_rejected(smtp_server: Any) -> None:
    sink = smtp_server(
        rcpt_always={
            "to@example.com": "550 5.1.1 unknown user",
            "hidden@example.com": "550 5.1.1 unknown user",
        }
    )
    with pytest.raises(MessageRejected, match=r"550 5\.1\.1 unknown user"):
        _send(SmtpProvider(outgoing_cfg(sink.port)))


@pytest.mark.parametrize("hostile", ['"\r\n', "josé@müller..de", "x@y\r\nRCPT TO:<evil@x.example>"])
def test_a_hostile_recipient_refuses_that_message_and_the_connection_sends_the_next(
    smtp_server: Any, hostile: str
) -> None:
    # Given a server offering SMTPUTF8 and a caller handing over a raw hostile recipient
    sink = smtp_server()
    provider = SmtpProvider(outgoing_cfg(sink.port))
    composed = compose_message(EMAIL)
    with provider:
        with pytest.raises(MessageRejected, match=r"not sent: .*correct the address"):
            provider.submit(
                EMAIL, composed.raw, "bounce@example.com", None, ["to@example.com", hostile]
            )
        provider.submit(EMAIL, composed.raw, "bounce@example.com")
    # Then nothing of the hostile message reached the server, and the next one went through
    assert len(sink.messages) == 1 and not any("evil" in line for line in sink.transcript)
    assert len({m.peer for m in sink.messages}) == 1


def test_a_server_that_is_down_is_a_retryable_error() -> None:
    with pytest.raises(ProviderUnavailable):
        _send(SmtpProvider(outgoing_cfg(free_port())))


def test_dots_at_line_starts_survive_the_trip(smtp_server: Any) -> None:
    sink = smtp_server()
    email = OutboundEmail(
        "e2",
        "dots",
        "<pre>\n.\n..leading\n.</pre>",
        Address("a@example.com"),
        to=(Address("b@example.com"),),
    )
    _send(SmtpProvider(outgoing_cfg(sink.port)), email)
    html = sink.messages[0].message().get_body(("html",)).get_content()
    assert "\n.\n..leading\n." in html.replace("\r\n", "\n")


def test_connection_closed_by_the_server_while_idle_is_reopened(smtp_server: Any) -> None:
    sink = smtp_server(idle_timeout=0.3)  # aiosmtpd answers 421 and hangs up when idle
    provider = SmtpProvider(outgoing_cfg(sink.port))
    composed = compose_message(EMAIL)
    with provider:
        provider.submit(EMAIL, composed.raw, "bounce@example.com")
        time.sleep(0.8)
        provider.submit(EMAIL, composed.raw, "bounce@example.com")
    assert len(sink.messages) == 2
    assert len({m.peer for m in sink.messages}) == 2  # a second connection


def test_a_server_that_never_answers_times_out_as_retryable() -> None:
    with socket.socket() as silent:  # accepts connections (backlog) but never greets
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        cfg = outgoing_cfg(silent.getsockname()[1], params={"timeout": "0.5"})
        started = time.monotonic()
        with pytest.raises(ProviderUnavailable, match="timed out"):
            _send(SmtpProvider(cfg))
        assert time.monotonic() - started < 5


def test_starttls_required_but_not_offered_stops_instead_of_sending_in_clear(
    smtp_server: Any, smtp_certs: Any
) -> None:
    sink = smtp_server()  # plain server: no STARTTLS in its EHLO
    cfg = outgoing_cfg(sink.port, security="starttls", params={"ca_bundle": str(smtp_certs.ca_pem)})
    with pytest.raises(ProviderAuthError, match="STARTTLS"):
        _send(SmtpProvider(cfg))
    assert sink.messages == []


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
def test_a_non_ascii_password_authenticates_with_each_mechanism(
    smtp_server: Any, smtp_certs: Any, mechanism: str
) -> None:
    sink = smtp_server(security="starttls", users={"sälës": "pässwörd-€-日本"})
    cfg = outgoing_cfg(
        sink.port,
        security="starttls",
        auth="password",
        user="sälës",
        password="pässwörd-€-日本",
        params={"ca_bundle": str(smtp_certs.ca_pem), "auth_mechanism": mechanism},
    )
    _send(SmtpProvider(cfg))
    assert len(sink.messages) == 1


def test_a_wrong_non_ascii_password_is_a_credentials_error_not_a_crash(smtp_server: Any) -> None:
    sink = smtp_server(users={"sales": "pässwörd"})
    cfg = outgoing_cfg(sink.port, auth="password", user="sales", password="pässwört-falsch")

    with pytest.raises(ProviderAuthError) as err:
        _send(SmtpProvider(cfg))

    assert "535" in str(err.value) and "pässwört" not in str(err.value)
    assert sink.messages == []
