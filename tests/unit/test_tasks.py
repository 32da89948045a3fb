"""The Celery tasks, the worker's context holder and the app settings, run in-process.

Tasks are called directly (``poll("box")`` runs the body in this process); the broker is never
touched: ``deliver.apply_async`` is replaced by a recorder. The memory provider, CRM and state
store stand in for the real servers, which tests/e2e/test_celery_*.py use with real workers.
"""

from __future__ import annotations

import logging
import time
import uuid
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from celery.app.task import Task

from router.config import Settings, SystemConfiguration
from router.crm.factory import MEMORY_CRMS
from router.crm.memory import MemoryCrm
from router.errors import CrmAuthError, CrmUnavailable, MessageUnusable
from router.models import Direction, LedgerState
from router.providers import memory as memprov
from router.runtime import pause
from workers import tasks
from workers.app import (
    QUEUES,
    RETRY_BACKOFF_MAX,
    celery_config,
    time_limits,
    visibility_timeout,
)
from workers.context import ContextHolder


def config_xml(
    address: str,
    *,
    enabled: bool = True,
    extra: str = "",
    refresh: int = 100,
    state: str = "memory://",
) -> str:
    return f"""<Configuration>
  <SystemConfiguration><MaxThreadExecution>20000</MaxThreadExecution>
    <ConfigRefreshPeriod>{refresh}</ConfigRefreshPeriod><StateStore>{state}</StateStore>
  </SystemConfiguration>
  <Deployment Name="crm"><Adapter>memory</Adapter><CrmServerUrl>https://crm.example</CrmServerUrl>
  </Deployment>
  <ProviderConfiguration Name="box"><ProviderClass>memory</ProviderClass>
    <Direction>Incoming</Direction><Deployment>crm</Deployment>
    <EmailAddress>{address}</EmailAddress><PollingPeriod>1000</PollingPeriod>
    <Enabled>{str(enabled).lower()}</Enabled>
  </ProviderConfiguration>{extra}
</Configuration>"""


def message(n: int) -> bytes:
    msg = EmailMessage()
    msg["From"] = f"sender{n}@example.com"
    msg["To"] = "sales@example.com"
    msg["Subject"] = f"message {n}"
    msg["Message-ID"] = f"<m{n}.{uuid.uuid4().hex}@example.com>"
    msg.set_content(f"body {n}")
    return msg.as_bytes()


