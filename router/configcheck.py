"""Safe parsing and complete checking of the XML configuration file.

:func:`load_config` is how every runtime and command reads the file (the models are in
:mod:`router.config`). Its :func:`check_file` works in four passes and collects every problem
before giving up, so one run of ``email-router validate`` shows them all:

1. **Parse safely** (:mod:`router.xmlsafe`): any DTD, entity declaration or external entity is
   refused at the ``<!DOCTYPE`` itself, before anything is declared, expanded or fetched; lxml
   then builds the tree (entities, DTD loading and network off) to know each element's line.
2. **Structure.** Walk the tree against the pydantic-xml models: unknown elements (with "did you
   mean"), unknown attributes, missing required elements, elements given twice.
3. **Values.** Bind each top-level element with its model; pydantic's errors are mapped back
   from their ``loc`` to the element they are about.
4. **Meaning.** Duplicate names, Deployment references, provider classes (through the registry),
   Direction against the class, the provider's ``<Parameters>`` options, and every secret source.

Settings carried over from the original router's file are taken as they are (numeric
``<LogLevel>``, ``<LogFile>`` - a relative path is anchored beside the file, like ``File=``) or
mapped (``<ProviderOverrides>``: :func:`router.config.apply_overrides`).

Then :mod:`router.configwarnings` looks for what is valid but unsafe (inline secrets in a file
readable by everyone) or without effect here (the original's ``<ConfigUpdatePeriod>``, most
``<ProviderOverrides>``); those are warnings, returned, never raised.

Every problem reads ``FILE:LINE: <Element>: what is wrong``. No message ever contains a secret:
values are quoted only for plain settings, never for secret elements.
"""

from __future__ import annotations

import difflib
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeAlias, TypeVar, get_args

from lxml import etree
from pydantic import ValidationError
from pydantic.fields import FieldInfo
from pydantic_xml import BaseXmlModel
from pydantic_xml.fields import XmlEntityInfo
from pydantic_xml.typedefs import EntityLocation

from router import xmlsafe
from router.config import (
    OVERRIDE_SETTINGS,
    Configuration,
    Deployment,
    EmailServerProfile,
    ProviderConfiguration,
    Secret,
    SystemConfiguration,
    apply_overrides,
    mask_url,
    secret_problem,
)
from router.configwarnings import file_warnings, instance_warnings, original_setting_warnings
from router.errors import ConfigError
from router.mailboxes import ProfileCredentials, sample_instance
from router.models import Direction
from router.providers.base import Provider, option_names
from router.providers.registry import resolve

# the warnings of a loaded file keep the logger name they always had (log filters use it)
log = logging.getLogger("router.config")

Element: TypeAlias = etree._Element
M = TypeVar("M", bound=BaseXmlModel)

#: Top-level elements and the model each binds to.
TOP_LEVEL: dict[str, type[BaseXmlModel]] = {
    "SystemConfiguration": SystemConfiguration,
    "Deployment": Deployment,
    "ProviderConfiguration": ProviderConfiguration,
    "EmailServerProfile": EmailServerProfile,
}


@dataclass(frozen=True, order=True)
class Problem:
    """One thing wrong with the file, at a line, about an element."""

    line: int
    element: str
    text: str

    def format(self, file: str) -> str:
        """The line users see: ``FILE:LINE: <Element>: problem``."""
        return f"{file}:{self.line}: <{self.element}>: {self.text}"


@dataclass
class Problems:
    """Collects problems; ``add`` takes the element the problem is about."""

    items: list[Problem] = field(default_factory=list)

    def add(self, el: Element, text: str, element: str | None = None) -> None:
        """Report ``text`` at ``el``'s line (named ``element`` when given, else by its tag)."""
        problem = Problem(el.sourceline or 0, element or _tag(el), text)
        if problem not in self.items:  # structure and binding may both see a missing element
            self.items.append(problem)

    def about(self, el: Element) -> bool:
        """Whether a problem was already reported for ``el``."""
        return any(p.line == el.sourceline and p.element == _tag(el) for p in self.items)

    def raise_if_any(self, file: str) -> None:
        """Raise one ConfigError listing every problem, sorted by line, if there is any."""
        if self.items:
            lines = [p.format(file) for p in sorted(self.items)]
            # The message lists them too: runtimes log str(exc) when a reload fails.
            summary = f"{len(lines)} problem(s) in the configuration:\n" + "\n".join(lines)
            raise ConfigError(summary, lines)


