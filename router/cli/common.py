"""What every ``email-router`` command shares: finding the configuration, opening the state store.

Use :func:`config_file` to name the configuration a command reads (``--config``, else
``ROUTER_CONFIG``, else ``./router.xml``) and :func:`open_cli_context` for a command that needs the
state store: it checks the store answers before the command starts, and with ``read_only`` it
never creates one (``status``, ``state show``, ``quarantine list`` / ``show``). Its
configuration includes the mailboxes loaded from the CRM, as a runtime last recorded them.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from router.config import load_settings
from router.configcheck import load_config
from router.context import Context
from router.errors import ConfigError, RouterError, StateUnavailable
from router.mailboxes import loaded_config
from router.state.base import StateStore
from router.state.factory import open_store

#: What to do when no configuration file is found.
CONFIG_HINT = (
    "name the configuration file with --config PATH (or -c PATH) or the ROUTER_CONFIG "
    "environment variable"
)


def config_file(option: str | None) -> Path:
    """The configuration file: ``option`` (``--config``), else ROUTER_CONFIG, else router.xml.

    Raises ConfigError naming ``--config`` and ``ROUTER_CONFIG`` when the file does not exist.
    """
    path = Path(option) if option else load_settings().config
    if not path.exists():
        raise ConfigError(
            f"{path}: file not found",
            [f"{path}:0: <Configuration>: cannot read the file: file not found", CONFIG_HINT],
        )
    return path


def open_cli_context(args: argparse.Namespace, *, read_only: bool, loaded: bool = True) -> Context:
    """Load ``args.config`` and open the state store (``args.state`` wins), checked to answer.

    ``read_only``: a missing SQLite file raises StateUnavailable instead of being created.
    ``loaded``: add the instances of the CRM mailbox lists a runtime recorded in the store
    (:func:`router.mailboxes.loaded_config`), so a loaded instance can be named; False for a
    caller that follows them itself (the console, ``status``).
    """
    settings = load_settings()
    config = load_config(config_file(args.config))
    url = args.state or settings.state_url or config.system.state_store
    store = open_store(url, prefix=settings.key_prefix, create=not read_only)
    _check_reachable(store)
    return Context(loaded_config(config, store) if loaded else config, store, settings)


def _check_reachable(store: StateStore) -> None:
    try:
        store.ping()
    except RouterError:
        store.close()
        raise
    except Exception as exc:  # a client library's own error (redis ConnectionError, ...)
        store.close()
        raise StateUnavailable(
            f"cannot reach the state store: {exc}; check that it runs and that --state, "
            "ROUTER_STATE_URL or <StateStore> names it"
        ) from exc
