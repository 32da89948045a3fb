"""Mailboxes defined in the CRM: which of its records run, as which instances, with which login.

A ``<Deployment>`` with ``<LoadMailboxes Profile=… Direction=…/>`` runs the organisation's own
mailboxes. :func:`plan` decides, for each record and direction, whether it runs and why not
(:func:`skip_reason`), and builds the instance (:func:`instance_config`: the profile's servers,
the record's address and owner, credentials from :class:`ProfileCredentials`). :func:`expand`
is the one policy every runtime uses: the file's configuration plus the CRM's records ->
the configuration with the loaded instances after the hand-written ones.

:class:`MailboxLoader` is the stateful part the runtimes hold (through
:class:`~router.runtime.watch.ConfigWatcher`): it reads the records of each Deployment every
``<ConfigUpdatePeriod>`` (at the same wall-clock boundaries in every process, so beat and the
workers change lists together), and keeps the last known list while the CRM does not answer.

**Who else sees the loaded mailboxes.** A runtime's loader records each list it reads in the
state store (:meth:`MailboxLoader.record_in`; :meth:`StateStore.set_mailbox_list`): the CRM's
records (ids, address, owner, delivery methods, approval) and when they were read, never a
credential. The commands that only look or act on one instance - ``status``, the console,
``poll NAME`` / ``send NAME``, ``quarantine``, ``state`` - expand that recorded list through
the same :func:`expand` (:func:`recorded_config`; the console follows it with
:class:`RecordedMailboxes`). Chosen over each command reading the CRM itself because:

* they then show what the runtimes actually run - the list the runtime read, kept through a
  CRM outage - not what the CRM says at this moment;
* they work, and say how old the list is, while the CRM is unreachable, and cost no CRM
  round trip and no CRM credential;
* credentials still come from the profile at use time (:class:`ProfileCredentials`), so
  nothing secret is written and a changed profile applies to every reader the same way.

``validate`` needs neither: it names each ``<LoadMailboxes>`` and checks its profile.
"""

from __future__ import annotations

import abc
import hashlib
import json
import logging
import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from router.config import (
    Configuration,
    Deployment,
    EmailServerProfile,
    LoadMailboxes,
    ProviderConfiguration,
    Secret,
    read_secret_file,
)
from router.crm.base import CrmAdapter, MailboxRecord
from router.crm.factory import make_crm
from router.errors import ConfigError, CrmError, RouterError
from router.models import Direction
from router.state.base import JsonDict, StateStore

log = logging.getLogger(__name__)

#: Dataverse's "Server-Side Synchronization or Email Router" delivery method.
SERVER_SIDE_SYNC = 2
APPROVED = 1
METHODS = {0: "None", 1: "Microsoft Dynamics 365 for Outlook", 2: "Server-Side Synchronization",
           3: "Forward Mailbox"}  # fmt: skip
APPROVALS = {0: "empty", 1: "approved", 2: "pending approval", 3: "rejected"}
SUFFIX = {Direction.INCOMING: "in", Direction.OUTGOING: "out"}
_NOT_IN_NAME = re.compile(r"[^A-Za-z0-9._@-]")


def instance_name(address: str, direction: Direction) -> str:
    """The stable instance name of a loaded mailbox: ``<address>.in`` / ``<address>.out``.

    Characters a name may not hold become ``-``; when that changed the address, or it is too
    long, a short hash of the address keeps two mailboxes from sharing a name.
    """
    address = address.strip().lower()
    clean = _NOT_IN_NAME.sub("-", address).lstrip("._@-")
    suffix = SUFFIX[direction]
    if clean == address and len(clean) + len(suffix) < 128 and clean:
        return f"{clean}.{suffix}"
    digest = hashlib.sha256(address.encode()).hexdigest()[:8]
    return f"{(clean or 'mailbox')[:100]}-{digest}.{suffix}"


def skip_reason(record: MailboxRecord, direction: Direction) -> str | None:
    """Why ``record`` does not run in ``direction``, or None when it runs (credentials aside)."""
    method = record.incoming_method if direction is Direction.INCOMING else record.outgoing_method
    if not record.active:
        return "inactive"
    if record.approval != APPROVED:
        return f"not approved (email address {APPROVALS.get(record.approval, record.approval)})"
    if method != SERVER_SIDE_SYNC:
        what = METHODS.get(method, str(method))
        return f"other {direction.value} delivery method ({what})"
    if not record.address.strip():
        return "no email address"
    if not record.owner_id:
        return "no owning user or queue"
    return None


