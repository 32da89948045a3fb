"""Prometheus metrics (router.metrics) as the standalone runtime records them."""

from __future__ import annotations

import time
import urllib.request
import uuid

from prometheus_client import REGISTRY

from router import metrics
from router.config import Configuration, Deployment, ProviderConfiguration
from router.crm.memory import MemoryCrm
from router.errors import CrmUnavailable
from router.incoming import CycleReport
from router.models import Direction
from router.providers import memory as memprov
from router.runtime.standalone import execute
from router.service import Context
from router.state.memory import MemoryStore
from tests.unit.test_incoming_cycle import make_message


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def metered(name: str) -> tuple[Context, MemoryCrm]:
    """A metered context with one incoming memory instance ``name`` and its MemoryCrm."""
    dep = Deployment(name="crm", adapter="memory", crm_server_url="https://crm.example")
    cfg = ProviderConfiguration(
        name=name, provider_class="memory", direction=Direction.INCOMING, deployment="crm"
    )
    config = Configuration(deployments=(dep,), providers=(cfg,))
    ctx = metrics.metered_context(Context(config, MemoryStore()))
    crm = MemoryCrm()
    ctx._crms["crm"] = crm
    return ctx, crm


def test_a_cycle_report_feeds_the_counters_and_the_duration_histogram() -> None:
    name = f"m-{uuid.uuid4().hex[:6]}"
    metrics.record_cycle(CycleReport(name, delivered=4, quarantined=1, duration=0.3))
    metrics.record_cycle(CycleReport(name, skipped="lease held by someone", delivered=9))
    assert sample("email_router_messages_delivered_total", instance=name) == 4
    assert sample("email_router_messages_quarantined_total", instance=name) == 1
    assert sample("email_router_poll_duration_seconds_count", instance=name) == 1
    assert sample("email_router_poll_duration_seconds_sum", instance=name) == 0.3


def test_lag_is_the_age_of_the_oldest_staged_message() -> None:
    store, name = MemoryStore(), f"lag-{uuid.uuid4().hex[:6]}"
    assert metrics.update_lag(store, name) == 0.0
    store.stage(name, "1", b"raw")
    staged_at = store.list_entries(name)[0].updated_at
    assert metrics.update_lag(store, name, now=staged_at + 42) == 42
    assert sample("email_router_lag_seconds", instance=name) == 42


def test_a_real_cycle_records_delivered_messages_crm_latency_and_lag() -> None:
    # Given a memory mailbox with two messages and a memory CRM
    name = f"box-{uuid.uuid4().hex[:6]}"
    ctx, _crm = metered(name)
    cfg = ctx.config.providers[0]
    for n in range(2):
        memprov.mailbox(name).append(make_message(n))
    before = sample("email_router_crm_latency_seconds_count", operation="deliver_many")
    # When the runtime executes one cycle
    result = execute(ctx, cfg)
    # Then the counters, the CRM latency histogram and the lag gauge moved
    assert result.error is None
    assert sample("email_router_messages_delivered_total", instance=name) == 2
    assert sample("email_router_crm_latency_seconds_count", operation="deliver_many") > before
    assert sample("email_router_lag_seconds", instance=name) == 0


def test_a_failed_cycle_counts_as_an_error_by_class_and_is_recorded() -> None:
    # Given a CRM that is down
    name = f"err-{uuid.uuid4().hex[:6]}"
    ctx, crm = metered(name)

    def down(_call: str) -> None:
        raise CrmUnavailable("crm.example: 503")

    crm.fault = down
    memprov.mailbox(name).append(make_message(1))
    # When the runtime executes a cycle
    result = execute(ctx, ctx.config.providers[0])
    # Then the run returned the error, counted it, and the message waits staged (lag > 0 later)
    assert isinstance(result.error, CrmUnavailable)
    assert sample("email_router_cycle_errors_total", instance=name, error="CrmUnavailable") == 1
    assert "CrmUnavailable" in (ctx.store.get_stats(name).last_error or "")
    assert metrics.update_lag(ctx.store, name, now=time.time() + 10) >= 10


def test_the_exporter_serves_the_router_metrics_over_http() -> None:
    port = metrics.start_metrics_server(0)
    metrics.record_cycle(CycleReport("http-check", delivered=1, duration=0.01))
    deadline = time.monotonic() + 5
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as resp:
                body = resp.read().decode()
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    assert 'email_router_messages_delivered_total{instance="http-check"} 1.0' in body
    assert "email_router_crm_latency_seconds" in body


def test_a_send_report_counts_sent_and_failed_and_a_busy_one_counts_nothing() -> None:
    from router.outgoing import SendReport

    name = f"out-{uuid.uuid4().hex[:6]}"
    metrics.record_cycle(SendReport(name, sent=3, failed=1, skipped=2, duration=0.2))
    metrics.record_cycle(SendReport(name, busy="lease held by host:1:2", sent=5))
    assert sample("email_router_messages_delivered_total", instance=name) == 3
    assert sample("email_router_messages_failed_total", instance=name) == 1
    assert sample("email_router_poll_duration_seconds_count", instance=name) == 1
