"""Mailboxes loaded from the CRM are visible wherever an administrator looks.

A runtime's :class:`~router.mailboxes.MailboxLoader` records the list it read in the state
store; ``status``, the console, ``poll NAME`` and the other one-shot commands expand that list
through the same function, without asking the CRM. ``validate`` names each ``<LoadMailboxes>``
and warns about instance settings that cannot work. The CRM here is the memory adapter of
tests/unit/test_mailboxes.py (its ``memory_crm`` fixture); the integration test with the
Dataverse simulator and Dovecot is tests/integration/test_crm_mailboxes_visible.py.
"""

from __future__ import annotations

import argparse
import json
import shutil
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

import pytest
from lxml import etree

from router.cli import main
from router.cli.common import open_cli_context
from router.config import Settings
from router.configcheck import load_config
from router.console.app import create_app
from router.console.audit import AuditLog
from router.console.hub import ConsoleHub
from router.console.settings import Credentials
from router.context import open_context
from router.crm.memory import MemoryCrm
from router.errors import ConfigError, CrmUnavailable
from router.mailboxes import MailboxLoader, RecordedMailboxes, recorded_config
from router.runtime import watch
from router.runtime.schedule import Scheduler
from router.runtime.watch import ConfigWatcher
from router.state.memory import MemoryStore
from router.state.sqlite import SqliteStore
from tests.unit.console_world import PASSWORD, USER, sign_in
from tests.unit.test_mailboxes import Clock, memory_crm, record, write, xml
from tests.unit.test_standalone import config_xml, instance_xml

__all__ = ["memory_crm"]  # the autouse fixture: a memory CRM named "mbx", a service password

EXAMPLE = Path(__file__).parents[2] / "deploy" / "config" / "router.example.xml"
IN1, OUT1, IN2 = "user1@contoso.com.in", "user1@contoso.com.out", "user2@contoso.com.in"


def sqlite_xml(db: Path, **kw: str) -> str:
    """The mailboxes world of test_mailboxes with a SQLite state store the commands open."""
    return xml(**kw).replace(
        "<SystemConfiguration>", f"<SystemConfiguration><StateStore>sqlite:///{db}</StateStore>"
    )


# -- recording and reading the list ---------------------------------------------------------------
def test_a_runtime_records_the_records_it_read_and_never_a_credential(
    tmp_path: Path, memory_crm: MemoryCrm
) -> None:
    memory_crm.mailboxes = {r.mailbox_id: r for r in (record(1), record(2))}
    config = load_config(write(tmp_path, xml()))
    store = MemoryStore()
    loader = MailboxLoader()
    loader.record_in(store)

    loader.expand(config)

    lists = store.mailbox_lists()
    assert [r["address"] for r in lists["mbx"]["records"]] == [
        "user1@contoso.com",
        "user2@contoso.com",
    ]
    assert lists["mbx"]["crm_failing"] is False and lists["mbx"]["read_at"] > 0
    assert "service-secret" not in json.dumps(lists)


def test_a_list_read_before_the_store_was_open_is_recorded_when_it_opens(
    tmp_path: Path, memory_crm: MemoryCrm
) -> None:
    # a Celery worker loads the file (and the CRM's list) before it opens its store
    memory_crm.mailboxes = {record(1).mailbox_id: record(1)}
    watcher = ConfigWatcher(write(tmp_path, xml()))
    watcher.load()
    store = MemoryStore()

    watcher.record_in(store)

    assert [r["mailbox_id"] for r in store.mailbox_lists()["mbx"]["records"]] == [
        record(1).mailbox_id
    ]


def test_the_one_shot_commands_expand_the_recorded_list_without_the_crm(
    tmp_path: Path, memory_crm: MemoryCrm
) -> None:
    config = load_config(write(tmp_path, xml()))
    store = MemoryStore()
    memory_crm.mailboxes = {r.mailbox_id: r for r in (record(1), record(2))}
    loader = MailboxLoader()
    loader.record_in(store)
    loader.expand(config)

    def no_crm(what: str) -> None:
        raise AssertionError(f"the CRM was asked: {what}")

    memory_crm.fault = no_crm
    recorded = recorded_config(config, store)

    assert [p.name for p in recorded.config.providers] == [
        IN1,
        OUT1,
        IN2,
        "user2@contoso.com.out",
    ]
    assert recorded.loaded == {p.name for p in recorded.config.providers}
    assert recorded.complete
    (note,) = recorded.notes
    assert note.startswith("<LoadMailboxes> of mbx: list read from the CRM at 20")
    assert note.endswith("4 instance(s) run from it")
    # credentials come from the profile at use time, as the runtime's own instances
    password = recorded.config.provider(IN1).email_password
    assert password is not None and password.get_secret_value() == "service-secret"


