"""The send cycle's ledger decisions, with the in-memory provider, CRM and state store."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import ClassVar

import pytest

from router.cli import main
from router.cli.status import collect_status, format_table
from router.config import (
    Configuration,
    Deployment,
    ProviderConfiguration,
    SystemConfiguration,
)
from router.context import Context
from router.crm import factory
from router.crm.memory import MemoryCrm
from router.errors import ConfigError, LeaseLost, ProviderAuthError, ProviderUnavailable
from router.ledger import OUTBOUND, Claim, OutboundLedger
from router.models import Address, Direction, LedgerState, OutboundEmail
from router.outgoing import _CommitHook, send_cycle
from router.providers.base import CommitHook, SubmitResult
from router.providers.memory import OUTBOX, MemoryOutgoingProvider
from router.state.keys import outbound_key
from router.state.memory import MemoryStore

NAME, OWNER = "out", "user-1"


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def _cfg(name: str = NAME, direction: Direction = Direction.OUTGOING) -> ProviderConfiguration:
    return ProviderConfiguration(
        name=name,
        provider_class="memory-out",
        direction=direction,
        deployment="crm",
        user_ids=(OWNER,),
        maximum_delivery_attempts=3,
    )


def _ctx(*cfgs: ProviderConfiguration, clock: Clock | None = None) -> tuple[Context, MemoryCrm]:
    config = Configuration(
        system=SystemConfiguration(max_thread_execution=60_000),
        deployments=(Deployment(name="crm", adapter="memory", crm_server_url="memory://"),),
        providers=cfgs or (_cfg(),),
    )
    ctx = Context(config, MemoryStore(clock or Clock()))
    crm = MemoryCrm()
    ctx._crms["crm"] = crm
    return ctx, crm


def _email(n: int, to: str = "someone@example.com") -> OutboundEmail:
    return OutboundEmail(f"id{n}", f"Subject {n}", "<p>x</p>", Address("sales@example.com"),
                         to=(Address(to),))  # fmt: skip


def _sent(email_id: str) -> int:
    return sum(1 for _, e, _, _ in OUTBOX if e.email_id == email_id)


@pytest.fixture(autouse=True)
def _clean_outbox() -> None:
    OUTBOX.clear()


def test_new_email_is_claimed_submitted_and_marked_sent() -> None:
    ctx, crm = _ctx()
    crm.add_outbound(_email(1), OWNER)
    report = send_cycle(ctx, NAME)
    assert report.sent == 1 and _sent("id1") == 1
    entry = ctx.store.get_entry(OUTBOUND, outbound_key("id1"))
    assert entry is not None and entry.state is LedgerState.SENT
    assert crm.outbound["id1"].sent_message_id == entry.message_id
    assert ctx.store.lookup_message_id(f"out:{entry.message_id}") == (OUTBOUND, "out:id1")


def test_submitted_entry_left_by_a_crash_is_only_marked_sent() -> None:
    ctx, crm = _ctx()
    crm.add_outbound(_email(1), OWNER)
    ctx.store.create_entry(OUTBOUND, "out:id1", LedgerState.SUBMITTED, message_id="<m@x>",
                           extra={"instance": NAME})  # fmt: skip
    report = send_cycle(ctx, NAME)
    assert report.sent == 1 and _sent("id1") == 0
    assert crm.outbound["id1"].sent_message_id == "<m@x>"


def test_sent_entry_with_the_crm_still_pending_is_marked_again_without_sending() -> None:
    ctx, crm = _ctx()
    crm.add_outbound(_email(1), OWNER)
    ctx.store.create_entry(OUTBOUND, "out:id1", LedgerState.SENT, message_id="<m@x>")
    assert send_cycle(ctx, NAME).sent == 1 and _sent("id1") == 0
    assert crm.outbound["id1"].status == "sent"


def test_failed_entry_with_the_crm_still_pending_is_marked_failed_again() -> None:
    ctx, crm = _ctx()
    crm.add_outbound(_email(1), OWNER)
    ctx.store.create_entry(OUTBOUND, "out:id1", LedgerState.FAILED, reason="550 gone")
    assert send_cycle(ctx, NAME).failed == 1 and _sent("id1") == 0
    assert crm.outbound["id1"].reason == "550 gone"


def test_claim_of_a_dead_cycle_of_the_same_instance_is_taken_over() -> None:
    ctx, crm = _ctx()
    crm.add_outbound(_email(1), OWNER)
    ctx.store.create_entry(OUTBOUND, "out:id1", LedgerState.CLAIMED,
                           extra={"instance": NAME, "claim": "dead"})  # fmt: skip
    assert send_cycle(ctx, NAME).sent == 1 and _sent("id1") == 1


def test_fresh_claim_of_another_instance_is_left_alone_until_older_than_a_lease() -> None:
    clock = Clock()
    ctx, crm = _ctx(_cfg("a"), _cfg("b"), clock=clock)
    crm.add_outbound(_email(1), OWNER)
    ctx.store.create_entry(OUTBOUND, "out:id1", LedgerState.CLAIMED,
                           extra={"instance": "a", "claim": "t"})  # fmt: skip

    assert send_cycle(ctx, "b", clock=clock).skipped == 1 and _sent("id1") == 0
    clock.now += 61
    assert send_cycle(ctx, "b", clock=clock).sent == 1 and _sent("id1") == 1


def test_retry_waits_for_its_backoff() -> None:
    clock = Clock()
    ctx, crm = _ctx(clock=clock)
    crm.add_outbound(_email(1), OWNER)
    ctx.store.create_entry(OUTBOUND, "out:id1", LedgerState.RETRY, attempts=1,
                           extra={"next_at": clock.now + 60})  # fmt: skip
    assert send_cycle(ctx, NAME, clock=clock).skipped == 1
    clock.now += 60
    assert send_cycle(ctx, NAME, clock=clock).sent == 1


def test_every_recipient_refused_marks_the_email_failed() -> None:
    ctx, crm = _ctx()
    crm.add_outbound(_email(1, to="x@reject.invalid"), OWNER)
    assert send_cycle(ctx, NAME).failed == 1
    assert "550" in (crm.outbound["id1"].reason or "")


def test_emails_the_composer_cannot_handle_fail_alone_and_the_batch_goes_on() -> None:
    # Given a refused address, an unexpected kind of error in composing, and good emails around
    ctx, crm = _ctx()
    broken = replace(_email(3), sender=None)  # type: ignore[arg-type]
    for email in (_email(1), _email(2, to='"\r\n'), broken, _email(4)):
        crm.add_outbound(email, OWNER)

    report = send_cycle(ctx, NAME)

    # Then each bad one is Failed with its reason, and the good ones are sent in the same cycle
    assert (report.sent, report.failed, report.error) == (2, 2, None)
    assert _sent("id1") == _sent("id4") == 1
    assert "To address 1" in (crm.outbound["id2"].reason or "")
    assert "U+000D" in (crm.outbound["id2"].reason or "")
    assert "AttributeError" in (crm.outbound["id3"].reason or "")
    entry = ctx.store.get_entry(OUTBOUND, outbound_key("id2"))
    assert entry is not None and entry.state is LedgerState.FAILED


def test_the_provider_gets_the_parsed_addresses_the_message_was_written_from() -> None:
    ctx, crm = _ctx()
    crm.add_outbound(_email(1, to="Kari <kari@bücher.example>"), OWNER)
    send_cycle(ctx, NAME)
    ((_, email, _, _),) = OUTBOX
    assert email.to == (Address("kari@xn--bcher-kva.example", "Kari"),)


def test_busy_instance_is_skipped() -> None:
    ctx, crm = _ctx()
    crm.add_outbound(_email(1), OWNER)
    ctx.store.acquire_lease(NAME, "someone-else", 60)
    report = send_cycle(ctx, NAME)
    assert report.busy == "lease held by someone-else" and _sent("id1") == 0


def test_incoming_instance_cannot_send() -> None:
    ctx, _ = _ctx(_cfg(direction=Direction.INCOMING))
    with pytest.raises(ConfigError, match="use `poll`"):
        send_cycle(ctx, NAME)


class _Refusing(MemoryOutgoingProvider):
    def _connect(self) -> None:
        raise ProviderAuthError("out: 535 authentication failed")


class _Dropping(MemoryOutgoingProvider):
    calls = 0

    def _submit(self, email: OutboundEmail, message: bytes, envelope_from: str) -> SubmitResult:
        type(self).calls += 1
        if type(self).calls == 2:
            raise ProviderUnavailable("out: connection lost")
        return super()._submit(email, message, envelope_from)


def test_auth_error_claims_nothing_and_stops() -> None:
    ctx, crm = _ctx()
    crm.add_outbound(_email(1), OWNER)
    ctx.provider = _Refusing  # type: ignore[assignment,method-assign]
    with pytest.raises(ProviderAuthError):
        send_cycle(ctx, NAME)
    assert ctx.store.list_entries(OUTBOUND) == [] and ctx.store.get_lease(NAME) is None


def test_connection_lost_mid_batch_retries_that_email_and_stops_the_batch() -> None:
    clock = Clock()
    ctx, crm = _ctx(clock=clock)
    for n in range(4):
        crm.add_outbound(_email(n), OWNER)
    _Dropping.calls = 0
    ctx.provider = _Dropping  # type: ignore[assignment,method-assign]

    report = send_cycle(ctx, NAME, clock=clock)

    assert (report.sent, report.retried, report.error) == (1, 1, "ProviderUnavailable: out: "
                                                           "connection lost")  # fmt: skip
    entry = ctx.store.get_entry(OUTBOUND, "out:id1")
    assert entry is not None and entry.state is LedgerState.RETRY and entry.attempts == 1
    assert entry.extra["next_at"] == clock.now + 60
    assert ctx.store.get_entry(OUTBOUND, "out:id2") is None  # never claimed
    assert crm.outbound["id1"].attempts == 1


def test_commit_hook_refuses_when_the_claim_was_taken_over() -> None:
    ctx, _ = _ctx()
    ctx.store.create_entry(OUTBOUND, "out:id1", LedgerState.CLAIMED, extra={"claim": "theirs"})
    entry = ctx.store.get_entry(OUTBOUND, "out:id1")
    assert entry is not None
    hook = _CommitHook(OutboundLedger(ctx.store), NAME, Claim(entry, "mine"), "<m@x>")
    with pytest.raises(LeaseLost):
        hook(SubmitResult(("a@example.com",), {}))
    entry = ctx.store.get_entry(OUTBOUND, "out:id1")
    assert entry is not None and entry.state is LedgerState.CLAIMED


def test_send_command_prints_counts_and_outcomes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "router.xml"
    config.write_text(
        "<Configuration><Deployment Name='cli-send'><Adapter>memory</Adapter>"
        "<CrmServerUrl>memory://</CrmServerUrl></Deployment>"
        "<ProviderConfiguration Name='out'><ProviderClass>memory-out</ProviderClass>"
        "<Direction>Outgoing</Direction><Deployment>cli-send</Deployment>"
        f"<UserId>{OWNER}</UserId></ProviderConfiguration></Configuration>"
    )
    crm = MemoryCrm()
    crm.add_outbound(_email(1), OWNER)
    crm.add_outbound(_email(2, to="x@reject.invalid"), OWNER)
    factory.MEMORY_CRMS["cli-send"] = crm
    try:
        code = main(["send", "out", "--config", str(config), "--state", "memory://"])
    finally:
        factory.MEMORY_CRMS.pop("cli-send", None)
    out = capsys.readouterr().out
    assert code == 0
    assert "out: pending 2, sent 1, failed 1, retried 0" in out
    assert "  id1: sent" in out and "  id2: failed (" in out


def test_prepared_message_is_only_used_for_the_email_it_was_composed_for() -> None:
    from router.outgoing import _Prepared

    prepared = _Prepared()
    prepared.upcoming = _email(2)
    prepared.prepare_upcoming()
    assert prepared.take(_email(1)).message_id != prepared_id(_email(2))  # not the prefetched
    prepared.prepare_upcoming()
    assert prepared.take(_email(2)).message_id == prepared_id(_email(2))


def prepared_id(email: OutboundEmail) -> str:
    from router.mail.compose import compose_message

    return compose_message(email).message_id


# -- at-most-once for a provider that writes only _submit ----------------------------------------
class DropSender(MemoryOutgoingProvider):
    """Writes only ``_submit`` (no commit point); sees the ledger and refuses on request."""

    seen_states: ClassVar[list[LedgerState | None]] = []
    calls: ClassVar[list[list[str]]] = []
    refuse_once: ClassVar[dict[str, tuple[int, str]]] = {}
    crash = False

    def _submit(self, email: OutboundEmail, message: bytes, envelope_from: str) -> SubmitResult:
        entry = LEDGER_STORE[0].get_entry(OUTBOUND, outbound_key(email.email_id))
        self.seen_states.append(entry.state if entry else None)
        rcpts = [a.email for a in (*email.to, *email.cc, *email.bcc)]
        self.calls.append(rcpts)
        if DropSender.crash:
            raise RuntimeError("the sender's own bug, after handing the email over")
        refused = {r: DropSender.refuse_once.pop(r) for r in rcpts if r in self.refuse_once}
        return SubmitResult(tuple(r for r in rcpts if r not in refused), refused)


LEDGER_STORE: list[MemoryStore] = []
DROP = f"{__name__}:DropSender"


@pytest.fixture
def drop_ctx() -> Iterator[tuple[Context, MemoryCrm]]:
    DropSender.seen_states.clear()
    DropSender.calls.clear()
    DropSender.refuse_once.clear()
    DropSender.crash = False
    ctx, crm = _ctx(_cfg().model_copy(update={"provider_class": DROP}))
    assert isinstance(ctx.store, MemoryStore)
    LEDGER_STORE[:] = [ctx.store]
    yield ctx, crm


def test_a_provider_without_commit_point_is_called_only_after_submitted_is_recorded(
    drop_ctx: tuple[Context, MemoryCrm],
) -> None:
    # Given a provider that writes only _submit
    ctx, crm = drop_ctx
    crm.add_outbound(_email(1), OWNER)
    # When the cycle sends an email through it
    report = send_cycle(ctx, NAME)
    # Then "submitted" was already in the ledger while it ran, and the email ends Sent
    assert DropSender.seen_states == [LedgerState.SUBMITTED]
    assert report.sent == 1 and crm.outbound["id1"].status == "sent"


def test_a_sender_cut_short_is_never_sent_again_and_is_shown_as_ambiguous(
    drop_ctx: tuple[Context, MemoryCrm], capsys: pytest.CaptureFixture[str]
) -> None:
    # Given a provider that dies after handing an email over, before returning
    ctx, crm = drop_ctx
    crm.add_outbound(_email(1), OWNER)
    DropSender.crash = True
    with pytest.raises(RuntimeError):
        send_cycle(ctx, NAME)
    # When the next cycle finds the email
    DropSender.crash = False
    report = send_cycle(ctx, NAME)
    # Then it is not handed over again, not marked Sent, and set aside as ambiguous
    assert len(DropSender.calls) == 1 and report.ambiguous == 1 and report.sent == 0
    assert crm.outbound["id1"].status == "failed" and crm.outbound["id1"].marks == ["failed"]
    assert "may or may not have been sent" in (crm.outbound["id1"].reason or "")
    entry = ctx.store.get_entry(OUTBOUND, outbound_key("id1"))
    assert entry is not None and entry.state is LedgerState.QUARANTINED
    # And status counts it as quarantined for the instance, and quarantine list names it
    rows = {r.name: r for r in collect_status(ctx.config, ctx.store)}
    assert rows[NAME].quarantined == 1 and rows[NAME].ambiguous == 1
    assert "1 (1 ambiguous)" in format_table(list(rows.values()))
    assert _quarantine_list(ctx, NAME) == 0
    out = capsys.readouterr().out
    assert "out:id1" in out and "1 outbound email(s) that may or may not have been sent" in out


def test_an_ambiguous_email_left_pending_in_the_crm_gets_its_note_on_the_next_cycle(
    drop_ctx: tuple[Context, MemoryCrm],
) -> None:
    # Given an email set aside as ambiguous whose CRM mark did not happen
    ctx, crm = drop_ctx
    crm.add_outbound(_email(1), OWNER)
    ctx.store.create_entry(OUTBOUND, "out:id1", LedgerState.QUARANTINED, reason="may or may "
                           "not have been sent", extra={"instance": NAME})  # fmt: skip
    # When a cycle sees it pending again, then it is marked Failed with the note, never sent
    assert send_cycle(ctx, NAME).failed == 1 and DropSender.calls == []
    assert "may or may not" in (crm.outbound["id1"].reason or "")


def test_a_provider_without_commit_point_retries_only_the_recipients_refused_with_4xx(
    drop_ctx: tuple[Context, MemoryCrm],
) -> None:
    # Given an email to two recipients, one of which the server refuses for now
    ctx, crm = drop_ctx
    email = replace(_email(1, to="a@example.com"), cc=(Address("b@example.com"),))
    crm.add_outbound(email, OWNER)
    DropSender.refuse_once["b@example.com"] = (451, "greylisted")
    clock = Clock()
    # When the cycle runs, and again once the retry is due
    assert send_cycle(ctx, NAME, clock=clock).retried == 1
    clock.now += 3600
    report = send_cycle(ctx, NAME, clock=clock)
    # Then the retry went to the refused recipient only, and the email is Sent
    assert DropSender.calls == [["a@example.com", "b@example.com"], ["b@example.com"]]
    assert report.sent == 1 and crm.outbound["id1"].status == "sent"


def _quarantine_list(ctx: Context, instance: str) -> int:
    from router.cli.quarantine import _list

    return _list(ctx, argparse.Namespace(instance=instance))


def test_a_provider_overriding_submit_the_old_way_still_commits_at_its_own_point(
    drop_ctx: tuple[Context, MemoryCrm], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a provider written against the old API: its own submit() running before_commit
    with pytest.warns(DeprecationWarning, match="set commit_point = True"):

        class OldStyle(DropSender):
            def submit(
                self,
                email: OutboundEmail,
                message: bytes,
                envelope_from: str,
                before_commit: CommitHook | None = None,
                recipients: Sequence[str] | None = None,
                while_waiting: Callable[[], None] | None = None,
            ) -> SubmitResult:
                result = SubmitResult(tuple(recipients or ()), {})
                assert before_commit is not None
                before_commit(result)  # its point of no return
                return self._submit(email, message, envelope_from)

    monkeypatch.setattr(sys.modules[__name__], "OldStyle", OldStyle, raising=False)
    ctx, crm = _ctx(_cfg().model_copy(update={"provider_class": f"{__name__}:OldStyle"}))
    assert isinstance(ctx.store, MemoryStore)
    LEDGER_STORE[:] = [ctx.store]
    crm.add_outbound(_email(1), OWNER)
    # When the cycle sends through it, then "submitted" came from its own call, and it is Sent
    assert send_cycle(ctx, NAME).sent == 1
    assert DropSender.seen_states == [LedgerState.SUBMITTED]
    entry = ctx.store.get_entry(OUTBOUND, outbound_key("id1"))
    assert entry is not None and entry.state is LedgerState.SENT


def test_replaying_an_ambiguous_email_is_refused_with_what_to_do_instead(
    drop_ctx: tuple[Context, MemoryCrm], capsys: pytest.CaptureFixture[str]
) -> None:
    # Given an incoming instance's quarantined message and an ambiguous outbound email
    ctx, _ = drop_ctx
    ctx.store.create_entry(OUTBOUND, "out:id1", LedgerState.QUARANTINED, reason="may or may "
                           "not have been sent", extra={"instance": NAME})  # fmt: skip
    from router.cli.quarantine import _replay

    # When an operator replays the outbound one, then they are told to check and resend
    args = argparse.Namespace(all=False, instance=OUTBOUND, key="out:id1", action="replay")
    with pytest.raises(ConfigError, match="check with its recipients"):
        _replay(ctx, args)
    # And replaying everything leaves it alone
    assert _replay(ctx, argparse.Namespace(all=True, instance=None)) == 0
    entry = ctx.store.get_entry(OUTBOUND, "out:id1")
    assert entry is not None and entry.state is LedgerState.QUARANTINED


# -- the instant between the commit point and the message leaving the process ------------------
class _Killed(BaseException):
    """Stands for SIGKILL: nothing in the router catches it, no later ledger write happens."""


class CommitSender(MemoryOutgoingProvider):
    """Has a commit point; can be "killed" right after it or right after handing the email over."""

    commit_point = True
    handed: ClassVar[list[str]] = []
    die_after: ClassVar[str] = ""  # "", "commit" or "handed_over"
    tells_hand_over: ClassVar[bool] = True

    def _submit(self, email: OutboundEmail, message: bytes, envelope_from: str) -> SubmitResult:
        result = SubmitResult(tuple(a.email for a in (*email.to, *email.cc, *email.bcc)), {})
        self.commit(result)
        if CommitSender.die_after == "commit":
            raise _Killed
        CommitSender.handed.append(email.email_id)  # the "final dot" left the process
        if CommitSender.tells_hand_over:
            self.handed_over()
        if CommitSender.die_after == "handed_over":
            raise _Killed
        return result


@pytest.fixture
def commit_ctx() -> Iterator[tuple[Context, MemoryCrm]]:
    CommitSender.handed.clear()
    CommitSender.die_after, CommitSender.tells_hand_over = "", True
    ctx, crm = _ctx(_cfg().model_copy(update={"provider_class": f"{__name__}:CommitSender"}))
    yield ctx, crm


def test_a_kill_between_the_commit_point_and_the_hand_over_is_ambiguous_never_marked_sent(
    commit_ctx: tuple[Context, MemoryCrm],
) -> None:
    # Given a sender killed after "submitted" was recorded but before the message left
    ctx, crm = commit_ctx
    crm.add_outbound(_email(1), OWNER)
    CommitSender.die_after = "commit"
    with pytest.raises(_Killed):
        send_cycle(ctx, NAME)
    # When the next cycle finds the email
    CommitSender.die_after = ""
    report = send_cycle(ctx, NAME)
    # Then it is neither marked Sent (it never left) nor sent again: it is set aside
    assert CommitSender.handed == [] and report.sent == 0 and report.ambiguous == 1
    assert crm.outbound["id1"].status == "failed"
    assert "may or may not have been sent" in (crm.outbound["id1"].reason or "")


def test_a_kill_after_the_hand_over_only_marks_the_email_sent(
    commit_ctx: tuple[Context, MemoryCrm],
) -> None:
    # Given a sender killed right after the message left the process
    ctx, crm = commit_ctx
    crm.add_outbound(_email(1), OWNER)
    CommitSender.die_after = "handed_over"
    with pytest.raises(_Killed):
        send_cycle(ctx, NAME)
    # When the next cycle finds the email, then it is marked Sent without being sent again
    CommitSender.die_after = ""
    report = send_cycle(ctx, NAME)
    assert CommitSender.handed == ["id1"] and report.sent == 1 and report.ambiguous == 0
    assert crm.outbound["id1"].status == "sent"


def test_a_commit_point_provider_that_never_calls_handed_over_is_recorded_when_it_returns(
    commit_ctx: tuple[Context, MemoryCrm],
) -> None:
    # Given a provider with a commit point that does not say when the message left
    ctx, crm = commit_ctx
    CommitSender.tells_hand_over = False
    crm.add_outbound(_email(1), OWNER)
    # When it sends an email, then the hand-over is recorded once _submit returned
    assert send_cycle(ctx, NAME).sent == 1
    entry = ctx.store.get_entry(OUTBOUND, outbound_key("id1"))
    assert entry is not None and entry.extra.get("handed") is True
