"""A 50 MB message in a real Dovecot mailbox: quarantined by the size guard, never downloaded.

``email-router poll`` runs as a subprocess against Dovecot and the Dataverse simulator; its peak
RSS (``wait4`` rusage of that one process) is compared with a poll of the same small messages
without the big one. Then MaxMessageSize is raised and ``email-router quarantine replay`` fetches
the message and delivers it; its RSS is measured too (it has to hold the message). Run with
``-s`` to see the numbers.
"""

from __future__ import annotations

import base64
import os
import re
from pathlib import Path

import pytest

from router.models import LedgerState
from router.state.factory import open_store
from tests.integration.incoming_support import (
    Box,
    Run,
    crm_ids,
    make_box,
    message_id_of,
    run_cli,
    write_config,
)
from tests.servers.dovecot import Dovecot, message
from tests.servers.simulator import SimulatorServer

pytestmark = [pytest.mark.dovecot, pytest.mark.slow, pytest.mark.timeout(180)]

MB = 1024 * 1024
#: Binary attachment size: base64 makes the message ~52 MB (> 50 MB) on the server.
ATTACHMENT = 38 * MB
#: What a poll that skipped the big message may use (Python + the router are ~65 MB).
POLL_RSS_LIMIT_MB = 150
#: What the big message may add to a poll's peak RSS compared with the same poll without it.
POLL_RSS_GROWTH_MB = 20
RAISED_LIMIT = 64 * MB


def big_message() -> bytes:
    """A ~52 MB message: short text and one binary attachment."""
    blob = base64.encodebytes(os.urandom(MB) * (ATTACHMENT // MB)).replace(b"\n", b"\r\n")
    head = (
        "From: Big Sender <big@example.org>\r\n"
        "To: inbox@example.com\r\n"
        "Subject: the big one\r\n"
        f"Message-ID: <big.{os.urandom(6).hex()}@example.org>\r\n"
        "Date: Mon, 02 Mar 2026 10:00:00 +0000\r\n"
        "MIME-Version: 1.0\r\n"
        'Content-Type: multipart/mixed; boundary="b1"\r\n'
        "\r\n--b1\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n\r\n"
        "The scan is attached.\r\n"
        "--b1\r\n"
        'Content-Type: application/octet-stream; name="scan.bin"\r\n'
        "Content-Transfer-Encoding: base64\r\n"
        'Content-Disposition: attachment; filename="scan.bin"\r\n\r\n'
    )
    return head.encode() + blob + b"--b1--\r\n"


def poll(box: Box) -> Run:
    return run_cli(["poll", box.name, "--config", str(box.config), "--state", box.state])


def quarantined(box: Box) -> list[tuple[str, str, bool]]:
    """(key, reason, bytes kept) of every quarantined entry of the box."""
    store = open_store(box.state)
    try:
        return [
            (e.key, e.reason or "", store.get_raw(box.name, e.key) is not None)
            for e in store.list_entries(box.name, [LedgerState.QUARANTINED])
        ]
    finally:
        store.close()


@pytest.fixture(scope="module")
def big() -> bytes:
    raw = big_message()
    assert len(raw) > 50_000_000
    return raw


def small(start: int, count: int) -> list[bytes]:
    return [message(i, sender=f"s{i}@example.org") for i in range(start, start + count)]


def baseline_rss(tmp_path: Path, dovecot: Dovecot, simulator: SimulatorServer, kind: str) -> float:
    """Peak RSS of a poll of three small messages (same code path, no big message)."""
    workdir = tmp_path / "baseline"
    workdir.mkdir()
    box = make_box(workdir, dovecot, simulator.for_org(simulator.org + "b"), small(0, 3), kind=kind)
    run = poll(box)
    assert run.returncode == 0, run.stdout + run.stderr
    return run.peak_rss_mb


@pytest.mark.parametrize("kind", ["imap", "pop3"])
def test_a_50mb_message_is_quarantined_without_download_and_the_rest_delivered(
    dovecot: Dovecot,
    simulator: SimulatorServer,
    tmp_path: Path,
    big: bytes,
    kind: str,
) -> None:
    raws = [*small(0, 1), big, *small(1, 2)]
    box = make_box(tmp_path, dovecot, simulator, raws, kind=kind)
    base = baseline_rss(tmp_path, dovecot, simulator, kind)

    run = poll(box)

    assert run.returncode == 0, run.stdout + run.stderr
    assert "listed 4, staged 3, delivered 3" in run.stdout and "quarantined 1" in run.stdout
    assert sorted(crm_ids(simulator)) == sorted(message_id_of(r) for r in raws if r is not big)
    ((_key, reason, kept),) = quarantined(box)
    assert "above MaxMessageSize" in reason and not kept
    print(
        f"\n{kind}: poll with a {len(big) / MB:.1f} MiB message: peak RSS {run.peak_rss_mb:.1f} MiB"
        f" (same poll without it: {base:.1f} MiB), {run.seconds:.2f}s"
    )
    assert run.peak_rss_mb < POLL_RSS_LIMIT_MB
    assert run.peak_rss_mb - base < POLL_RSS_GROWTH_MB


def test_replay_after_raising_the_limit_fetches_and_delivers_the_big_message(
    dovecot: Dovecot, simulator: SimulatorServer, tmp_path: Path, big: bytes
) -> None:
    box = make_box(tmp_path, dovecot, simulator, [big, *small(0, 2)], after="seen")
    assert poll(box).returncode == 0
    ((key, _reason, _kept),) = quarantined(box)
    write_config(
        box.config,
        dovecot=dovecot,
        sim=simulator,
        user=box.user,
        state=box.state,
        after="seen",
        max_size=RAISED_LIMIT,
    )

    args = ["quarantine", "replay", box.name, key, "--config", str(box.config)]
    replay = run_cli([*args, "--state", box.state])

    assert replay.returncode == 0, replay.stdout + replay.stderr
    assert re.search(r"delivered 1,", replay.stdout), replay.stdout
    assert quarantined(box) == []
    (activity,) = [e for e in simulator.emails() if e["messageid"] == message_id_of(big)]
    (attachment,) = activity["attachments"]
    assert attachment["filename"] == "scan.bin"
    assert abs(attachment["size"] - ATTACHMENT) <= 2
    assert len(crm_ids(simulator)) == 3
    print(
        f"\nquarantine replay of the {len(big) / MB:.1f} MiB message: peak RSS "
        f"{replay.peak_rss_mb:.1f} MiB, {replay.seconds:.2f}s"
    )
    # the next poll applies AfterProcessing to it like to any delivered message
    assert poll(box).returncode == 0
    uid = int(key.split(":")[1])
    assert "\\Seen" in dovecot.flags(box.user, uid)