def test_without_a_recorded_list_the_file_instances_stay_and_the_note_says_why(
    tmp_path: Path,
) -> None:
    config = load_config(write(tmp_path, xml()))

    recorded = recorded_config(config, MemoryStore())

    assert recorded.config.providers == () and not recorded.complete
    assert recorded.notes == (
        "<LoadMailboxes> of mbx: no mailbox list recorded yet (no runtime with this state store "
        "has read the CRM); its mailboxes are not shown",
    )


def test_a_crm_outage_is_recorded_with_the_last_known_list(
    tmp_path: Path, memory_crm: MemoryCrm
) -> None:
    clock = Clock()
    config = load_config(write(tmp_path, xml()))
    store = MemoryStore()
    memory_crm.mailboxes = {record(1).mailbox_id: record(1)}
    loader = MailboxLoader(clock=clock)
    loader.record_in(store)
    loader.expand(config)
    read_at = clock.now

    def outage(what: str) -> None:
        raise CrmUnavailable("crm down")

    memory_crm.fault = outage
    clock.now += 61
    loader.expand(config)

    doc = store.mailbox_lists()["mbx"]
    assert doc["crm_failing"] is True and doc["read_at"] == read_at
    assert len(doc["records"]) == 1
    (note,) = recorded_config(config, store).notes
    failed_at = datetime.fromtimestamp(clock.now, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert f"(the CRM did not answer at {failed_at})" in note


def test_a_store_that_cannot_be_read_leaves_the_file_instances_with_a_note(
    tmp_path: Path,
) -> None:
    db = tmp_path / "state.db"
    path = write(tmp_path, sqlite_xml(db, extra=instance_xml("hand").replace("crm", "mbx")))
    store = SqliteStore(db)
    store._conn().execute("DROP TABLE mailbox_lists")
    store._conn().execute("CREATE TABLE mailbox_lists (deployment TEXT)")  # damaged schema

    recorded = recorded_config(load_config(path), store)

    assert [p.name for p in recorded.config.providers] == ["hand"]
    assert not recorded.complete
    assert recorded.notes[0].startswith("loaded mailboxes not shown: SQLite state store failed")


def test_entries_of_a_recorded_list_that_are_no_records_are_left_out(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, xml(load='<LoadMailboxes Profile="imap-pool" '
                                             'Direction="Incoming"/>')))  # fmt: skip
    store = MemoryStore()
    good = {**asdict(record(1)), "added_by_a_newer_version": 1}
    store.set_mailbox_list("mbx", {"read_at": 1.0, "records": [good, {"address": "x"}, 7]})

    assert [p.name for p in recorded_config(config, store).config.providers] == [IN1]
    store.set_mailbox_list("mbx", {"read_at": 1.0, "records": "not a list"})
    assert recorded_config(config, store).config.providers == ()


# -- the commands ---------------------------------------------------------------------------------
@pytest.fixture
def recorded_world(tmp_path: Path, memory_crm: MemoryCrm) -> Path:
    """A configuration with a SQLite store in which a runtime recorded two mailboxes, one of
    which has been polled; the CRM fails every request from then on."""
    db = tmp_path / "state.db"
    path = write(tmp_path, sqlite_xml(db))
    store = SqliteStore(db)
    memory_crm.mailboxes = {r.mailbox_id: r for r in (record(1), record(2))}
    loader = MailboxLoader()
    loader.record_in(store)
    loader.expand(load_config(path))
    store.record_poll(IN1, processed=3)
    store.close()

    def outage(what: str) -> None:
        raise CrmUnavailable("crm down")

    memory_crm.fault = outage
    return path


def test_status_lists_the_loaded_mailboxes_with_their_state_while_the_crm_is_down(
    recorded_world: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["status", "--json", "--config", str(recorded_world)]) == 0

    out = capsys.readouterr()
    rows = {r["name"]: r for r in json.loads(out.out)}
    assert set(rows) == {IN1, OUT1, IN2, "user2@contoso.com.out"}
    assert rows[IN1]["source"] == "crm" and rows[IN1]["processed"] == 3
    assert rows[IN1]["last_poll"] is not None and rows[IN2]["last_poll"] is None
    assert rows[OUT1]["direction"] == "Outgoing" and rows[OUT1]["configured"]
    assert "<LoadMailboxes> of mbx: list read from the CRM at" in out.err