def load_config(path: Path, *, warnings: list[str] | None = None) -> Configuration:
    """Parse and check the configuration file at ``path``: what every runtime starts with.

    Refuses DTDs and entities, checks every element, value, reference, provider class, provider
    ``<Parameters>`` and secret source, and raises :class:`~router.errors.ConfigError` whose
    ``problems`` lists all of them as ``FILE:LINE: <Element>: what is wrong``.

    Warnings (e.g. inline secrets in a file readable by everyone) do not stop anything: they are
    appended to ``warnings`` when the caller shows them itself (``validate``), else logged, so
    every runtime (``run``, Celery workers, beat) reports them when it loads the file.
    """
    found: list[str] = []
    config = check_file(Path(path), found)
    if warnings is not None:
        warnings.extend(found)
        return config
    for line in found:
        log.warning("%s", line)
    return config


def check_file(path: Path, warnings: list[str] | None = None) -> Configuration:
    """Load ``path``; raise ConfigError listing every problem (see the module docstring).

    Warnings about a valid file are appended to ``warnings`` when it is given.
    """
    file = str(path)
    root = parse_safely(_read(path), file)
    if root.tag != "Configuration":
        _fail(
            file,
            root.sourceline or 0,
            f"the root element must be <Configuration>, not <{root.tag}>",
        )
    anchor_secret_files(root, path.parent)
    anchor_log_file(root, path.parent)
    problems = Problems()
    check_structure(root, Configuration, problems)
    bound = {tag: _bind_all(root, tag, model, problems) for tag, model in TOP_LEVEL.items()}
    config = _assemble(bound, problems)
    problems.raise_if_any(file)
    assert config is not None  # no problems means every element was bound
    if warnings is not None:
        warnings.extend(file_warnings(path, root))
        warnings.extend(original_setting_warnings(path, root))
        warnings.extend(instance_warnings(path, root, config))
    return config


def anchor_secret_files(root: Element, base: Path) -> None:
    """Make relative ``File=`` secret paths relative to the configuration file, not the cwd.

    The same file then works from any working directory, as mounted secrets do.
    """
    for el in root.iter():
        value = el.get("File")
        if value and not Path(value).is_absolute():
            el.set("File", str((base / value).resolve()))


def anchor_log_file(root: Element, base: Path) -> None:
    """Make a relative ``<LogFile>`` relative to the configuration file, as ``File=`` secrets."""
    for el in root.iter("LogFile"):
        value = (el.text or "").strip()
        if value and not Path(value).is_absolute():
            el.text = str((base / value).resolve())


# -- pass 1: parsing ----------------------------------------------------------------------------


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        reason = "file not found" if isinstance(exc, FileNotFoundError) else exc.strerror
        raise ConfigError(
            f"{path}: {reason}", [f"{path}:0: <Configuration>: cannot read the file: {reason}"]
        ) from None


def parse_safely(data: bytes, file: str) -> Element:
    """Parse ``data`` without DTDs or entities; ConfigError carries the line of the problem."""
    try:
        return xmlsafe.parse(data)
    except xmlsafe.XmlRefused as exc:
        return _fail(file, exc.line, exc.reason)


def _fail(file: str, line: int, text: str) -> Any:
    problem = Problem(line, "Configuration", text).format(file)
    raise ConfigError(problem, [problem]) from None


def _tag(el: Element) -> str:
    return str(el.tag)


def _children(el: Element) -> Iterator[Element]:
    return (c for c in el if isinstance(c.tag, str))


# -- the models' XML shape ------------------------------------------------------------------------


@dataclass(frozen=True)
class Shape:
    """What a model accepts: attribute names, child tags and whether it holds text."""

    attrs: dict[str, str]  # XML attribute name -> field name
    elements: dict[str, str]  # child tag -> field name
    text: str | None  # field holding the element's text, if any

    @staticmethod
    def of(model: type[BaseXmlModel]) -> Shape:
        """The shape of ``model`` from its pydantic-xml fields."""
        attrs, elements, text = {}, {}, None
        for name, info in model.model_fields.items():
            xml = _xml_info(info)
            if xml is None or xml.location is None:
                text = name
            elif xml.location is EntityLocation.ATTRIBUTE:
                attrs[xml.path or name] = name
            else:
                elements[xml.path or name] = name
        return Shape(attrs, elements, text)


