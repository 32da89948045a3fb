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


def test_missing_file_exits_2_saying_so_and_how_to_name_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "nope.xml"

    assert main(["validate", "--config", str(path)]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"{path}:0: <Configuration>: cannot read the file: file not found",
        "name the configuration file with --config PATH (or -c PATH) or the ROUTER_CONFIG "
        "environment variable",
    ]


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


# -- broken provider classes: a FILE:LINE problem, never a traceback -------------------------------
BROKEN_PROVIDERS = {
    "no_options": (
        "from router.providers import IncomingProvider\n"
        "class P(IncomingProvider):\n    options_model = None\n"
        "    def _connect(self): pass\n    def _close(self): pass\n"
        "    def _list_new(self, state, limit): return []\n"
        "    def _fetch(self, ref): return b''\n"
        "    def _advance(self, state, refs): return {}\n"
    ),
    "not_a_model": (
        "from router.providers.memory import MemoryIncomingProvider\n"
        "class P(MemoryIncomingProvider):\n    options_model = dict\n"
    ),
    "abstract": (
        "from router.providers import IncomingProvider\n"
        "class P(IncomingProvider):\n"
        "    def _connect(self) -> None: pass\n    def _close(self) -> None: pass\n"
    ),
    "import_error": "import not_installed_library_xyz\n",
    "raises_on_import": "raise RuntimeError('module-level bug')\n",
    "lax_options": (
        "from pydantic import BaseModel\n"
        "from router.providers.memory import MemoryIncomingProvider\n"
        "class Opts(BaseModel):\n    mailbox: str | None = None\n"
        "class P(MemoryIncomingProvider):\n    options_model = Opts\n"
    ),
}

PROVIDER_CONFIG = """<?xml version="1.0"?>
<Configuration>
  <Deployment Name="crm"><Adapter>memory</Adapter><CrmServerUrl>https://crm.example</CrmServerUrl>
  </Deployment>
  <ProviderConfiguration Name="in">
    <ProviderClass>{provider}</ProviderClass>
    <Direction>Incoming</Direction>
    <Parameters><Parameter Name="{parameter}">x</Parameter></Parameters>
  </ProviderConfiguration>
</Configuration>
"""


@pytest.fixture
def plugins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A package ``brokenplugins`` with one module per broken provider, importable."""
    package = tmp_path / "brokenplugins"
    package.mkdir()
    (package / "__init__.py").write_text("")
    for name, source in BROKEN_PROVIDERS.items():
        (package / f"{name}.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def validate_provider(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], provider: str, parameter: str = "mailbox"
) -> tuple[int, str]:
    config = tmp_path / "router.xml"
    config.write_text(PROVIDER_CONFIG.format(provider=provider, parameter=parameter))
    code = main(["validate", str(config)])
    out = capsys.readouterr()
    assert "Traceback" not in out.out + out.err
    return code, out.err.strip().removeprefix(f"{config}:")


@pytest.mark.parametrize(
    ("module", "parameter", "expected"),
    [
        (
            "no_options",
            "mailbox",
            "8: <Parameter Name='mailbox'>: unknown parameter (allowed: none)",
        ),
        (
            "not_a_model",
            "mailbox",
            "6: <ProviderClass>: provider P: options_model must be a pydantic BaseModel subclass "
            "or None, not <class 'dict'>; fix the provider class",
        ),
        (
            "abstract",
            "mailbox",
            "6: <ProviderClass>: provider 'brokenplugins.abstract:P' (P) does not implement "
            "_advance, _fetch, _list_new: define them in the class (see router.providers.base)",
        ),
        (
            "import_error",
            "mailbox",
            "6: <ProviderClass>: provider 'brokenplugins.import_error:P': cannot import module "
            "'brokenplugins.import_error': No module named 'not_installed_library_xyz'",
        ),
        (
            "raises_on_import",
            "mailbox",
            "6: <ProviderClass>: provider 'brokenplugins.raises_on_import:P': importing module "
            "'brokenplugins.raises_on_import' raised RuntimeError: module-level bug; "
            "fix that module",
        ),
        (
            "lax_options",
            "mailbx",
            "8: <Parameter Name='mailbx'>: unknown parameter; did you mean 'mailbox'? "
            "(allowed: mailbox)",
        ),
    ],
    ids=["no_options", "not_a_model", "abstract", "import_error", "raises_on_import", "lax"],
)
def test_a_broken_provider_class_is_one_problem_line_and_never_a_traceback(
    plugins: Path, capsys: pytest.CaptureFixture[str], module: str, parameter: str, expected: str
) -> None:
    code, err = validate_provider(plugins, capsys, f"brokenplugins.{module}:P", parameter)
    assert (code, err) == (2, expected)


def test_a_provider_with_options_model_none_and_no_parameters_validates(
    plugins: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = plugins / "router.xml"
    text = PROVIDER_CONFIG.format(provider="brokenplugins.no_options:P", parameter="x")
    config.write_text(
        text.replace('<Parameters><Parameter Name="x">x</Parameter></Parameters>', "")
    )
    assert main(["validate", str(config)]) == 0, capsys.readouterr().err


def test_an_unknown_provider_names_the_entry_point_group(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, err = validate_provider(tmp_path, capsys, "maildirx")
    assert code == 2
    assert "in the group 'email_router.providers' of an installed package" in err


def test_an_entry_point_in_a_misspelt_group_is_pointed_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    dist = tmp_path / "feed_plugin-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: feed-plugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        "[email_router.provider]\nfeedx = tests.support.rss_provider:RssProvider\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    code, err = validate_provider(tmp_path, capsys, "feedx")
    assert code == 2
    assert err.endswith(
        "an installed package registers 'feedx' in the entry-point group "
        "'email_router.provider': rename that group to 'email_router.providers' and reinstall it"
    )


def test_a_broken_entry_point_is_a_problem_line_naming_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    dist = tmp_path / "bad_plugin-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: bad-plugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        "[email_router.providers]\nbadx = not_installed_library_xyz:Provider\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    code, err = validate_provider(tmp_path, capsys, "badx")
    assert code == 2
    assert err == (
        "6: <ProviderClass>: provider 'badx': entry point 'not_installed_library_xyz:Provider' "
        "cannot be loaded: ModuleNotFoundError: No module named 'not_installed_library_xyz'; "
        "fix or reinstall the package that provides it"
    )


def test_max_message_attempts_below_one_is_refused_at_its_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "router.xml"
    text = (FIXTURES / "out_of_range.xml").read_text()
    config.write_text(
        text.replace("<EmailPort>70000</EmailPort>", "<MaxMessageAttempts>0</MaxMessageAttempts>")
    )
    assert main(["validate", str(config)]) == 2
    assert capsys.readouterr().err.strip() == (
        f"{config}:9: <MaxMessageAttempts>: must be greater than or equal to 1 (got '0')"
    )
