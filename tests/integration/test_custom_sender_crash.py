"""A custom sender that writes only ``_submit`` is SIGKILLed at random: nothing is sent twice.

:class:`FileDropSender` is what a third party writes from the documented API alone: no commit
point, each email appended to a file with fsync (the file is the ground truth of what was sent).
Sender processes (real SQLite state store, a CRM in a SQLite file) are killed at random moments
of their batch and restarted until every email is settled: each email must be in the file at
most once, and be either Sent or set aside as ambiguous (shown by ``status`` and ``quarantine
list``, Failed in the CRM with a "may or may not have been sent" note).

Run this module as a script to be one sender process: ``python -m
tests.integration.test_custom_sender_crash CRM STATE DROP``.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from pydantic import BaseModel, ConfigDict

from router.cli.quarantine import _list as quarantine_list
from router.cli.status import collect_status
from router.config import Parameter, Parameters, ProviderConfiguration
from router.models import Direction, LedgerState, OutboundEmail
from router.providers.base import OutgoingProvider, SubmitResult
from router.state.sqlite import SqliteStore
from tests.integration.send_support import (
    OWNER,
    SqliteCrm,
    configuration,
    make_context,
    sample_email,
)
from tests.servers.common import wait_for

ROOT = Path(__file__).resolve().parents[2]
MODULE = "tests.integration.test_custom_sender_crash"  # also when run as __main__
EMAILS = 300
KILLS = 20


class DropOptions(BaseModel):
    """``<Parameters>`` of the file-drop sender."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    path: str


class FileDropSender(OutgoingProvider):
    """Appends one line per email (its id) to ``path`` and fsyncs: "sent" once on disk."""

    options_model = DropOptions

    def _connect(self) -> None:
        self.fd = os.open(self.options.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

    def _close(self) -> None:
        os.close(self.fd)

    def _submit(self, email: OutboundEmail, message: bytes, envelope_from: str) -> SubmitResult:
        os.write(self.fd, f"{email.email_id}\n".encode())
        os.fsync(self.fd)
        return SubmitResult(tuple(a.email for a in (*email.to, *email.cc, *email.bcc)), {})


def _cfg(drop: Path) -> ProviderConfiguration:
    return ProviderConfiguration(
        name="out",
        provider_class=f"{MODULE}:FileDropSender",
        direction=Direction.OUTGOING,
        deployment="crm",
        user_ids=(OWNER,),
        max_message_count=50,
        parameters=Parameters(items=(Parameter(name="path", value=str(drop)),)),
    )


@pytest.mark.slow
def test_a_sender_without_commit_point_killed_at_random_never_sends_an_email_twice(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given 300 pending emails in a CRM and a ledger that both survive the sender's death
    crm_path, state_path, drop = tmp_path / "crm.db", tmp_path / "state.db", tmp_path / "drop"
    crm = SqliteCrm(crm_path)
    crm.add_outbound(sample_email(i, attachments=False) for i in range(EMAILS))
    seed = int(os.environ.get("CRASH_SEED", str(time.time_ns() % 100_000)))
    rng = random.Random(seed)

    # When a sender process is SIGKILLed at a random moment of its batch, 20 times
    kills = 0
    for _ in range(3 * KILLS):
        if kills == KILLS:
            break
        kills += _run_and_kill(crm_path, state_path, drop, rng)
    # And senders run to the end
    last = _sender(crm_path, state_path, drop)
    assert last.wait(timeout=60) == 0, f"seed {seed}"

    # Then no email is in the file twice
    dropped = Counter(drop.read_text().split())
    twice = {k: v for k, v in dropped.items() if v > 1}
    assert not twice, f"seed {seed}: submitted twice: {twice}"
    # And every email is either Sent (and in the file) or ambiguous (Failed with the note)
    status = crm.status()
    sent = {k for k, (s, *_) in status.items() if s == "sent"}
    ambiguous = {k for k, (s, r, *_) in status.items() if s == "failed" and "may or may not" in r}
    assert sent | ambiguous == set(status) and sent <= set(dropped), f"seed {seed}"
    assert kills == KILLS, f"seed {seed}: only {kills} kills landed mid-batch"
    # And status and quarantine list show the ambiguous ones under the instance
    _shown(state_path, drop, ambiguous, capsys)
    print(f"seed {seed}: {len(sent)} sent, {len(ambiguous)} ambiguous, {sum(twice.values())} twice")


def _shown(
    state_path: Path, drop: Path, ambiguous: set[str], capsys: pytest.CaptureFixture[str]
) -> None:
    ctx, _ = make_context(configuration(_cfg(drop)), store=SqliteStore(str(state_path)))
    rows = {r.name: r for r in collect_status(ctx.config, ctx.store)}
    assert rows["out"].ambiguous == rows["out"].quarantined == len(ambiguous)
    assert rows["out"].backlog == 0
    capsys.readouterr()
    quarantine_list(ctx, argparse.Namespace(instance="out"))
    out = capsys.readouterr().out
    assert f"{len(ambiguous)} outbound email(s) that may or may not have been sent" in out
    assert all(f"out:{email_id}" in out for email_id in ambiguous)
    entries = ctx.store.list_entries("_outbound", [LedgerState.QUARANTINED])
    assert {e.key.split(":", 1)[1] for e in entries} == ambiguous


def _sender(crm_path: Path, state_path: Path, drop: Path) -> subprocess.Popen[bytes]:
    args = [sys.executable, "-m", MODULE]
    return subprocess.Popen([*args, str(crm_path), str(state_path), str(drop)], cwd=ROOT)


def _lines(drop: Path) -> int:
    try:
        return drop.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def _run_and_kill(crm_path: Path, state_path: Path, drop: Path, rng: random.Random) -> int:
    """Start a sender, let it send a random few emails, SIGKILL it then: 1 if the kill landed."""
    target = _lines(drop) + rng.randint(1, 15)
    proc = _sender(crm_path, state_path, drop)
    try:
        sending = wait_for(
            lambda: _lines(drop) >= target or proc.poll() is not None, timeout=20, interval=0.002
        )
        assert proc.poll() in (None, 0), "the sender process failed on its own"
        if not sending or proc.poll() is not None:
            return 0
        time.sleep(rng.uniform(0.0, 0.004))  # anywhere within the next email's hand-over
        if proc.poll() is not None:
            return 0
        proc.send_signal(signal.SIGKILL)
        return 1
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)


def run_sender(crm_path: str, state_path: str, drop: str) -> None:
    """Subprocess body: send cycles until nothing is pending."""
    from router.errors import RouterError
    from router.outgoing import send_cycle

    ctx, _ = make_context(
        configuration(_cfg(Path(drop)), lease_ms=1000),
        SqliteCrm(Path(crm_path)),
        SqliteStore(state_path, synchronous="NORMAL"),  # a process crash loses no WAL commit
    )
    for _ in range(2000):
        try:
            report = send_cycle(ctx, "out")
        except RouterError:
            time.sleep(0.05)
            continue
        if report.busy:
            time.sleep(0.1)
        elif report.pending == 0:
            return
    sys.exit(3)


if __name__ == "__main__":
    run_sender(*sys.argv[1:4])
