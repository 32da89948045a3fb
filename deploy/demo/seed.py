"""Demo data for email-router: certificates, demo mail, pending CRM emails, the activity list.

Used by ``docker compose`` (the ``certs`` and ``seed`` services) and by ``make demo``
(``deploy/demo/demo.py`` imports it). Subcommands::

    seed.py certs --out DIR [--name HOST ...]     CA + server certificate (trustme)
    seed.py seed --imap-host H --imap-port P --password PW --crm-url URL --ca CA.pem
    seed.py activities --crm-url URL --ca CA.pem  what the router created in the simulator
    seed.py graph --graph-url URL --ca CA.pem     demo mail into the Graph simulator's mailbox

Demo mailboxes: ``sales@demo.example`` (read over IMAP) and ``support@demo.example`` (POP3).
Pending outbound emails belong to :data:`OWNER_ID`, the user the outgoing instance serves.
The simulator's directory tables get the demo's users, queue, server profile and mailbox records
(:func:`seed_directory`), so ``email-router mailboxes load`` has something to show.
The simulator's ``/_admin`` API answers loopback callers unless started with ``--admin-allow``.
The Graph simulator's ``/admin`` API answers loopback callers only: ``graph`` runs on its host
(``make demo --graph``) or in its network namespace (compose's ``graph-seed`` service).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from collections.abc import Iterator, Sequence
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from pathlib import Path
from typing import Any

SALES, SUPPORT = "sales@demo.example", "support@demo.example"
#: The CRM user whose pending emails the demo's outgoing instance sends.
OWNER_ID = "00000000-0000-0000-0000-0000000000d1"
#: The CRM queue the demo's incoming instances deliver for.
QUEUE_ID = "00000000-0000-0000-0000-0000000000a1"
OUTBOUND_COUNT = 3
#: A CRM user whose mailbox is still waiting for approval (not run by <LoadMailboxes>).
NEW_USER, NEW_USER_ID = "nora@demo.example", "00000000-0000-0000-0000-0000000000d2"


# -- demo mail ------------------------------------------------------------------------------------
def _message(sender: str, to: str, subject: str, body: str, **headers: str) -> EmailMessage:
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = sender, to, subject
    msg["Date"] = format_datetime(_now())
    msg["Message-ID"] = make_msgid(domain="customer.demo.example")
    for name, value in headers.items():
        msg[name.replace("_", "-")] = value
    msg.set_content(body)
    return msg


def _now() -> Any:
    from datetime import UTC, datetime

    return datetime.now(UTC)


def sales_mail() -> list[bytes]:
    """Five messages for the IMAP mailbox: plain, HTML, an attachment, a reply, an auto-reply."""
    first = _message(
        "Ada Lovelace <ada@customer.demo.example>",
        SALES,
        "Quote for 40 licences",
        "Hello,\n\ncould you send us a quote for 40 licences?\n\nAda",
    )
    html = _message(
        "Grace Hopper <grace@customer.demo.example>",
        SALES,
        "Renewal question",
        "Plain-text part of an HTML mail.",
    )
    html.add_alternative("<p>When does our <b>renewal</b> fall due?</p>", subtype="html")
    attached = _message(
        "Alan Turing <alan@customer.demo.example>",
        SALES,
        "Signed order form",
        "The signed order form is attached.",
    )
    attached.add_attachment(
        b"%PDF-1.4 demo order form\n",
        maintype="application",
        subtype="pdf",
        filename="order-form.pdf",
    )
    reply = _message(
        "Ada Lovelace <ada@customer.demo.example>",
        SALES,
        "Re: Quote for 40 licences",
        "Thanks - one more question about volume pricing.",
        In_Reply_To=str(first["Message-ID"]),
        References=str(first["Message-ID"]),
    )
    away = _message(
        "Edsger Dijkstra <edsger@customer.demo.example>",
        SALES,
        "Automatic reply: Out of office",
        "I am away until Monday.",
        Auto_Submitted="auto-replied",
    )
    return [m.as_bytes() for m in (first, html, attached, reply, away)]


def support_mail() -> list[bytes]:
    """Three messages for the POP3 mailbox."""
    return [
        _message(f"Customer {n} <c{n}@customer.demo.example>", SUPPORT, subject, body).as_bytes()
        for n, (subject, body) in enumerate(
            [
                ("Cannot log in", "The login page says my password expired."),
                ("Invoice 2026-114", "The invoice lists the wrong VAT number."),
                ("Feature request", "Please add an export to CSV."),
            ],
            1,
        )
    ]


def expected_activities() -> int:
    """Activities the demo should end with (the auto-reply is skipped by policy)."""
    return len(sales_mail()) - 1 + len(support_mail())


# -- seeding --------------------------------------------------------------------------------------
def append_imap(host: str, port: int, user: str, password: str, raws: Sequence[bytes]) -> int:
    """APPEND ``raws`` to ``user``'s INBOX over plain IMAP; retries while the server starts."""
    from imapclient import IMAPClient

    for attempt in range(30):
        try:
            with IMAPClient(host, port, ssl=False, timeout=10) as client:  # LOGOUT on exit
                client.login(user, password)
                for raw in raws:
                    client.append("INBOX", raw)
                return len(raws)
        except (OSError, IMAPClient.Error):
            if attempt == 29:
                raise
            time.sleep(1)
    return 0


