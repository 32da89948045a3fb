"""One contract for every incoming provider, run against memory, IMAP (Dovecot) and POP3 (Dovecot).

A backend fixture gives the suite three things: a configuration of an instance reading a fresh
mailbox, a way to put messages in that mailbox, and a count of what is still on the server. The
tests then drive the provider the way the poll cycle does (open, list after the cursor, fetch,
advance, post-process, commit, close) and check the observable results.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from router.config import ProviderConfiguration
from router.models import Direction, MessageRef
from router.providers import memory
from router.providers.base import IncomingProvider, InstanceState, JsonDict
from router.providers.registry import resolve
from tests.servers.dovecot import Dovecot, message


@dataclass
class Backend:
    """A mailbox under test: ``config(**kw)``, ``put(raws)``, ``count()`` of messages left."""

    config: Callable[..., ProviderConfiguration]
    put: Callable[[list[bytes]], None]
    count: Callable[[], int]


def open_provider(cfg: ProviderConfiguration) -> IncomingProvider:
    provider = resolve(cfg.provider_class)(cfg)
    assert isinstance(provider, IncomingProvider)
    provider.open()
    return provider


def poll(
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


def subjects(raws: list[bytes]) -> list[str]:
    out = []
    for raw in raws:
        line = next(x for x in raw.split(b"\r\n") if x.startswith(b"Subject: "))
        out.append(line[len(b"Subject: ") :].decode())
    return out


class IncomingProviderContract:
    """The behaviour every incoming provider shares; subclasses provide the ``backend`` fixture."""

    @pytest.fixture
    def backend(self) -> Backend:
        raise NotImplementedError

    def test_list_returns_new_messages_oldest_first_with_sizes(self, backend: Backend) -> None:
        backend.put([message(i) for i in range(3)])
        refs, raws, _ = poll(backend.config(), None)
        assert subjects(raws) == ["message 0", "message 1", "message 2"]
        assert len({r.key for r in refs}) == 3
        assert all(r.size is not None and r.size > 0 for r in refs)

    def test_fetch_returns_the_exact_bytes(self, backend: Backend) -> None:
        original = message(1, size=5000)
        backend.put([original])
        _, raws, _ = poll(backend.config(), None)
        assert raws == [original]

    def test_limit_is_honoured_and_the_rest_comes_next(self, backend: Backend) -> None:
        backend.put([message(i) for i in range(5)])
        _, first, cursor = poll(backend.config(), None, limit=2)
        _, second, cursor = poll(backend.config(), cursor, limit=2)
        _, third, _ = poll(backend.config(), cursor, limit=2)
        assert subjects(first + second + third) == [f"message {i}" for i in range(5)]
        assert [len(first), len(second), len(third)] == [2, 2, 1]

    def test_second_list_after_advance_returns_nothing(self, backend: Backend) -> None:
        backend.put([message(i) for i in range(3)])
        _, _, cursor = poll(backend.config(), None)
        refs, _, _ = poll(backend.config(), cursor)
        assert refs == []

    def test_list_without_advance_returns_the_same_refs(self, backend: Backend) -> None:
        backend.put([message(i) for i in range(2)])
        first, _, _ = poll(backend.config(), None)
        again, _, _ = poll(backend.config(), None)
        assert [r.key for r in again] == [r.key for r in first]

    def test_messages_arriving_later_are_listed_next(self, backend: Backend) -> None:
        backend.put([message(1)])
        _, _, cursor = poll(backend.config(), None)
        backend.put([message(2)])
        _, raws, _ = poll(backend.config(), cursor)
        assert subjects(raws) == ["message 2"]

    def test_cursor_is_plain_json(self, backend: Backend) -> None:
        backend.put([message(1)])
        _, _, cursor = poll(backend.config(), None)
        assert json.loads(json.dumps(cursor)) == cursor

    def test_fetching_does_not_change_what_is_new(self, backend: Backend) -> None:
        backend.put([message(1)])
        poll(backend.config(), None)  # fetched, cursor thrown away
        refs, _, _ = poll(backend.config(), None)
        assert len(refs) == 1

    def test_delete_removes_delivered_messages_from_the_server(self, backend: Backend) -> None:
        backend.put([message(i) for i in range(3)])
        cfg = backend.config(after_processing="delete")
        refs, _, cursor = poll(cfg, None)
        provider = open_provider(cfg)
        try:
            provider.post_process(refs[:2], "delete")
            provider.commit()
        finally:
            provider.close()
        assert backend.count() == 1
        _, raws, _ = poll(cfg, None)
        assert subjects(raws) == ["message 2"]
        assert poll(cfg, cursor)[0] == []

    def test_leave_changes_nothing(self, backend: Backend) -> None:
        backend.put([message(1)])
        cfg = backend.config()
        refs, _, _ = poll(cfg, None)
        provider = open_provider(cfg)
        try:
            provider.post_process(refs, "leave")
            provider.commit()
        finally:
            provider.close()
        assert backend.count() == 1


class TestMemoryProvider(IncomingProviderContract):
    @pytest.fixture
    def backend(self) -> Iterator[Backend]:
        key = f"contract-{uuid.uuid4().hex}"

        def config(**kw: Any) -> ProviderConfiguration:
            return ProviderConfiguration(
                name=key,
                provider_class="memory",
                direction=Direction.INCOMING,
                email_address=key,
                **kw,
            )

        def put(raws: list[bytes]) -> None:
            for raw in raws:
                memory.mailbox(key).append(raw)

        yield Backend(config, put, lambda: len(memory.mailbox(key).messages))
        memory.MAILBOXES.pop(key, None)


def dovecot_backend(dovecot: Dovecot, user: str, kind: str) -> Backend:
    def put(raws: list[bytes]) -> None:
        dovecot.append_many(user, raws)

    return Backend(
        lambda **kw: dovecot.provider_config(user, kind, **kw),
        put,
        lambda: len(dovecot.list_uids(user)),
    )


@pytest.mark.dovecot
class TestImapProvider(IncomingProviderContract):
    @pytest.fixture
    def backend(self, dovecot: Dovecot, dovecot_user: str) -> Backend:
        return dovecot_backend(dovecot, dovecot_user, "imap")


@pytest.mark.dovecot
class TestPop3Provider(IncomingProviderContract):
    @pytest.fixture
    def backend(self, dovecot: Dovecot, dovecot_user: str) -> Backend:
        return dovecot_backend(dovecot, dovecot_user, "pop3")
