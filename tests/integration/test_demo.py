"""``make demo`` end to end: Dovecot + Dataverse simulator + SMTP sink + ``email-router run``.

Runs ``deploy/demo/demo.py --check`` (bounded by ``--duration``) and checks what it left in its
work directory: the SMTP sink's files, the simulator's database and the router's SQLite state.
"""

from __future__ import annotations

import email
import email.policy
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from tests.servers.common import require

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "deploy" / "demo" / "demo.py"
sys.path.insert(0, str(DEMO.parent))
import seed  # noqa: E402  (the demo's sibling script)

pytestmark = pytest.mark.dovecot


def have_dovecot() -> bool:
    sys.path.insert(0, str(DEMO.parent))
    from demo import find_dovecot

    return find_dovecot() is not None


def test_the_demo_turns_its_mail_into_activities_and_sends_the_pending_emails(
    tmp_path: Path,
) -> None:
    require(
        have_dovecot(), "dovecot is not installed (apt-get install dovecot-imapd dovecot-pop3d)"
    )
    # When the demo runs (it stops as soon as everything arrived, at most after 90 s)
    done = subprocess.run(
        [sys.executable, str(DEMO), "--duration", "90", "--check", "--workdir", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    # Then the activity page's data holds one incoming activity per demo message (the
    # out-of-office reply is skipped by policy), and the three pending emails are Sent
    db = sqlite3.connect(tmp_path / "crm-sim.db")
    rows = db.execute("SELECT subject, directioncode, statuscode FROM emails").fetchall()
    incoming = sorted(subject for subject, direction, _ in rows if not direction)
    assert len(incoming) == seed.expected_activities()
    assert "Automatic reply: Out of office" not in incoming
    assert "Signed order form" in incoming
    assert [s for _, d, s in rows if d] == [3] * seed.OUTBOUND_COUNT
    # And the SMTP sink got each outbound email once, addressed as the CRM said
    sent = [
        email.message_from_bytes(p.read_bytes(), policy=email.policy.default)
        for p in sorted((tmp_path / "outbox").glob("*.eml"))
    ]
    assert len(sent) == seed.OUTBOUND_COUNT
    assert all("ada@customer.demo.example" in str(m["To"]) for m in sent)
    assert sorted(str(m["Subject"]).split(" CRM:")[0] for m in sent) == [
        f"Your quote #{n} from Demo Corp" for n in range(seed.OUTBOUND_COUNT)
    ]
    # And the router stopped cleanly on SIGTERM
    assert "email-router run exited with 0" in out
