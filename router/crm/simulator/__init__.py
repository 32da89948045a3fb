"""A Dataverse (Dynamics 365) Web API simulator for tests, demos and benchmarks.

Run it with ``email-router crm-sim`` (or ``python -m router.crm.simulator``): an HTTPS server
(Flask, served by cheroot with HTTP/1.1 keep-alive) with the token endpoint and OIDC discovery
document MSAL needs, the Web API subset the router uses at ``/api/data/v9.2/`` (and
``/org/<name>/api/data/v9.2/`` for more organisations), ``$batch``, SQLite storage, fault
injection and admin pages under ``/_admin/``. See ``__main__.py`` for the options and
``app.py`` for the request pipeline.
"""

from __future__ import annotations

from router.crm.simulator.app import create_app
from router.crm.simulator.shared import Simulator

__all__ = ["Simulator", "create_app"]