class ProfileCredentials:
    """How the mailboxes of one profile log in (read once per refresh; never logged).

    ``ServiceAccount``: every mailbox uses the profile's ``<EmailUser>`` (``{address}`` replaced)
    and ``<EmailPassword>`` as given (Env= / File= stay indirect). ``PerMailbox``: the
    ``<MailboxCredentials>`` JSON object, keyed by address (case-insensitive).
    """

    def __init__(self, profile: EmailServerProfile) -> None:
        self.profile = profile
        self._per_mailbox: dict[str, tuple[str, Secret]] | None = None
        if profile.credential_source == "PerMailbox" and profile.email_auth_mode != "none":
            self._per_mailbox = _read_mailbox_credentials(profile)

    def login(self, address: str) -> tuple[str | None, Secret | None] | None:
        """(user, password) for ``address``; None when the profile has none for it."""
        if self.profile.email_auth_mode == "none":
            return None, None
        if self._per_mailbox is None:
            user = (self.profile.email_user or "").replace("{address}", address)
            return user, self.profile.email_password
        return self._per_mailbox.get(address.strip().lower())


def _read_mailbox_credentials(profile: EmailServerProfile) -> dict[str, tuple[str, Secret]]:
    """The per-mailbox credentials; ConfigError (never quoting the content) when unusable."""
    secret = profile.mailbox_credentials
    assert secret is not None  # the model requires it with PerMailbox
    where = f"<EmailServerProfile Name={profile.name!r}> <MailboxCredentials>"
    try:
        text = read_secret_file(secret.file) if secret.file else secret.get_secret_value()
        data = json.loads(text)
    except (OSError, KeyError, ValueError) as exc:
        raise ConfigError(f"{where}: cannot be read as JSON ({type(exc).__name__})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: must be a JSON object keyed by email address")
    return dict(_entry(where, str(k), v) for k, v in data.items())


def _entry(where: str, address: str, value: Any) -> tuple[str, tuple[str, Secret]]:
    if isinstance(value, str):
        return address.strip().lower(), (address, Secret(value=value))
    if isinstance(value, dict) and isinstance(value.get("Password"), str):
        user = str(value.get("User") or address)
        return address.strip().lower(), (user, Secret(value=value["Password"]))
    raise ConfigError(f"{where}: the entry of {address!r} must be a password or "
                      '{"User": ..., "Password": ...}')  # fmt: skip


def instance_config(
    profile: EmailServerProfile,
    deployment: str,
    record: MailboxRecord,
    direction: Direction,
    login: tuple[str | None, Secret | None],
) -> ProviderConfiguration:
    """The instance that runs ``record`` in ``direction`` through ``profile``."""
    incoming = direction is Direction.INCOMING
    owner = (record.owner_id,) if record.owner_id else ()
    queue = record.owner_type == "queue"
    after = "delete" if incoming and record.delete_after_processing else profile.after_processing
    return ProviderConfiguration(
        name=instance_name(record.address, direction),
        provider_class=(
            profile.incoming_provider_class if incoming else profile.outgoing_provider_class
        ),
        direction=direction,
        deployment=deployment,
        email_server=profile.incoming_server if incoming else profile.outgoing_server,
        email_port=profile.incoming_port if incoming else profile.outgoing_port,
        email_security=profile.incoming_security if incoming else profile.outgoing_security,
        email_auth_mode=profile.email_auth_mode,
        allow_cleartext_password=profile.allow_cleartext_password,
        email_user=login[0],
        email_password=login[1],
        email_address=record.address,
        polling_period=profile.polling_period,
        max_message_count=profile.max_message_count,
        after_processing=after,
        parameters=profile.incoming_parameters if incoming else profile.outgoing_parameters,
        user_ids=() if queue else owner,
        queue_ids=owner if queue else (),
    )  # fmt: skip


#: The mailbox :func:`sample_instance` builds: no real address, no real record.
SAMPLE = MailboxRecord(
    "00000000-0000-0000-0000-000000000000", "mailbox@example.invalid",
    owner_id="00000000-0000-0000-0000-000000000000",
)  # fmt: skip