class World:
    """A config file with one memory instance, the holder tasks use, and recorded enqueues."""

    def __init__(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.address = f"box-{uuid.uuid4().hex[:8]}@example.com"
        self.path = tmp_path / "router.xml"
        self.write()
        self.holder = ContextHolder(Settings(config=self.path))
        self.enqueued: list[tuple[Any, dict[str, Any]]] = []
        monkeypatch.setattr(tasks, "HOLDER", self.holder)
        monkeypatch.setattr(
            tasks.deliver, "apply_async", lambda args, **kw: self.enqueued.append((args, kw))
        )
        MEMORY_CRMS.pop("crm", None)
        self.box = memprov.mailbox(self.address)

    def write(self, **kwargs: Any) -> None:
        self.path.write_text(config_xml(self.address, **kwargs))

    @property
    def crm(self) -> MemoryCrm:
        crm = MEMORY_CRMS["crm"]
        assert isinstance(crm, MemoryCrm)
        return crm

    def staged(self) -> int:
        with self.holder.use() as ctx:
            return len(ctx.store.list_entries("box", [LedgerState.STAGED]))


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> World:
    return World(tmp_path, monkeypatch)


# -- poll and deliver -----------------------------------------------------------------------------
def test_poll_stages_new_mail_and_hands_delivery_to_the_crm_queue(world: World) -> None:
    for n in range(3):
        world.box.append(message(n))
    result = tasks.poll("box")
    assert result is not None and result["staged"] == 3
    assert world.staged() == 3
    assert world.enqueued == [(("box",), {"queue": "crm", "expires": 60.0})]
    assert "crm" not in MEMORY_CRMS or not world.crm.activities  # the poll itself delivers nothing


def test_deliver_turns_the_staged_messages_into_one_activity_each(world: World) -> None:
    for n in range(3):
        world.box.append(message(n))
    tasks.poll("box")
    result = tasks.deliver("box")
    assert result is not None and result["delivered"] == 3
    assert len(world.crm.activities) == 3
    assert tasks.deliver("box")["delivered"] == 0  # a redelivered task changes nothing


def test_poll_enqueues_delivery_again_while_staged_messages_remain(world: World) -> None:
    world.box.append(message(1))
    tasks.poll("box")
    tasks.poll("box")  # nothing new, but the first deliver task may have been lost
    assert len(world.enqueued) == 2


def test_poll_with_nothing_new_or_staged_enqueues_nothing(world: World) -> None:
    tasks.poll("box")
    assert world.enqueued == []


def test_poll_of_a_mailbox_leased_by_another_worker_is_skipped(world: World) -> None:
    world.box.append(message(1))
    with world.holder.use() as ctx:
        ctx.store.acquire_lease("box", "other-worker", 30)
    result = tasks.poll("box")
    assert result is not None and result["skipped"] == "lease held by other-worker"
    assert world.staged() == 0 and world.enqueued == []


def test_task_for_an_instance_removed_from_the_configuration_does_nothing(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="workers.tasks"):
        assert tasks.poll("gone") is None
        assert tasks.deliver("gone") is None
    assert "gone: not an enabled instance" in caplog.text


def test_task_for_a_disabled_instance_does_nothing(world: World) -> None:
    world.write(enabled=False)
    world.box.append(message(1))
    assert tasks.poll("box") is None
    assert world.staged() == 0


def test_send_for_an_incoming_instance_is_refused_without_running(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    assert tasks.send("box") is None
    assert "box: is an Incoming instance, not Outgoing" in caplog.text


# -- errors ---------------------------------------------------------------------------------------
def crm_fault(world: World, exc: Exception) -> None:
    tasks.poll("box")

    def fault(_what: str) -> None:
        raise exc

    world.crm.fault = fault


def test_stop_error_is_logged_with_the_instance_and_recorded_not_retried(
    world: World, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    world.box.append(message(1))
    MEMORY_CRMS["crm"] = MemoryCrm()
    crm_fault(world, CrmAuthError("token refused"))
    retried: list[Any] = []
    monkeypatch.setattr(Task, "retry", lambda *a, **kw: retried.append(kw))
    assert tasks.deliver("box") is None
    assert retried == []
    assert "box: stopped until the configuration or credentials are fixed" in caplog.text
    with world.holder.use() as ctx:
        assert "CrmAuthError: token refused" in (ctx.store.get_stats("box").last_error or "")
    assert world.staged() == 1  # nothing lost: delivered once the credentials are fixed


class Retried(Exception):
    pass


def test_retryable_error_is_retried_no_sooner_than_the_crm_asked(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    world.box.append(message(1))
    MEMORY_CRMS["crm"] = MemoryCrm()
    crm_fault(world, CrmUnavailable("429 throttled", retry_after=120))
    seen: dict[str, Any] = {}

    def fake_retry(self: Task, *args: Any, **kwargs: Any) -> Exception:
        seen.update(kwargs)
        return Retried()

    monkeypatch.setattr(Task, "retry", fake_retry)
    with pytest.raises(Retried):
        tasks.deliver("box")
    assert seen["countdown"] >= 120
    assert isinstance(seen["exc"], CrmUnavailable)


def test_retry_countdown_is_the_backoff_unless_the_remote_asked_for_longer() -> None:
    assert tasks.retry_countdown(CrmUnavailable("x"), 4.0) == 4.0
    assert tasks.retry_countdown(CrmUnavailable("x", retry_after=30), 4.0) == 30.0
    assert tasks.retry_countdown(CrmUnavailable("x", retry_after=1), 8.0) == 8.0
    assert tasks.retry_countdown(None, None) is None


def test_tasks_retry_with_jittered_exponential_backoff_on_retryable_errors_only() -> None:
    for task in (tasks.poll, tasks.deliver, tasks.send):
        assert task.autoretry_for == (tasks.RetryableError,)
        assert task.retry_backoff and task.retry_jitter
        assert task.retry_backoff_max == RETRY_BACKOFF_MAX
        assert task.max_retries >= 3


def test_quarantine_error_at_task_level_finishes_the_task(world: World) -> None:
    def body(_ctx: Any, _name: str) -> dict[str, Any]:
        raise MessageUnusable("no usable part")

    assert tasks.run_for("t", "box", Direction.INCOMING, body) is None


def test_a_broken_configuration_file_is_reported_and_the_task_finishes(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    world.path.write_text("<Configuration><Nope/></Configuration>")
    assert tasks.poll("box") is None
    assert "box: workers.tasks.poll: configuration cannot be used" in caplog.text


def test_task_results_hold_counts_never_message_content(world: World) -> None:
    world.box.append(message(1))
    result = tasks.poll("box")
    assert result is not None
    for value in result.values():  # scalars, or per-kind counts (classified, tracking_filtered)
        counts = isinstance(value, dict) and all(isinstance(n, int) for n in value.values())
        assert value is None or isinstance(value, int | float | str | bool) or counts
    assert "outcomes" not in result


# -- the context holder ---------------------------------------------------------------------------
def wait_refresh() -> None:
    time.sleep(0.15)  # ConfigRefreshPeriod is 100 ms in these files


def test_holder_opens_one_context_and_reuses_it(world: World) -> None:
    with world.holder.use() as first, world.holder.use() as second:
        assert first is second


def test_holder_reloads_the_context_after_the_file_changed(world: World) -> None:
    with world.holder.use() as before:
        pass
    extra = """<ProviderConfiguration Name="new"><ProviderClass>memory</ProviderClass>
      <Direction>Incoming</Direction><Deployment>crm</Deployment></ProviderConfiguration>"""
    world.write(extra=extra)
    wait_refresh()
    with world.holder.use() as after:
        assert after is not before
        assert [p.name for p in after.config.providers] == ["box", "new"]


def test_holder_closes_a_replaced_context_only_after_its_task_is_done(world: World) -> None:
    closed: list[object] = []
    with world.holder.use() as old:
        old.close = lambda: closed.append(old)  # type: ignore[method-assign]
        world.write(extra="")
        world.path.write_text(world.path.read_text() + " ")
        wait_refresh()
        with world.holder.use() as new:
            assert new is not old
        assert closed == []
    assert closed == [old]


def test_holder_keeps_the_previous_context_when_the_new_file_is_broken(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    with world.holder.use() as before:
        pass
    world.path.write_text("<Configuration><Broken")
    wait_refresh()
    with world.holder.use() as after:
        assert after is before
    assert "not reloaded, keeping the previous one" in caplog.text


def test_holder_forgets_an_inherited_context_after_fork(world: World) -> None:
    with world.holder.use() as parent:
        pass
    world.holder.forget()
    with world.holder.use() as child:
        assert child is not parent


# -- app settings ---------------------------------------------------------------------------------
def test_app_accepts_json_only_and_keeps_no_results() -> None:
    conf = celery_config(Settings(), SystemConfiguration())
    assert conf["accept_content"] == ["json"]
    assert conf["task_serializer"] == conf["result_serializer"] == "json"
    assert conf["task_ignore_result"] is True


def test_app_redelivers_the_tasks_of_a_worker_that_died() -> None:
    conf = celery_config(Settings(), SystemConfiguration())
    assert conf["task_acks_late"] and conf["task_reject_on_worker_lost"]
    assert conf["worker_prefetch_multiplier"] == 1
    # not cancelled on a lost broker connection: see workers/app.py (a Redis restart)
    assert conf["worker_cancel_long_running_tasks_on_connection_loss"] is False
    assert conf["broker_connection_retry_on_startup"] is True


def test_time_limits_follow_max_thread_execution() -> None:
    system = SystemConfiguration(max_thread_execution=120_000)
    soft, hard = time_limits(system)
    conf = celery_config(Settings(), system)
    assert (conf["task_soft_time_limit"], conf["task_time_limit"]) == (soft, hard)
    assert soft == 120.0 and hard > soft


def test_redis_never_hands_a_running_or_waiting_task_to_a_second_worker() -> None:
    system = SystemConfiguration(max_thread_execution=600_000)
    timeout = celery_config(Settings(), system)["broker_transport_options"]["visibility_timeout"]
    assert timeout == visibility_timeout(system)
    assert timeout > time_limits(system)[1] + RETRY_BACKOFF_MAX


def test_plain_celery_beat_uses_the_scheduler_that_follows_the_configuration() -> None:
    conf = celery_config(Settings(), SystemConfiguration(config_refresh_period=2500))
    assert conf["beat_scheduler"] == "workers.scheduler:ConfigScheduler"
    assert conf["beat_max_loop_interval"] == 2.5


def test_each_kind_of_task_has_its_own_queue() -> None:
    conf = celery_config(Settings(), SystemConfiguration())
    assert [q.name for q in conf["task_queues"]] == list(QUEUES)
    routes = conf["task_routes"]
    assert routes["workers.tasks.poll"]["queue"] == "incoming"
    assert routes["workers.tasks.send"]["queue"] == "outgoing"
    assert routes["workers.tasks.deliver"]["queue"] == "crm"


def test_celery_command_finds_the_app_in_the_workers_package() -> None:
    from celery.app.utils import find_app

    import workers

    assert find_app("workers") is workers.celery
    assert "workers.tasks.poll" in workers.celery.tasks


def test_worker_survives_kombu_failing_to_close_a_collected_broker_channel(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from celery.worker.consumer import Consumer

    from workers.consumer import RobustConsumer

    def broken_cleanup(self: Consumer, exc: Exception) -> None:
        raise AttributeError("'NoneType' object has no attribute 'hostname'")

    monkeypatch.setattr(Consumer, "on_connection_error_after_connected", broken_cleanup)
    import workers

    consumer = RobustConsumer.__new__(RobustConsumer)
    consumer.app, consumer.pool, consumer.connection = workers.celery, None, object()
    consumer.on_connection_error_after_connected(ConnectionError("lost"))
    assert consumer.connection is None
    assert celery_config(Settings(), SystemConfiguration())["worker_consumer"] == (
        "workers.consumer:RobustConsumer"
    )


def test_an_instance_whose_credentials_were_refused_waits_for_the_fixed_file_to_be_loaded(
    world: World, tmp_path: Path
) -> None:
    # Given a state store that survives the worker reloading its configuration
    state = f"sqlite:///{tmp_path / 'state.db'}"
    world.write(refresh=1000, state=state)
    world.box.append(message(1))
    MEMORY_CRMS["crm"] = MemoryCrm()
    crm_fault(world, CrmAuthError("token refused"))
    tasks.deliver("box")
    calls = len(world.crm.calls)
    # paused: the next tasks do not touch the CRM
    assert tasks.deliver("box") is None
    assert tasks.poll("box") is None
    assert len(world.crm.calls) == calls
    # the operator fixes the file; until this worker has loaded it, it stays paused (running
    # with the old configuration would only be refused again and pause it for good)
    world.crm.fault = None
    time.sleep(0.01)
    world.write(refresh=1000, state=state)
    assert tasks.deliver("box") is None
    assert len(world.crm.calls) == calls
    # once the refresh period has passed, the new version is loaded and the instance works
    time.sleep(1.1)
    result = tasks.deliver("box")
    assert result is not None and result["delivered"] == 1


def test_a_paused_instance_tries_again_after_the_longest_pause(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    world.write(refresh=60_000)  # keep this memory store: no reload mid-test
    world.box.append(message(1))
    MEMORY_CRMS["crm"] = MemoryCrm()
    crm_fault(world, CrmAuthError("token refused"))
    tasks.deliver("box")
    world.crm.fault = None
    monkeypatch.setattr(pause, "STOP_PAUSE", 0.0)
    time.sleep(0.01)
    assert tasks.deliver("box")["delivered"] == 1


def test_housekeeping_requeues_delivery_of_staged_leftovers_and_purges_old_entries(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    world.write(refresh=60_000)
    world.box.append(message(1))
    world.box.append(message(2))
    tasks.poll("box")
    world.enqueued.clear()
    with world.holder.use() as ctx:  # one entry finished long ago
        ctx.store.create_entry("box", "old", LedgerState.DONE)
        with monkeypatch.context() as later:  # 2096: far past the 30-day retention
            later.setattr(time, "time", lambda: 4_000_000_000.0)
            result = tasks.housekeeping()
        assert ctx.store.get_entry("box", "old") is None
    assert result == {"requeued": ["box"], "purged": 1}
    assert world.enqueued[0][0] == ("box",)


def test_poll_and_deliver_update_the_metrics_of_their_instance(world: World) -> None:
    from router import metrics

    world.box.append(message(1))
    tasks.poll("box")
    assert metrics.LAG.labels("box")._value.get() >= 0.0  # the oldest staged message's age
    before = metrics.DELIVERED.labels("box")._value.get()
    tasks.deliver("box")
    assert metrics.DELIVERED.labels("box")._value.get() == before + 1
    assert metrics.LAG.labels("box")._value.get() == 0.0


def test_flower_credentials_come_from_router_settings_or_flowers_own_variable() -> None:
    from workers.flower import credentials, credentials_ok

    assert credentials(Settings(flower_basic_auth="a:b"), {"FLOWER_BASIC_AUTH": "c:d"}) == "a:b"
    assert credentials(Settings(), {"FLOWER_BASIC_AUTH": "c:d"}) == "c:d"
    assert credentials(Settings(), {}) is None
    assert credentials_ok("a:b,c:d") and not credentials_ok("a:b,c")