def _xml_info(info: FieldInfo) -> XmlEntityInfo | None:
    return next((m for m in info.metadata if isinstance(m, XmlEntityInfo)), None)


def _submodel(info: FieldInfo) -> type[BaseXmlModel] | None:
    """The model a field's element binds to (also inside tuples and Optional), else None."""
    todo: list[Any] = [info.annotation]
    while todo:
        tp = todo.pop()
        if isinstance(tp, type) and issubclass(tp, BaseXmlModel):
            return tp
        todo.extend(get_args(tp))
    return None


def _repeated(info: FieldInfo) -> bool:
    return getattr(info.annotation, "__origin__", None) is tuple


def _suggest(name: str, known: list[str]) -> str:
    match = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    return f"; did you mean <{match[0]}>?" if match else ""


# -- pass 2: structure ------------------------------------------------------------------------


def check_structure(el: Element, model: type[BaseXmlModel], problems: Problems) -> None:
    """Report unknown, missing and repeated elements and attributes of ``el`` and below."""
    shape = Shape.of(model)
    _check_attrs(el, shape, problems)
    _check_children(el, model, shape, problems)
    _check_required(el, model, problems)


def _check_attrs(el: Element, shape: Shape, problems: Problems) -> None:
    for name in el.attrib:
        if name not in shape.attrs:
            allowed = ", ".join(f"{a}=" for a in shape.attrs) or "none"
            hint = difflib.get_close_matches(str(name), list(shape.attrs), n=1)
            suggestion = f"; did you mean {hint[0]}=?" if hint else ""
            problems.add(el, f"unknown attribute {name}={suggestion} (allowed: {allowed})")


def _check_children(
    el: Element, model: type[BaseXmlModel], shape: Shape, problems: Problems
) -> None:
    first: dict[str, Element] = {}
    for child in _children(el):
        tag = _tag(child)
        if tag not in shape.elements:
            hint = _suggest(tag, list(shape.elements))
            problems.add(child, f"unknown element in <{_tag(el)}>{hint}")
            continue
        info = model.model_fields[shape.elements[tag]]
        if tag in first and not _repeated(info):
            line = first[tag].sourceline
            problems.add(child, f"given more than once in <{_tag(el)}> (first at line {line})")
        first.setdefault(tag, child)
        _check_child(child, info, problems)
    if shape.text is None and (el.text or "").strip():
        problems.add(el, "unexpected text: only child elements belong here")


def _check_child(child: Element, info: FieldInfo, problems: Problems) -> None:
    sub = _submodel(info)
    if sub is not None:
        check_structure(child, sub, problems)
    elif len(child):
        problems.add(child, "expected a value, not child elements")


def _check_required(el: Element, model: type[BaseXmlModel], problems: Problems) -> None:
    present = {_tag(c) for c in _children(el)}
    for name, info in model.model_fields.items():
        xml = _xml_info(info)
        if not info.is_required() or xml is None:
            continue
        key = xml.path or name
        if xml.location is EntityLocation.ATTRIBUTE and key not in el.attrib:
            problems.add(el, f"missing required attribute {key}=")
        elif xml.location is EntityLocation.ELEMENT and key not in present:
            problems.add(el, f"missing required element <{key}>")


# -- pass 3: binding --------------------------------------------------------------------------


@dataclass
class Bound:
    """A top-level element and the model bound from it (None when binding failed)."""

    el: Element
    model: Any

    def child(self, tag: str) -> Element:
        """The child ``tag`` for pointing at a line, else the element itself."""
        return next((c for c in _children(self.el) if c.tag == tag), self.el)


def _bind_all(
    root: Element, tag: str, model: type[BaseXmlModel], problems: Problems
) -> list[Bound]:
    return [Bound(el, bind(el, model, problems)) for el in _children(root) if el.tag == tag]


def bind(el: Element, model: type[M], problems: Problems) -> M | None:
    """Bind ``el`` with ``model``; map each validation error back to its element."""
    try:
        return model.from_xml_tree(el)
    except ValidationError as exc:
        for error in exc.errors():
            _report(el, model, error, problems)
        return None