def sample_instance(profile: EmailServerProfile, direction: Direction) -> ProviderConfiguration:
    """The instance any mailbox would get through ``profile``: what ``validate`` checks.

    ValueError when such an instance is invalid (e.g. cleartext passwords to a remote server).
    """
    login: tuple[str | None, Secret | None] = (None, None)
    if profile.email_auth_mode != "none":
        login = (profile.email_user or SAMPLE.address, profile.email_password or Secret(value="x"))
    return instance_config(profile, "profile-check", SAMPLE, direction, login)


@dataclass(frozen=True)
class Planned:
    """One record in one direction: the instance it runs as, or why it does not run."""

    deployment: str
    profile: str
    record: MailboxRecord
    direction: Direction
    instance: ProviderConfiguration | None = None
    skipped: str | None = None
    #: where ``mailboxes test`` writes a failure's reason (LoadMailboxes FailureReasonColumn=)
    reason_column: str | None = None

    @property
    def name(self) -> str:
        return instance_name(self.record.address, self.direction)

    def as_dict(self) -> dict[str, Any]:
        """The JSON view (``mailboxes load --json``): never a credential."""
        return {"deployment": self.deployment, "profile": self.profile,
                "mailbox_id": self.record.mailbox_id, "address": self.record.address,
                "direction": self.direction.value, "instance": self.name,
                "owner_id": self.record.owner_id, "owner_type": self.record.owner_type,
                "runs": self.instance is not None, "skipped": self.skipped}  # fmt: skip


def plan(config: Configuration, records: Mapping[str, Sequence[MailboxRecord]]) -> list[Planned]:
    """Every (record, direction) of every ``<LoadMailboxes>``, with its instance or skip reason.

    ``records`` holds each Deployment's mailbox records (a Deployment absent from it loads
    nothing). ConfigError when a profile's per-mailbox credentials cannot be read.
    """
    taken = {p.name for p in config.providers}  # hand-written instances keep their names
    found: list[Planned] = []
    for dep, load in _loads(config):
        profile = config.profile(load.profile)
        creds = ProfileCredentials(profile)
        for record in records.get(dep.name, ()):
            for direction in load.directions:
                item = _plan_one(dep.name, load, profile, creds, record, direction, taken)
                if item.instance is not None:
                    taken.add(item.instance.name)
                found.append(item)
    return found


def _loads(config: Configuration) -> Iterator[tuple[Deployment, LoadMailboxes]]:
    for dep in config.deployments:
        for load in dep.load_mailboxes:
            yield dep, load


def _plan_one(
    deployment: str,
    load: LoadMailboxes,
    profile: EmailServerProfile,
    creds: ProfileCredentials,
    record: MailboxRecord,
    direction: Direction,
    taken: set[str],
) -> Planned:
    item = Planned(
        deployment, profile.name, record, direction, reason_column=load.failure_reason_column
    )
    why = skip_reason(record, direction)
    login = creds.login(record.address) if why is None else None
    if why is None and login is None:
        why = "no credentials (the address is not in <MailboxCredentials>)"
    if why is None and item.name in taken:
        why = f"instance name {item.name!r} is already used"
    if why is not None or login is None:
        return replace(item, skipped=why)
    try:
        cfg = instance_config(profile, deployment, record, direction, login)
    except ValidationError as exc:  # e.g. the record's address makes no valid instance
        why = "; ".join(str(e["msg"]).removeprefix("Value error, ") for e in exc.errors())
        return replace(item, skipped=f"invalid: {why}")
    return replace(item, instance=cfg)


def expand(config: Configuration, records: Mapping[str, Sequence[MailboxRecord]]) -> Configuration:
    """``config`` with an instance per running CRM mailbox, after the hand-written ones."""
    loaded = tuple(p.instance for p in plan(config, records) if p.instance is not None)
    if not loaded:
        return config
    return config.model_copy(update={"providers": config.providers + loaded})


def loads_mailboxes(config: Configuration) -> bool:
    """Whether any Deployment of ``config`` has ``<LoadMailboxes>``."""
    return any(True for _ in _loads(config))


@dataclass
class _Known:
    """The last mailbox list read from one Deployment, and whether the CRM is failing now."""

    deployment: Deployment
    crm: CrmAdapter
    records: list[MailboxRecord] | None = None
    failing: bool = False
    #: when ``records`` were read (epoch seconds)
    read_at: float = 0.0


