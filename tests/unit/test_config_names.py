"""Instance and Deployment names: only what state keys and leases can hold, nothing reserved.

A name becomes part of state keys (``er:ledger:<name>``), leases (``<name>#deliver``) and the
router's own records (``_outbound``); a name that looks like one of those would share its state.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from router.cli import main
from router.config import Deployment, ProviderConfiguration
from router.configcheck import load_config
from router.models import Direction

RULE = (
    "Name= must match [A-Za-z0-9][A-Za-z0-9._@-]{0,127} (a letter or digit, then letters, "
    "digits, '.', '_', '-' or '@'; at most 128 characters)"
)

# (name as written in the XML attribute, why it is refused)
BAD = [
    ("X#deliver", "'#' is reserved for the router's own leases (NAME#deliver)"),
    ("_outbound", "a leading '_' is reserved for the router's own records (_outbound)"),
    ("_sales", "a leading '_' is reserved for the router's own records (_outbound)"),
    (" sales", "no spaces or control characters"),
    ("sales ", "no spaces or control characters"),
    ("sa&#9;les", "no spaces or control characters"),
    ("sales&#10;", "no spaces or control characters"),
    ("sales:imap", "':', '/' and '%' separate or escape the parts of state keys"),
    ("sales/imap", "':', '/' and '%' separate or escape the parts of state keys"),
    ("sales%3Aimap", "':', '/' and '%' separate or escape the parts of state keys"),
    ("a" * 129, "129 characters is too long"),
    ("sales*", "'*' is not allowed"),
    ("-sales", "start with a letter or digit"),
]


def write(tmp_path: Path, provider: str = "in", deployment: str = "org") -> Path:
    path = tmp_path / "router.xml"
    path.write_text(
        f"""<Configuration>
  <Deployment Name="{deployment}">
    <Adapter>memory</Adapter>
    <CrmServerUrl>https://org.example.com</CrmServerUrl>
  </Deployment>
  <ProviderConfiguration Name="{provider}">
    <ProviderClass>memory</ProviderClass>
    <Direction>Incoming</Direction>
  </ProviderConfiguration>
</Configuration>
""",
        encoding="utf-8",
    )
    path.chmod(0o600)
    return path


def shown(name: str) -> str:
    """The name as the error quotes it: decoded character references, long values clipped."""
    value = name.replace("&#9;", "\t").replace("&#10;", "\n")
    return repr(value if len(value) <= 80 else value[:77] + "...")


@pytest.mark.parametrize(("name", "why"), BAD, ids=[b[0][:20] for b in BAD])
def test_a_bad_instance_name_is_refused_with_the_allowed_pattern(
    name: str, why: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, provider=name)

    code = main(["validate", str(path)])

    err = capsys.readouterr().err.splitlines()
    assert code == 2
    assert err == [f"{path}:6: <ProviderConfiguration>: {RULE}: {why} (got {shown(name)})"]


@pytest.mark.parametrize(("name", "why"), BAD[:3], ids=[b[0] for b in BAD[:3]])
def test_a_bad_deployment_name_is_refused_with_the_allowed_pattern(
    name: str, why: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, deployment=name)

    code = main(["validate", str(path)])

    err = capsys.readouterr().err.splitlines()
    assert code == 2
    assert err == [f"{path}:2: <Deployment>: {RULE}: {why} (got {shown(name)})"]


@pytest.mark.parametrize(
    "name", ["in", "sales-imap", "sales.imap", "sales@contoso.com", "In_1", "9box", "a" * 128]
)
def test_ordinary_names_are_accepted(name: str, tmp_path: Path) -> None:
    config = load_config(write(tmp_path, provider=name, deployment=name))

    assert (config.providers[0].name, config.deployments[0].name) == (name, name)


@pytest.mark.parametrize("name", ["_outbound", "X#deliver", "a b"])
def test_names_are_checked_for_models_built_in_code_too(name: str) -> None:
    with pytest.raises(ValidationError, match="must match"):
        ProviderConfiguration(name=name, provider_class="memory", direction=Direction.INCOMING)
    with pytest.raises(ValidationError, match="must match"):
        Deployment(name=name, adapter="memory", crm_server_url="https://x.example")
