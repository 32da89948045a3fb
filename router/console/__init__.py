"""The operations console: a small server-rendered web app over the state store and the
configuration (``email-router console``).

Use it where an administrator wants what the Email Router's Configuration Manager and the
mailbox status list gave: every instance with its state, one page per instance (recent
messages, messages per minute, masked configuration, Test Access, poll now, pause / resume) and
the quarantine (list, show, replay, drop). Modules:

* :mod:`~router.console.app` - the Flask app and its server;
* :mod:`~router.console.auth` - sign-in, session cookie, CSRF;
* :mod:`~router.console.settings` - ``ROUTER_CONSOLE_*`` and the refuse-without-credentials rule;
* :mod:`~router.console.audit` - the JSON-lines audit log of every action;
* :mod:`~router.console.hub`, :mod:`~router.console.jobs` - shared objects, background jobs;
* :mod:`~router.console.model`, :mod:`~router.console.chart` - what the pages show;
* :mod:`~router.console.views` - the pages and actions.
"""
