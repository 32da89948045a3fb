"""Fast checks of the Dataverse adapter's pieces with fakes: retry decisions, tokens, payloads.

The wire behaviour against a real HTTP server is covered by tests/integration/test_dataverse_*.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import pytest
import requests

from router.crm.base import DeliveryTarget, Owners
from router.crm.dataverse import DataverseAdapter, DataverseOptions
from router.crm.dataverse_auth import TokenSource
from router.crm.dataverse_batch import Part, build_batch, parse_batch
from router.crm.dataverse_http import MaybeSent, RetryPolicy, WebApi, retry_after_seconds
from router.crm.dataverse_payloads import odata_string, owners_filter, pending_fetchxml
from router.crm.simulator.fetchxml import evaluate
from router.errors import CrmAuthError, CrmRejected, CrmUnavailable
from router.models import Activity, DeliveryResult


class FakeTokens:
    def __init__(self) -> None:
        self.refreshed = 0

    def token(self) -> str:
        return f"t{self.refreshed}"

    def refresh(self, stale: str | None = None) -> str:
        self.refreshed += 1
        return self.token()


def response(
    status: int, headers: dict[str, str] | None = None, body: bytes = b"{}"
) -> requests.Response:
    r = requests.Response()
    r.status_code, r._content = status, body
    r.headers.update(headers or {})
    return r


class FakeSession:
    def __init__(self, answers: list[requests.Response]) -> None:
        self.answers, self.sent = answers, []  # type: ignore[var-annotated]

    def request(self, method: str, url: str, **kwargs: Any) -> requests.Response:
        self.sent.append((method, url, kwargs["headers"]))
        return self.answers.pop(0)


def web_api(
    answers: list[requests.Response], attempts: int = 4
) -> tuple[WebApi, list[float], FakeTokens]:
    sleeps: list[float] = []
    tokens = FakeTokens()
    api = WebApi(
        "https://org.example/api/data/v9.2/",
        tokens,
        FakeSession(answers),  # type: ignore[arg-type]
        policy=RetryPolicy(max_attempts=attempts),
        sleep=sleeps.append,
    )
    return api, sleeps, tokens


def test_429_waits_exactly_the_retry_after_then_succeeds() -> None:
    api, sleeps, _ = web_api([response(429, {"Retry-After": "2"}), response(200)])
    assert api.call("GET", "WhoAmI", "WhoAmI").status_code == 200
    assert sleeps == [2.0]


def test_throttling_that_never_ends_hands_the_delay_to_the_runtime() -> None:
    api, sleeps, _ = web_api([response(429, {"Retry-After": "3"})] * 3, attempts=3)
    with pytest.raises(CrmUnavailable) as info:
        api.call("GET", "WhoAmI", "WhoAmI")
    assert info.value.retry_after == 3.0 and sleeps == [3.0, 3.0]


def test_a_401_refreshes_the_token_once() -> None:
    api, _, tokens = web_api([response(401), response(200)])
    api.call("GET", "WhoAmI", "WhoAmI")
    assert tokens.refreshed == 1
    assert [h["Authorization"] for _, _, h in api.session.sent] == ["Bearer t0", "Bearer t1"]  # type: ignore[attr-defined]


def test_a_second_401_is_an_auth_error() -> None:
    api, _, _ = web_api([response(401), response(401)])
    with pytest.raises(CrmAuthError):
        api.call("GET", "WhoAmI", "WhoAmI")


@pytest.mark.parametrize("status", [400, 403, 404, 412])
def test_client_errors_are_permanent_for_the_record(status: int) -> None:
    body = b'{"error": {"code": "0x80040217", "message": "email Does Not Exist"}}'
    api, sleeps, _ = web_api([response(status, body=body)])
    with pytest.raises(CrmRejected, match="0x80040217"):
        api.call("GET", "emails(x)", "read")
    assert sleeps == []


def test_every_request_carries_the_odata_headers() -> None:
    api, _, _ = web_api([response(200)])
    api.call("GET", "WhoAmI", "WhoAmI")
    ((_, _, headers),) = api.session.sent  # type: ignore[attr-defined]
    expected = {
        "Accept": "application/json",
        "OData-MaxVersion": "4.0",
        "OData-Version": "4.0",
        "If-None-Match": "null",
    }
    assert {k: headers[k] for k in expected} == expected


def test_retry_after_accepts_seconds_and_http_dates() -> None:
    assert retry_after_seconds("7") == 7.0
    later = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    assert 28 <= (retry_after_seconds(later) or 0) <= 30
    assert retry_after_seconds(None) is None


def test_tokens_are_cached_and_renewed_before_they_expire() -> None:
    now = [0.0]

    class App:
        issued = 0

        def remove_tokens_for_client(self) -> None: ...

        def acquire_token_for_client(self, scopes: list[str]) -> dict[str, Any]:
            App.issued += 1
            return {"access_token": f"a{App.issued}", "expires_in": 5}

    source = TokenSource(
        "https://login.example/t",
        "c",
        lambda: "s",
        "https://org",
        requests.Session(),
        lambda: now[0],
    )
    source._app = App()
    assert source.token() == "a1"
    now[0] = 4.0
    assert source.token() == "a1"
    now[0] = 4.6  # within the last tenth of the lifetime
    assert source.token() == "a2"
    assert source.refresh(stale="a1") == "a2"  # another thread already renewed it


def test_batch_round_trip_keeps_order_and_statuses() -> None:
    content_type, body = build_batch(
        "/api/data/v9.2/", [Part("POST", "emails", {"a": 1}), Part("GET", "x?$filter=a eq 1")]
    )
    assert b"GET /api/data/v9.2/x?$filter=a%20eq%201 HTTP/1.1" in body
    boundary = "batchresponse_1"
    head = (
        f"--{boundary}\r\nContent-Type: application/http\r\n"
        "Content-Transfer-Encoding: binary\r\n\r\n"
    )
    answer = (
        f'{head}HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n{{"EmailId": "e1"}}\r\n'
        f"{head}HTTP/1.1 429 Too Many Requests\r\nRetry-After: 2\r\n\r\n\r\n--{boundary}--\r\n"
    ).encode()
    first, second = parse_batch(f"multipart/mixed; boundary={boundary}", answer)
    assert (first.status, first.body) == (200, {"EmailId": "e1"})
    assert (second.status, second.headers["retry-after"]) == (429, "2")
    assert content_type.startswith("multipart/mixed; boundary=batch_")


def test_odata_strings_double_quotes_and_encode_reserved_characters() -> None:
    assert odata_string("it's a&b") == "'it''s%20a%26b'"


def test_fetchxml_selects_owner_queue_and_status() -> None:
    def row(n: str, status: int, owner: str, sender: str, created: int) -> dict[str, Any]:
        return {
            "activityid": n,
            "statuscode": status,
            "directioncode": 1,
            "ownerid": owner,
            "emailsender": sender,
            "sender": "a@x",
            "createdon": created,
        }

    rows = [row("1", 6, "u1", "u1", 2), row("2", 6, "u2", "q1", 1), row("3", 3, "u1", "u1", 0)]
    query = pending_fetchxml(Owners(user_ids=("u1",), queue_ids=("q1",)), 10)
    assert [r["activityid"] for r in evaluate(query, rows)[0]] == ["2", "1"]
    assert [r["activityid"] for r in evaluate(pending_fetchxml(Owners(), 1), rows)[0]] == ["2"]


def test_mailbox_filter_is_escaped() -> None:
    odd = "a\"'<b@x"
    query = pending_fetchxml(Owners(mailbox=odd), 5)
    row = {"activityid": "1", "statuscode": 6, "directioncode": 1, "sender": odd, "createdon": 0}
    assert evaluate(query, [row, {**row, "activityid": "2", "sender": "c@x"}])[0] == [row]
    assert odd not in owners_filter(Owners(mailbox=odd))


def test_a_creating_request_is_not_resent_after_a_read_timeout() -> None:
    class TimingOut(FakeSession):
        def request(self, method: str, url: str, **kwargs: Any) -> requests.Response:
            self.sent.append((method, url, kwargs["headers"]))
            raise requests.ReadTimeout("Read timed out")

    api, sleeps, _ = web_api([])
    api.session = TimingOut([])
    with pytest.raises(MaybeSent):
        api.call("POST", "emails/x", "deliver", json={}, idempotent=False)
    assert len(api.session.sent) == 1 and sleeps == []


def test_a_batch_that_may_have_been_applied_falls_back_to_checked_single_deliveries() -> None:
    adapter = DataverseAdapter("https://org.example", "https://login.example/t", "c", lambda: "s")
    singles: list[str] = []

    def batch(*args: Any, **kwargs: Any) -> Any:
        raise MaybeSent("read timed out")

    def single(activity: Activity, target: DeliveryTarget) -> list[Any]:
        singles.append(activity.message_id)
        return [DeliveryResult(f"id-{activity.message_id}", duplicate=True)]

    adapter._batch = batch  # type: ignore[method-assign]
    adapter._deliver_single = single  # type: ignore[method-assign]
    acts = [Activity(f"<m{i}@x>", "s", "", None) for i in range(3)]
    results = adapter.deliver_many([(a, DeliveryTarget()) for a in acts])
    assert singles == [a.message_id for a in acts]
    assert all(isinstance(r, DeliveryResult) and r.duplicate for r in results)


def test_after_a_failed_batch_the_retry_sends_only_what_was_not_delivered() -> None:
    adapter = DataverseAdapter(
        "https://org.example", "https://login.example/t", "c", lambda: "s",
        options=DataverseOptions(batch_size=2, max_workers=1),
    )  # fmt: skip
    sent: list[list[str]] = []
    failing = {"<m3@x>"}

    def chunk(items: list[tuple[Activity, DeliveryTarget]]) -> list[Any]:
        ids = [a.message_id for a, _ in items]
        sent.append(ids)
        if failing & set(ids):
            raise CrmUnavailable("503 for good")
        return [DeliveryResult(f"id-{m}") for m in ids]

    adapter._deliver_chunk = chunk  # type: ignore[method-assign]
    items = [(Activity(f"<m{i}@x>", "s", "", None), DeliveryTarget()) for i in range(4)]
    with pytest.raises(CrmUnavailable):
        adapter.deliver_many(items)
    failing.clear()
    results = adapter.deliver_many(items)

    assert sent[-1] == ["<m2@x>", "<m3@x>"] and len(sent) == 3
    assert [r.duplicate for r in results if isinstance(r, DeliveryResult)] == [
        True,
        True,
        False,
        False,
    ]
