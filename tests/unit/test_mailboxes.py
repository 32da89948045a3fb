"""Mailboxes defined in the CRM: names, skip reasons, credentials, expansion, loading, checking.

Everything here runs against the in-memory CRM (``<Adapter>memory</Adapter>``); the simulator
and Dovecot versions are in tests/integration/test_crm_mailboxes.py.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from router.cli import main
from router.config import NAME_PATTERN, Configuration
from router.configcheck import load_config
from router.crm.base import MailboxRecord
from router.crm.factory import MEMORY_CRMS
from router.crm.memory import MemoryCrm
from router.errors import ConfigError, CrmUnavailable
from router.mailboxes import MailboxLoader, expand, instance_name, plan, skip_reason
from router.models import Direction
from router.runtime.watch import ConfigWatcher

IN, OUT = Direction.INCOMING, Direction.OUTGOING
USER = "11111111-1111-1111-1111-111111111111"
QUEUE = "22222222-2222-2222-2222-222222222222"

PROFILE = """
  <EmailServerProfile Name="imap-pool">
    <IncomingServer>127.0.0.1</IncomingServer><IncomingPort>{port}</IncomingPort>
    <IncomingSecurity>none</IncomingSecurity>
    <OutgoingServer>127.0.0.1</OutgoingServer><OutgoingPort>{port}</OutgoingPort>
    <OutgoingSecurity>none</OutgoingSecurity>
    {credentials}
    <PollingPeriod>1000</PollingPeriod>
  </EmailServerProfile>"""
SERVICE_ACCOUNT = (
    "<CredentialSource>ServiceAccount</CredentialSource><EmailUser>{address}*router</EmailUser>"
    '<EmailPassword Env="ER_TEST_SERVICE_PW"/>'
)


def xml(
    load: str = '<LoadMailboxes Profile="imap-pool" Direction="Both"/>',
    credentials: str = SERVICE_ACCOUNT,
    extra: str = "",
    port: int = 1,
) -> str:
    return f"""<Configuration>
  <SystemConfiguration><ConfigUpdatePeriod>60000</ConfigUpdatePeriod>
    <ConfigRefreshPeriod>100</ConfigRefreshPeriod></SystemConfiguration>
  <Deployment Name="mbx"><Adapter>memory</Adapter>
    <CrmServerUrl>https://crm.example.com</CrmServerUrl>
    {load}
  </Deployment>{PROFILE.format(port=port, credentials=credentials)}
  {extra}
