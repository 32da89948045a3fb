"""The kit's test rig: one provider instance wired to the kit's CRM and a SQLite state store.

Use :class:`KitRig` to run the router's real cycles (:func:`router.service.poll_instance`,
:func:`router.service.send_cycle`) over a provider, in this process or in a child process that
SIGKILLs itself at its n-th step (:meth:`KitRig.run_killed`). A "step" is a call into the
provider (open, list, fetch one message, advance, post-process, commit, submit, close) or into
the CRM (before and after each call), so walking n = 1, 2, ... kills the cycle between every
two steps. State and CRM live in files under the rig's directory and survive the kills.
"""

from __future__ import annotations

import functools
import multiprocessing
import os
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from router.config import Configuration, ProviderConfiguration
from router.context import Context
from router.crm.base import CrmAdapter
from router.models import InboundMessage, MessageRef
from router.outgoing import SendReport
from router.providers.base import IncomingProvider, OutgoingProvider, Provider
from router.report import CycleReport
from router.service import poll_instance, release_dead_leases, send_cycle
from router.state.factory import open_store
from router.testing.crm import KitCrm
from router.testing.crmview import KIT_DEPLOYMENT, CrmView, MemoryCrmView
from router.testing.messages import POISON_SUBJECT, subject_of

T = TypeVar("T")

#: Public methods of incoming providers the kill switch counts as steps.
INCOMING_STEPS = ("open", "list_new", "fetch", "advance", "post_process", "commit", "close")
#: Public methods of outgoing providers the kill switch counts as steps (``_submit``: handed over).
OUTGOING_STEPS = ("open", "submit", "_submit", "close")


class KillSwitch:
    """Counts steps and SIGKILLs this process at step ``at`` (never when ``at`` is None)."""

    def __init__(self, at: int | None) -> None:
        self.at, self.count = at, 0

    def tick(self, _what: str = "") -> None:
        """One more step; the process dies here if it is the chosen one."""
        self.count += 1
        if self.count == self.at:
            os.kill(os.getpid(), signal.SIGKILL)


@dataclass
class KitContext(Context):
    """A :class:`~router.context.Context` that serves the kit's CRM and wrapped providers."""

    kit_crm: KitCrm | None = None
    switch: KillSwitch | None = None
    poison: bool = False

    def crm(self, cfg: ProviderConfiguration) -> CrmAdapter:
        return self.kit_crm if self.kit_crm is not None else super().crm(cfg)

    def provider(self, cfg: ProviderConfiguration) -> Provider:
        provider = super().provider(cfg)
        if self.poison and isinstance(provider, IncomingProvider):
            poison_fetch(provider)
        if self.switch is not None:
            counted(provider, self.switch)
        return provider


def counted(provider: Provider, switch: KillSwitch) -> None:
    """Make every step of ``provider`` a tick of ``switch`` (before the step runs)."""
    steps = INCOMING_STEPS if isinstance(provider, IncomingProvider) else OUTGOING_STEPS
    for name in steps:
        setattr(provider, name, _ticking(getattr(provider, name), switch, name))
    if isinstance(provider, IncomingProvider):
        many = provider.fetch_many
        setattr(provider, "fetch_many", _ticking_many(many, switch))  # noqa: B010
    if isinstance(provider, OutgoingProvider):
        submit = provider._submit
        setattr(provider, "_submit", _then_tick(submit, switch))  # noqa: B010


def _ticking(method: Callable[..., Any], switch: KillSwitch, name: str) -> Callable[..., Any]:
    @functools.wraps(method)
    def step(*args: Any, **kwargs: Any) -> Any:
        switch.tick(name)
        return method(*args, **kwargs)

    return step


def _then_tick(method: Callable[..., Any], switch: KillSwitch) -> Callable[..., Any]:
    @functools.wraps(method)
    def step(*args: Any, **kwargs: Any) -> Any:
        switch.tick("about to hand over")  # after the default commit point ("submitted" first)
        result = method(*args, **kwargs)
        switch.tick("handed over")  # the server has it; the core does not know yet
        return result

    return step