class MailboxSource(abc.ABC):
    """Where a :class:`~router.runtime.watch.ConfigWatcher` gets the mailbox records from.

    :class:`MailboxLoader` reads the CRM (the runtimes); :class:`RecordedMailboxes` reads the
    lists a runtime recorded in the state store (the console).
    """

    @abc.abstractmethod
    def due(self, config: Configuration) -> bool:
        """Whether the records should be read again now."""

    @abc.abstractmethod
    def read(self, config: Configuration) -> dict[str, list[MailboxRecord]]:
        """Each loading Deployment's records (the last known ones when they cannot be read)."""

    def expand(self, config: Configuration) -> Configuration:
        """Read the records now (see :meth:`read`) and expand ``config`` with them."""
        return expand(config, self.read(config))

    def record_in(self, store: StateStore) -> None:
        """Record the lists read in ``store`` from now on; the default records nothing (a
        source that reads recorded lists)."""

    def close(self) -> None:
        """Release what the source opened (the process is stopping); the default has nothing."""


@dataclass
class MailboxLoader(MailboxSource):
    """Reads each Deployment's mailbox records when due; keeps the last list through outages.

    With a store (:meth:`record_in`), each list read is recorded there for the commands that
    show or act on loaded instances (see the module docstring).
    """

    crm_for: Callable[[Deployment], CrmAdapter] = make_crm
    clock: Callable[[], float] = time.time
    _known: dict[str, _Known] = field(default_factory=dict)
    _bucket: int | None = None
    _read_at: float = 0.0
    _store: StateStore | None = None

    def record_in(self, store: StateStore) -> None:
        """Record every list read from now on in ``store``, and the lists already read."""
        self._store = store
        for name, known in self._known.items():
            self._record(name, known)

    def due(self, config: Configuration) -> bool:
        """Whether a new ``<ConfigUpdatePeriod>`` began since the last read.

        Periods are counted from the epoch, so every process of a cluster reads in the same
        period. Until a Deployment's first successful read, a read is due again after each
        ``<ConfigRefreshPeriod>``: a CRM away at start-up delays the mailboxes only that long.
        """
        if not loads_mailboxes(config):
            return False
        if self._bucket is None or self._period(config) != self._bucket:
            return True
        never_read = any(k.records is None for k in self._known.values())
        return (
            never_read
            and self.clock() - self._read_at >= config.system.config_refresh_period / 1000
        )

    def read(self, config: Configuration) -> dict[str, list[MailboxRecord]]:
        """Each loading Deployment's records: fresh, or the last known when the CRM fails."""
        self._bucket, self._read_at = self._period(config), self.clock()
        wanted = {dep.name: dep for dep, _ in _loads(config)}
        self._forget(set(self._known) - set(wanted))
        found = {name: self._read_one(dep) for name, dep in wanted.items()}
        for name in wanted:
            self._record(name, self._known[name])
        return found

    def close(self) -> None:
        """Close the CRM adapters this loader opened."""
        self._forget(set(self._known))

    def _period(self, config: Configuration) -> int:
        return int(self.clock() * 1000) // config.system.config_update_period

    def _read_one(self, dep: Deployment) -> list[MailboxRecord]:
        known = self._known.get(dep.name)
        if known is None or known.deployment != dep:
            self._forget({dep.name})
            known = self._known[dep.name] = _Known(dep, self.crm_for(dep))
        try:
            records = known.crm.list_mailboxes()
        except CrmError as exc:
            if not known.failing:  # once per outage, not every period
                log.warning("%s: cannot read the CRM's mailboxes, keeping the last known list "
                            "(%d): %s", dep.name, len(known.records or []), exc)  # fmt: skip
            known.failing = True
            return known.records or []
        if known.failing:
            log.info("%s: the CRM's mailboxes can be read again", dep.name)
        known.records, known.failing, known.read_at = records, False, self.clock()
        return records

    def _record(self, deployment: str, known: _Known) -> None:
        """Write ``known``'s list to the store; a store that fails costs only this record."""
        if self._store is None or known.records is None:
            return  # never read: a list recorded earlier (by any process) stays
        try:
            self._store.set_mailbox_list(deployment, _snapshot(known, self.clock()))
        except RouterError as exc:
            log.warning("%s: the mailbox list could not be recorded: %s", deployment, exc)

    def _forget(self, names: set[str]) -> None:
        for name in names:
            known = self._known.pop(name, None)
            if known is not None:
                known.crm.close()


# -- the lists recorded in the state store ------------------------------------------------------
_RECORD_FIELDS = frozenset(f.name for f in fields(MailboxRecord))


