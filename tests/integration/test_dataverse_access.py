"""``email-router test-access`` against the simulator: clear success, clear failures, exit codes."""

from __future__ import annotations

from pathlib import Path

import pytest

from router.cli import main
from tests.servers.simulator import CLIENT_ID, CLIENT_SECRET, TENANT, SimulatorServer


def write_config(path: Path, sim: SimulatorServer, ca_bundle: str | None = None) -> Path:
    path.write_text(
        f"""<Configuration>
  <Deployment Name="sim">
    <CrmServerUrl>{sim.org_url}</CrmServerUrl>
    <TenantId>{TENANT}</TenantId>
    <ClientId>{CLIENT_ID}</ClientId>
    <ClientSecret>{CLIENT_SECRET}</ClientSecret>
    <Authority>{sim.authority}</Authority>
    <CaBundle>{ca_bundle or sim.ca_path}</CaBundle>
  </Deployment>
</Configuration>
""",
        encoding="utf-8",
    )
    return path


def test_working_credentials_report_token_and_user(
    simulator: SimulatorServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path / "router.xml", simulator)

    code = main(["test-access", "--config", str(config), "--deployment", "sim"])

    out = capsys.readouterr().out
    assert code == 0
    assert "token: ok" in out and "WhoAmI: ok, user id " in out
    assert CLIENT_SECRET not in out


def test_refused_secret_fails_with_a_hint(
    simulator: SimulatorServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    simulator.set_faults(token_error=True)
    config = write_config(tmp_path / "router.xml", simulator)

    code = main(["test-access", "--config", str(config)])

    out = capsys.readouterr().out
    assert code == 1
    assert "token: FAILED" in out and "invalid_client" in out and "hint:" in out
    assert "WhoAmI" not in out


def test_untrusted_certificate_points_at_the_ca_bundle(
    simulator: SimulatorServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import trustme

    other_ca = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other_ca))
    config = write_config(tmp_path / "router.xml", simulator, ca_bundle=str(other_ca))

    code = main(["test-access", "--config", str(config)])

    assert code == 1
    assert "TLS verification failed" in capsys.readouterr().out


def test_unknown_deployment_is_a_configuration_error(
    simulator: SimulatorServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path / "router.xml", simulator)

    assert main(["test-access", "--config", str(config), "--deployment", "nope"]) == 2
    assert "nope" in capsys.readouterr().err