def admin(crm_url: str, ca: str, path: str, payload: dict[str, Any] | None = None) -> Any:
    """Call the simulator's ``/_admin`` API (GET, or POST with ``payload``)."""
    import requests

    url = f"{crm_url.rstrip('/')}/_admin/{path}"
    if payload is None:
        resp = requests.get(url, verify=ca, timeout=10)
    else:
        resp = requests.post(url, json=payload, verify=ca, timeout=10)
    resp.raise_for_status()
    return resp.json()


def seed_outbound(crm_url: str, ca: str, count: int = OUTBOUND_COUNT) -> list[str]:
    """Put ``count`` emails owned by :data:`OWNER_ID` in Pending Send."""
    spec = {
        "count": count,
        "owner_id": OWNER_ID,
        "sender": SALES,
        "to": ["ada@customer.demo.example"],
        "subject": "Your quote #{n} from Demo Corp",
        "body": "<p>Dear Ada,</p><p>please find quote #{n} below.</p>",
    }
    return list(admin(crm_url, ca, "seed", spec)["ids"])


#: The demo's server profile record (the router keeps the servers in its own <EmailServerProfile>).
PROFILE_ID = "00000000-0000-0000-0000-0000000000f1"


def seed_directory(crm_url: str, ca: str) -> int:
    """The CRM's users, queue, server profile and mailboxes of the demo; the mailbox count.

    ``sales@`` (a user) and ``support@`` (a queue) are approved for server-side sync; a third
    user's mailbox waits for approval, so ``mailboxes load`` shows a skipped record too.
    """
    org = {"org": "default"}
    admin(crm_url, ca, "tables/systemusers", {**org, "rows": [
        {"systemuserid": OWNER_ID, "fullname": "Sam Sales", "internalemailaddress": SALES},
        {"systemuserid": NEW_USER_ID, "fullname": "Nora New", "internalemailaddress": NEW_USER},
    ]})  # fmt: skip
    admin(crm_url, ca, "tables/queues", {**org, "rows": [
        {"queueid": QUEUE_ID, "name": "Support", "emailaddress": SUPPORT},
    ]})  # fmt: skip
    admin(crm_url, ca, "tables/emailserverprofiles", {**org, "rows": [
        {"emailserverprofileid": PROFILE_ID, "name": "Demo Dovecot", "servertype": 4,
         "incomingserverlocation": "127.0.0.1", "outgoingserverlocation": "127.0.0.1"},
    ]})  # fmt: skip
    mailboxes = [
        (SALES, OWNER_ID, "systemuser", 1), (SUPPORT, QUEUE_ID, "queue", 1),
        (NEW_USER, NEW_USER_ID, "systemuser", 2),
    ]  # fmt: skip
    rows = [
        {"name": address, "emailaddress": address, "_regardingobjectid_value": owner,
         "regardingobjecttype": kind, "emailrouteraccessapproval": approval,
         "_emailserverprofile_value": PROFILE_ID}
        for address, owner, kind, approval in mailboxes
    ]  # fmt: skip
    return len(admin(crm_url, ca, "tables/mailboxes", {**org, "rows": rows})["ids"])


def seed_all(args: argparse.Namespace) -> None:
    sales = append_imap(args.imap_host, args.imap_port, SALES, args.password, sales_mail())
    support = append_imap(args.imap_host, args.imap_port, SUPPORT, args.password, support_mail())
    print(f"seeded {sales} messages for {SALES} (IMAP), {support} for {SUPPORT} (POP3)")
    ids = seed_outbound(args.crm_url, args.ca)
    print(f"seeded {len(ids)} pending outbound emails in the CRM simulator")
    count = seed_directory(args.crm_url, args.ca)
    print(f"seeded {count} mailbox records (users, a queue, a server profile) in the simulator")


