"""``workers.tasks.poll_batch``, the task beat's dispatcher sends, run in-process.

The memory provider, CRM and state store stand in for the servers; enqueues are recorded
instead of reaching a broker (tests/e2e/test_dispatch_two_beats.py runs the real processes).
"""

from __future__ import annotations

import time
import uuid
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from celery.exceptions import SoftTimeLimitExceeded

from router.config import Settings
from router.context import Context
from router.crm.factory import MEMORY_CRMS
from router.errors import ProviderUnavailable
from router.providers import memory as memprov
from router.runtime import pause
from router.runtime.summary import Summary
from router.state.base import InstancePeek
from workers import tasks
from workers.context import ContextHolder


def config_xml(names: list[str], tag: str) -> str:
    blocks = "".join(
        f"""<ProviderConfiguration Name="{n}"><ProviderClass>memory</ProviderClass>
        <Direction>Incoming</Direction><Deployment>crm</Deployment>
        <EmailAddress>{n}-{tag}@example.com</EmailAddress><PollingPeriod>1000</PollingPeriod>
        </ProviderConfiguration>"""
        for n in names
    )
    return f"""<Configuration><SystemConfiguration><StateStore>memory://</StateStore>
      </SystemConfiguration><Deployment Name="crm"><Adapter>memory</Adapter>
      <CrmServerUrl>https://crm.example</CrmServerUrl></Deployment>{blocks}</Configuration>"""


def message(n: int) -> bytes:
    msg = EmailMessage()
    msg["From"], msg["To"] = "a@example.com", "b@example.com"
    msg["Subject"], msg["Message-ID"] = f"m{n}", f"<m{n}-{uuid.uuid4().hex}@example.com>"
    msg.set_content("hello")
    return msg.as_bytes()


class Batch:
    """Three memory instances, the holder the tasks use, and every enqueue recorded."""

    names = ["a", "b", "c"]

    def __init__(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.tag = uuid.uuid4().hex[:8]
        path = tmp_path / "router.xml"
        path.write_text(config_xml(self.names, self.tag))
        monkeypatch.setattr(tasks, "HOLDER", ContextHolder(Settings(config=path)))
        self.enqueued: list[tuple[str, Any, dict[str, Any]]] = []
        for task in (tasks.deliver, tasks.poll, tasks.poll_batch):
            monkeypatch.setattr(task, "apply_async", self._recorder(task.name))
        MEMORY_CRMS.pop("crm", None)

    def _recorder(self, name: str) -> Any:
        return lambda args, **kw: self.enqueued.append((name, args, kw))

    def box(self, name: str) -> memprov.Mailbox:
        return memprov.mailbox(f"{name}-{self.tag}@example.com")

    def sent(self, task: str) -> list[Any]:
        return [args for name, args, _ in self.enqueued if name == task]


@pytest.fixture
def batch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Batch:
    return Batch(tmp_path, monkeypatch)


def test_a_batch_polls_every_instance_and_hands_each_ones_mail_to_the_crm_queue(
    batch: Batch,
) -> None:
    batch.box("a").append(message(1))
    batch.box("c").append(message(2))
    assert tasks.poll_batch(batch.names) == {"polled": 3, "queued": 0}
    assert sorted(batch.sent(tasks.deliver.name)) == [("a",), ("c",)]


def test_a_retryable_failure_of_one_instance_retries_it_alone_and_the_others_are_polled(
    batch: Batch, monkeypatch: pytest.MonkeyPatch
) -> None:
    polled: list[str] = []
    real = tasks._poll

    def flaky(ctx: Context, name: str, peek: InstancePeek | None = None) -> Summary:
        polled.append(name)
        if name == "b":
            raise ProviderUnavailable("mail server down")
        return real(ctx, name, peek)

    monkeypatch.setattr(tasks, "_poll", flaky)
    assert tasks.poll_batch(batch.names) == {"polled": 3, "queued": 0}
    assert polled == ["a", "b", "c"]
    retries = [(args, kw) for name, args, kw in batch.enqueued if name == tasks.poll.name]
    assert [args for args, _ in retries] == [("b",)]
    assert retries[0][1]["countdown"] >= 2.0


def test_a_bug_in_one_instances_poll_does_not_stop_its_batch_mates(
    batch: Batch, monkeypatch: pytest.MonkeyPatch
) -> None:
    polled: list[str] = []

    def buggy(ctx: Context, name: str, peek: InstancePeek | None = None) -> Summary:
        polled.append(name)
        raise KeyError(name)

    monkeypatch.setattr(tasks, "_poll", buggy)
    tasks.poll_batch(batch.names)
    assert polled == ["a", "b", "c"]
    assert batch.sent(tasks.poll.name) == []


def test_what_is_left_after_the_time_budget_goes_back_to_the_queue_as_a_new_batch(
    batch: Batch, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tasks, "BATCH_BUDGET", 0.0)
    assert tasks.poll_batch(batch.names) == {"polled": 1, "queued": 2}
    assert batch.sent(tasks.poll_batch.name) == [(["b", "c"],)]


def test_an_instance_removed_from_the_configuration_is_skipped_in_its_batch(
    batch: Batch,
) -> None:
    batch.box("a").append(message(3))
    assert tasks.poll_batch(["gone", "a"]) == {"polled": 2, "queued": 0}
    assert batch.sent(tasks.deliver.name) == [("a",)]


def test_a_staged_leftover_seen_by_the_batchs_read_ahead_is_handed_to_the_crm_queue(
    batch: Batch,
) -> None:
    # Given "b" holds a message staged by an earlier poll whose deliver task was lost
    with tasks.HOLDER.use() as ctx:
        ctx.store.stage("b", "left-over", message(4))
    tasks.poll_batch(batch.names)
    assert batch.sent(tasks.deliver.name) == [("b",)]


def test_an_instance_paused_after_refused_credentials_is_not_polled_in_its_batch(
    batch: Batch, monkeypatch: pytest.MonkeyPatch
) -> None:
    with tasks.HOLDER.use() as ctx:
        pause.Pause("credentials refused", time.time()).record(ctx.store, "a")
    polled: list[str] = []
    real = tasks._poll

    def spy(ctx: Context, name: str, peek: InstancePeek | None = None) -> Summary:
        polled.append(name)
        return real(ctx, name, peek)

    monkeypatch.setattr(tasks, "_poll", spy)
    tasks.poll_batch(batch.names)
    assert polled == ["b", "c"]


def test_a_poll_stopped_at_the_time_limit_is_logged_and_its_batch_goes_on(
    batch: Batch, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    polled: list[str] = []

    def stuck(ctx: Context, name: str, peek: InstancePeek | None = None) -> Summary:
        polled.append(name)
        if name == "a":
            raise SoftTimeLimitExceeded()
        return {}

    monkeypatch.setattr(tasks, "_poll", stuck)
    tasks.poll_batch(batch.names)
    assert polled == ["a", "b", "c"]
    assert "a: poll stopped at the time limit" in caplog.text
