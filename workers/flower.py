"""Start Flower for the router's Celery cluster, but only behind HTTP basic authentication.

Run it as::

    ROUTER_FLOWER_BASIC_AUTH=admin:long-password python -m workers.flower --port=5555

Without ``ROUTER_FLOWER_BASIC_AUTH`` (``user:password``, several separated by commas; Flower's
own ``FLOWER_BASIC_AUTH`` is accepted too) it refuses to start (exit 2): Flower can revoke tasks
and shut workers down. The credentials reach Flower
through its ``FLOWER_BASIC_AUTH`` environment variable, never the command line (visible in
``ps``). Other arguments are passed to ``celery -A workers flower`` unchanged.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence

from router.config import Settings

EXIT_NO_CREDENTIALS = 2


def credentials_ok(value: str | None) -> bool:
    """Every comma-separated entry is ``user:password`` with both parts non-empty."""
    if not value:
        return False
    entries = [e.partition(":") for e in value.split(",")]
    return all(user and sep and password for user, sep, password in entries)


def credentials(settings: Settings, environ: Mapping[str, str]) -> str | None:
    """``ROUTER_FLOWER_BASIC_AUTH``, else Flower's own ``FLOWER_BASIC_AUTH`` (deploy/k8s)."""
    return settings.flower_basic_auth or environ.get("FLOWER_BASIC_AUTH") or None


def flower_command(argv: Sequence[str]) -> list[str]:
    return [sys.executable, "-m", "celery", "-A", "workers", "flower", *argv]


def main(argv: Sequence[str] | None = None) -> int:
    auth = credentials(Settings(), os.environ)
    if not credentials_ok(auth):
        print(
            "refusing to start Flower without credentials: "
            "set ROUTER_FLOWER_BASIC_AUTH=user:password",
            file=sys.stderr,
        )
        return EXIT_NO_CREDENTIALS
    assert auth is not None
    env = {**os.environ, "FLOWER_BASIC_AUTH": auth}
    command = flower_command(sys.argv[1:] if argv is None else argv)
    os.execvpe(command[0], command, env)  # replaces this process; returns only on error
    return 1  # pragma: no cover


if __name__ == "__main__":
    sys.exit(main())