def _ticking_many(
    method: Callable[[list[MessageRef]], Iterator[InboundMessage]], switch: KillSwitch
) -> Callable[[list[MessageRef]], Iterator[InboundMessage]]:
    def many(refs: list[MessageRef]) -> Iterator[InboundMessage]:
        for message in method(refs):
            switch.tick("fetched")
            yield message

    return many


def poison_fetch(provider: IncomingProvider) -> None:
    """Make ``provider._fetch`` raise ValueError for the message whose subject is the poison.

    Batched fetching is turned off so that every message goes through ``_fetch``.
    """
    fetch_raw = provider._fetch

    def poisoned(ref: MessageRef) -> bytes:
        raw = fetch_raw(ref)
        if subject_of(raw) == POISON_SUBJECT:
            raise ValueError("kit: this message cannot be read")
        return raw

    def one_by_one(refs: list[MessageRef]) -> Iterator[InboundMessage]:
        return (provider.fetch(ref) for ref in refs)

    setattr(provider, "_fetch", poisoned)  # noqa: B010
    setattr(provider, "fetch_many", one_by_one)  # noqa: B010


#: What the ``provider_kit_rig`` fixture gives a test: a rig for a configuration.
RigFactory = Callable[[ProviderConfiguration], "KitRig"]


def _later() -> float:
    """A clock far enough ahead that every retry is due."""
    return time.time() + 1e6


class KitRig:
    """One instance under test, its CRM and its state store, kept in ``workdir``.

    ``cfg`` is the author's configuration; the rig points its ``<Deployment>`` at ``crm`` (by
    default the kit's in-memory CRM, kept in ``workdir``).
    """

    def __init__(
        self, cfg: ProviderConfiguration, workdir: Path, crm: CrmView | None = None
    ) -> None:
        self.cfg = cfg.model_copy(update={"deployment": KIT_DEPLOYMENT})
        self.name = self.cfg.name
        workdir.mkdir(parents=True, exist_ok=True)
        self.crm = crm if crm is not None else MemoryCrmView(workdir / "crm.pickle")
        self.state_url = f"sqlite:///{workdir / 'state.db'}"
        self.config = Configuration(deployments=(self.crm.deployment(),), providers=(self.cfg,))

    def context(self, switch: KillSwitch | None = None, poison: bool = False) -> KitContext:
        """A context over the rig's store and CRM; close it when done."""
        crm = self.crm.adapter(switch.tick if switch is not None else None)
        store = open_store(self.state_url)
        return KitContext(self.config, store, kit_crm=crm, switch=switch, poison=poison)

    def poll(self, *, poison: bool = False) -> CycleReport:
        """One complete poll cycle (list, stage, deliver, post-process)."""
        return self._run(lambda ctx: poll_instance(ctx, self.name), None, poison)

    def send(self, *, clock: Callable[[], float] = time.time) -> SendReport:
        """One complete send cycle; pass a ``clock`` in the future to make retries due."""
        return self._run(lambda ctx: send_cycle(ctx, self.name, clock=clock), None, False)

    def run_killed(self, use_case: str, at: int, cycles: int = 5) -> bool:
        """Run ``cycles`` poll or send cycles in a child process killed at step ``at``.

        Returns True when the child was killed, False when it finished first.
        """
        child = multiprocessing.get_context("fork").Process(
            target=self._child, args=(use_case, at, cycles)
        )
        child.start()
        child.join(120)
        if child.exitcode not in (0, -signal.SIGKILL):
            raise AssertionError(f"the {use_case} child ended with exit code {child.exitcode}")
        return child.exitcode == -signal.SIGKILL

    def _child(self, use_case: str, at: int, cycles: int) -> None:
        switch = KillSwitch(at)
        for _ in range(cycles):
            if use_case == "poll":
                self._run(lambda ctx: poll_instance(ctx, self.name), switch, False)
            else:  # retries are due at once: a killed claim is taken over in the next cycle
                self._run(lambda ctx: send_cycle(ctx, self.name, clock=_later), switch, False)

    def _run(self, run: Callable[[KitContext], T], switch: KillSwitch | None, poison: bool) -> T:
        ctx = self.context(switch, poison)
        try:
            release_dead_leases(ctx.store, self.name)  # a killed cycle's lease, as at start-up
            return run(ctx)
        finally:
            ctx.close()
