"""The send cycle's ledger decisions, with the in-memory provider, CRM and state store."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from router import service
from router.cli import main
from router.config import (
    Configuration,
    Deployment,
    ProviderConfiguration,
    SystemConfiguration,
)
from router.crm.memory import MemoryCrm
from router.errors import ConfigError, LeaseLost, ProviderAuthError, ProviderUnavailable
from router.models import Address, Direction, LedgerState, OutboundEmail
from router.outgoing import OUTBOUND, _CommitHook, ledger_key, send_cycle
from router.providers.base import SubmitResult
from router.providers.memory import OUTBOX, MemoryOutgoingProvider
from router.service import Context
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
    entry = ctx.store.get_entry(OUTBOUND, ledger_key("id1"))
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
    batch: Any = type("B", (), {"store": ctx.store, "name": NAME})()
    hook = _CommitHook(batch, "out:id1", "mine", "<m@x>")
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
    service.MEMORY_CRMS["cli-send"] = crm
    try:
        code = main(["send", "out", "--config", str(config), "--state", "memory://"])
    finally:
        service.MEMORY_CRMS.pop("cli-send", None)
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
    from router.compose import compose_message

    return compose_message(email).message_id
