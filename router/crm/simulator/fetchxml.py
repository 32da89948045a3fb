"""The FetchXML subset the simulator evaluates for BackgroundSendEmail.

Use :func:`evaluate` with the query text and the organisation's email rows. Supported: one
``<entity name="email">``, ``<attribute>``, nested ``<filter type="and|or">``, ``<condition>`` with
``eq``, ``ne``, ``in`` (``<value>`` children), ``null``, ``not-null``, ``<order>``, and the
``count``/``top`` attributes of ``<fetch>``. Anything else is a 400, as Dataverse refuses FetchXML
it cannot parse; entities are parsed without DTDs or entities (defusedxml).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import Any

from defusedxml import ElementTree as SafeET

from router.crm.simulator.odata import bad_request

#: Attributes a condition may test (``emailsender`` is the id of the From party: user or queue).
FILTERABLE = (
    "activityid", "statuscode", "statecode", "directioncode", "ownerid", "emailsender", "sender",
    "messageid", "createdon", "deliveryattempts",
)  # fmt: skip

READABLE = (
    *FILTERABLE, "subject", "description", "trackingtoken", "prioritycode", "torecipients",
    "modifiedon", "receivedon", "submittedby",
)  # fmt: skip


def evaluate(query: str, rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[str]]:
    """Return the matching rows (ordered and limited) and the attribute names asked for."""
    try:
        fetch = SafeET.fromstring(query)
    except (ET.ParseError, ValueError) as exc:
        raise bad_request(f"Invalid FetchXML: {exc}") from None
    entity = fetch.find("entity")
    if fetch.tag != "fetch" or entity is None or entity.get("name") != "email":
        raise bad_request("FetchXML must be <fetch><entity name='email'>...</entity></fetch>.")
    selected = [a.get("name", "") for a in entity.findall("attribute")]
    for name in selected:
        if name not in READABLE:
            raise bad_request(f"'email' entity doesn't contain attribute with Name = '{name}'.")
    filt = entity.find("filter")
    matched = [r for r in rows if filt is None or _matches(filt, r)]
    for order in reversed(entity.findall("order")):
        name = _attr(order.get("attribute", ""))
        matched.sort(key=lambda r: r[name] or 0, reverse=order.get("descending") == "true")
    limit = fetch.get("count") or fetch.get("top")
    return (matched[: int(limit)] if limit else matched), selected


def _attr(name: str) -> str:
    if name not in FILTERABLE:
        raise bad_request(f"'email' entity doesn't contain attribute with Name = '{name}'.")
    return name


def _matches(filt: ET.Element, row: dict[str, Any]) -> bool:
    results = []
    for child in filt:
        if child.tag == "condition":
            results.append(_condition(child, row))
        elif child.tag == "filter":
            results.append(_matches(child, row))
        else:
            raise bad_request(f"Unsupported FetchXML element <{child.tag}> in a filter.")
    if filt.get("type", "and") == "or":
        return any(results)
    return all(results)


def _norm(value: Any) -> str:
    if value is None:
        return ""
    text = str(value).strip().lower()
    return {"true": "1", "false": "0"}.get(text, text.strip("{}"))


def _condition(cond: ET.Element, row: dict[str, Any]) -> bool:
    have = _norm(row.get(_attr(cond.get("attribute", ""))))
    op = cond.get("operator", "")
    if op in ("eq", "ne"):
        equal = have == _norm(cond.get("value"))
        return equal if op == "eq" else not equal
    if op == "in":
        return have in {_norm(v.text) for v in cond.findall("value")}
    if op in ("null", "not-null"):
        return (have == "") == (op == "null")
    raise bad_request(f"Unsupported FetchXML condition operator '{op}'.")
