"""The pause rule both runtimes apply to an instance whose error says "stop".

An error whose action (:func:`router.errors.action_of`) is ``"stop"`` - refused credentials, an
unusable configuration - cannot go away by itself: retrying it every ``PollingPeriod`` would
only lock the account. So the instance pauses, and runs again once a configuration loaded after
the stop is in use (the usual fix). The Celery runtime, whose workers share the pause through
the state store, also lifts it after a cycle succeeded elsewhere or after :data:`STOP_PAUSE`
(a secret rotated in its own file or variable changes no configuration).

Use :func:`pauses` to decide, :meth:`Pause.after` to start a pause, :meth:`Pause.lifted` to end
it; :meth:`Pause.record` and :meth:`Pause.recorded` keep it in the state store.
"""

from __future__ import annotations

from dataclasses import dataclass

from router.errors import action_of
from router.state.base import InstanceStats, StateStore

#: Prefix of the error a recorded pause leaves in the instance's counters (``status`` shows it).
STOP_MARK = "stopped: "
#: Longest pause (seconds) of an instance shared through the state store when nothing changes.
STOP_PAUSE = 600.0
#: Longest error text either runtime keeps in an instance's counters.
MAX_RECORDED_ERROR = 500


def pauses(exc: BaseException | None) -> bool:
    """True when ``exc`` must pause its instance: its action is "stop"."""
    return exc is not None and action_of(exc) == "stop"


def describe(exc: BaseException) -> str:
    """``ProviderAuthError: LOGIN refused``: an error as logs and counters show it."""
    return f"{type(exc).__name__}: {exc}"


@dataclass(frozen=True)
class Pause:
    """An instance that stopped on an error whose action is "stop": why, and since when."""

    reason: str
    #: When the pause began, on the clock the caller compares configurations with.
    since: float

    @classmethod
    def after(cls, exc: BaseException | None, now: float) -> Pause | None:
        """The pause ``exc`` starts at ``now``; None when it does not pause (see :func:`pauses`)."""
        return cls(describe(exc), now) if exc is not None and pauses(exc) else None

    @classmethod
    def recorded(cls, stats: InstanceStats) -> Pause | None:
        """The pause :meth:`record` left in an instance's counters, if its last error was one."""
        error, since = stats.last_error or "", stats.last_error_at
        if since is None or not error.startswith(STOP_MARK):
            return None
        return cls(error.removeprefix(STOP_MARK), since)

    def record(self, store: StateStore, instance: str) -> None:
        """Keep the pause in the state store, where every worker (and ``status``) sees it."""
        store.record_poll(instance, error=f"{STOP_MARK}{self.reason}"[:MAX_RECORDED_ERROR])

    def lifted(
        self,
        *,
        config_since: float,
        succeeded_at: float | None = None,
        now: float | None = None,
        longest: float | None = None,
    ) -> bool:
        """True once the instance may run again.

        ``config_since`` is when the configuration in use for the instance appeared (the same
        clock as :attr:`since`); a configuration that appeared after the stop lifts the pause.
        ``succeeded_at`` (a cycle succeeded after the stop) and ``longest`` (seconds since the
        stop, with ``now``) lift it too when the caller shares pauses between processes.
        """
        if config_since >= self.since or (succeeded_at or 0.0) > self.since:
            return True
        return longest is not None and now is not None and now - self.since > longest
