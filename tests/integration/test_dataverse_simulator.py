"""The simulator enforces what Dataverse enforces, seen by a plain HTTP client (no adapter)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import requests

from router.cli import build_parser
from tests.servers.simulator import SimulatorServer

HEADERS = {"Accept": "application/json", "OData-MaxVersion": "4.0", "OData-Version": "4.0"}
USER = "0b7e8c1a-0000-4000-8000-000000000001"


def call(
    sim: SimulatorServer, method: str, path: str, token: str | None = None, **kw: Any
) -> requests.Response:
    headers = {**HEADERS, **kw.pop("headers", {})}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return requests.request(
        method, sim.api_url + path, headers=headers, verify=str(sim.ca_path), timeout=30, **kw
    )


def error_code(response: requests.Response) -> str:
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}
    return str(body["error"]["code"])


def test_requests_without_a_valid_token_are_refused(simulator: SimulatorServer) -> None:
    assert call(simulator, "GET", "WhoAmI").status_code == 401
    assert call(simulator, "GET", "WhoAmI", token="made-up").status_code == 401


def test_a_token_for_another_organisation_is_refused(simulator: SimulatorServer) -> None:
    other = simulator.for_org(simulator.org + "x")
    assert call(simulator, "GET", "WhoAmI", token=other.token()).status_code == 401
    assert call(other, "GET", "WhoAmI", token=other.token()).status_code == 200


def test_missing_odata_headers_get_a_400_in_dataverse_shape(simulator: SimulatorServer) -> None:
    answer = call(simulator, "GET", "WhoAmI", simulator.token(), headers={"OData-Version": "3.0"})
    assert answer.status_code == 400 and error_code(answer).startswith("0x")


def test_unknown_and_mistyped_parameters_get_a_400(simulator: SimulatorServer) -> None:
    token = simulator.token()
    path = "emails/Microsoft.Dynamics.CRM.DeliverIncomingEmail"
    unknown = call(simulator, "POST", path, token, json={"MessageId": "<a@b>", "Sender": "x"})
    assert unknown.status_code == 400 and "Sender" in unknown.json()["error"]["message"]
    (email_id,) = simulator.seed_pending(1, owner_id=USER)
    mistyped = call(
        simulator,
        "POST",
        f"emails({email_id})/Microsoft.Dynamics.CRM.SendEmail",
        token,
        json={"IssueSend": "false", "TrackingToken": ""},
    )
    assert mistyped.status_code == 400 and "Edm.Boolean" in mistyped.json()["error"]["message"]
    assert call(simulator, "GET", "emails(not-a-guid)", token).status_code == 400
    assert call(simulator, "GET", "contacts", token).status_code == 404


def test_status_moves_from_draft_to_pending_send_to_sent(simulator: SimulatorServer) -> None:
    token = simulator.token()
    entity = {
        "subject": "Hi",
        "directioncode": True,
        "email_activity_parties": [{"participationtypemask": 2, "addressused": "a@example.org"}],
    }
    created = call(simulator, "POST", "emails", token, json=entity)
    email_id = created.headers["OData-EntityId"].rsplit("(", 1)[1].rstrip(")")
    statuses = [simulator.emails()[0]["statuscode"]]
    send = f"emails({email_id})/Microsoft.Dynamics.CRM.SendEmail"
    call(simulator, "POST", send, token, json={"IssueSend": True, "TrackingToken": ""})
    statuses.append(simulator.emails()[0]["statuscode"])
    assert call(simulator, "POST", send, token, json={"IssueSend": False, "TrackingToken": ""}).ok
    statuses.append(simulator.emails()[0]["statuscode"])
    again = call(simulator, "POST", send, token, json={"IssueSend": False, "TrackingToken": ""})
    assert statuses == [1, 6, 3] and again.status_code == 400


def test_concurrency_above_the_limit_is_answered_429_with_retry_after(
    simulator: SimulatorServer,
) -> None:
    simulator.set_faults(max_concurrent=2, latency_ms=800, retry_after_min=2, retry_after_max=2)
    token = simulator.token()
    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(lambda _: call(simulator, "GET", "WhoAmI", token), range(6)))
    throttled = [a for a in answers if a.status_code == 429]
    assert len(throttled) >= 3 and sum(a.ok for a in answers) >= 1
    assert {a.headers["Retry-After"] for a in throttled} == {"2"}


def test_admin_page_lists_the_activities(simulator: SimulatorServer) -> None:
    simulator.seed_pending(1, owner_id=USER, subject="Quarterly <offer>")
    page = requests.get(
        f"{simulator.base_url}/_admin/?org={simulator.org}",
        verify=str(simulator.ca_path),
        timeout=30,
    )
    assert page.ok and "Quarterly &lt;offer&gt;" in page.text and "Pending Send" in page.text


def test_organisations_do_not_see_each_others_emails(simulator: SimulatorServer) -> None:
    simulator.seed_pending(2, owner_id=USER)
    assert len(simulator.emails()) == 2
    assert simulator.for_org(simulator.org + "y").emails() == []


def test_crm_sim_command_is_registered() -> None:
    args = build_parser().parse_args(
        ["crm-sim", "--port", "0", "--rate-429", "0.2", "--retry-after", "1-2"]
    )
    assert args.port == 0 and args.rate_429 == 0.2 and args.retry_after == "1-2"
