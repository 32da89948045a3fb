"""What every graph instance configures to reach Graph: options and the client built from them.

Use :class:`GraphOptions` as the base of a graph provider's ``options_model`` and
:func:`make_client` to build its :class:`~router.graph.client.GraphClient` from the instance's
configuration:

* ``<EmailServer>`` - the Graph base URL (default ``https://graph.microsoft.com/v1.0``; https
  only);
* ``<EmailUser>`` - the mailbox (its address or user principal name);
* ``<EmailPassword>`` - the app registration's client secret (``Env=`` / ``File=`` as usual);
* ``<Parameters>``: ``tenant_id``, ``client_id``, ``authority`` (default
  ``https://login.microsoftonline.com/{tenant_id}``; national clouds and test servers),
  ``ca_bundle`` (a PEM file to verify Graph and the authority with), ``timeout`` (seconds).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from router.config import ProviderConfiguration
from router.errors import ConfigError
from router.graph.client import DEFAULT_BASE_URL, GraphClient, GraphTokens
from router.oauth import GRAPH_SCOPE


class GraphOptions(BaseModel):
    """The ``<Parameters>`` every graph instance takes (see the module docstring)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    tenant_id: str | None = Field(None, min_length=1)
    client_id: str = Field(min_length=1)
    authority: str | None = Field(None, pattern=r"^https://")
    ca_bundle: str | None = None
    timeout: float = Field(60.0, gt=0, le=600)

    def authority_url(self, name: str) -> str:
        """The authority: ``authority``, else the public cloud's for ``tenant_id``."""
        if self.authority:
            return self.authority.rstrip("/")
        if not self.tenant_id:
            raise ConfigError(f"{name}: <Parameter Name='tenant_id'> (or 'authority') is required")
        return f"https://login.microsoftonline.com/{self.tenant_id}"


def base_url_of(config: ProviderConfiguration) -> str:
    """``<EmailServer>`` or the public Graph endpoint; ConfigError unless it is https://."""
    url = (config.email_server or DEFAULT_BASE_URL).strip().rstrip("/")
    if not url.lower().startswith("https://"):
        raise ConfigError(
            f"{config.name}: <EmailServer> must be an https:// Graph URL (the bearer token "
            f"travels there), e.g. {DEFAULT_BASE_URL}"
        )
    return url


def mailbox_of(config: ProviderConfiguration) -> str:
    """``<EmailUser>``, the mailbox the instance reads or sends from; ConfigError if missing."""
    if not config.email_user:
        raise ConfigError(f"{config.name}: <EmailUser> (the mailbox address) is required")
    return config.email_user.strip()


def check(config: ProviderConfiguration, options: GraphOptions) -> None:
    """Raise ConfigError for what a graph instance cannot work without (never connects)."""
    base_url_of(config)
    mailbox_of(config)
    options.authority_url(config.name)
    if config.email_password is None:
        raise ConfigError(f"{config.name}: <EmailPassword> (the client secret) is required")


def make_client(
    config: ProviderConfiguration, options: GraphOptions, scope: str = GRAPH_SCOPE
) -> GraphClient:
    """A :class:`GraphClient` with client-credentials tokens for the instance."""
    check(config, options)
    secret = config.email_password
    assert secret is not None  # check() refused it otherwise
    tokens = GraphTokens(
        options.authority_url(config.name),
        options.client_id,
        secret.get_secret_value,
        [scope],
        options.ca_bundle,
    )
    return GraphClient(
        base_url_of(config), tokens, ca_bundle=options.ca_bundle, timeout=options.timeout
    )


__all__ = ["GraphOptions", "base_url_of", "check", "mailbox_of", "make_client"]
