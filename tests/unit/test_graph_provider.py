"""The graph incoming provider's own rules: configuration, cursor per page, folders, aliases.

Listing and post-processing run against the Graph simulator (one process per session); the
configuration checks never connect.
"""

from __future__ import annotations

import pytest

from router.errors import ConfigError
from router.graph.connection import base_url_of
from router.models import Direction
from router.providers.base import InstanceState
from router.providers.graph_incoming import GraphIncomingProvider
from router.providers.registry import resolve
from router.testing.graphsim import GraphSimulator


def message(i: int) -> bytes:
    return f"Message-ID: <p{i}@test>\r\nSubject: provider {i}\r\n\r\nbody {i}\r\n".encode()


def opened(sim: GraphSimulator, mailbox: str, **fields: object) -> GraphIncomingProvider:
    provider = GraphIncomingProvider(sim.provider_config(mailbox, **fields))  # type: ignore[arg-type]
    provider.open()
    return provider


def test_graph_names_the_incoming_or_the_outgoing_class_by_direction() -> None:
    assert resolve("graph", Direction.INCOMING) is GraphIncomingProvider
    assert resolve("Graph", "Incoming") is GraphIncomingProvider
    assert resolve("graph", Direction.OUTGOING).__name__ == "GraphOutgoingProvider"
    assert resolve("graph-in") is GraphIncomingProvider


def test_an_http_graph_url_is_refused_before_any_token_is_sent(graphsim: GraphSimulator) -> None:
    cfg = graphsim.provider_config("a@sim.example", email_server="http://graph.example/v1.0")
    with pytest.raises(ConfigError, match="https://"):
        GraphIncomingProvider(cfg)


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"email_user": None}, "<EmailUser>"),
        ({"email_password": None}, "<EmailPassword>"),
        ({"parameters": {"client_id": ""}}, "client_id"),
        ({"parameters": {"fetch_batch": "21"}}, "fetch_batch"),
    ],
)
def test_a_missing_or_bad_setting_is_a_config_error_naming_it(
    graphsim: GraphSimulator, fields: dict[str, object], named: str
) -> None:
    cfg = graphsim.provider_config("a@sim.example", **fields)
    with pytest.raises(ConfigError, match=named):
        GraphIncomingProvider(cfg)


def test_the_public_cloud_is_the_default_authority_and_graph_url(graphsim: GraphSimulator) -> None:
    cfg = graphsim.provider_config(
        "a@sim.example", email_server=None, parameters={"authority": "", "tenant_id": "contoso"}
    )
    params = {k: v for k, v in cfg.parameter_dict.items() if k != "authority"}
    options = GraphIncomingProvider.options_model.model_validate(params)

    assert options.authority_url("x") == "https://login.microsoftonline.com/contoso"
    assert base_url_of(cfg) == "https://graph.microsoft.com/v1.0"


def test_the_cursor_stops_before_the_first_page_not_wholly_staged(
    graphsim: GraphSimulator, graph_mailbox: str
) -> None:
    graphsim.add_messages(graph_mailbox, [message(i) for i in range(6)])
    provider = opened(graphsim, graph_mailbox, parameters={"page_size": "2"})
    try:
        state = InstanceState(None, {})
        refs = provider.list_new(state, 6)
        cursor = provider.advance(state, refs[:3])  # page 2 only half staged
        again = provider.list_new(InstanceState(cursor, {}), 6)
    finally:
        provider.close()

    assert len(refs) == 6
    assert [r.key for r in again] == [r.key for r in refs[2:]]
    assert all(r.size is not None and r.size > 20 for r in refs)


def test_move_to_a_display_name_looks_the_folder_up_and_an_unknown_one_stops(
    graphsim: GraphSimulator, graph_mailbox: str
) -> None:
    graphsim.add_messages(graph_mailbox, [message(i) for i in range(3)])
    graphsim.add_messages(graph_mailbox, [message(9)], folder="CRM Done")  # creates the folder
    provider = opened(graphsim, graph_mailbox)
    try:
        refs = provider.list_new(InstanceState(None, {}), 10)
        provider.post_process(refs[:2], "move:CRM Done")
        provider.post_process(refs[2:], "move:archive")
        with pytest.raises(ConfigError, match="no folder of that name"):
            provider.post_process(refs[:1], "move:Nowhere")
    finally:
        provider.close()

    assert len(graphsim.folder(graph_mailbox, "CRM Done")) == 3
    assert len(graphsim.folder(graph_mailbox, "archive")) == 1
    assert graphsim.folder(graph_mailbox) == []


def test_post_processing_a_message_already_gone_is_not_an_error(
    graphsim: GraphSimulator, graph_mailbox: str
) -> None:
    graphsim.add_messages(graph_mailbox, [message(i) for i in range(2)])
    provider = opened(graphsim, graph_mailbox)
    try:
        refs = provider.list_new(InstanceState(None, {}), 10)
        provider.post_process(refs[:1], "delete")
        provider.post_process(refs, "seen")  # the first one is in Deleted Items, with a new id
    finally:
        provider.close()

    assert [m["isRead"] for m in graphsim.folder(graph_mailbox)] == [True]
