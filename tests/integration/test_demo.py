"""``make demo`` end to end: Dovecot + Dataverse simulator + SMTP sink + ``email-router run``.

Runs ``deploy/demo/demo.py --check`` (bounded by ``--duration``) and checks what it left in its
work directory: the SMTP sink's files, the simulator's database and the router's SQLite state.
Runs it with ``--graph`` (the Graph simulator as a second mail source) the same way. Then runs
it as ``timeout 20 make demo`` would and stops it with SIGTERM: the commands it
printed work from elsewhere, its console answers, and nothing of it is left afterwards.
"""

from __future__ import annotations

import email
import email.policy
import re
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
import requests

from tests.servers.common import require, wait_for

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


def test_the_demo_with_graph_also_reads_a_simulated_exchange_mailbox_through_graph(
    tmp_path: Path,
) -> None:
    require(
        have_dovecot(), "dovecot is not installed (apt-get install dovecot-imapd dovecot-pop3d)"
    )
    # When the demo runs with --graph (make demo DEMO_ARGS=--graph)
    done = subprocess.run(
        [sys.executable, str(DEMO), "--graph", "--duration", "90", "--check",
         "--workdir", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=180, check=False,
    )  # fmt: skip
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    # Then it said what it started and seeded, and wrote the Graph simulator's CA to its work dir
    assert f"seeded {len(seed.graph_mail())} messages for {seed.ORDERS}" in out
    assert (tmp_path / "graph-sim-ca.pem").exists()
    assert 'Name="orders-graph"' in (tmp_path / "router.xml").read_text()
    # And the Graph mailbox's messages became activities beside the IMAP and POP3 ones, once each
    db = sqlite3.connect(tmp_path / "crm-sim.db")
    incoming = [s for s, direction in db.execute("SELECT subject, directioncode FROM emails")
                if not direction]  # fmt: skip
    graph_subjects = ["Purchase order 7001", "Delivery address change", "Order cancellation"]
    assert all(incoming.count(subject) == 1 for subject in graph_subjects), incoming
    assert len(incoming) == seed.expected_activities() + len(graph_subjects)
    # And nothing of it runs any more: no Graph simulator, router or console
    assert processes_mentioning(str(tmp_path)) == []


def demo_line(out: Path, label: str) -> str:
    """The value the demo printed after ``[demo] <label>``."""
    match = re.search(rf"^\[demo\] {re.escape(label)}\s*(.+)$", out.read_text(), re.M)
    assert match, out.read_text()
    return match.group(1).strip()


def processes_mentioning(*paths: str) -> list[str]:
    """Command lines of running processes that name one of ``paths`` (Dovecot names its conf)."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        line = " ".join(proc.info["cmdline"] or [])
        if any(p in line for p in paths):
            found.append(line)
    return found


def test_sigterm_stops_the_demo_as_ctrl_c_does_and_its_printed_commands_work(
    tmp_path: Path,
) -> None:
    require(
        have_dovecot(), "dovecot is not installed (apt-get install dovecot-imapd dovecot-pop3d)"
    )
    out = tmp_path / "demo.out"
    with out.open("wb") as sink:
        demo = subprocess.Popen(
            [sys.executable, str(DEMO)], cwd=ROOT, stdout=sink, stderr=subprocess.STDOUT
        )
    try:
        # Given the demo running (it prints how to stop it once everything started)
        started = wait_for(
            lambda: "stops everything" in out.read_text() or demo.poll() is not None, timeout=90
        )
        assert started and demo.poll() is None, out.read_text()
        work, dovecot_dir = demo_line(out, "work directory:"), demo_line(out, "Dovecot directory:")
        console_url = demo_line(out, "console:").split()[0].rstrip("/")
        # When another terminal runs the status command it printed
        status = subprocess.run(
            demo_line(out, "status:"), shell=True, cwd=tmp_path, capture_output=True, text=True,
            timeout=60, check=False,
        )  # fmt: skip
        assert status.returncode == 0, status.stderr
        assert "sales-imap" in status.stdout and "outbound-smtp" in status.stdout
        # And the console it started answers (asking to sign in)
        answer = requests.get(console_url, allow_redirects=False, timeout=10)
        assert answer.status_code == 302 and "/login" in answer.headers["Location"]
        assert processes_mentioning(dovecot_dir)  # its Dovecot runs
        # When it gets SIGTERM
        demo.send_signal(signal.SIGTERM)
        code = demo.wait(timeout=90)
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
    # Then it stopped cleanly: no Dovecot, router, console or simulator of it left, no temp dirs
    assert code == 0, out.read_text()
    assert "email-router run exited with 0" in out.read_text()
    assert processes_mentioning(dovecot_dir, work) == []
    assert not Path(work).exists() and not Path(dovecot_dir).exists()
