"""Every message of the corpus (tests/corpus, ~400 hard real-world files) survives
parsing, and the bounce / auto-reply sets are classified as their folders say.

Run with ``-s`` to see the classification accuracy printed.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from router.errors import MessageUnusable
from router.mail.parse import parse_message
from router.models import Activity, Classification
from tests.servers.common import require
from tests.support.corpus import CORPUS

_NOT_MESSAGES = {"MANIFEST.tsv", "SOURCES.md"}


def _corpus_files() -> list[Path]:
    if not CORPUS.is_dir():
        return []
    return sorted(p for p in CORPUS.rglob("*") if p.is_file() and p.name not in _NOT_MESSAGES)


FILES = _corpus_files()
BOUNCE, AUTO, NORMAL = Classification.BOUNCE, Classification.AUTO_REPLY, Classification.NORMAL

# Labels that differ from what a folder name suggests, each checked against the upstream
# project's own test or against the message itself.
_OVERRIDES = {
    # Postfix "Delayed Mail (still being retried)", Action: delayed: not a failure (decision).
    "sisimai-set-of-emails/dsn-rfc3464/rfc3464-09.eml": AUTO,
    # A DSN reporting success (Action: deliverable, Status: 2.1.5): a notice, not a failure.
    "sisimai-set-of-emails/dsn-rfc3464/rfc3464-28.eml": AUTO,
    # Upstream files it under maildir/not/, but it is a postmaster's "Mailbox full" rejection
    # with Auto-Submitted: auto-replied and the returned message's headers: a bounce.
    "sisimai-set-of-emails/not-bounce/rb-issue-368-bug.eml": BOUNCE,
    "sisimai-set-of-emails/line-endings-mac/rfc3834-01.eml": AUTO,
    # BounceParser t/non-autoreply.t: "it's a bounce, alright" (an Exim failure, not a vacation).
    "bounceparser-perl/non-autoreply.eml": BOUNCE,
    # BounceParser t/boxbe.t: "C/R messages are not bounces"; a challenge/response auto-reply.
    "bounceparser-perl/boxbe-cr.eml": AUTO,
    "bounceparser-perl/autoreply.eml": AUTO,
    "bounceparser-perl/aol-vacation.eml": AUTO,
    "bounceparser-perl/polish-autoreply.eml": AUTO,
    # BounceParser t/spam-with-badly-parsed-email.t: spam, not a bounce.
    "bounceparser-perl/spam-with-badly-parsed-email.eml": NORMAL,
    # warning-1 / warning-5 are BounceParser's "parses without Perl warnings" samples, and
    # t/warnings.t asserts both are bounces; they are not delay warnings.
}
_FOLDERS = {
    "sisimai-set-of-emails/arf-feedback": Classification.FEEDBACK_REPORT,
    "sisimai-set-of-emails/auto-reply": AUTO,
    "sisimai-set-of-emails/bounce-by-mta": BOUNCE,
    "sisimai-set-of-emails/bounce-iso-2022-jp": BOUNCE,
    "sisimai-set-of-emails/dsn-rfc3464": BOUNCE,
    "sisimai-set-of-emails/line-endings-dos": BOUNCE,
    "sisimai-set-of-emails/line-endings-mac": BOUNCE,
    "sisimai-set-of-emails/not-bounce": NORMAL,
    "sisimai-set-of-emails/odd-bounces": BOUNCE,
    "bounceparser-perl": BOUNCE,
}
# Ordinary mail: none of it may be taken for a bounce or an auto-reply.
_ORDINARY_FOLDERS = (
    "cpython-test_email",
    "mikel-mail/plain_emails",
    "mikel-mail/attachment_emails",
    "mikel-mail/multi_charset",
    "mikel-mail/rfc6532",
    "django-mailbox",
    "zbateson-mail-mime-parser",
    "php-mime-mail-parser",
    "rspamd",
    "spamscope-mail-parser",
    "apache-james-project/calendar",
    "apache-james-project/smime",
)
_NOT_ORDINARY = {
    "cpython-test_email/msg_16.eml",  # DSN
    "cpython-test_email/msg_25.eml",  # "Returned mail: Too many hops"
    "cpython-test_email/msg_43.eml",  # DSN for a banned attachment
    "php-mime-mail-parser/issue212.eml",  # Polish auto-reply
    "php-mime-mail-parser/failure.eml",  # truncated DSN
    "spamscope-mail-parser/mail_malformed_2.eml",  # DSN
}


def _rel(path: Path) -> str:
    return path.relative_to(CORPUS).as_posix()


def expected_label(rel: str) -> Classification | None:
    """The label a classified corpus file should get, or None for files outside the table."""
    if rel in _OVERRIDES:
        return _OVERRIDES[rel]
    folder = rel.rsplit("/", 1)[0]
    return _FOLDERS.get(folder)


def _parse(path: Path) -> Activity | None:
    try:
        return parse_message(path.read_bytes())
    except MessageUnusable:
        return None


@pytest.fixture(scope="module")
def corpus_results() -> dict[str, Activity | None]:
    require(bool(FILES), f"the corpus is missing at {CORPUS}")
    return {_rel(p): _parse(p) for p in FILES}


def test_corpus_is_present_and_complete() -> None:
    require(CORPUS.is_dir(), f"the corpus is missing at {CORPUS}")
    assert len(FILES) >= 390


@pytest.mark.parametrize("path", FILES, ids=[_rel(p) for p in FILES])
def test_every_corpus_file_parses_or_is_refused_as_unusable(path: Path) -> None:
    raw = path.read_bytes()
    started = time.monotonic()
    try:
        activity = parse_message(raw)
    except MessageUnusable:
        return
    assert time.monotonic() - started < 10
    assert activity.message_id.startswith("<") and activity.message_id.endswith(">")
    assert isinstance(activity.subject, str) and isinstance(activity.body_html, str)
    assert activity.received_on is None or activity.received_on.tzinfo is not None
    assert all(isinstance(d, str) and len(d) < 80 for d in activity.defects)
    assert activity.importance in ("low", "normal", "high")


def test_whole_corpus_parses_well_under_a_minute() -> None:
    require(bool(FILES), f"the corpus is missing at {CORPUS}")
    started = time.monotonic()
    for path in FILES:
        _parse(path)
    elapsed = time.monotonic() - started
    print(f"\ncorpus: {len(FILES)} files parsed in {elapsed:.2f} s")
    assert elapsed < 60


def test_bounce_and_auto_reply_sets_are_classified_at_least_95_percent_right(
    corpus_results: dict[str, Activity | None],
) -> None:
    labelled = {rel: expected_label(rel) for rel in corpus_results}
    table = {rel: label for rel, label in labelled.items() if label is not None}
    wrong = []
    for rel, label in sorted(table.items()):
        activity = corpus_results[rel]
        got = activity.classification if activity else None
        if got != label:
            wrong.append(f"{rel}: expected {label}, got {got}")
    share = 1 - len(wrong) / len(table)
    print(f"\nclassification: {len(table) - len(wrong)}/{len(table)} right ({share:.1%})")
    for line in wrong:
        print("  wrong:", line)
    assert len(table) >= 85
    assert share >= 0.95, wrong


def test_no_ordinary_message_is_taken_for_a_bounce_or_an_auto_reply(
    corpus_results: dict[str, Activity | None],
) -> None:
    ordinary = [
        rel
        for rel in corpus_results
        if rel.startswith(_ORDINARY_FOLDERS) and rel not in _NOT_ORDINARY
    ]
    misread = [
        f"{rel}: {activity.classification}"
        for rel in ordinary
        if (activity := corpus_results[rel]) is not None
        and activity.classification in (BOUNCE, AUTO)
    ]
    print(f"\nordinary messages: {len(ordinary)}, taken for bounce/auto-reply: {len(misread)}")
    assert len(ordinary) >= 100
    assert misread == []


def test_every_bounce_in_the_labelled_sets_carries_bounce_info(
    corpus_results: dict[str, Activity | None],
) -> None:
    bounces = [a for rel, a in corpus_results.items() if expected_label(rel) == BOUNCE and a]
    assert bounces
    assert all(a.bounce is not None for a in bounces if a.classification == BOUNCE)
    with_id = [a for a in bounces if a.bounce and a.bounce.original_message_id]
    print(f"\nbounces with the original Message-ID found: {len(with_id)}/{len(bounces)}")
    assert len(with_id) / len(bounces) >= 0.7


def test_only_non_messages_are_refused_as_unusable(
    corpus_results: dict[str, Activity | None],
) -> None:
    refused = sorted(rel for rel, activity in corpus_results.items() if activity is None)
    print(f"\nrefused as unusable: {refused}")
    assert len(refused) <= 10
