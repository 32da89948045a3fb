"""``email-router validate``: a table and exit 0, or every problem as FILE:LINE and exit 2."""

from __future__ import annotations

from pathlib import Path

import pytest

from router.cli import main

FIXTURES = Path(__file__).parents[1] / "fixtures" / "config"
EXAMPLE = Path(__file__).parents[2] / "deploy" / "config" / "router.example.xml"

# (fixture, the one line validate must print for it, without the "FILE:" prefix)
BROKEN = [
    (
        "unknown_element",
        "9: <EmailPrt>: unknown element in <ProviderConfiguration>; did you mean <EmailPort>?",
    ),
    (
        "unknown_attribute",
        "9: <EmailPassword>: unknown attribute Environment= (allowed: Env=, File=)",
    ),
    ("missing_required", "6: <ProviderConfiguration>: missing required element <ProviderClass>"),
    ("bad_number", "9: <PollingPeriod>: must be a whole number (got 'sixty')"),
    ("out_of_range", "9: <EmailPort>: must be less than or equal to 65535 (got '70000')"),
    ("bad_enum", "9: <EmailSecurity>: must be 'ssl', 'starttls' or 'none' (got 'tls')"),
    (
        "duplicate_provider_name",
        "10: <ProviderConfiguration>: duplicate Name 'in' (first defined at line 6)",
    ),
    (
        "duplicate_deployment_name",
        "6: <Deployment>: duplicate Name 'org' (first defined at line 2)",
    ),
    (
        "unknown_deployment",
        "9: <Deployment>: unknown Deployment 'contso'; did you mean 'contoso'? "
        "(defined: 'contoso')",
    ),
    (
        "unknown_provider_class",
        "7: <ProviderClass>: unknown provider 'imapp'; did you mean 'imap'?",
    ),
    (
        "bad_parameters",
        "10: <Parameter Name='mailbx'>: unknown parameter; did you mean 'mailbox'? "
        "(allowed: mailbox)",
    ),
    (
        "bad_parameter_value",
        "12: <Parameter Name='fetch_batch'>: must be greater than or equal to 1",
    ),
    (
        "missing_env_secret",
        "9: <EmailPassword>: environment variable ROUTER_TEST_UNSET_PASSWORD is not set "
        "(export ROUTER_TEST_UNSET_PASSWORD=...)",
    ),
    (
        "unreadable_secret_file",
        "5: <ClientSecret>: cannot read secret file '/nonexistent/email-router/client-secret': "
        "No such file or directory",
    ),
    (
        "direction_mismatch",
        "8: <Direction>: provider 'memory-out' (MemoryOutgoingProvider) is Outgoing, not Incoming",
    ),
    ("not_well_formed", "9: <Configuration>: not well-formed XML: mismatched tag"),
    ("wrong_root", "1: <Configuration>: the root element must be <Configuration>, not <Config>"),
    (
        "billion_laughs",
        "2: <Configuration>: DOCTYPE declarations are not allowed (no DTDs, no entities)",
    ),
]


@pytest.fixture(autouse=True)
def _no_stray_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ROUTER_TEST_UNSET_PASSWORD", raising=False)
    monkeypatch.delenv("ROUTER_CONFIG", raising=False)


@pytest.mark.parametrize(("fixture", "expected"), BROKEN, ids=[b[0] for b in BROKEN])
def test_broken_file_exits_2_and_names_file_line_and_element(
    fixture: str, expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = FIXTURES / f"{fixture}.xml"

    code = main(["validate", str(path)])

    err = capsys.readouterr().err.splitlines()
    assert code == 2
    assert len(err) == 1, err
    assert err[0].startswith(f"{path}:{expected}")


def test_every_problem_of_a_file_is_printed_one_per_line_in_line_order(
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = FIXTURES / "many_problems.xml"

    code = main(["validate", str(path)])

    err = capsys.readouterr().err.splitlines()
    assert code == 2
    assert [line.split(": ", 2)[:2] for line in err] == [
        [f"{path}:3", "<MaxThreads>"],
        [f"{path}:4", "<LogLevl>"],
        [f"{path}:12", "<Direction>"],
        [f"{path}:13", "<EmailPort>"],
        [f"{path}:16", "<ProviderClass>"],
        [f"{path}:18", "<Enabled>"],
    ]


def test_missing_file_exits_2_saying_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "nope.xml"

    assert main(["validate", "--config", str(path)]) == 2
    assert capsys.readouterr().err.strip() == (
        f"{path}:0: <Configuration>: cannot read the file: file not found"
    )


def test_example_validates_as_shipped_and_lists_its_three_instances(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)  # relative File= secrets are read beside the config, not here

    code = main(["validate", str(EXAMPLE)])

    out = capsys.readouterr()
    assert code == 0, out.err
    rows = [line.split() for line in out.out.splitlines()[1:4]]
    assert rows == [
        ["sales-imap", "imap", "Incoming", "imap.contoso.com:993", "60", "yes", "contoso"],
        ["support-pop3", "pop3", "Incoming", "pop.contoso.com:995", "120", "yes", "contoso"],
        ["outbound-smtp", "smtp", "Outgoing", "smtp.contoso.com:587", "30", "yes", "contoso"],
    ]
    assert "replace-me" not in out.out + out.err


def test_a_missing_relative_secret_file_is_named_with_its_resolved_path(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    config = tmp_path / "conf" / "router.xml"
    config.parent.mkdir()
    config.write_text(EXAMPLE.read_text())

    code = main(["validate", str(config)])

    err = capsys.readouterr().err
    assert code == 2
    expected = tmp_path / "conf" / "secrets" / "dataverse-client-secret"
    assert f"<ClientSecret>: cannot read secret file '{expected}'" in err


def test_config_path_comes_from_router_config_when_not_given(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("ROUTER_CONFIG", str(FIXTURES / "valid_minimal.xml"))

    assert main(["validate"]) == 0
    assert "valid_minimal.xml: OK, 1 instance(s), 1 deployment(s)" in capsys.readouterr().out


def test_conflicting_positional_and_option_paths_are_a_usage_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    valid = str(FIXTURES / "valid_minimal.xml")

    assert main(["validate", "--config", valid, str(FIXTURES / "bad_enum.xml")]) == 2
    assert "differ" in capsys.readouterr().err


def test_validate_help_describes_the_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["validate", "--help"])

    assert exited.value.code == 0
    assert "FILE:LINE: <Element>" in capsys.readouterr().out
