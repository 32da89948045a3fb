"""``email-router test-access`` for a graph outgoing instance, against both simulators.

The configuration file is the README's example shape (Deployment + graph instance with the
client secret in ``<EmailPassword>``), pointed at the simulators.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from router.cli import main
from router.providers.credentials import SOURCES
from router.testing.graphsim import CLIENT_ID, CLIENT_SECRET, TENANT, GraphSimulator
from tests.servers import simulator as crm


def write_config(
    path: Path, sim: crm.SimulatorServer, graph: GraphSimulator, mailbox: str, secret: str
) -> Path:
    path.write_text(
        f"""<Configuration>
  <Deployment Name="sim">
    <CrmServerUrl>{sim.org_url}</CrmServerUrl>
    <TenantId>{crm.TENANT}</TenantId>
    <ClientId>{crm.CLIENT_ID}</ClientId>
    <ClientSecret>{crm.CLIENT_SECRET}</ClientSecret>
    <Authority>{sim.authority}</Authority>
    <CaBundle>{sim.ca_path}</CaBundle>
  </Deployment>
  <ProviderConfiguration Name="graph-out">
    <ProviderClass>graph</ProviderClass>
    <Direction>Outgoing</Direction>
    <Deployment>sim</Deployment>
    <EmailServer>{graph.base_url}</EmailServer>
    <EmailUser>{mailbox}</EmailUser>
    <EmailPassword>{secret}</EmailPassword>
    <UserId>5e0d1a8c-0000-4000-8000-000000000001</UserId>
    <Parameters>
      <Parameter Name="tenant_id">{TENANT}</Parameter>
      <Parameter Name="client_id">{CLIENT_ID}</Parameter>
      <Parameter Name="authority">{graph.authority}</Parameter>
      <Parameter Name="ca_bundle">{graph.ca_path}</Parameter>
      <Parameter Name="save_to_sent_items">false</Parameter>
    </Parameters>
  </ProviderConfiguration>
</Configuration>
""",
        encoding="utf-8",
    )
    return path


@pytest.fixture(autouse=True)
def _fresh_tokens() -> None:
    SOURCES.clear()


def test_a_working_graph_instance_reports_token_mailbox_and_the_send_limit(
    simulator: crm.SimulatorServer,
    graphsim: GraphSimulator,
    graph_mailbox: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = write_config(tmp_path / "r.xml", simulator, graphsim, graph_mailbox, CLIENT_SECRET)

    code = main(["test-access", "--config", str(config), "--instance", "graph-out"])

    out = capsys.readouterr().out
    assert code == 0, out
    assert f"Instance graph-out: graph Outgoing, mailbox {graph_mailbox}" in out
    assert "  connect: ok" in out
    assert f"  token: ok, from {graphsim.authority}" in out
    assert f"  mailbox: ok, {graph_mailbox}" in out
    assert "  send: not checked - Graph has no dry-run send" in out
    assert graphsim.sent(graph_mailbox) == []  # nothing was sent to find that out


def test_a_wrong_client_secret_fails_at_connect_with_a_hint_and_no_secret(
    simulator: crm.SimulatorServer,
    graphsim: GraphSimulator,
    graph_mailbox: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = write_config(tmp_path / "r.xml", simulator, graphsim, graph_mailbox, "not-it-42")

    code = main(["test-access", "--config", str(config), "--instance", "graph-out"])

    out = capsys.readouterr().out
    assert code == 1
    assert "  connect: FAILED - " in out and "invalid_client" in out
    assert "    hint: fix <EmailUser>/<EmailPassword>" in out
    assert "not-it-42" not in out and "token:" not in out  # stops at the first failure


def test_without_a_selection_every_deployment_and_instance_is_checked(
    simulator: crm.SimulatorServer,
    graphsim: GraphSimulator,
    graph_mailbox: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = write_config(tmp_path / "r.xml", simulator, graphsim, graph_mailbox, CLIENT_SECRET)

    code = main(["test-access", "--config", str(config)])

    out = capsys.readouterr().out
    assert code == 0, out
    assert out.index("Deployment sim:") < out.index("Instance graph-out:")
    assert "WhoAmI: ok" in out and "mailbox: ok" in out


def test_an_unknown_instance_is_a_configuration_error(
    simulator: crm.SimulatorServer, graphsim: GraphSimulator, tmp_path: Path
) -> None:
    config = write_config(tmp_path / "r.xml", simulator, graphsim, "a@sim.example", "x")
    assert main(["test-access", "--config", str(config), "--instance", "nope"]) == 2


def write_incoming(
    path: Path, sim: crm.SimulatorServer, graph: GraphSimulator, mailbox: str, action: str
) -> Path:
    """The same file with a graph incoming instance reading the inbox (``action`` after)."""
    text = write_config(path, sim, graph, mailbox, CLIENT_SECRET).read_text()
    incoming = f"""  <ProviderConfiguration Name="graph-in">
    <ProviderClass>graph</ProviderClass>
    <Direction>Incoming</Direction>
    <Deployment>sim</Deployment>
    <EmailServer>{graph.base_url}</EmailServer>
    <EmailUser>{mailbox}</EmailUser>
    <EmailPassword>{CLIENT_SECRET}</EmailPassword>
    <UserId>5e0d1a8c-0000-4000-8000-000000000001</UserId>
    <AfterProcessing>{action}</AfterProcessing>
    <Parameters>
      <Parameter Name="tenant_id">{TENANT}</Parameter>
      <Parameter Name="client_id">{CLIENT_ID}</Parameter>
      <Parameter Name="authority">{graph.authority}</Parameter>
      <Parameter Name="ca_bundle">{graph.ca_path}</Parameter>
    </Parameters>
  </ProviderConfiguration>
</Configuration>
"""
    path.write_text(text.replace("</Configuration>\n", incoming), encoding="utf-8")
    return path


def test_an_incoming_instance_checks_its_folder_and_its_move_target(
    simulator: crm.SimulatorServer,
    graphsim: GraphSimulator,
    graph_mailbox: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = write_incoming(tmp_path / "r.xml", simulator, graphsim, graph_mailbox, "move:Archive")

    code = main(["test-access", "--config", str(config), "--instance", "graph-in"])

    out = capsys.readouterr().out
    assert code == 0, out
    assert "  folder inbox: ok, Inbox (0 messages)" in out
    assert "  folder Archive: ok, Archive" in out
    assert "send:" not in out


def test_a_move_target_that_does_not_exist_fails_before_any_mail_is_read(
    simulator: crm.SimulatorServer,
    graphsim: GraphSimulator,
    graph_mailbox: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = write_incoming(tmp_path / "r.xml", simulator, graphsim, graph_mailbox, "move:Nope")

    code = main(["test-access", "--config", str(config), "--instance", "graph-in"])

    out = capsys.readouterr().out
    assert code == 1
    assert "  folder Nope: FAILED - folder 'Nope': HTTP 404" in out