def _snapshot(known: _Known, now: float) -> JsonDict:
    """What the store keeps of one Deployment's list: the records, when they were read, and
    whether the last read failed (then they are the last known ones)."""
    return {
        "read_at": known.read_at,
        "recorded_at": now,
        "crm_failing": known.failing,
        "records": [asdict(r) for r in known.records or ()],
    }


def _records_of(doc: JsonDict) -> list[MailboxRecord]:
    """The records of a recorded list (unknown fields ignored: a newer writer's extras; an
    entry that is no record left out)."""
    items = doc.get("records")
    return [
        MailboxRecord(**{k: v for k, v in item.items() if k in _RECORD_FIELDS})
        for item in (items if isinstance(items, list) else ())
        if isinstance(item, dict) and "mailbox_id" in item and "address" in item
    ]


@dataclass
class RecordedMailboxes(MailboxSource):
    """The lists runtimes recorded in ``store``, read again every ``<ConfigRefreshPeriod>``.

    Use it where a process shows the loaded instances without running them (the console): it
    never reaches the CRM. A store that fails keeps the last lists read.
    """

    store: StateStore
    clock: Callable[[], float] = time.monotonic
    _read_at: float | None = None
    _last: dict[str, list[MailboxRecord]] = field(default_factory=dict)

    def due(self, config: Configuration) -> bool:
        if not loads_mailboxes(config):
            return False
        period = config.system.config_refresh_period / 1000
        return self._read_at is None or self.clock() - self._read_at >= period

    def read(self, config: Configuration) -> dict[str, list[MailboxRecord]]:
        self._read_at = self.clock()
        try:
            docs = self.store.mailbox_lists()
        except RouterError as exc:
            log.warning("recorded mailbox lists not read, keeping the last ones: %s", exc)
            return self._last
        wanted = {dep.name for dep, _ in _loads(config)}
        self._last = {n: _records_of(d) for n, d in docs.items() if n in wanted}
        return self._last


@dataclass(frozen=True)
class Recorded:
    """A configuration with the mailboxes a runtime recorded (:func:`recorded_config`)."""

    config: Configuration
    #: names of the instances that come from the CRM
    loaded: frozenset[str]
    #: one line per loading Deployment: how old its list is, or why it is not shown
    notes: tuple[str, ...]
    #: False when some loaded mailboxes are not shown (no list recorded, unreadable store)
    complete: bool = True


def loaded_config(config: Configuration, store: StateStore) -> Configuration:
    """``config`` with the recorded loaded instances (:func:`recorded_config`), the notes
    logged: what a command that acts on one instance by name starts with."""
    recorded = recorded_config(config, store)
    for note in recorded.notes:
        log.log(logging.INFO if recorded.complete else logging.WARNING, "%s", note)
    return recorded.config


def recorded_config(config: Configuration, store: StateStore) -> Recorded:
    """``config`` with the loaded instances of the lists recorded in ``store``.

    Never raises for the lists: an unreadable store or credentials file leaves the file's
    instances alone, and the notes say why the loaded ones are missing.
    """
    if not loads_mailboxes(config):
        return Recorded(config, frozenset(), ())
    try:
        docs = store.mailbox_lists()
        expanded = expand(config, {n: _records_of(d) for n, d in docs.items()})
    except RouterError as exc:
        return Recorded(config, frozenset(), (f"loaded mailboxes not shown: {exc}",), False)
    loaded = expanded.providers[len(config.providers) :]
    deps = list(dict.fromkeys(dep.name for dep, _ in _loads(config)))  # each Deployment once
    notes = tuple(_note(name, docs.get(name), loaded) for name in deps)
    complete = all(name in docs for name in deps)
    return Recorded(expanded, frozenset(p.name for p in loaded), notes, complete)


def _note(deployment: str, doc: JsonDict | None, loaded: Sequence[ProviderConfiguration]) -> str:
    if doc is None:
        return (f"<LoadMailboxes> of {deployment}: no mailbox list recorded yet (no runtime "
                "with this state store has read the CRM); its mailboxes are not shown")  # fmt: skip
    count = sum(1 for p in loaded if p.deployment == deployment)
    when = _iso(float(doc.get("read_at") or 0))
    text = f"<LoadMailboxes> of {deployment}: list read from the CRM at {when}"
    if doc.get("crm_failing"):
        text += f" (the CRM did not answer at {_iso(float(doc.get('recorded_at') or 0))})"
    return f"{text}; {count} instance(s) run from it"


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
