"""Mail as bytes and back: everything the router knows about RFC 5322 / MIME.

* :mod:`router.mail.parse` - raw message -> Activity fields (never raises past MessageUnusable),
  with :mod:`~router.mail.parts` (walking the MIME tree), :mod:`~router.mail.text` (charsets,
  encoded words), :mod:`~router.mail.address_scan` (address lists of incoming headers) and
  :mod:`~router.mail.policy` (the bounded ``email`` policies handed to the standard library);
* :mod:`router.mail.classify` - auto-reply, out-of-office, DSN and MDN detection;
* :mod:`router.mail.addresses` - the one strict parser of CRM addresses for outgoing mail;
* :mod:`router.mail.compose` - OutboundEmail -> MIME bytes.

Nothing here does I/O: the cycles in :mod:`router.incoming` and :mod:`router.outgoing` call it.
"""
