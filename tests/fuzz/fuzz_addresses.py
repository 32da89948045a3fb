"""Fuzz target: the address parsers on any text (atheris, libFuzzer).

* :func:`~router.mail.address_scan.mailboxes` / :func:`~router.mail.address_scan.first_addr`
  (incoming headers):
  never raise; every result has a local part, a domain, no white space, at most 254 characters.
* :func:`router.mail.addresses.parse_address` (CRM addresses going out): returns an address without
  control characters or raises AddressRefused, nothing else.

Run with ``make fuzz`` or ``python -m tests.fuzz.run addresses``.
"""

from __future__ import annotations

import sys

import atheris

#: Coverage is collected in these packages only: instrumenting pydantic & co. costs seconds.
INSTRUMENTED = ("router", "email")

with atheris.instrument_imports(include=INSTRUMENTED):
    from router.mail.address_scan import MAX_ADDRESS, first_addr, mailboxes
    from router.mail.addresses import AddressRefused, parse_address


def test_one_input(data: bytes) -> None:
    text = data.decode("utf-8", "surrogateescape")
    for address in mailboxes([text]):
        local, _, domain = address.email.rpartition("@")
        if not (local and domain) or len(address.email) > MAX_ADDRESS:
            raise AssertionError(f"not a mailbox: {address.email!r}")
        if any(ch.isspace() for ch in address.email):
            raise AssertionError(f"white space in {address.email!r}")
    first_addr(text)
    _check_outgoing(text)


def _check_outgoing(text: str) -> None:
    try:
        address = parse_address(text)
    except AddressRefused:
        return
    if any(ch in address.email + address.name for ch in "\r\n\x00"):
        raise AssertionError(f"control character kept: {address!r}")


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
