"""The contract every incoming provider keeps: subclass :class:`IncomingProviderContract`.

A provider author gives the suite a ``mailbox`` fixture returning a :class:`MailboxBackend`: a
configuration of an instance reading a fresh mailbox, a way to put messages in it and a count
of what is still there. The tests drive the provider the way the poll cycle does (directly, and
through the router's real cycle with the kit's CRM and a SQLite state store) and check what can
be observed: exact bytes, order, the cursor, post-processing only after delivery, no duplicate
after a kill between any two steps, a poisoned message not blocking the others.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Sequence
from typing import Any, Protocol

import pytest

from router.config import Parameter, Parameters, ProviderConfiguration
from router.errors import ConfigError, CrmUnavailable
from router.models import MessageRef
from router.providers.base import IncomingProvider, InstanceState, JsonDict
from router.providers.registry import resolve
from router.quarantine import list_items
from router.service import poll_instance
from router.testing.messages import POISON_SUBJECT, sample_message, subjects
from router.testing.rig import RigFactory

#: Messages in the mailbox of the kill test; the poller takes ``KILL_BATCH`` per cycle.
KILL_MESSAGES, KILL_BATCH = 3, 2


class MailboxBackend(Protocol):
    """What a provider author supplies: a fresh mailbox the provider under test reads."""

    def config(self, **overrides: Any) -> ProviderConfiguration:
        """An incoming instance reading the mailbox; ``overrides`` are ProviderConfiguration
        fields (``after_processing``, ``max_message_count``, ``parameters``, ...)."""
        ...

    def put(self, raws: Sequence[bytes]) -> None:
        """Append ``raws`` to the mailbox, in this order."""
        ...

    def count(self) -> int:
        """How many messages the mailbox still holds (deleted or moved ones not counted)."""
        ...


def open_provider(cfg: ProviderConfiguration) -> IncomingProvider:
    """Build and open the provider ``cfg`` names (resolved like the router does)."""
    provider = resolve(cfg.provider_class, cfg.direction)(cfg)
    assert isinstance(provider, IncomingProvider), f"{cfg.provider_class} is not incoming"
    provider.open()
    return provider


def session(
    cfg: ProviderConfiguration, cursor: JsonDict | None, limit: int = 100
) -> tuple[list[MessageRef], list[bytes], JsonDict]:
    """One session: list, fetch everything listed, advance; returns refs, raws, new cursor."""
    provider = open_provider(cfg)
    try:
        state = InstanceState(cursor, {})
        refs = provider.list_new(state, limit)
        raws = [m.raw for m in provider.fetch_many(refs)]
        return refs, raws, provider.advance(state, refs)
    finally:
        provider.close()


def post_process(cfg: ProviderConfiguration, refs: list[MessageRef], action: str) -> None:
    """Apply ``action`` to ``refs`` in a session of its own, and commit it."""
    provider = open_provider(cfg)
    try:
        provider.post_process(refs, action)
        provider.commit()
    finally:
        provider.close()


class IncomingProviderContract:
    """The behaviour every incoming provider shares; subclass it and define ``mailbox``.

    Set ``delete_supported = False`` for a provider that cannot delete (its ``_post_process``
    ignores ``delete``); the tests of deletion are then skipped.
    """

    pytestmark = [pytest.mark.provider_kit]

    delete_supported: bool = True

    @pytest.fixture
    def mailbox(self) -> MailboxBackend:
        """Override: return a :class:`MailboxBackend` for a fresh, empty mailbox."""
        raise NotImplementedError("define a `mailbox` fixture returning a MailboxBackend")

    # -- the provider's primitives, driven directly -----------------------------------------
    def test_list_returns_new_messages_oldest_first_with_sizes(
        self, mailbox: MailboxBackend
    ) -> None:
        mailbox.put([sample_message(i) for i in range(3)])
        refs, raws, _ = session(mailbox.config(), None)
        assert subjects(raws) == ["message 0", "message 1", "message 2"]
        assert len({r.key for r in refs}) == 3
        assert all(r.size is not None and r.size > 0 for r in refs)

    def test_fetch_returns_the_exact_bytes(self, mailbox: MailboxBackend) -> None:
        original = sample_message(1, size=5000)
        mailbox.put([original])
        _, raws, _ = session(mailbox.config(), None)
        assert raws == [original]

    def test_limit_is_honoured_and_the_rest_comes_next(self, mailbox: MailboxBackend) -> None:
        mailbox.put([sample_message(i) for i in range(5)])
        _, first, cursor = session(mailbox.config(), None, limit=2)
        _, second, cursor = session(mailbox.config(), cursor, limit=2)
        _, third, _ = session(mailbox.config(), cursor, limit=2)
        assert subjects(first + second + third) == [f"message {i}" for i in range(5)]
        assert [len(first), len(second), len(third)] == [2, 2, 1]

    def test_nothing_is_listed_after_the_cursor_moved_past_everything(
        self, mailbox: MailboxBackend
    ) -> None:
        mailbox.put([sample_message(i) for i in range(3)])
        _, _, cursor = session(mailbox.config(), None)
        assert session(mailbox.config(), cursor)[0] == []

    def test_listing_without_advancing_lists_the_same_refs_again(
        self, mailbox: MailboxBackend
    ) -> None:
        mailbox.put([sample_message(i) for i in range(2)])
        first, _, _ = session(mailbox.config(), None)
        again, _, _ = session(mailbox.config(), None)
        assert [r.key for r in again] == [r.key for r in first]

    def test_messages_arriving_later_are_listed_next(self, mailbox: MailboxBackend) -> None:
        mailbox.put([sample_message(1)])
        _, _, cursor = session(mailbox.config(), None)
        mailbox.put([sample_message(2)])
        _, raws, _ = session(mailbox.config(), cursor)
        assert subjects(raws) == ["message 2"]

    def test_fetching_does_not_change_what_is_new(self, mailbox: MailboxBackend) -> None:
        mailbox.put([sample_message(1)])
        session(mailbox.config(), None)  # fetched, cursor thrown away
        assert len(session(mailbox.config(), None)[0]) == 1

    def test_the_cursor_is_plain_json(self, mailbox: MailboxBackend) -> None:
        mailbox.put([sample_message(1)])
        _, _, cursor = session(mailbox.config(), None)
        assert json.loads(json.dumps(cursor)) == cursor

    def test_delete_removes_only_the_messages_it_is_given(self, mailbox: MailboxBackend) -> None:
        if not self.delete_supported:
            pytest.skip("this provider declares that it cannot delete")
        mailbox.put([sample_message(i) for i in range(3)])
        cfg = mailbox.config(after_processing="delete")
        refs, _, cursor = session(cfg, None)
        post_process(cfg, refs[:2], "delete")
        assert mailbox.count() == 1
        assert subjects(session(cfg, None)[1]) == ["message 2"]
        assert session(cfg, cursor)[0] == []

    def test_leave_changes_nothing_on_the_server(self, mailbox: MailboxBackend) -> None:
        mailbox.put([sample_message(1)])
        cfg = mailbox.config()
        refs, _, _ = session(cfg, None)
        post_process(cfg, refs, "leave")
        assert mailbox.count() == 1

    def test_an_unknown_parameter_is_refused_with_its_name(self, mailbox: MailboxBackend) -> None:
        cfg = mailbox.config()
        params = {**cfg.parameter_dict, "no_such_option_kit": "1"}
        with pytest.raises(ConfigError, match="no_such_option_kit"):
            resolve(cfg.provider_class, cfg.direction).parse_options(_with_parameters(cfg, params))

    # -- through the router's poll cycle ----------------------------------------------------
    def test_the_poll_cycle_delivers_every_message_once_and_restarts_from_its_state(
        self, mailbox: MailboxBackend, provider_kit_rig: RigFactory
    ) -> None:
        mailbox.put([sample_message(i) for i in range(3)])
        rig = provider_kit_rig(mailbox.config(max_message_count=2))
        assert rig.poll().delivered == 2
        assert rig.poll().delivered == 1  # a new context: cursor and ledger read back
        mailbox.put([sample_message(3)])
        assert rig.poll().delivered == 1
        assert rig.crm.activity_subjects() == [f"message {i}" for i in range(4)]
        assert rig.crm.deliver_calls() == 4

    def test_messages_are_deleted_only_after_the_crm_has_them(
        self, mailbox: MailboxBackend, provider_kit_rig: RigFactory
    ) -> None:
        if not self.delete_supported:
            pytest.skip("this provider declares that it cannot delete")
        mailbox.put([sample_message(i) for i in range(2)])
        rig = provider_kit_rig(mailbox.config(after_processing="delete"))
        ctx = rig.context()
        if ctx.kit_crm is None:
            ctx.close()
            pytest.skip("the outage is injected into the kit's in-memory CRM only")
        ctx.kit_crm.fault = _refuse_delivery
        try:
            with contextlib.suppress(CrmUnavailable):  # staged; delivery waits for the CRM
                poll_instance(ctx, rig.name)
        finally:
            ctx.close()
        assert mailbox.count() == 2  # staged, not delivered: still on the server
        rig.poll()
        rig.poll()
        assert mailbox.count() == 0
        assert len(rig.crm.activity_subjects()) == 2

    @pytest.mark.provider_kit_kill
    def test_no_message_is_delivered_twice_when_the_poller_is_killed_between_any_two_steps(
        self, mailbox: MailboxBackend, provider_kit_rig: RigFactory
    ) -> None:
        after = "delete" if self.delete_supported else "leave"
        mailbox.put([sample_message(i) for i in range(KILL_MESSAGES)])
        rig = provider_kit_rig(mailbox.config(after_processing=after, max_message_count=KILL_BATCH))
        kills = 0
        while rig.run_killed("poll", kills + 1):
            kills += 1
            # ack after commit: nothing left the mailbox before the CRM had it
            assert mailbox.count() >= KILL_MESSAGES - len(rig.crm.activity_subjects())
        rig.poll()
        assert rig.crm.activity_subjects() == [f"message {i}" for i in range(KILL_MESSAGES)]
        # a kill between the CRM's answer and the ledger's "delivered" may ask once more
        assert rig.crm.deliver_calls() <= KILL_MESSAGES + kills
        assert kills >= 10, f"only {kills} kill points: the cycle was not exercised"

    def test_a_message_that_cannot_be_fetched_is_quarantined_and_the_others_delivered(
        self, mailbox: MailboxBackend, provider_kit_rig: RigFactory
    ) -> None:
        raws = [sample_message(i) for i in range(4)]
        raws.insert(2, sample_message(99, subject=POISON_SUBJECT))
        mailbox.put(raws)
        rig = provider_kit_rig(mailbox.config())
        first = rig.poll(poison=True)
        assert first.delivered == 4, "one bad message stopped the others"
        rig.poll(poison=True)
        rig.poll(poison=True)  # MaxMessageAttempts (default 3) failures: quarantined
        ctx = rig.context()
        try:
            items = list_items(ctx, rig.name)
        finally:
            ctx.close()
        assert len(items) == 1
        assert "ValueError" in (items[0].entry.reason or "")
        assert len(rig.crm.activity_subjects()) == 4


def _refuse_delivery(what: str) -> None:
    if what in ("check_incoming", "deliver"):
        raise CrmUnavailable("kit: the CRM is down")


def _with_parameters(cfg: ProviderConfiguration, params: dict[str, str]) -> ProviderConfiguration:
    """``cfg`` with its ``<Parameters>`` replaced by ``params``."""
    items = tuple(Parameter(name=k, value=v) for k, v in params.items())
    return cfg.model_copy(update={"parameters": Parameters(items=items)})
