"""A forked child starts with a heartbeat of its own, whatever the parent's threads were doing."""

from __future__ import annotations

import os
import threading
import time

from router.ledger import PULSE


def test_a_forked_child_never_waits_on_a_heartbeat_lock_a_parent_thread_held() -> None:
    # Given a parent thread inside the pulse (holding its lock) at the moment of the fork
    inside, leave = threading.Event(), threading.Event()

    def busy_beater() -> None:
        with PULSE._lock:  # what a heartbeat thread does while it records a beat
            inside.set()
            leave.wait(10)

    thread = threading.Thread(target=busy_beater)
    thread.start()
    assert inside.wait(5)
    try:
        pid = os.fork()
        if pid == 0:  # the child: asks the pulse as every lease does, then reports
            code = 0 if PULSE.fenced() is False else 1
            os._exit(code)
        # Then the child answers at once (no deadlock) and does not count as beating
        for _ in range(100):
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            time.sleep(0.05)
        else:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            raise AssertionError("the forked child deadlocked on the parent's heartbeat lock")
        assert os.waitstatus_to_exitcode(status) == 0
    finally:
        leave.set()
        thread.join(5)
