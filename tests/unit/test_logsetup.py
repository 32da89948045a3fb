"""Logging setup: secrets masked in every line, context fields, JSON one object per line."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest

from router.errors import ConfigError
from router.logsetup import configure_logging, ensure_logging, log_context, redact

log = logging.getLogger("router.tests.logsetup")


@pytest.fixture
def output() -> Iterator[io.StringIO]:
    """Route the root logger into a buffer for the test; restore handlers and level after."""
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    stream = io.StringIO()
    configure_logging("DEBUG", "text", stream)
    yield stream
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])


@pytest.mark.parametrize(
    ("line", "secret"),
    [
        ("connecting with password=%s", "hunter2"),
        ("> b'A001 LOGIN alice %s'", "hunter2"),
        ('> b\'A001 LOGIN "alice" "%s"\'', "hunter2"),
        ("send: 'AUTH PLAIN %s\\r\\n'", "AGFsaWNlAGh1bnRlcjI="),
        ("> AUTHENTICATE XOAUTH2 %s", "dXNlcj1hbGljZQFhdXRoPUJlYXJlcg=="),
        ("*cmd* 'PASS %s'", "hunter2"),
        ("headers {'Authorization': 'Bearer %s'}", "eyJhbGciOiJSUzI1NiJ9.payload.sig"),
        ("POST body grant_type=client_credentials&client_secret=%s&scope=x", "s3cr3t~Val"),
        ("config {'password': '%s', 'user': 'bob'}", "hunter2"),
        ('{"access_token": "%s", "expires_in": 3599}', "tok-123456"),
        ("broker redis://:%s@127.0.0.1:6379/0", "brokerpw"),
        ("imap://alice:%s@mail.example.com", "hunter2"),
        ('"PUT /upload/s1?authtoken=%s HTTP/1.1" 200', "eyJ0eXAi.upload"),  # urllib3's DEBUG line
    ],
)
def test_secret_logged_by_mistake_is_masked(output: io.StringIO, line: str, secret: str) -> None:
    log.info(line, secret)

    text = output.getvalue()
    assert secret not in text
    assert "***" in text


def test_password_in_an_exception_traceback_is_masked(output: io.StringIO) -> None:
    try:
        raise RuntimeError("login refused for password=hunter2")
    except RuntimeError:
        log.exception("poll failed")

    text = output.getvalue()
    assert "RuntimeError: login refused for password=***" in text
    assert "hunter2" not in text


def test_harmless_text_is_left_alone() -> None:
    line = "instance sales-imap: 3 messages staged, cursor uid=42, lease token renewed"

    assert redact(line) == line


def test_records_carry_instance_and_message_id_from_log_context(output: io.StringIO) -> None:
    with log_context(instance="sales-imap"):
        with log_context(message_id="<abc@example.com>"):
            log.info("delivered")
        log.info("post-processed")
    log.info("idle")

    lines = output.getvalue().splitlines()
    assert lines[0].endswith("[instance=sales-imap message_id=<abc@example.com>]: delivered")
    assert lines[1].endswith("[instance=sales-imap]: post-processed")
    assert lines[2].endswith("router.tests.logsetup: idle")


def test_log_context_does_not_leak_into_other_threads(output: io.StringIO) -> None:
    def other() -> None:
        log.info("from another thread")

    with log_context(instance="sales-imap"):
        worker = threading.Thread(target=other)
        worker.start()
        worker.join(timeout=5)

    assert output.getvalue().strip().endswith("router.tests.logsetup: from another thread")


def test_json_format_writes_one_parsable_object_per_line(output: io.StringIO) -> None:
    configure_logging("INFO", "json", output)

    with log_context(instance="outbound-smtp", message_id="<m1@x>"):
        log.info("sent %d of %d", 2, 3, extra={"uid": 17})
        log.warning("AUTH PLAIN AGFsaWNlAGh1bnRlcjI=")
    log.debug("not shown at INFO")

    docs = [json.loads(line) for line in output.getvalue().splitlines()]
    assert [d["message"] for d in docs] == ["sent 2 of 3", "AUTH PLAIN ***"]
    assert docs[0]["instance"] == "outbound-smtp"
    assert docs[0]["message_id"] == "<m1@x>"
    assert docs[0]["level"] == "INFO"
    assert docs[0]["uid"] == 17


def test_configuring_twice_keeps_a_single_router_handler(output: io.StringIO) -> None:
    configure_logging("INFO", "text", output)
    configure_logging("INFO", "text", output)

    log.info("once")

    assert output.getvalue().count("once") == 1


def test_unknown_level_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="unknown log level 'LOUD'"):
        configure_logging("LOUD")


def test_ensure_logging_leaves_an_already_configured_process_alone(output: io.StringIO) -> None:
    root = logging.getLogger()
    before = root.handlers[:]

    ensure_logging("DEBUG", "json")

    assert root.handlers == before


def test_cli_commands_log_through_the_redacting_handler() -> None:
    # A fresh interpreter has no handlers, as when a user runs email-router.
    script = """