def _report(el: Element, model: type[BaseXmlModel], error: Any, problems: Problems) -> None:
    node, node_model, missing = locate(el, model, tuple(error["loc"]))
    if error["type"] == "missing":
        problems.add(node, f"missing required {_describe_missing(missing)}")
        return
    text = _humanize(error)
    if not error["loc"]:  # a rule across fields names its element first: "<EmailSecurity> ..."
        _report_at_element(Bound(node, None), text, problems)
        return
    if missing and missing.endswith("="):  # an attribute: say which
        text = f"{missing} {text}"
    value = error.get("input")
    if isinstance(value, str) and node_model is not Secret:
        text += f" (got {_clip(mask_url(value))!r})"  # a StateStore URL may carry a password
    problems.add(node, text)


def _clip(value: str, width: int = 80) -> str:
    return value if len(value) <= width else value[: width - 3] + "..."


def _describe_missing(missing: str | None) -> str:
    if missing is None:
        return "value"
    return f"attribute {missing}" if missing.endswith("=") else f"element <{missing}>"


def locate(
    el: Element, model: type[BaseXmlModel], loc: tuple[Any, ...]
) -> tuple[Element, type[BaseXmlModel], str | None]:
    """Follow a pydantic ``loc`` down the tree: (element, its model, missing child or attr=)."""
    node, cls, i = el, model, 0
    while i < len(loc):
        info = cls.model_fields.get(str(loc[i]))
        xml = _xml_info(info) if info else None
        if info is None or xml is None or xml.location is None:
            break
        if xml.location is EntityLocation.ATTRIBUTE:
            return node, cls, f"{xml.path}="
        index = loc[i + 1] if i + 1 < len(loc) and isinstance(loc[i + 1], int) else 0
        i += 2 if i + 1 < len(loc) and isinstance(loc[i + 1], int) else 1
        found = [c for c in _children(node) if c.tag == xml.path]
        if index >= len(found):
            return node, cls, xml.path
        node, sub = found[index], _submodel(info)
        if sub is None:
            return node, cls, None
        cls = sub
    return node, cls, None


def _humanize(error: Any) -> str:
    kind = error["type"]
    if kind == "bool_parsing":
        return "must be true or false"
    if kind in ("int_parsing", "int_from_float", "int_type"):
        return "must be a whole number"
    msg = str(error.get("ctx", {}).get("orig") or error["msg"])
    msg = msg.removeprefix("Value error, ")
    return re.sub(r"^(Input|String|Value) should", "must", msg)


# -- pass 4: meaning --------------------------------------------------------------------------


def _assemble(bound: dict[str, list[Bound]], problems: Problems) -> Configuration | None:
    systems, deployments, providers = (
        bound["SystemConfiguration"],
        bound["Deployment"],
        bound["ProviderConfiguration"],
    )
    _check_unique(deployments, "Deployment", problems)
    _check_unique(providers, "ProviderConfiguration", problems)
    for dep in deployments:
        if dep.model is not None:
            _check_secret(dep, "ClientSecret", dep.model.client_secret, problems)
    # Names from the elements, so a Deployment with a bad value is still known by name.
    names = list(dict.fromkeys(n for d in deployments if (n := d.el.get("Name")) is not None))
    resolved = [_check_provider(p, names, problems) for p in providers]
    for system_item in systems:
        _check_log_file(system_item, problems)
    _check_profiles(bound["EmailServerProfile"], deployments, problems)
    if problems.items:
        return None
    system = systems[0].model if systems else SystemConfiguration()
    return Configuration(
        system=system,
        deployments=tuple(d.model for d in deployments),
        providers=tuple(p for p in resolved if p is not None),
        profiles=tuple(p.model for p in bound["EmailServerProfile"]),
    )


def _check_profiles(profiles: list[Bound], deployments: list[Bound], problems: Problems) -> None:
    """Profile names, secrets and classes; each ``<LoadMailboxes Profile=…>`` names one."""
    _check_unique(profiles, "EmailServerProfile", problems)
    by_name = {p.el.get("Name"): p for p in profiles}
    used: dict[str, set[Direction]] = {}
    for dep in deployments:
        for el in dep.el.iter("LoadMailboxes"):
            name = el.get("Profile") or ""
            if name not in by_name:
                known = ", ".join(repr(n) for n in by_name) or "none"
                problems.add(el, f"unknown EmailServerProfile {name!r} (defined: {known})")
        for load in dep.model.load_mailboxes if dep.model is not None else ():
            used.setdefault(load.profile, set()).update(load.directions)
    for item in profiles:
        if item.model is not None:
            _check_secret(item, "EmailPassword", item.model.email_password, problems)
            _check_secret(item, "MailboxCredentials", item.model.mailbox_credentials, problems)
            for direction in sorted(used.get(item.model.name, ()), key=lambda d: d.value):
                _check_profile_direction(item, direction, problems)


