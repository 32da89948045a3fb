"""Example email-router providers, published as their own package.

* :class:`~email_router_example_providers.maildir.MaildirProvider` (``maildir``): reads a
  Maildir directory, like an MDA's delivery target.
* :class:`~email_router_example_providers.httppost.HttpPostProvider` (``http-post``): sends
  each email by POSTing its MIME bytes to an HTTP endpoint.

Both are registered through the ``email_router.providers`` entry point (see pyproject.toml)
and tested with the provider kit (:mod:`router.testing`) in ``tests/``.
"""
