"""Prometheus metrics (router.metrics) as the standalone runtime records and serves them.

The exporter answers only requests carrying its bearer token and listens on 127.0.0.1 unless told
otherwise; `email-router run` refuses a metrics port without a token.
"""

from __future__ import annotations

import logging
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import psutil
import pytest
from prometheus_client import REGISTRY

from router import metrics
from router.cli import main
from router.config import Configuration, Deployment, ProviderConfiguration, Settings
from router.context import Context
from router.crm.memory import MemoryCrm
from router.errors import ConfigError, CrmUnavailable
from router.models import Direction
from router.providers import memory as memprov
from router.report import CycleReport
from router.runtime.cycle import execute
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


TOKEN = "scrape-token-for-tests"


def scrape(port: int, headers: dict[str, str] | None = None) -> tuple[int, str]:
    """GET /metrics (retrying while the server starts); the status and the body."""
    request = urllib.request.Request(f"http://127.0.0.1:{port}/metrics", headers=headers or {})
    deadline = time.monotonic() + 5
    while True:
        try:
            with urllib.request.urlopen(request, timeout=2) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def listening_on(port: int) -> set[str]:
    own = psutil.Process().net_connections(kind="tcp")
    return {c.laddr.ip for c in own if c.status == psutil.CONN_LISTEN and c.laddr.port == port}


def test_the_exporter_serves_the_router_metrics_with_the_bearer_token() -> None:
    port = metrics.start_metrics_server(0, token=TOKEN)
    metrics.record_cycle(CycleReport("http-check", delivered=1, duration=0.01))

    status, body = scrape(port, {"Authorization": f"Bearer {TOKEN}"})

    assert status == 200
    assert 'email_router_messages_delivered_total{instance="http-check"} 1.0' in body
    assert "email_router_crm_latency_seconds" in body


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"},
     {"Authorization": f"bearer {TOKEN}x"}],
)  # fmt: skip
def test_the_exporter_answers_401_and_no_metrics_without_the_token(
    headers: dict[str, str],
) -> None:
    port = metrics.start_metrics_server(0, token=TOKEN)

    status, body = scrape(port, headers)

    assert status == 401
    assert "email_router" not in body and "Bearer <token>" in body


def test_the_exporter_listens_on_loopback_unless_told_otherwise(
    caplog: pytest.LogCaptureFixture,
) -> None:
    local = metrics.start_metrics_server(0, token=TOKEN)
    exposed = metrics.start_metrics_server(0, "0.0.0.0", token=TOKEN)

    assert listening_on(local) == {"127.0.0.1"}
    assert listening_on(exposed) == {"0.0.0.0"}
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [
        "the metrics endpoint listens on 0.0.0.0, reachable from other hosts: keep its "
        "credentials strong and put TLS in front of it (or set the address to 127.0.0.1)"
    ]


def test_the_exporter_refuses_to_start_without_a_token() -> None:
    with pytest.raises(ConfigError, match="never served without authentication"):
        metrics.start_metrics_server(0)


def test_the_scrape_token_comes_from_the_variable_or_the_file(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("from-file\n")

    assert metrics.scrape_token(Settings(metrics_token="inline")) == "inline"
    assert metrics.scrape_token(Settings(metrics_token_file=tmp_path / "token")) == "from-file"
    assert metrics.scrape_token(Settings()) is None
    with pytest.raises(ConfigError, match="ROUTER_METRICS_TOKEN_FILE: cannot read"):
        metrics.scrape_token(Settings(metrics_token_file=tmp_path / "missing"))
    assert "inline" not in repr(Settings(metrics_token="inline"))


def test_run_with_a_metrics_port_and_no_token_exits_2_before_starting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in ("ROUTER_METRICS_TOKEN", "ROUTER_METRICS_TOKEN_FILE", "ROUTER_METRICS_PORT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)  # where the default SQLite state file would be created
    config = tmp_path / "router.xml"
    config.write_text("<Configuration/>")

    code = main(["run", "--config", str(config), "--metrics-port", "0", "--duration", "5"])

    assert code == 2
    assert "ROUTER_METRICS_PORT is set but neither ROUTER_METRICS_TOKEN" in capsys.readouterr().err
    assert not (tmp_path / "email-router-state.db").exists()


def test_a_send_report_counts_sent_and_failed_and_a_busy_one_counts_nothing() -> None:
    from router.outgoing import SendReport

    name = f"out-{uuid.uuid4().hex[:6]}"
    metrics.record_cycle(SendReport(name, sent=3, failed=1, skipped=2, duration=0.2))
    metrics.record_cycle(SendReport(name, busy="lease held by host:1:2", sent=5))
    assert sample("email_router_messages_delivered_total", instance=name) == 3
    assert sample("email_router_messages_failed_total", instance=name) == 1
    assert sample("email_router_poll_duration_seconds_count", instance=name) == 1


def test_a_worker_without_a_token_keeps_running_and_logs_why_it_serves_no_metrics(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from workers import signals

    monkeypatch.setenv("ROUTER_METRICS_PORT", "0")
    monkeypatch.delenv("ROUTER_METRICS_TOKEN", raising=False)
    monkeypatch.delenv("ROUTER_METRICS_TOKEN_FILE", raising=False)

    signals._serve_metrics()

    (record,) = [r for r in caplog.records if r.name == "workers.signals"]
    assert record.levelno == logging.ERROR
    assert "metrics not served: environment: ROUTER_METRICS_PORT is set" in record.getMessage()
