"""XOAUTH2 by client credentials: the options, the checks at start-up, one shared token source
per app, and a refused token renewed exactly once (fake token sources; the real token endpoint
and mail servers are in tests/integration/test_xoauth2_client_credentials.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from router.config import Parameter, Parameters, ProviderConfiguration, Secret
from router.configcheck import check_file
from router.errors import ConfigError
from router.models import Direction
from router.oauth import OUTLOOK_SCOPE, TokenSource
from router.providers.credentials import SOURCES, Credentials, OAuthOptions
from router.providers.imap import ImapProvider
from router.providers.pop3 import Pop3Provider
from router.providers.smtp import SmtpProvider

TENANT = "contoso.onmicrosoft.com"


class FakeSource(TokenSource):
    """Hands out ``tok-1``, ``tok-2``, ... and records what it was built with."""

    built: list[tuple[str, str, str, list[str], str | None]] = []

    def __init__(
        self, authority: str, client_id: str, secret: str, scopes: list[str], ca: str | None
    ) -> None:
        super().__init__(authority, client_id, secret, scopes, ca)
        FakeSource.built.append((authority, client_id, secret, scopes, ca))
        self.issued = 0

    def _acquire(self) -> None:  # no network: count instead
        self.issued += 1
        self._token = f"tok-{self.issued}"
        self._refresh_at = float("inf")


@pytest.fixture(autouse=True)
def fake_sources(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    FakeSource.built = []
    monkeypatch.setattr(SOURCES, "factory", FakeSource)
    SOURCES.clear()
    yield
    SOURCES.clear()


def cfg(provider: str = "imap", auth: str = "xoauth2", **params: str) -> ProviderConfiguration:
    outgoing = provider == "smtp"
    return ProviderConfiguration(
        name="m365",
        provider_class=provider,
        direction=Direction.OUTGOING if outgoing else Direction.INCOMING,
        email_server="outlook.office365.com",
        email_auth_mode=auth,  # type: ignore[arg-type]
        email_user="crm@contoso.com",
        email_password=Secret(value="client-secret-value"),
        parameters=Parameters(items=tuple(Parameter(name=k, value=v) for k, v in params.items())),
    )


def client_credentials(provider: str = "imap", **extra: str) -> ProviderConfiguration:
    return cfg(provider, tenant_id=TENANT, client_id="app-id", **extra)


def test_client_credentials_ask_the_tenants_authority_for_the_outlook_scope() -> None:
    creds = ImapProvider(client_credentials()).credentials
    assert creds.secret() == "tok-1"
    ((authority, client_id, secret, scopes, _),) = FakeSource.built
    assert authority == f"https://login.microsoftonline.com/{TENANT}"
    assert (client_id, secret, scopes) == ("app-id", "client-secret-value", [OUTLOOK_SCOPE])


def test_an_authority_parameter_replaces_the_public_cloud() -> None:
    authority = "https://login.microsoftonline.us/tenant-x"
    creds = Pop3Provider(cfg("pop3", authority=authority, client_id="app-id")).credentials
    creds.secret()
    assert FakeSource.built[0][0] == authority


def test_every_provider_of_the_same_app_shares_one_cached_token() -> None:
    # Providers are built per cycle: the token must outlive them.
    tokens = [SmtpProvider(client_credentials("smtp")).credentials for _ in range(3)]
    assert {c.secret() for c in tokens if c is not None} == {"tok-1"}
    assert len(FakeSource.built) == 1


def test_a_rotated_client_secret_gets_a_new_token_source() -> None:
    ImapProvider(client_credentials()).credentials.secret()
    rotated = client_credentials().model_copy(update={"email_password": Secret(value="new")})
    ImapProvider(rotated).credentials.secret()
    assert [b[2] for b in FakeSource.built] == ["client-secret-value", "new"]


def test_a_refused_token_is_renewed_once_and_the_login_retried() -> None:
    creds = ImapProvider(client_credentials()).credentials
    tried: list[str] = []

    def login(token: str) -> None:
        tried.append(token)
        if token == "tok-1":
            raise PermissionError("AUTHENTICATE failed")

    creds.login_with_token(login, refused=(PermissionError,))
    assert tried == ["tok-1", "tok-2"]


def test_a_token_refused_twice_stops_after_one_renewal() -> None:
    creds = ImapProvider(client_credentials()).credentials
    tried: list[str] = []

    def login(token: str) -> None:
        tried.append(token)
        raise PermissionError("AUTHENTICATE failed")

    with pytest.raises(PermissionError):
        creds.login_with_token(login, refused=(PermissionError,))
    assert tried == ["tok-1", "tok-2"]


def test_a_hand_made_token_is_tried_once_and_never_renewed() -> None:
    creds = Credentials(cfg(), oauth=OAuthOptions())
    tried: list[str] = []

    def login(token: str) -> None:
        tried.append(token)
        raise PermissionError("expired")

    with pytest.raises(PermissionError):
        creds.login_with_token(login, refused=(PermissionError,))
    assert tried == ["client-secret-value"] and FakeSource.built == []


@pytest.mark.parametrize(
    ("params", "problem"),
    [
        ({"tenant_id": TENANT}, "'client_id'>: Value error, is required with tenant_id"),
        ({"client_id": "app-id"}, "'client_id'>: Value error, needs tenant_id"),
        (
            {"authority": "http://login.example.com/t", "client_id": "a"},
            "'authority'>: Value error, must be an https:// URL",
        ),
    ],
)
def test_half_given_client_credentials_are_refused_at_their_parameter(
    params: dict[str, str], problem: str
) -> None:
    with pytest.raises(ConfigError, match=problem):
        ImapProvider(cfg(**params))


@pytest.mark.parametrize("provider", ["imap", "pop3", "smtp"])
def test_client_credentials_need_the_xoauth2_auth_mode(provider: str) -> None:
    with pytest.raises(ConfigError, match="<EmailAuthMode> must be xoauth2"):
        {"imap": ImapProvider, "pop3": Pop3Provider, "smtp": SmtpProvider}[provider](
            cfg(provider, auth="password", tenant_id=TENANT, client_id="app-id")
        )


def test_a_token_provider_and_client_credentials_together_are_refused() -> None:
    with pytest.raises(ConfigError, match="either token_provider or client_id"):
        ImapProvider(client_credentials(token_provider="os:getcwd"))


def test_validate_names_the_missing_client_id_at_the_parameters_line(tmp_path: Path) -> None:
    path = tmp_path / "router.xml"
    path.write_text(
        """<Configuration>
  <Deployment Name="crm"><CrmServerUrl>https://org.crm.dynamics.com</CrmServerUrl>
    <TenantId>t</TenantId><ClientId>c</ClientId><ClientSecret>s</ClientSecret></Deployment>
  <ProviderConfiguration Name="m365-in">
    <ProviderClass>imap</ProviderClass>
    <Direction>Incoming</Direction>
    <EmailServer>outlook.office365.com</EmailServer>
    <EmailAuthMode>xoauth2</EmailAuthMode>
    <EmailUser>crm@contoso.com</EmailUser>
    <EmailPassword>x</EmailPassword>
    <UserId>u</UserId>
    <Parameters>
      <Parameter Name="tenant_id">contoso.onmicrosoft.com</Parameter>
    </Parameters>
  </ProviderConfiguration>
</Configuration>
""",
        encoding="utf-8",
    )
    with pytest.raises(ConfigError) as caught:
        check_file(path)
    assert any(
        p.startswith(f"{path}:12: <Parameter Name='client_id'>: is required with tenant_id")
        for p in caught.value.problems
    ), caught.value.problems


def test_the_client_secret_never_appears_in_the_token_sources_repr() -> None:
    creds = ImapProvider(client_credentials()).credentials
    assert "client-secret-value" not in repr(creds.token_source())
