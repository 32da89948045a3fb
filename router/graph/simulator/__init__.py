"""The Microsoft Graph simulator (``email-router graph-sim``): Exchange Online mail for tests.

A Flask app served by cheroot over HTTPS with its own CA (trustme), with an Entra ID token
endpoint (client credentials) and the Graph mail calls the router makes: folder delta rounds,
MIME download, mark read, move, delete, folder lookup, ``$batch``, ``sendMail``, and drafts with
attachments and upload sessions for messages over 4 MB. Faults
(429/503 with Retry-After, Exchange's MailboxConcurrency limit of 4, expired delta links,
latency, short token lifetimes) and an admin API (``/admin/...``: add messages, list folders
and what was sent, read the request log) make the router's throttling and resync behaviour
testable. Modules: ``mailstore`` (mailboxes, folders, delta state), ``faults`` (faults and the
request log), ``graphapi`` (the Graph routes), ``uploads`` (attachment upload sessions),
``app`` (identity, admin, wiring),
``__main__`` (the command).
"""
