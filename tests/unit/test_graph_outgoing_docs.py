"""The README's Exchange Online example is a valid configuration: the docs cannot drift."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from router.configcheck import load_config
from router.models import Direction
from router.providers.graph_outgoing import GraphOutgoingOptions, GraphOutgoingProvider
from router.providers.registry import resolve

README = Path(__file__).resolve().parents[2] / "README.md"


def graph_section() -> str:
    text = README.read_text(encoding="utf-8")
    start = text.index("## Exchange Online (Microsoft Graph)")
    return text[start : text.index("\n## ", start + 1)]


def test_the_readme_example_validates_and_builds_every_instance(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (xml,) = re.findall(r"```xml\n(.*?)```", graph_section(), re.DOTALL)
    monkeypatch.setenv("GRAPH_CLIENT_SECRET", "s")
    path = tmp_path / "router.xml"
    path.write_text(
        "<Configuration>\n  <SystemConfiguration><StateStore>sqlite:////var/lib/email-router/state.db"
        "</StateStore></SystemConfiguration>\n"
        '  <Deployment Name="contoso"><CrmServerUrl>https://contoso.crm.dynamics.com'
        "</CrmServerUrl><TenantId>t</TenantId><ClientId>c</ClientId>"
        '<ClientSecret Env="GRAPH_CLIENT_SECRET"/></Deployment>\n'
        f"{xml}</Configuration>\n",
        encoding="utf-8",
    )

    config = load_config(path)

    built = {p.name: resolve(p.provider_class, p.direction)(p) for p in config.providers}
    assert sorted(built) == ["graph-in", "graph-out", "m365-imap", "m365-smtp"]
    assert isinstance(built["graph-out"], GraphOutgoingProvider)
    assert config.provider("graph-out").direction is Direction.OUTGOING


def test_the_options_table_names_every_outgoing_option() -> None:
    table = graph_section()
    for name in GraphOutgoingOptions.model_fields:
        assert f"`{name}`" in table, f"{name} is not documented"
