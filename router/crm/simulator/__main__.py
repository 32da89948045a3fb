"""``email-router crm-sim`` / ``python -m router.crm.simulator``: run the Dataverse simulator.

Everything is served over HTTPS on one port (MSAL refuses an http:// authority). Without
``--cert``/``--key`` a private CA is made at start and written to ``--ca-out`` (default
``./crm-sim-ca.pem``); point the router at it with ``<CaBundle>`` in the Deployment::

    <Deployment Name="sim">
      <CrmServerUrl>https://127.0.0.1:8080</CrmServerUrl>          <!-- or .../org/<name> -->
      <Authority>https://127.0.0.1:8080/simulator-tenant</Authority>
      <TenantId>simulator-tenant</TenantId>
      <ClientId>any</ClientId> <ClientSecret>any</ClientSecret>
      <CaBundle>./crm-sim-ca.pem</CaBundle>
    </Deployment>

Several organisations live in one process: ``https://host:port`` is ``default`` and
``https://host:port/org/<name>`` is ``<name>``.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from router import devserver
from router.crm.simulator.app import create_app
from router.crm.simulator.faults import Faults, FaultState
from router.crm.simulator.shared import Simulator
from router.crm.simulator.storage import Store
from router.websurface import warn_if_exposed


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The simulator's options (shared by ``email-router crm-sim`` and ``python -m``)."""
    add = parser.add_argument
    add("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    add("--port", type=int, default=8080, help="port (default 8080; 0 picks a free one)")
    add("--db", default=":memory:", help="SQLite file for the data (default: in memory)")
    add("--tenant", default="simulator-tenant", help="tenant id in the authority URL")
    add("--ca-out", type=Path, default=Path("crm-sim-ca.pem"), help="where to write the CA (PEM)")
    add("--cert", type=Path, help="serve this certificate instead of a generated one")
    add("--key", type=Path, help="private key of --cert")
    add("--client-id", help="accept only this client id (default: any)")
    add("--client-secret", help="accept only this client secret (default: any)")
    add("--latency-ms", type=float, default=0.0, help="added latency per Web API request")
    add(
        "--latency-max-ms",
        type=float,
        default=0.0,
        help="random latency up to this (with --latency-ms)",
    )
    add("--rate-429", type=float, default=0.0, help="share of requests answered 429 (0..1)")
    add("--rate-503", type=float, default=0.0, help="share of requests answered 503 (0..1)")
    add("--retry-after", default="1", help="Retry-After seconds of a 429: N or MIN-MAX")
    add("--max-concurrent", type=int, default=0, help="429 above N requests in flight (0: off)")
    add("--token-lifetime", type=int, default=3599, help="expires_in of issued tokens (seconds)")
    add("--seed", type=int, help="random seed for the injected faults")
    add(
        "--admin-allow",
        default="127.0.0.0/8,::1",
        help="networks allowed to use /_admin/ (default loopback only; e.g. add 172.16.0.0/12 "
        "to watch the page through a Docker port)",
    )
    add("--threads", type=int, default=100, help="worker threads (requests served at once)")
    add("--exit-with-parent", action="store_true", help="stop when the starting process dies")
    add("--verbose", action="store_true", help="log every HTTP request")


def faults_from(args: argparse.Namespace) -> Faults:
    low, _, high = str(args.retry_after).partition("-")
    return Faults(
        latency_ms=args.latency_ms, latency_max_ms=args.latency_max_ms, rate_429=args.rate_429,
        rate_503=args.rate_503, retry_after_min=float(low), retry_after_max=float(high or low),
        max_concurrent=args.max_concurrent, token_lifetime=args.token_lifetime, seed=args.seed,
    )  # fmt: skip


def run(args: argparse.Namespace) -> int:
    """Start the server and serve until SIGTERM/SIGINT; prints where everything is."""
    logging.getLogger("cheroot").setLevel(logging.INFO if args.verbose else logging.WARNING)
    sim = Simulator(Store(args.db), FaultState(faults_from(args)), args.tenant,
                    args.client_id, args.client_secret)  # fmt: skip
    sim.admin_networks = tuple(
        ipaddress.ip_network(n.strip(), strict=False)
        for n in args.admin_allow.split(",")
        if n.strip()
    )
    # a test server: any client gets a token unless --client-id/--client-secret say otherwise
    warn_if_exposed("crm-sim (a test server, not for production data)", args.host)
    return devserver.serve(
        "crm-sim",
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
    lines = [f"crm-sim listening on {base}",
             f"  CrmServerUrl {base} (organisation 'default'), or {base}/org/<name>",
             f"  Authority    {base}/{args.tenant}"]  # fmt: skip
    if not args.cert:
        lines.append(f"  CaBundle     {args.ca_out.resolve()}")
    lines.append(f"  admin page   {base}/_admin/")
    print("\n".join(lines), flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="crm-sim", description="Dataverse Web API simulator")
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