</Configuration>
"""


def per_mailbox(file: str) -> str:
    return f'<CredentialSource>PerMailbox</CredentialSource><MailboxCredentials File="{file}"/>'


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "router.xml"
    path.write_text(text)
    path.chmod(0o600)
    return path


def record(n: int, **fields: object) -> MailboxRecord:
    base: dict[str, object] = {
        "mailbox_id": f"00000000-0000-0000-0000-{n:012d}",
        "address": f"user{n}@contoso.com",
        "owner_id": USER,
    }
    return MailboxRecord(**{**base, **fields})  # type: ignore[arg-type]


@pytest.fixture(autouse=True)
def memory_crm(monkeypatch: pytest.MonkeyPatch) -> Iterator[MemoryCrm]:
    monkeypatch.setenv("ER_TEST_SERVICE_PW", "service-secret")
    MEMORY_CRMS.pop("mbx", None)
    crm = MEMORY_CRMS.setdefault("mbx", MemoryCrm())
    assert isinstance(crm, MemoryCrm)
    yield crm
    MEMORY_CRMS.pop("mbx", None)


def config_with(tmp_path: Path, **kw: str) -> Configuration:
    return load_config(write(tmp_path, xml(**kw)))


# -- names and skip reasons -------------------------------------------------------------------


def test_an_ordinary_address_names_its_instances_after_itself() -> None:
    assert instance_name("Jane.Doe@Contoso.com", IN) == "jane.doe@contoso.com.in"
    assert instance_name("jane.doe@contoso.com", OUT) == "jane.doe@contoso.com.out"


@pytest.mark.parametrize(
    "address", ["a+sales@contoso.com", "x" * 200 + "@contoso.com", "_odd@contoso.com", "é@x.org"]
)
def test_an_address_a_name_cannot_hold_gets_a_valid_stable_distinct_name(address: str) -> None:
    name = instance_name(address, IN)
    assert re.fullmatch(NAME_PATTERN, name)
    assert name == instance_name(address, IN)  # stable: the state follows the mailbox
    assert name != instance_name(address.replace("@", "1@"), IN)


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"active": False}, "inactive"),
        ({"approval": 2}, "not approved (email address pending approval)"),
        ({"approval": 3}, "not approved (email address rejected)"),
        ({"incoming_method": 1}, "other Incoming delivery method (Microsoft Dynamics 365"),
        ({"incoming_method": 3}, "other Incoming delivery method (Forward Mailbox)"),
        ({"owner_id": None}, "no owning user or queue"),
    ],
)
def test_a_record_that_must_not_run_says_why(fields: dict[str, object], reason: str) -> None:
    why = skip_reason(record(1, **fields), IN)
    assert why is not None and why.startswith(reason)


def test_an_approved_active_server_side_sync_record_runs_in_each_of_its_directions() -> None:
    assert skip_reason(record(1), IN) is None
    assert skip_reason(record(1, outgoing_method=0), OUT) == "other Outgoing delivery method (None)"


# -- expansion and credentials -------------------------------------------------------------------


def test_the_service_account_logs_in_to_every_mailbox_with_the_address_in_its_user(
    tmp_path: Path,
) -> None:
    config = config_with(tmp_path)
    out = expand(config, {"mbx": [record(1), record(2)]})
    names = [p.name for p in out.providers]
    assert names == ["user1@contoso.com.in", "user1@contoso.com.out",
                     "user2@contoso.com.in", "user2@contoso.com.out"]  # fmt: skip
    first = out.provider("user1@contoso.com.in")
    assert first.email_user == "user1@contoso.com*router"
    assert first.email_password is not None and first.email_password.env == "ER_TEST_SERVICE_PW"
    assert first.user_ids == (USER,) and first.email_address == "user1@contoso.com"
    assert first.polling_period == 1000 and first.deployment == "mbx"


def test_per_mailbox_credentials_come_from_the_file_keyed_by_address(tmp_path: Path) -> None:
    secrets = tmp_path / "mailboxes.json"
    secrets.write_text(json.dumps({
        "USER1@contoso.com": "pw-one", "user2@contoso.com": {"User": "u2", "Password": "pw-two"},
    }))  # fmt: skip
    config = config_with(tmp_path, credentials=per_mailbox("mailboxes.json"))
    items = plan(config, {"mbx": [record(1), record(2), record(3)]})
    running = {p.name: p.instance for p in items if p.instance}
    one, two = running["user1@contoso.com.in"], running["user2@contoso.com.in"]
    assert one is not None and one.email_password is not None
    assert one.email_user == "USER1@contoso.com"
    assert one.email_password.get_secret_value() == "pw-one"
    assert two is not None and two.email_user == "u2"
    skipped = [p for p in items if p.record.address == "user3@contoso.com"]
    assert {p.skipped for p in skipped} == {
        "no credentials (the address is not in <MailboxCredentials>)"
    }
    assert "pw-" not in json.dumps([p.as_dict() for p in items]) + repr(items)


def test_hand_written_and_loaded_instances_mix_and_the_hand_written_name_wins(
    tmp_path: Path,
) -> None:
    hand = """<ProviderConfiguration Name="user1@contoso.com.in"><ProviderClass>imap</ProviderClass>
      <Direction>Incoming</Direction><EmailServer>127.0.0.1</EmailServer>
      <EmailSecurity>none</EmailSecurity><EmailUser>x</EmailUser>
      <EmailPassword>p</EmailPassword></ProviderConfiguration>"""
    config = config_with(tmp_path, extra=hand)
    items = plan(config, {"mbx": [record(1)]})
    assert [p.skipped for p in items] == [
        "instance name 'user1@contoso.com.in' is already used", None,
    ]  # fmt: skip
    out = expand(config, {"mbx": [record(1)]})
    assert [p.name for p in out.providers] == ["user1@contoso.com.in", "user1@contoso.com.out"]
    assert out.providers[0].email_user == "x"


def test_a_queue_mailbox_serves_the_queue_and_delete_after_processing_is_honoured(
    tmp_path: Path,
) -> None:
    config = config_with(tmp_path)
    queue = record(5, owner_id=QUEUE, owner_type="queue", delete_after_processing=True)
    out = expand(config, {"mbx": [queue]})
    incoming, outgoing = out.providers
    assert incoming.queue_ids == (QUEUE,) and incoming.user_ids == ()
    assert incoming.after_processing == "delete" and outgoing.queue_ids == (QUEUE,)


def test_direction_incoming_loads_only_incoming_instances(tmp_path: Path) -> None:
    config = config_with(tmp_path, load='<LoadMailboxes Profile="imap-pool" Direction="Incoming"/>')
    assert [p.name for p in expand(config, {"mbx": [record(1)]}).providers] == [
        "user1@contoso.com.in"
    ]


# -- the configuration check -----------------------------------------------------------------


def test_an_unknown_profile_is_reported_at_its_line(tmp_path: Path) -> None:
    path = write(tmp_path, xml(load='<LoadMailboxes Profile="nope" Direction="Both"/>'))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.problems == [
        f"{path}:6: <LoadMailboxes>: unknown EmailServerProfile 'nope' (defined: 'imap-pool')"
    ]


def test_per_mailbox_credentials_need_their_file_and_it_must_be_json(tmp_path: Path) -> None:
    path = write(tmp_path, xml(credentials="<CredentialSource>PerMailbox</CredentialSource>"))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert "<MailboxCredentials> is required with CredentialSource PerMailbox" in str(info.value)
    (tmp_path / "bad.json").write_text("not json, secret-value")
    path = write(tmp_path, xml(credentials=per_mailbox("bad.json")))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    (problem,) = info.value.problems
    assert problem.startswith(f"{path}:")
    assert "<MailboxCredentials>: cannot be read as JSON" in problem
    assert "secret-value" not in problem


def test_a_profile_is_checked_like_the_instances_it_makes(tmp_path: Path) -> None:
    text = xml().replace(
        "<IncomingPort>1</IncomingPort>", "<IncomingProviderClass>imapp</IncomingProviderClass>"
    )
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    assert any("<IncomingProviderClass>" in p and "imapp" in p for p in info.value.problems)
    # and cleartext passwords to a remote server are refused for its instances too
    remote = xml().replace("<IncomingServer>127.0.0.1", "<IncomingServer>mail.example.com")
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, remote))
    assert any("would send the password in clear text" in p for p in info.value.problems)


def test_config_update_period_no_longer_warns_when_mailboxes_are_loaded(tmp_path: Path) -> None:
    warnings: list[str] = []
    load_config(write(tmp_path, xml()), warnings=warnings)
    assert not [w for w in warnings if "ConfigUpdatePeriod" in w]


# -- refreshing in the runtimes ---------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 600_000.0  # at the start of a ConfigUpdatePeriod (they count from the epoch)

    def __call__(self) -> float:
        return self.now


def test_the_watcher_follows_the_crms_list_every_config_update_period(
    tmp_path: Path, memory_crm: MemoryCrm
) -> None:
    clock = Clock()
    memory_crm.mailboxes = {r.mailbox_id: r for r in (record(1), record(2))}
    watcher = ConfigWatcher(
        write(tmp_path, xml(load='<LoadMailboxes Profile="imap-pool" Direction="Incoming"/>')),
        clock=clock, loader=MailboxLoader(clock=clock),
    )  # fmt: skip
    assert [p.name for p in watcher.load().providers] == [
        "user1@contoso.com.in", "user2@contoso.com.in",
    ]  # fmt: skip
    memory_crm.mailboxes[record(2).mailbox_id] = record(2, approval=2)  # unapproved
    memory_crm.mailboxes[record(3).mailbox_id] = record(3)  # added
    clock.now += 30  # within the period: nothing read
    assert watcher.poll() is None
    clock.now += 31
    new = watcher.poll()
    assert new is not None
    assert [p.name for p in new.providers] == ["user1@contoso.com.in", "user3@contoso.com.in"]
    clock.now += 61
    assert watcher.poll() is None  # read again, but nothing changed: no new configuration


def test_a_crm_outage_keeps_the_last_known_list_and_is_logged_once(
    tmp_path: Path, memory_crm: MemoryCrm, caplog: pytest.LogCaptureFixture
) -> None:
    clock = Clock()
    memory_crm.mailboxes = {record(1).mailbox_id: record(1)}
    config = config_with(tmp_path)
    loader = MailboxLoader(clock=clock)
    assert len(loader.expand(config).providers) == 2

    def outage(what: str) -> None:
        raise CrmUnavailable("crm down")

    memory_crm.fault = outage
    with caplog.at_level(logging.WARNING, logger="router.mailboxes"):
        for _ in range(3):
            clock.now += 61
            assert loader.due(config)
            assert len(loader.expand(config).providers) == 2
    assert len([r for r in caplog.records if "keeping the last known list" in r.message]) == 1


def test_a_crm_away_at_start_is_asked_again_after_the_refresh_period_not_the_update_period(
    tmp_path: Path, memory_crm: MemoryCrm
) -> None:
    clock = Clock()
    config = config_with(tmp_path)
    loader = MailboxLoader(clock=clock)

    def outage(what: str) -> None:
        raise CrmUnavailable("crm down")

    memory_crm.fault = outage
    assert loader.expand(config).providers == ()
    assert not loader.due(config)
    clock.now += 0.2  # ConfigRefreshPeriod is 100 ms here
    assert loader.due(config)


# -- the commands -----------------------------------------------------------------------------


def test_mailboxes_load_prints_what_runs_and_why_the_rest_is_skipped(
    tmp_path: Path, memory_crm: MemoryCrm, capsys: pytest.CaptureFixture[str]
) -> None:
    memory_crm.mailboxes = {r.mailbox_id: r for r in (record(1), record(2, approval=2))}
    path = write(tmp_path, xml(load='<LoadMailboxes Profile="imap-pool" Direction="Incoming"/>'))
    assert main(["mailboxes", "load", "--config", str(path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("RUN  user1@contoso.com.in") and "profile imap-pool" in lines[0]
    assert lines[1].startswith("SKIP user2@contoso.com.in") and "pending approval" in lines[1]
    assert lines[2] == "1 instance(s) from 2 mailbox record(s); 1 skipped"
    assert main(["mailboxes", "load", "--json", "--config", str(path)]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [(d["instance"], d["runs"]) for d in data] == [
        ("user1@contoso.com.in", True), ("user2@contoso.com.in", False),
    ]  # fmt: skip
    assert "service-secret" not in json.dumps(data)


def test_mailboxes_test_writes_each_failure_and_its_reason_into_the_record(
    tmp_path: Path, memory_crm: MemoryCrm, capsys: pytest.CaptureFixture[str]
) -> None:
    memory_crm.mailboxes = {record(1).mailbox_id: record(1)}
    path = write(tmp_path, xml(port=1))  # nothing listens on port 1: refused at once
    assert main(["mailboxes", "test", "--config", str(path)]) == 1
    out = capsys.readouterr().out
    assert "[1/2] user1@contoso.com.in: FAILED" in out and "0 of 2 mailbox test(s) passed" in out
    results = memory_crm.mailbox_tests[record(1).mailbox_id]
    assert [incoming for incoming, _ in results] == [True, False]
    assert all(reason and "Connection refused" in reason for _, reason in results)
    assert "service-secret" not in out


def test_mailboxes_test_refuses_a_mailbox_it_does_not_run(
    tmp_path: Path, memory_crm: MemoryCrm, capsys: pytest.CaptureFixture[str]
) -> None:
    memory_crm.mailboxes = {record(1).mailbox_id: record(1)}
    path = write(tmp_path, xml())
    assert main(["mailboxes", "test", "nobody@contoso.com", "--config", str(path)]) == 2
    assert "no running mailbox nobody@contoso.com" in capsys.readouterr().err
    assert not memory_crm.mailbox_tests
