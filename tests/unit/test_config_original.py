"""A configuration file carried over from the original Email Router loads, and each setting maps.

The fixture ``tests/fixtures/original_router/Microsoft.Crm.Tools.EmailAgent.xml`` is written in the
original router's shape: numeric ``<LogLevel>``, ``<ConfigUpdatePeriod>``, ``<LogFile>`` and
``<ProviderOverrides>``.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from router.cli import main
from router.config import SystemConfiguration, load_settings
from router.configcheck import load_config
from router.errors import ConfigError
from router.logsetup import OFF, configure_logging

ORIGINAL = Path(__file__).parents[1] / "fixtures" / "original_router"
FILE = ORIGINAL / "Microsoft.Crm.Tools.EmailAgent.xml"
#: (line, element) of every warning the fixture must get, in file order.
NO_EFFECT = [
    (11, "ConfigUpdatePeriod"),
    (30, "CacheCapacity"),
    (31, "EWSRetrieveMessageCount"),
    (44, "PendingStatusDelay"),
    (45, "SendingStatusDelay"),
    (46, "RequestBatchSize"),
]


@pytest.fixture(autouse=True)
def _password(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ER_ORIGINAL_PASSWORD", "not-a-real-password")
    monkeypatch.delenv("ROUTER_LOG_LEVEL", raising=False)


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in [h for h in root.handlers if h not in handlers]:
        root.removeHandler(handler)
        handler.close()
    root.setLevel(level)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "router.xml"
    path.write_text(text)
    path.chmod(0o600)
    return path


def original_with(tmp_path: Path, old: str, new: str) -> Path:
    text = FILE.read_text()
    assert old in text
    return write(tmp_path, text.replace(old, new))


def test_the_original_file_loads_with_one_warning_per_setting_without_effect() -> None:
    warnings: list[str] = []
    config = load_config(FILE, warnings=warnings)
    assert [(int(w.split(":")[1]), w.split("<")[1].split(">")[0]) for w in warnings] == NO_EFFECT
    assert all(": warning: has no effect here: " in w for w in warnings)
    assert "the Deployment's <BatchSize>" in warnings[-1]
    assert [p.name for p in config.providers] == ["sales-pop3", "sales-smtp"]


def test_validate_accepts_the_original_file_and_shows_the_warnings(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["validate", str(FILE)]) == 0
    err = capsys.readouterr().err
    for line, tag in NO_EFFECT:
        assert f"{FILE}:{line}: <{tag}>: warning: has no effect here" in err


def test_the_original_system_settings_map_to_this_routers() -> None:
    system = load_config(FILE, warnings=[]).system
    assert system.log_level == "ERROR"  # <LogLevel>1</LogLevel>: errors
    assert system.log_file == str(ORIGINAL / "email-router.log")  # beside the file
    assert system.config_update_period == 300_000
    assert (system.max_threads, system.config_refresh_period) == (50, 5000)


def test_provider_overrides_set_the_matching_settings() -> None:
    config = load_config(FILE, warnings=[])
    assert config.provider("sales-pop3").max_message_count == 25  # BatchSize
    assert config.provider("sales-smtp").maximum_delivery_attempts == 5
    assert config.provider("sales-smtp").max_message_count == 100  # default, no BatchSize


@pytest.mark.parametrize(
    ("value", "level"),
    [("0", "OFF"), ("1", "ERROR"), ("2", "INFO"), ("3", "DEBUG"), (" 2 ", "INFO")],
)
def test_numeric_log_levels_map_to_level_names(value: str, level: str) -> None:
    assert SystemConfiguration(log_level=value).log_level == level


@pytest.mark.parametrize("value", ["debug", "INFO", "Warning", "error", "CRITICAL", "off"])
def test_level_names_still_work(value: str) -> None:
    assert SystemConfiguration(log_level=value).log_level == value.upper()


def test_an_unknown_log_level_is_refused_at_its_line(tmp_path: Path) -> None:
    path = original_with(tmp_path, "<LogLevel>1</LogLevel>", "<LogLevel>4</LogLevel>")
    with pytest.raises(ConfigError) as caught:
        load_config(path, warnings=[])
    assert caught.value.problems == [
        f"{path}:12: <LogLevel>: must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL, OFF, "
        "or 0-3 as in the original router (got '4')"
    ]


def test_router_log_level_takes_the_numeric_levels_too(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ROUTER_LOG_LEVEL", "3")
    assert load_settings().log_level == "DEBUG"


def test_level_off_lets_nothing_through(restore_logging: None) -> None:
    stream = io.StringIO()
    configure_logging("OFF", stream=stream)
    assert logging.getLogger().level == OFF > logging.CRITICAL
    logging.getLogger("router.test").critical("not shown")
    assert stream.getvalue() == ""


def test_log_file_receives_the_same_redacted_lines(tmp_path: Path, restore_logging: None) -> None:
    log_file = tmp_path / "router.log"
    stream = io.StringIO()
    configure_logging("ERROR", stream=stream, log_file=str(log_file))
    logging.getLogger("router.test").error("login failed: password=hunter2")
    logging.getLogger("router.test").info("not at level ERROR")
    written = log_file.read_text()
    assert "login failed: password=***" in written and "hunter2" not in written
    assert "not at level" not in written
    assert written.splitlines() == stream.getvalue().splitlines()


def test_configuring_again_replaces_the_log_file(tmp_path: Path, restore_logging: None) -> None:
    first, second = tmp_path / "a.log", tmp_path / "b.log"
    configure_logging("INFO", stream=io.StringIO(), log_file=str(first))
    configure_logging("INFO", stream=io.StringIO(), log_file=str(second))
    logging.getLogger("router.test").info("after the switch")
    assert "after the switch" not in first.read_text()
    assert "after the switch" in second.read_text()


def test_a_relative_log_file_is_anchored_beside_the_configuration_file(tmp_path: Path) -> None:
    (tmp_path / "logs").mkdir()
    path = original_with(tmp_path, "email-router.log<", "logs/router.log<")
    assert load_config(path, warnings=[]).system.log_file == str(tmp_path / "logs" / "router.log")


def test_a_log_file_in_a_missing_folder_is_refused_at_its_line(tmp_path: Path) -> None:
    path = original_with(tmp_path, "email-router.log<", "nowhere/router.log<")
    with pytest.raises(ConfigError) as caught:
        load_config(path, warnings=[])
    assert caught.value.problems == [
        f"{path}:13: <LogFile>: the folder {str(tmp_path / 'nowhere')!r} does not exist"
    ]


def test_a_setting_given_directly_and_as_an_override_is_refused(tmp_path: Path) -> None:
    path = original_with(
        tmp_path,
        "<PollingPeriod>60000</PollingPeriod>",
        "<PollingPeriod>60000</PollingPeriod><MaxMessageCount>10</MaxMessageCount>",
    )
    with pytest.raises(ConfigError) as caught:
        load_config(path, warnings=[])
    assert caught.value.problems == [
        f"{path}:29: <BatchSize>: sets <MaxMessageCount>, which this instance also gives "
        "(line 27): keep one of them"
    ]


def test_an_unknown_override_is_still_refused_with_file_and_line(tmp_path: Path) -> None:
    path = original_with(tmp_path, "<BatchSize>25</BatchSize>", "<BatchSise>25</BatchSise>")
    with pytest.raises(ConfigError) as caught:
        load_config(path, warnings=[])
    assert caught.value.problems == [
        f"{path}:29: <BatchSise>: unknown element in <ProviderOverrides>; did you mean <BatchSize>?"
    ]


def test_an_override_out_of_range_is_refused_at_its_line(tmp_path: Path) -> None:
    path = original_with(
        tmp_path,
        "<MaximumDeliveryAttempts>5<",
        "<MaximumDeliveryAttempts>0<",
    )
    with pytest.raises(ConfigError) as caught:
        load_config(path, warnings=[])
    assert caught.value.problems == [
        f"{path}:43: <MaximumDeliveryAttempts>: must be greater than or equal to 1 (got '0')"
    ]