def activities(crm_url: str, ca: str) -> list[dict[str, Any]]:
    """Every email record in the simulator (incoming activities and outbound emails)."""
    rows = admin(crm_url, ca, "emails")
    return list(rows.get("value", rows) if isinstance(rows, dict) else rows)


# -- Microsoft Graph (optional second mail source) -------------------------------------------------
#: The simulated Exchange Online mailbox the demo's graph instance reads.
ORDERS = "orders@demo.example"


def graph_mail() -> list[bytes]:
    """Three messages for the simulated Exchange Online mailbox (read through Graph)."""
    return [
        _message(f"Buyer {n} <b{n}@customer.demo.example>", ORDERS, subject, body).as_bytes()
        for n, (subject, body) in enumerate(
            [
                ("Purchase order 7001", "Please confirm purchase order 7001."),
                ("Delivery address change", "Ship order 6990 to our new warehouse."),
                ("Order cancellation", "Please cancel order 6987."),
            ],
            1,
        )
    ]


def seed_graph(graph_url: str, ca: str, mailbox: str = ORDERS) -> int:
    """Put :func:`graph_mail` into ``mailbox``'s inbox through the Graph simulator's admin API.

    ``graph_url`` is the simulator's origin (``https://127.0.0.1:8443``, no ``/v1.0``); retries
    while it starts.
    """
    import base64

    import requests

    url = f"{graph_url.rstrip('/')}/admin/mailboxes/{mailbox}/folders/inbox/messages"
    payload = {"mime": [base64.b64encode(raw).decode("ascii") for raw in graph_mail()]}
    for attempt in range(30):
        try:
            resp = requests.post(url, json=payload, verify=ca, timeout=10)
            resp.raise_for_status()
            return len(resp.json()["ids"])
        except requests.ConnectionError:
            if attempt == 29:
                raise
            time.sleep(1)
    return 0


# -- certificates ---------------------------------------------------------------------------------
def make_certs(out: Path, names: Sequence[str]) -> None:
    """Write ``ca.pem`` and ``<first name>.pem``/``.key`` for ``names`` into ``out``."""
    import trustme

    out.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA(organization_name="email-router demo")
    cert = ca.issue_cert(*names)
    ca.cert_pem.write_to_path(str(out / "ca.pem"))
    cert.cert_chain_pems[0].write_to_path(str(out / f"{names[0]}.pem"))
    for extra in cert.cert_chain_pems[1:]:
        extra.write_to_path(str(out / f"{names[0]}.pem"), append=True)
    cert.private_key_pem.write_to_path(str(out / f"{names[0]}.key"))
    os.chmod(out / f"{names[0]}.key", 0o640)
    with contextlib.suppress(PermissionError, LookupError):
        import shutil

        # the image's unprivileged user runs the simulator
        for path in out.iterdir():
            shutil.chown(path, "router", "router")
    print(f"certificates for {', '.join(names)} in {out}")


# -- command line ---------------------------------------------------------------------------------
def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    certs = sub.add_parser("certs", help="make a CA and a server certificate")
    certs.add_argument("--out", type=Path, required=True)
    certs.add_argument("--name", action="append", default=[])
    seed = sub.add_parser("seed", help="demo mail into IMAP/POP3, pending emails into the CRM")
    seed.add_argument("--imap-host", default="127.0.0.1")
    seed.add_argument("--imap-port", type=int, default=143)
    seed.add_argument("--password", default=os.environ.get("DEMO_MAIL_PASSWORD", "pass"))
    for p in (seed, sub.add_parser("activities", help="list what the simulator holds")):
        p.add_argument("--crm-url", default="https://127.0.0.1:8080")
        p.add_argument("--ca", default="/certs/ca.pem")
    graph = sub.add_parser("graph", help="demo mail into the Graph simulator's mailbox")
    graph.add_argument("--graph-url", default="https://127.0.0.1:8443")
    graph.add_argument("--ca", default="/certs/ca.pem")
    graph.add_argument("--mailbox", default=ORDERS)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    if args.command == "certs":
        make_certs(args.out, [*args.name, "127.0.0.1", "localhost"])
    elif args.command == "seed":
        seed_all(args)
    elif args.command == "graph":
        count = seed_graph(args.graph_url, args.ca, args.mailbox)
        print(f"seeded {count} messages for {args.mailbox} (Graph simulator)")
    else:
        for row in _rows(activities(args.crm_url, args.ca)):
            print(row)
    return 0


def _rows(rows: list[dict[str, Any]]) -> Iterator[str]:
    for row in rows:
        yield json.dumps({k: row.get(k) for k in ("subject", "directioncode", "statuscode")})


if __name__ == "__main__":
    sys.exit(main())