def _check_profile_direction(item: Bound, direction: Direction, problems: Problems) -> None:
    """Build the instance a mailbox would get, and check it as a hand-written one is checked."""
    profile: EmailServerProfile = item.model
    tag = "IncomingProviderClass" if direction is Direction.INCOMING else "OutgoingProviderClass"
    try:
        ProfileCredentials(profile)  # per-mailbox credentials: readable, a JSON object
    except ConfigError as exc:
        problems.add(item.child("MailboxCredentials"), str(exc).split(": ", 1)[-1])
    try:
        cfg = sample_instance(profile, direction)
    except ValidationError as exc:  # e.g. cleartext passwords: say it in the profile's words
        side = direction.value
        for error in exc.errors():
            text = _humanize(error)
            for own in ("Server", "Port", "Security"):  # the instance's element -> the profile's
                text = text.replace(f"<Email{own}>", f"<{side}{own}>")
            problems.add(item.el, f"{side} instances would be invalid: {text}")
        return
    try:
        cls = resolve(cfg.provider_class, direction.value)
    except ConfigError as exc:
        problems.add(item.child(tag), str(exc))
        return
    if not problems.about(item.el):
        _check_against_class(item, cfg, cls, problems)


def _check_unique(items: list[Bound], tag: str, problems: Problems) -> None:
    seen: dict[str, Element] = {}
    for item in items:
        name = item.el.get("Name")
        if name is None:
            continue
        if name in seen:
            line = seen[name].sourceline
            problems.add(item.el, f"duplicate Name {name!r} (first defined at line {line})", tag)
        seen.setdefault(name, item.el)


def _check_provider(
    item: Bound, deployments: list[str], problems: Problems
) -> ProviderConfiguration | None:
    cls = _resolve_class(item, problems)  # also when binding failed: show every problem
    _check_parameter_names(item, problems)
    if item.model is None:
        return None
    cfg: ProviderConfiguration = _check_overrides(item, item.model, problems)
    cfg = _check_deployment_ref(item, cfg, deployments, problems)
    _check_secret(item, "EmailPassword", cfg.email_password, problems)
    if cls is not None:
        _check_against_class(item, cfg, cls, problems)
    return cfg


def _check_overrides(
    item: Bound, cfg: ProviderConfiguration, problems: Problems
) -> ProviderConfiguration:
    """Apply ``<ProviderOverrides>``; a setting given both there and directly is refused."""
    block = item.child("ProviderOverrides")
    if block is item.el:
        return cfg
    for tag, (_, _, own_tag) in OVERRIDE_SETTINGS.items():
        override = next((c for c in _children(block) if c.tag == tag), None)
        own = item.child(own_tag)
        if override is not None and own is not item.el:
            problems.add(
                override,
                f"sets <{own_tag}>, which this instance also gives (line {own.sourceline}): "
                "keep one of them",
            )
    return apply_overrides(cfg)


def _check_log_file(item: Bound, problems: Problems) -> None:
    system: SystemConfiguration | None = item.model
    if system is None or system.log_file is None:
        return
    folder = Path(system.log_file).parent
    if not folder.is_dir():
        problems.add(item.child("LogFile"), f"the folder {str(folder)!r} does not exist")


def _check_deployment_ref(
    item: Bound, cfg: ProviderConfiguration, deployments: list[str], problems: Problems
) -> ProviderConfiguration:
    if cfg.deployment is None:
        if len(deployments) == 1:  # the common single-organisation file need not repeat it
            return cfg.model_copy(update={"deployment": deployments[0]})
        why = "no <Deployment> is defined" if not deployments else "several Deployments exist"
        problems.add(item.el, f"missing required element <Deployment> ({why})")
    elif cfg.deployment not in deployments:
        hint = difflib.get_close_matches(cfg.deployment, deployments, n=1)
        suggestion = f"; did you mean {hint[0]!r}?" if hint else ""
        known = ", ".join(repr(d) for d in deployments) or "none"
        text = f"unknown Deployment {cfg.deployment!r}{suggestion} (defined: {known})"
        problems.add(item.child("Deployment"), text)
    return cfg


