"""load_config: typed values from the file, secrets masked, settings from the environment."""

from __future__ import annotations

from pathlib import Path

import pytest

from router.config import (
    Configuration,
    ProviderConfiguration,
    Secret,
    Settings,
    load_settings,
)
from router.configcheck import load_config
from router.errors import ConfigError
from router.models import Direction

FIXTURES = Path(__file__).parents[1] / "fixtures" / "config"

HEADER = """<Configuration>
  <Deployment Name="org"><Adapter>memory</Adapter><CrmServerUrl>u</CrmServerUrl></Deployment>
"""


def write(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "router.xml"
    path.write_text(HEADER + body + "</Configuration>\n", encoding="utf-8")
    return path


def problems_of(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as raised:
        load_config(path)
    return raised.value.problems


def test_valid_file_binds_typed_values_with_defaults() -> None:
    config = load_config(FIXTURES / "valid_minimal.xml")

    instance = config.provider("in")
    assert isinstance(config, Configuration)
    assert instance.direction is Direction.INCOMING
    assert instance.email_port == 1143  # " 1143 " in the file: surrounding blanks ignored
    assert instance.polling_seconds == 60.0
    assert instance.max_message_size == 26_214_400
    assert (instance.auto_reply_policy, instance.bounce_policy) == ("skip", "skip")
    assert (instance.read_receipt_policy, instance.feedback_report_policy) == ("skip", "skip")


def test_sole_deployment_is_used_when_an_instance_names_none() -> None:
    config = load_config(FIXTURES / "valid_minimal.xml")

    assert config.provider("in").deployment == "org"


def test_instance_without_deployment_is_an_error_when_several_exist(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """  <Deployment Name="b"><CrmServerUrl>u</CrmServerUrl></Deployment>
  <ProviderConfiguration Name="x">
    <ProviderClass>memory</ProviderClass><Direction>Incoming</Direction>
  </ProviderConfiguration>
""",
    )

    assert problems_of(path) == [
        f"{path}:4: <ProviderConfiguration>: missing required element <Deployment> "
        "(several Deployments exist)"
    ]


def test_policies_and_size_limit_are_read_and_checked(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """  <ProviderConfiguration Name="x">
    <ProviderClass>memory</ProviderClass><Direction>Incoming</Direction>
    <MaxMessageSize>1048576</MaxMessageSize>
    <BouncePolicy>deliver</BouncePolicy>
    <FeedbackReportPolicy>quarantine</FeedbackReportPolicy>
  </ProviderConfiguration>
""",
    )
    instance = load_config(path).provider("x")
    assert instance.max_message_size == 1_048_576
    assert instance.bounce_policy == "deliver"
    assert instance.feedback_report_policy == "quarantine"

    path.write_text(path.read_text().replace("deliver", "keep"))
    assert problems_of(path) == [
        f"{path}:6: <BouncePolicy>: must be 'skip', 'deliver' or 'quarantine' (got 'keep')"
    ]


def test_log_level_is_normalised_and_checked(tmp_path: Path) -> None:
    path = write(
        tmp_path, "  <SystemConfiguration><LogLevel>debug</LogLevel></SystemConfiguration>\n"
    )
    assert load_config(path).system.log_level == "DEBUG"

    path.write_text(path.read_text().replace("debug", "loud"))
    assert problems_of(path) == [
        f"{path}:3: <LogLevel>: must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL, OFF, "
        "or 0-3 as in the original router (got 'loud')"
    ]


def test_element_given_twice_is_reported_at_the_second(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """  <ProviderConfiguration Name="x">
    <ProviderClass>memory</ProviderClass><Direction>Incoming</Direction>
    <EmailPort>1</EmailPort>
    <EmailPort>2</EmailPort>
  </ProviderConfiguration>
""",
    )

    assert problems_of(path) == [
        f"{path}:6: <EmailPort>: given more than once in <ProviderConfiguration> (first at line 5)"
    ]


def test_secret_sources_are_checked_without_revealing_values(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("H1_EMPTY", " ")
    path = write(
        tmp_path,
        """  <ProviderConfiguration Name="a">
    <ProviderClass>memory</ProviderClass><Direction>Incoming</Direction>
    <EmailPassword Env="H1_EMPTY"/>
  </ProviderConfiguration>
  <ProviderConfiguration Name="b">
    <ProviderClass>memory</ProviderClass><Direction>Incoming</Direction>
    <EmailPassword Env="X" File="/y">hunter2</EmailPassword>
  </ProviderConfiguration>
""",
    )

    problems = problems_of(path)

    assert problems == [
        f"{path}:5: <EmailPassword>: environment variable H1_EMPTY is empty",
        f"{path}:9: <EmailPassword>: use Env= or File=, not both",
    ]


def test_secrets_are_read_from_env_and_file_when_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret_file = tmp_path / "pw"
    secret_file.write_text("from-file\n")
    monkeypatch.setenv("H1_PW", "from-env")

    assert Secret(env="H1_PW").get_secret_value() == "from-env"
    assert Secret(file=str(secret_file)).get_secret_value() == "from-file"
    assert Secret(value=" inline ").get_secret_value() == "inline"


def test_inline_secret_never_shows_in_repr_str_or_dumps(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """  <ProviderConfiguration Name="x">
    <ProviderClass>memory</ProviderClass><Direction>Incoming</Direction>
    <EmailPassword>hunter2</EmailPassword>
  </ProviderConfiguration>
""",
    )
    config = load_config(path)
    instance: ProviderConfiguration = config.provider("x")

    shown = [
        repr(config),
        str(config),
        repr(instance),
        str(instance.email_password),
        str(instance.model_dump()),
        instance.model_dump_json(),
        config.model_dump_json(),
    ]

    assert all("hunter2" not in text for text in shown)
    assert instance.email_password is not None
    assert instance.email_password.get_secret_value() == "hunter2"


def test_error_messages_never_quote_a_secret_element(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """  <ProviderConfiguration Name="x">
    <ProviderClass>memory</ProviderClass><Direction>Incoming</Direction>
    <EmailPassword Bogus="1">hunter2<Oops/></EmailPassword>
  </ProviderConfiguration>
""",
    )

    with pytest.raises(ConfigError) as raised:
        load_config(path)

    assert len(raised.value.problems) == 2
    assert "hunter2" not in str(raised.value) + "".join(raised.value.problems)


def test_unbindable_instance_still_gets_its_provider_class_checked(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """  <ProviderConfiguration Name="x">
    <ProviderClass>pop33</ProviderClass><Direction>Incoming</Direction>
    <EmailPort>-1</EmailPort>
  </ProviderConfiguration>
""",
    )

    assert [p.split(": ")[1] for p in problems_of(path)] == ["<ProviderClass>", "<EmailPort>"]


def test_settings_come_from_router_env_vars(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ROUTER_CONFIG", "/etc/email-router/router.xml")
    monkeypatch.setenv("ROUTER_STATE_URL", "redis://127.0.0.1:6379/3")
    monkeypatch.setenv("ROUTER_LOG_FORMAT", "json")

    settings = load_settings()

    assert settings.config == Path("/etc/email-router/router.xml")
    assert settings.state_url == "redis://127.0.0.1:6379/3"
    assert settings.log_format == "json"


def test_bad_setting_is_a_config_error_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ROUTER_LOG_FORMAT", "xml")

    with pytest.raises(ConfigError) as raised:
        load_settings()

    assert raised.value.problems[0].startswith("environment: ROUTER_LOG_FORMAT: ")


def test_settings_repr_masks_url_passwords_and_flower_auth(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ROUTER_BROKER_URL", "redis://:brokerpw@redis:6379/0")
    monkeypatch.setenv("ROUTER_FLOWER_BASIC_AUTH", "admin:flowerpw")

    settings = Settings()

    assert settings.broker_url == "redis://:brokerpw@redis:6379/0"
    for text in (repr(settings), str(settings)):
        assert "brokerpw" not in text and "flowerpw" not in text
        assert "redis://:***@redis:6379/0" in text


def test_provider_instance_checks_are_reported_at_the_element_they_name(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """  <ProviderConfiguration Name="p">
    <ProviderClass>pop3</ProviderClass><Direction>Incoming</Direction>
    <EmailServer>pop.example.com</EmailServer><EmailUser>u</EmailUser>
    <EmailPassword>x</EmailPassword>
    <AfterProcessing>move:Done</AfterProcessing>
  </ProviderConfiguration>
""",
    )

    assert problems_of(path) == [
        f"{path}:7: <AfterProcessing>: 'move:Done' is not possible with POP3 "
        "(no flags, no folders): use leave or delete"
    ]


def test_state_store_url_is_checked_and_its_password_never_echoed(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "  <SystemConfiguration><StateStore>postgres://u:dbpw@db/x</StateStore>"
        "</SystemConfiguration>\n",
    )

    assert problems_of(path) == [
        f"{path}:3: <StateStore>: must be a sqlite, redis, rediss, unix, memory URL "
        "(got 'postgres://u:***@db/x')"
    ]


def test_empty_name_attribute_is_reported_naming_the_attribute(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """  <ProviderConfiguration Name="">
    <ProviderClass>memory</ProviderClass><Direction>Incoming</Direction>
  </ProviderConfiguration>
""",
    )

    assert problems_of(path) == [
        f"{path}:3: <ProviderConfiguration>: Name= must have at least 1 character (got '')"
    ]


def test_stray_text_and_elements_inside_values_are_reported(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """  <ProviderConfiguration Name="x">stray
    <ProviderClass>memory</ProviderClass><Direction>Incoming</Direction>
    <EmailServer><Host>mail</Host></EmailServer>
  </ProviderConfiguration>
""",
    )

    assert problems_of(path) == [
        f"{path}:3: <ProviderConfiguration>: unexpected text: only child elements belong here",
        f"{path}:5: <EmailServer>: expected a value, not child elements",
    ]


def test_bad_state_url_in_the_environment_is_reported_without_its_password(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ROUTER_STATE_URL", "postgres://u:dbpw@db/x")

    with pytest.raises(ConfigError) as raised:
        load_settings()

    assert raised.value.problems == [
        "environment: ROUTER_STATE_URL: must be a sqlite, redis, rediss, unix, memory URL"
    ]


def test_elements_are_read_in_any_order(tmp_path: Path) -> None:
    path = tmp_path / "any-order.xml"
    path.write_text(
        """<Configuration>
  <ProviderConfiguration Name="first">
    <Deployment>d</Deployment>
    <PollingPeriod>5000</PollingPeriod>
    <Direction>Incoming</Direction>
    <ProviderClass>memory</ProviderClass>
  </ProviderConfiguration>
  <Deployment Name="d"><CrmServerUrl>https://x.example</CrmServerUrl><Adapter>memory</Adapter></Deployment>
  <SystemConfiguration>
    <StateStore>memory://</StateStore>
    <ConfigRefreshPeriod>2000</ConfigRefreshPeriod>
    <MaxThreadExecution>60000</MaxThreadExecution>
  </SystemConfiguration>
  <ProviderConfiguration Name="second">
    <Direction>Incoming</Direction>
    <ProviderClass>memory</ProviderClass>
    <Deployment>d</Deployment>
  </ProviderConfiguration>
</Configuration>
"""
    )
    config = load_config(path)
    assert (config.system.config_refresh_period, config.system.max_thread_execution) == (
        2000,
        60000,
    )
    assert config.system.state_store == "memory://"
    assert [p.name for p in config.providers] == ["first", "second"]
    assert config.providers[0].polling_period == 5000
    assert config.deployments[0].adapter == "memory"