import logging, sys
from router.cli import REGISTRARS, main

def leak(args):
    logging.getLogger("x").warning("pw=%s password=%s", 1, "hunter2")
    return 0

def _add(sub):
    sub.add_parser("leak").set_defaults(func=leak)

REGISTRARS.append(_add)
sys.exit(main(["leak"]))
"""
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "ROUTER_LOG_FORMAT": "json"},
        check=False,
    )

    assert done.returncode == 0, done.stderr
    assert "hunter2" not in done.stderr
    assert json.loads(done.stderr)["message"] == "pw=1 password=***"


# -- protocol libraries: records reduced to verbs and sizes -------------------------------------
imaplib_log = logging.getLogger("imapclient.imaplib")

#: What imaplib logs through imapclient at DEBUG when it fetches a message (from a real Dovecot).
FETCHED = (
    "untagged_responses[FETCH] 0 += [\"(b'1 (UID 1 BODY[] {61}', b'Subject: quarterly\\r\\n\\r\\n"
    "CONFIDENTIAL PAYROLL 4111 1111 1111 1111\\r\\n')\"]"
)


@pytest.mark.parametrize(
    ("line", "summary"),
    [
        ("> b'GKJF3 UID FETCH 1:3,7 (BODY.PEEK[])'", "> GKJF3 UID FETCH 1:3,7 BODY.PEEK"),
        ("< b'* 1 FETCH (UID 1 RFC822.SIZE 243)'", "< * 1 FETCH UID 1 RFC822.SIZE 243"),
        ("< b'* 1 FETCH (UID 1 BODY[] {243}'", "< * 1 FETCH UID 1 BODY {243}"),
        ("> b'GKJF2 EXAMINE \"Sales/Inbox\"'", "> GKJF2 EXAMINE [32 chars, withheld]"),
        (FETCHED, f"untagged_responses[FETCH] 0 [{len(FETCHED)} chars, withheld]"),
        ("read literal size 243", "read [21 chars, withheld]"),
    ],
)
def test_imaplib_traffic_is_reduced_to_protocol_words_and_sizes(
    output: io.StringIO, line: str, summary: str
) -> None:
    imaplib_log.debug("%s", line)

    assert output.getvalue().rstrip("\n").endswith(f"imapclient.imaplib: {summary}")


def test_a_fetched_body_never_reaches_the_log_in_text_or_json(output: io.StringIO) -> None:
    imaplib_log.debug(FETCHED)
    configure_logging("DEBUG", "json", output)
    imaplib_log.debug(FETCHED)

    text = output.getvalue()
    assert "PAYROLL" not in text and "4111" not in text and "quarterly" not in text
    assert json.loads(text.splitlines()[-1])["logger"] == "imapclient.imaplib"


@pytest.mark.parametrize(
    ("logger", "line", "secret"),
    [
        ("imapclient.imaplib", "> b'A001 LOGIN alice \"%s\"'", "HUNTER2XYZ"),
        ("imapclient.imaplib", "> b'A001 LOGIN %s'", "ALICE PASSWORD"),
        ("imapclient.imaplib", "> b'A2 AUTHENTICATE XOAUTH2 %s'", "DXNLCJ1HBGLJZQ"),
        ("imapclient.imapclient", "> b'A3 LOGIN alice %s'", "2024"),
        ("poplib", "*cmd* 'PASS %s'", "HUNTER2XYZ"),
        ("smtplib", "send: 'AUTH PLAIN %s\\r\\n'", "AGFSAWNLAGH1BNRLCJI="),
        ("mail.log", "_handle_client readline: b'%s'", "Body line of a message"),
    ],
)
def test_credentials_in_protocol_traffic_are_withheld_even_in_capitals(
    output: io.StringIO, logger: str, line: str, secret: str
) -> None:
    logging.getLogger(logger).debug(line, secret)

    assert secret not in output.getvalue()
    assert "chars, withheld]" in output.getvalue()


def test_a_base64_xoauth2_string_is_masked_wherever_it_is_logged(output: io.StringIO) -> None:
    xoauth2 = "dXNlcj1hbGljZUBleGFtcGxlLmNvbQFhdXRoPUJlYXJlciB0b2sBAQ=="

    log.info("server challenge after %s", xoauth2)

    assert xoauth2 not in output.getvalue() and "after ***" in output.getvalue()


def test_a_huge_protocol_record_is_summarised_from_its_first_characters_only(
    output: io.StringIO,
) -> None:
    body = "X" * 5_000_000

    started = time.perf_counter()
    imaplib_log.debug("< b'%s'", body)
    elapsed = time.perf_counter() - started

    assert f"[{len(body) + 5} chars, withheld]" in output.getvalue()
    assert "XXXXXXXX" not in output.getvalue()
    assert elapsed < 0.5  # scanning 5 MB would take far longer than formatting it