def _resolve_class(item: Bound, problems: Problems) -> type[Provider] | None:
    el = item.child("ProviderClass")
    name = el.text if el is not item.el else None
    if not name:
        return None  # reported as missing or empty by the earlier passes
    try:
        return resolve(name, item.child("Direction").text)  # "graph" names a class per direction
    except ConfigError as exc:
        problems.add(el, str(exc))
    except Exception as exc:  # a plug-in that fails to import must not crash validation
        problems.add(el, f"cannot load provider {name!r}: {type(exc).__name__}: {exc}")
    return None


def _check_against_class(
    item: Bound, cfg: ProviderConfiguration, cls: type[Provider], problems: Problems
) -> None:
    if cls.direction != cfg.direction:
        text = (
            f"provider {cfg.provider_class!r} ({cls.__name__}) is {cls.direction.value}, "
            f"not {cfg.direction.value}"
        )
        problems.add(item.child("Direction"), text)
    try:
        model = cls.model_of_options()
    except ConfigError as exc:
        problems.add(item.child("ProviderClass"), str(exc))
        return
    try:
        cls.parse_options(cfg)
    except ConfigError as exc:
        allowed = option_names(model)
        for text in exc.problems:
            _report_parameter(item, text, allowed, problems)
        return
    _check_construction(item, cfg, cls, problems)


def _check_construction(
    item: Bound, cfg: ProviderConfiguration, cls: type[Provider], problems: Problems
) -> None:
    # Providers check what they need (EmailServer, EmailUser, POP3 actions...) in __init__,
    # which must not connect; building one here surfaces those problems at validation time.
    try:
        cls(cfg)
    except ConfigError as exc:
        for text in exc.problems:
            _report_at_element(item, text.removeprefix(f"{cfg.name}: "), problems)
    except Exception as exc:
        problems.add(item.el, f"provider {cfg.provider_class!r} rejects this instance: {exc}")


_ELEMENT_FIRST = re.compile(r"^<(?P<tag>\w+)> (?P<text>.*)$", re.S)


def _report_at_element(item: Bound, text: str, problems: Problems) -> None:
    """Point ``"<AfterProcessing> 'x' is not possible"`` at that element when it is present."""
    match = _ELEMENT_FIRST.match(text)
    if match is None:
        problems.add(item.el, text)
        return
    el = item.child(match["tag"])
    problems.add(el, match["text"] if el is not item.el else text)


_PARAMETER_PROBLEM = re.compile(r"^<Parameter Name='(?P<name>[^']*)'>: (?P<text>.*)$", re.S)


def _report_parameter(item: Bound, text: str, allowed: list[str], problems: Problems) -> None:
    match = _PARAMETER_PROBLEM.match(text)
    if match is None:
        problems.add(item.child("Parameters"), text.removeprefix(f"{item.model.name}: "))
        return
    name, text = match["name"], _humanize_option(match["name"], match["text"], allowed)
    element = f"Parameter Name={name!r}"
    params = item.child("Parameters")
    for el in params.iter("Parameter"):
        if el.get("Name") == name:
            problems.add(el, text, element)
            return
    problems.add(params, text, element)  # a required option that is missing


def _humanize_option(name: str, text: str, allowed: list[str]) -> str:
    if text == "Extra inputs are not permitted":
        hint = difflib.get_close_matches(name, allowed, n=1)
        suggestion = f"; did you mean {hint[0]!r}?" if hint else ""
        return f"unknown parameter{suggestion} (allowed: {', '.join(allowed) or 'none'})"
    if text == "Field required":
        return "missing required parameter"
    text = text.removeprefix("Value error, ")
    return re.sub(r"^(Input|String|Value) should", "must", text)


def _check_parameter_names(item: Bound, problems: Problems) -> None:
    first: dict[str, int] = {}
    for el in item.child("Parameters").iter("Parameter"):
        name = el.get("Name") or ""
        if name in first:
            problems.add(el, f"given more than once (first at line {first[name]})")
        first.setdefault(name, el.sourceline or 0)


def _check_secret(item: Bound, tag: str, secret: Secret | None, problems: Problems) -> None:
    el = item.child(tag)
    if secret is None or problems.about(el):  # e.g. a misspelt Env= already explains it
        return
    text = secret_problem(secret)
    if text:
        problems.add(el, text)
