"""Microsoft Graph mail: the HTTP client the graph providers use, and a simulator for tests.

Use :class:`router.graph.client.GraphClient` to call Graph for one or more mailboxes (token,
TLS, Retry-After, the per-mailbox concurrency limit and JSON batching are its business);
``router.graph.simulator`` is the development server behind ``email-router graph-sim``, never
loaded by a runtime path.
"""