def test_the_status_table_marks_a_loaded_mailbox(
    recorded_world: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["status", "--config", str(recorded_world)]) == 0

    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith(IN1))
    assert line.split()[1:4] == ["Incoming", "yes", "(CRM)"]


def test_poll_and_send_find_a_loaded_instance_by_name(recorded_world: Path) -> None:
    ctx = open_context(recorded_world)
    try:
        cfg = ctx.instance(IN1)
        assert (cfg.email_address, cfg.user_ids) == ("user1@contoso.com", (record(1).owner_id,))
        assert ctx.instance(OUT1).direction.value == "Outgoing"
        with pytest.raises(ConfigError):
            ctx.instance("user9@contoso.com.in")
    finally:
        ctx.close()


def test_quarantine_and_state_commands_know_the_loaded_instances(recorded_world: Path) -> None:
    args = argparse.Namespace(config=str(recorded_world), state=None)
    ctx = open_cli_context(args, read_only=True)
    try:
        assert ctx.instance(IN2).email_address == "user2@contoso.com"
    finally:
        ctx.close()


def test_poll_of_a_loaded_instance_runs_its_cycle_against_the_profiles_server(
    recorded_world: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # the profile points at 127.0.0.1:1: the poll of the loaded instance runs and fails there
    code = main(["poll", IN1, "--config", str(recorded_world)])

    err = capsys.readouterr().err
    assert code == 1
    assert f"{IN1}: connect on 127.0.0.1 failed" in err and "service-secret" not in err


# -- the console ----------------------------------------------------------------------------------
def test_the_console_lists_and_shows_a_loaded_mailbox_without_asking_the_crm(
    tmp_path: Path, memory_crm: MemoryCrm
) -> None:
    path = write(tmp_path, xml())
    store = MemoryStore()
    memory_crm.mailboxes = {record(1).mailbox_id: record(1)}
    loader = MailboxLoader()
    loader.record_in(store)
    loader.expand(load_config(path))
    asked: list[str] = []
    memory_crm.fault = asked.append
    hub = ConsoleHub(path, load_config(path), store, Settings(), AuditLog(tmp_path / "a.jsonl"))
    app = create_app(hub, Credentials(USER, PASSWORD), b"k" * 32)
    app.config["TESTING"] = True
    client = app.test_client()
    sign_in(client)

    table = client.get("/").get_data(as_text=True)
    page = client.get(f"/instances/{IN1}")

    assert IN1 in table and OUT1 in table
    assert page.status_code == 200 and "user1@contoso.com" in page.get_data(as_text=True)
    assert "service-secret" not in table + page.get_data(as_text=True)
    assert asked == []


def test_the_console_follows_a_newly_recorded_list_after_the_refresh_period(
    tmp_path: Path,
) -> None:
    clock = Clock()
    store = MemoryStore()
    watcher = ConfigWatcher(
        write(tmp_path, xml()), clock=clock, loader=RecordedMailboxes(store, clock=clock)
    )
    assert watcher.load().providers == ()
    store.set_mailbox_list("mbx", {"read_at": 1.0, "records": [asdict(record(1))]})
    assert watcher.poll() is None  # ConfigRefreshPeriod (100 ms) not over
    clock.now += 0.2
    config = watcher.poll()
    assert config is not None and [p.name for p in config.providers] == [IN1, OUT1]


# -- the run scheduler ----------------------------------------------------------------------------
def test_the_run_scheduler_closes_the_mailbox_loader_at_shutdown(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    closed: list[bool] = []

    class Loader(MailboxLoader):
        def close(self) -> None:
            closed.append(True)
            super().close()

    monkeypatch.setattr(watch, "MailboxLoader", Loader)
    path = tmp_path / "router.xml"
    path.write_text(config_xml(instance_xml("a")))
    scheduler = Scheduler(path, MemoryStore(), load_config(path))

    scheduler.shutdown()

    assert closed == [True]


def test_the_run_scheduler_records_the_lists_in_its_store(
    tmp_path: Path, memory_crm: MemoryCrm
) -> None:
    memory_crm.mailboxes = {record(1).mailbox_id: record(1)}
    path = write(tmp_path, xml())
    store = MemoryStore()
    scheduler = Scheduler(path, store, load_config(path))
    try:
        scheduler.reload()  # the first poll of the watcher reads the CRM
        assert IN1 in scheduler.slots
        assert len(store.mailbox_lists()["mbx"]["records"]) == 1
    finally:
        scheduler.shutdown()


# -- validate -------------------------------------------------------------------------------------
FORWARD = """
  <ProviderConfiguration Name="fwd">
    <ProviderClass>memory</ProviderClass><Direction>Incoming</Direction>
    <Deployment>solo</Deployment>
    <ForwardMailbox>true</ForwardMailbox>
  </ProviderConfiguration>
  <ProviderConfiguration Name="pop">
    <ProviderClass>pop3</ProviderClass><Direction>Incoming</Direction>
    <Deployment>solo</Deployment><EmailServer>127.0.0.1</EmailServer>
    <EmailSecurity>none</EmailSecurity><EmailUser>pop</EmailUser>
    <EmailPassword Env="ER_TEST_SERVICE_PW"/>
    <Push>idle</Push>
  </ProviderConfiguration>
  <Deployment Name="solo"><Adapter>memory</Adapter>
    <CrmServerUrl>https://crm.example.com</CrmServerUrl></Deployment>"""


def test_validate_names_each_load_mailboxes_without_the_crm(
    tmp_path: Path, memory_crm: MemoryCrm, capsys: pytest.CaptureFixture[str]
) -> None:
    asked: list[str] = []
    memory_crm.fault = asked.append

    assert main(["validate", str(write(tmp_path, xml()))]) == 0

    out = capsys.readouterr().out
    assert "LoadMailboxes: mbx -> profile imap-pool, direction Both" in out.splitlines()
    assert asked == []


def test_validate_warns_about_a_forward_mailbox_without_owners_and_push_without_idle(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, xml(extra=FORWARD))

    assert main(["validate", str(path)]) == 0

    err = capsys.readouterr().err.splitlines()
    forward = [x for x in err if "<ForwardMailbox>: warning:" in x]
    push = [x for x in err if "<Push>: warning:" in x]
    assert len(forward) == 1 and "Deployment 'solo' names no CRM user or queue" in forward[0]
    assert "<ForwardUnknownPolicy> (quarantine)" in forward[0]
    assert len(push) == 1 and "provider 'pop3' cannot IDLE" in push[0]
    lines = path.read_text().splitlines()
    for warning in forward + push:
        line = int(warning.split(":")[1])
        tag = "ForwardMailbox" if "ForwardMailbox" in warning else "Push"
        assert f"<{tag}>" in lines[line - 1]


def test_a_forward_mailbox_whose_deployment_loads_mailboxes_or_names_owners_is_not_warned(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    owners = FORWARD.replace("<Push>idle</Push>", "<EmailAddress>pop@x.org</EmailAddress>"
                             "<UserId>33333333-3333-3333-3333-333333333333</UserId>")  # fmt: skip
    loads = FORWARD.replace("<Deployment>solo</Deployment>\n    <Forward",
                            "<Deployment>mbx</Deployment>\n    <Forward")  # fmt: skip
    for extra in (owners, loads):
        assert main(["validate", str(write(tmp_path, xml(extra=extra)))]) == 0
        assert "<ForwardMailbox>: warning" not in capsys.readouterr().err


def test_the_example_load_mailboxes_and_profile_validate_once_uncommented(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given the example with its commented <LoadMailboxes> and <EmailServerProfile> uncommented
    root = etree.parse(str(EXAMPLE)).getroot()
    shown = 0
    for comment in list(root.iter(etree.Comment)):
        text = comment.text or ""
        for tag in ("LoadMailboxes", "EmailServerProfile"):
            if f"<{tag} " in text:
                start, end = text.index(f"<{tag} "), text.rindex(">") + 1
                comment.getparent().replace(comment, etree.fromstring(text[start:end]))
                shown += 1
    assert shown == 2
    shutil.copytree(EXAMPLE.parent / "secrets", tmp_path / "secrets")
    path = tmp_path / "router.xml"
    path.write_bytes(etree.tostring(root))
    path.chmod(0o600)
    monkeypatch.chdir(tmp_path)

    code = main(["validate", str(path)])

    out = capsys.readouterr()
    assert code == 0, out.err
    assert "LoadMailboxes: contoso -> profile contoso-exchange, direction Both" in out.out
