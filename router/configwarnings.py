"""Warnings about a configuration file that is valid but unsafe, or partly without effect.

Use these once the file is parsed (:func:`router.configcheck.check_file` does):

* :func:`file_warnings` reports every inline secret - a secret element written in the file
  rather than as ``Env=`` / ``File=``, or a ``<StateStore>`` URL with a password - of a file that
  everyone on the machine may read, with the fix.
* :func:`original_setting_warnings` reports each setting of the original router's file that is
  accepted but does nothing here (``<ConfigUpdatePeriod>``, most of ``<ProviderOverrides>``),
  and why.

* :func:`instance_warnings` reports instance settings that cannot work as written: a
  ``<ForwardMailbox>`` whose Deployment knows no user or queue to deliver the originals for,
  and ``<Push>idle</Push>`` on a provider that cannot IDLE (only IMAP can).

Each is one ``FILE:LINE: <Element>: warning: ...`` line per element. Nothing here stops the
router: ``validate`` prints the lines, the runtimes log them when they load the file.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any, TypeAlias, get_args

from lxml import etree
from pydantic_xml import BaseXmlModel
from pydantic_xml.fields import XmlEntityInfo

from router.config import OVERRIDE_NO_EFFECT, Configuration, ProviderConfiguration, Secret, mask_url
from router.errors import ConfigError
from router.models import Direction
from router.providers.registry import resolve

Element: TypeAlias = etree._Element


def file_warnings(path: Path, root: Element) -> list[str]:
    """One warning per inline secret when ``path`` is readable by everyone, else none."""
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        return []
    if not mode & stat.S_IROTH:
        return []
    return [
        f"{path}:{el.sourceline or 0}: <{el.tag}>: warning: inline secret in a file readable by "
        f"everyone (mode {mode:04o}): chmod 600 {path}, or {_alternative(el)} instead"
        for el in inline_secrets(root)
    ]


#: Elements of ``<SystemConfiguration>`` accepted from the original file without effect, and why.
SYSTEM_NO_EFFECT = {
    "ConfigUpdatePeriod": (
        "no <Deployment> has <LoadMailboxes>, so no mailboxes are loaded from the CRM; the "
        "file itself is re-read every <ConfigRefreshPeriod>"
    ),
}


def original_setting_warnings(path: Path, root: Element) -> list[str]:
    """One warning per setting of the original router's file that has no effect here."""
    found: list[tuple[int, str, str]] = []
    for parent, table in (
        ("SystemConfiguration", SYSTEM_NO_EFFECT),
        ("ProviderOverrides", OVERRIDE_NO_EFFECT),
    ):
        for block in root.iter(parent):
            loads = next(root.iter("LoadMailboxes"), None) is not None
            if parent == "SystemConfiguration" and loads:
                continue  # <ConfigUpdatePeriod> paces the refresh of the loaded mailboxes
            found += [
                (el.sourceline or 0, str(el.tag), table[str(el.tag)])
                for el in block
                if isinstance(el.tag, str) and el.tag in table
            ]
    return [
        f"{path}:{line}: <{tag}>: warning: has no effect here: {why}"
        for line, tag, why in sorted(found)
    ]


def instance_warnings(path: Path, root: Element, config: Configuration) -> list[str]:
    """One warning per ``<ForwardMailbox>`` without owners and per ``<Push>idle`` that
    cannot IDLE, each at the line of its element."""
    elements = {el.get("Name"): el for el in root.iter("ProviderConfiguration")}
    found: list[tuple[int, str, str]] = []
    for cfg in config.providers:
        el = elements.get(cfg.name)
        for tag, why in (("ForwardMailbox", _forward_problem(config, cfg)),
                         ("Push", _push_problem(cfg))):  # fmt: skip
            if why is not None:
                child = el.find(tag) if el is not None else None
                line = child.sourceline if child is not None else getattr(el, "sourceline", 0)
                found.append((line or 0, tag, why))
    return [f"{path}:{line}: <{tag}>: warning: {why}" for line, tag, why in sorted(found)]


def _forward_problem(config: Configuration, cfg: ProviderConfiguration) -> str | None:
    """Why ``cfg``'s forwarded originals can reach no owner, or None."""
    if not cfg.forward_mailbox or cfg.direction is not Direction.INCOMING:
        return None
    dep = next((d for d in config.deployments if d.name == cfg.deployment), None)
    if dep is not None and dep.load_mailboxes:
        return None  # the CRM's mailboxes are its owners
    owners = [
        p.name
        for p in config.providers
        if p is not cfg and p.deployment == cfg.deployment and p.email_address
        and (p.user_ids or p.queue_ids)
    ]  # fmt: skip
    if owners:
        return None
    return (
        f"Deployment {cfg.deployment!r} names no CRM user or queue (no <LoadMailboxes>, no other "
        "instance with <EmailAddress> and <UserId>/<QueueId>): every forwarded original would "
        f"be handled by <ForwardUnknownPolicy> ({cfg.forward_unknown_policy})"
    )


def _push_problem(cfg: ProviderConfiguration) -> str | None:
    """Why ``<Push>idle</Push>`` does nothing for ``cfg``, or None."""
    if cfg.push != "idle":
        return None
    if cfg.direction is not Direction.INCOMING:
        return "has no effect on an outgoing instance (only incoming mailboxes are watched)"
    try:
        capabilities = resolve(cfg.provider_class, cfg.direction).capabilities
    except ConfigError:  # reported as a problem of <ProviderClass> already
        return None
    if "idle" in capabilities:
        return None
    return (
        f"has no effect: provider {cfg.provider_class!r} cannot IDLE (only IMAP can); the "
        "instance is polled every <PollingPeriod>"
    )


def _alternative(el: Element) -> str:
    if el.tag == "StateStore":
        return "set the URL in ROUTER_STATE_URL"
    return 'give the secret as Env="VAR" or File="/path"'


def inline_secrets(root: Element) -> list[Element]:
    """The elements of ``root`` whose secret is written in the file itself, in file order."""
    tags = secret_tags(Configuration)
    found = []
    for el in root.iter():
        if not isinstance(el.tag, str):
            continue  # comments and processing instructions
        text = (el.text or "").strip()
        if (el.tag in tags and text and not (el.get("Env") or el.get("File"))) or (
            el.tag == "StateStore" and mask_url(text) != text
        ):
            found.append(el)
    return found


def secret_tags(model: type[BaseXmlModel]) -> frozenset[str]:
    """Tags of every element, at any depth of ``model``, that holds a :class:`Secret`."""
    tags: set[str] = set()
    for name, info in model.model_fields.items():
        xml = next((m for m in info.metadata if isinstance(m, XmlEntityInfo)), None)
        for sub in _models_in(info.annotation):
            if sub is Secret:
                tags.add(xml.path if xml is not None and xml.path else name)
            else:
                tags |= secret_tags(sub)
    return frozenset(tags)


def _models_in(annotation: Any) -> list[type[BaseXmlModel]]:
    """The XML models an annotation refers to (also inside tuples and Optional)."""
    todo, found = [annotation], []
    while todo:
        tp = todo.pop()
        if isinstance(tp, type) and issubclass(tp, BaseXmlModel):
            found.append(tp)
        else:
            todo.extend(get_args(tp))
    return found
