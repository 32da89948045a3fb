"""The contract every outgoing provider keeps: subclass :class:`OutgoingProviderContract`.

A provider author gives the suite a ``sent_mail`` fixture returning a :class:`SentMailBackend`:
a configuration of an instance sending to a server the test can read back, the messages that
server accepted, and (if the server can) a way to refuse one recipient for now (4xx). The tests
run the router's real send cycle with the kit's CRM and check: every email arrives once, a
recipient refused for now gets it on the retry and the others do not get it twice, and no email
is submitted twice when the sender is killed at any step (at-most-once).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any, Protocol

import pytest

from router.config import ProviderConfiguration
from router.errors import ConfigError
from router.providers.registry import resolve
from router.quarantine import list_items
from router.testing.incoming import _with_parameters
from router.testing.messages import sample_email, subject_of
from router.testing.rig import KitRig, RigFactory

#: Emails in the CRM for the kill test.
KILL_EMAILS = 3


class SentMailBackend(Protocol):
    """What a provider author supplies: where the provider under test sends, read back."""

    def config(self, **overrides: Any) -> ProviderConfiguration:
        """An outgoing instance sending to the test server; ``overrides`` are
        ProviderConfiguration fields."""
        ...

    def sent(self) -> list[tuple[tuple[str, ...], bytes]]:
        """Every message the server accepted so far: (recipients, raw bytes), in order."""
        ...

    def refuse_for_now(self, address: str) -> bool:
        """Make the server refuse ``address`` once with a 4xx; False if it cannot."""
        ...


class OutgoingProviderContract:
    """The behaviour every outgoing provider shares; subclass it and define ``sent_mail``."""

    pytestmark = [pytest.mark.provider_kit]

    @pytest.fixture
    def sent_mail(self) -> SentMailBackend:
        """Override: return a :class:`SentMailBackend` for a server that accepted nothing yet."""
        raise NotImplementedError("define a `sent_mail` fixture returning a SentMailBackend")

    def test_each_pending_email_is_sent_once_and_marked_sent(
        self, sent_mail: SentMailBackend, provider_kit_rig: RigFactory
    ) -> None:
        rig, ids = _seeded(provider_kit_rig(sent_mail.config()), range(3))
        assert rig.send().sent == 3
        assert rig.send().sent == 0
        assert sorted(subject_of(raw) for _, raw in sent_mail.sent()) == [
            f"kit email {i}" for i in range(3)
        ]
        assert rig.crm.sent_ids() == set(ids)

    def test_a_recipient_refused_for_now_alone_gets_the_retry(
        self, sent_mail: SentMailBackend, provider_kit_rig: RigFactory
    ) -> None:
        if not sent_mail.refuse_for_now("later@example.com"):
            pytest.skip("this backend cannot refuse a recipient temporarily")
        rcpts = ("now@example.com", "later@example.com")
        rig, ids = _seeded(provider_kit_rig(sent_mail.config()), [1], rcpts)
        rig.send()
        rig.send(clock=lambda: time.time() + 1e6)  # the retry is due
        received = Counter(r.lower() for rcpts, _ in sent_mail.sent() for r in rcpts)
        assert received == {"now@example.com": 1, "later@example.com": 1}
        assert rig.crm.sent_ids() == set(ids)

    @pytest.mark.provider_kit_kill
    def test_no_email_is_submitted_twice_when_the_sender_is_killed_at_any_step(
        self, sent_mail: SentMailBackend, provider_kit_rig: RigFactory
    ) -> None:
        rig, ids = _seeded(provider_kit_rig(sent_mail.config()), range(KILL_EMAILS))
        kills = 0
        while rig.run_killed("send", kills + 1):
            kills += 1
        rig.send(clock=lambda: time.time() + 1e6)
        submitted = Counter(subject_of(raw) for _, raw in sent_mail.sent())
        assert max(submitted.values(), default=0) <= 1, f"submitted twice: {submitted}"
        ctx = rig.context()
        try:
            # ``quarantine list`` shows an email that may or may not have left (ledger key
            # ``<namespace>:<email id>``)
            ambiguous = {item.entry.key.rsplit(":", 1)[-1] for item in list_items(ctx)}
        finally:
            ctx.close()
        sent = rig.crm.sent_ids()
        for email_id in ids:
            shown = email_id in sent or email_id in ambiguous
            assert shown, f"{email_id} is neither Sent nor shown as ambiguous"
        assert kills >= 5, f"only {kills} kill points: the cycle was not exercised"

    def test_an_unknown_parameter_is_refused_with_its_name(
        self, sent_mail: SentMailBackend
    ) -> None:
        cfg = sent_mail.config()
        params = {**cfg.parameter_dict, "no_such_option_kit": "1"}
        with pytest.raises(ConfigError, match="no_such_option_kit"):
            resolve(cfg.provider_class, cfg.direction).parse_options(_with_parameters(cfg, params))


def _seeded(
    rig: KitRig, numbers: Iterable[int], recipients: Sequence[str] = ("to@example.com",)
) -> tuple[KitRig, list[str]]:
    """``rig`` with the emails ``numbers`` pending in its CRM, and their ids there."""
    return rig, [rig.crm.seed(sample_email(n, recipients)) for n in numbers]
