"""Runtimes that schedule the use-cases of ``router.service``.

* :mod:`router.runtime.standalone` - ``email-router run``: one process, a thread pool, SQLite
  state by default (no Redis, no Celery).
* :mod:`router.runtime.status` - ``email-router status``: what every instance is doing, read
  from the state store (the same for the standalone and the Celery runtime).

The Celery runtime lives outside the domain package, in ``workers/``.
"""
