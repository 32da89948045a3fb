"""``email-router graph-sim`` / ``python -m router.graph.simulator``: run the Graph simulator.

Everything is served over HTTPS on one port. Without ``--cert``/``--key`` a private CA is made
at start and written to ``--ca-out`` (default ``./graph-sim-ca.pem``). A graph instance points
at it like this::

    <EmailServer>https://127.0.0.1:8443/v1.0</EmailServer>
    <EmailUser>user@contoso.example</EmailUser>
    <EmailPassword>graph-sim-secret</EmailPassword>
    <Parameters>
      <Parameter Name="tenant_id">graph-sim-tenant</Parameter>
      <Parameter Name="client_id">graph-sim-client</Parameter>
      <Parameter Name="authority">https://127.0.0.1:8443/graph-sim-tenant</Parameter>
      <Parameter Name="ca_bundle">./graph-sim-ca.pem</Parameter>
    </Parameters>

Mailboxes exist on first use; put mail into one with ``POST /admin/mailboxes/{m}/folders/inbox/
messages`` (see :mod:`router.graph.simulator.app`).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from router import devserver
from router.graph.simulator.app import Simulator, create_app
from router.graph.simulator.faults import MAILBOX_CONCURRENCY, Faults
from router.websurface import warn_if_exposed

TENANT, CLIENT_ID, CLIENT_SECRET = "graph-sim-tenant", "graph-sim-client", "graph-sim-secret"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The simulator's options (shared by ``email-router graph-sim`` and ``python -m``)."""
    add = parser.add_argument
    add("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    add("--port", type=int, default=8443, help="port (default 8443; 0 picks a free one)")
    add("--tenant", default=TENANT, help=f"tenant id in the authority URL (default {TENANT})")
    add("--client-id", default=CLIENT_ID, help=f"the accepted client id (default {CLIENT_ID})")
    add("--client-secret", default=CLIENT_SECRET, help="the accepted client secret")
    add("--ca-out", type=Path, default=Path("graph-sim-ca.pem"), help="where to write the CA")
    add("--cert", type=Path, help="serve this certificate instead of a generated one")
    add("--key", type=Path, help="private key of --cert")
    add("--latency-ms", type=float, default=0.0, help="added latency per HTTP request")
    add("--op-latency-ms", type=float, default=0.0, help="added latency per operation")
    add("--rate-429", type=float, default=0.0, help="share of requests answered 429 (0..1)")
    add("--rate-503", type=float, default=0.0, help="share of requests answered 503 (0..1)")
    add("--retry-after", type=float, default=1.0, help="Retry-After seconds of a 429/503")
    add("--max-concurrent", type=int, default=MAILBOX_CONCURRENCY,
        help="429 MailboxConcurrency above N requests in flight per mailbox (0: off)")  # fmt: skip
    add("--token-lifetime", type=int, default=3599, help="expires_in of issued tokens (seconds)")
    add("--seed", type=int, help="random seed for the injected faults")
    add("--threads", type=int, default=64, help="worker threads (requests served at once)")
    add("--exit-with-parent", action="store_true", help="stop when the starting process dies")


def faults_from(args: argparse.Namespace) -> Faults:
    return Faults(rate_429=args.rate_429, rate_503=args.rate_503, retry_after=args.retry_after,
                  max_concurrent=args.max_concurrent, latency_ms=args.latency_ms,
                  op_latency_ms=args.op_latency_ms,
                  token_lifetime=args.token_lifetime, seed=args.seed)  # fmt: skip


def run(args: argparse.Namespace) -> int:
    """Start the server and serve until SIGTERM/SIGINT; prints where everything is."""
    logging.getLogger("cheroot").setLevel(logging.WARNING)
    sim = Simulator(args.tenant, args.client_id, args.client_secret, faults_from(args))
    warn_if_exposed("graph-sim (a test server, not for production data)", args.host)
    return devserver.serve(
        "graph-sim",
        create_app(sim),
        host=args.host,
        port=args.port,
        threads=args.threads,
        tls=(args.cert, args.key, args.ca_out),
        exit_with_parent=args.exit_with_parent,
        announce=lambda port: _announce(args, port),
    )


def _announce(args: argparse.Namespace, port: int) -> None:
    base = f"https://{devserver.url_host(args.host)}:{port}"
    lines = [f"graph-sim listening on {base}",
             f"  EmailServer {base}/v1.0",
             f"  authority   {base}/{args.tenant}  (client id {args.client_id})"]  # fmt: skip
    if not args.cert:
        lines.append(f"  ca_bundle   {args.ca_out.resolve()}")
    lines.append(f"  admin API   {base}/admin/ (loopback only)")
    print("\n".join(lines), flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="graph-sim", description="Microsoft Graph mail simulator")
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
