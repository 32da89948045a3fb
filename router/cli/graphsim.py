"""``email-router graph-sim``: the Microsoft Graph mail simulator (HTTPS, for tests and demos).

Use :func:`register` in the command's registrar list; the simulator itself lives in
:mod:`router.graph.simulator` and is loaded only when the command runs.
"""

from __future__ import annotations

import argparse

from router.graph.simulator.__main__ import add_arguments, run


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Declare ``graph-sim`` and its options."""
    p = sub.add_parser(
        "graph-sim",
        help="run the Microsoft Graph mail simulator (HTTPS, for tests and demos)",
        description="Serve Graph mail calls (delta, $value, move, sendMail, $batch), an OAuth "
        "token endpoint and an admin API over HTTPS with a generated CA; faults on demand.",
    )
    add_arguments(p)
    p.set_defaults(func=cmd_graph_sim)


def cmd_graph_sim(args: argparse.Namespace) -> int:
    """Run ``email-router graph-sim`` with the parsed ``args``; return the exit code."""
    return run(args)
