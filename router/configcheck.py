"""Safe parsing and complete checking of the XML configuration file.

:func:`check_file` is what :func:`router.config.load_config` runs. It works in four passes and
collects every problem before giving up, so one run of ``email-router validate`` shows them all:

1. **Parse safely** (:mod:`router.xmlsafe`): any DTD, entity declaration or external entity is
   refused at the ``<!DOCTYPE`` itself, before anything is declared, expanded or fetched; lxml
   then builds the tree (entities, DTD loading and network off) to know each element's line.
2. **Structure.** Walk the tree against the pydantic-xml models: unknown elements (with "did you
   mean"), unknown attributes, missing required elements, elements given twice.
3. **Values.** Bind each top-level element with its model; pydantic's errors are mapped back
   from their ``loc`` to the element they are about.
4. **Meaning.** Duplicate names, Deployment references, provider classes (through the registry),
   Direction against the class, the provider's ``<Parameters>`` options, and every secret source.

Every problem reads ``FILE:LINE: <Element>: what is wrong``. No message ever contains a secret:
values are quoted only for plain settings, never for secret elements.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias, TypeVar, get_args

from lxml import etree
from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo
from pydantic_xml import BaseXmlModel
from pydantic_xml.fields import EntityLocation, XmlEntityInfo

from router import xmlsafe
from router.config import (
    Configuration,
    Deployment,
    ProviderConfiguration,
    Secret,
    SystemConfiguration,
    mask_url,
)
from router.errors import ConfigError

if TYPE_CHECKING:
    from router.providers.base import Provider

Element: TypeAlias = etree._Element
M = TypeVar("M", bound=BaseXmlModel)

#: Top-level elements and the model each binds to.
TOP_LEVEL: dict[str, type[BaseXmlModel]] = {
    "SystemConfiguration": SystemConfiguration,
    "Deployment": Deployment,
    "ProviderConfiguration": ProviderConfiguration,
}


@dataclass(frozen=True, order=True)
class Problem:
    """One thing wrong with the file, at a line, about an element."""

    line: int
    element: str
    text: str

    def format(self, file: str) -> str:
        return f"{file}:{self.line}: <{self.element}>: {self.text}"


@dataclass
class Problems:
    """Collects problems; ``add`` takes the element the problem is about."""

    items: list[Problem] = field(default_factory=list)

    def add(self, el: Element, text: str, element: str | None = None) -> None:
        problem = Problem(el.sourceline or 0, element or _tag(el), text)
        if problem not in self.items:  # structure and binding may both see a missing element
            self.items.append(problem)

    def about(self, el: Element) -> bool:
        """Whether a problem was already reported for ``el``."""
        return any(p.line == el.sourceline and p.element == _tag(el) for p in self.items)

    def raise_if_any(self, file: str) -> None:
        if self.items:
            lines = [p.format(file) for p in sorted(self.items)]
            # The message lists them too: runtimes log str(exc) when a reload fails.
            summary = f"{len(lines)} problem(s) in the configuration:\n" + "\n".join(lines)
            raise ConfigError(summary, lines)


def check_file(path: Path) -> Configuration:
    """Load ``path``; raise ConfigError listing every problem (see the module docstring)."""
    file = str(path)
    root = parse_safely(_read(path), file)
    if root.tag != "Configuration":
        _fail(
            file,
            root.sourceline or 0,
            f"the root element must be <Configuration>, not <{root.tag}>",
        )
    anchor_secret_files(root, path.parent)
    problems = Problems()
    check_structure(root, Configuration, problems)
    bound = {tag: _bind_all(root, tag, model, problems) for tag, model in TOP_LEVEL.items()}
    config = _assemble(bound, problems)
    problems.raise_if_any(file)
    assert config is not None  # no problems means every element was bound
    return config


def anchor_secret_files(root: Element, base: Path) -> None:
    """Make relative ``File=`` secret paths relative to the configuration file, not the cwd.

    The same file then works from any working directory, as mounted secrets do.
    """
    for el in root.iter():
        value = el.get("File")
        if value and not Path(value).is_absolute():
            el.set("File", str((base / value).resolve()))


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
    if missing and missing.endswith("="):  # an attribute: say which
        text = f"{missing} {text}"
    value = error.get("input")
    if isinstance(value, str) and node_model is not Secret:
        text += f" (got {mask_url(value)!r})"  # a StateStore URL may carry a password
    problems.add(node, text)


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
    if problems.items:
        return None
    system = systems[0].model if systems else SystemConfiguration()
    return Configuration(
        system=system,
        deployments=tuple(d.model for d in deployments),
        providers=tuple(p for p in resolved if p is not None),
    )


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
    cfg: ProviderConfiguration = item.model
    cfg = _check_deployment_ref(item, cfg, deployments, problems)
    _check_secret(item, "EmailPassword", cfg.email_password, problems)
    if cls is not None:
        _check_against_class(item, cfg, cls, problems)
    return cfg


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
    from router.providers.registry import resolve

    el = item.child("ProviderClass")
    name = el.text if el is not item.el else None
    if not name:
        return None  # reported as missing or empty by the earlier passes
    try:
        return resolve(name)
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
        cls.parse_options(cfg)
    except ConfigError as exc:
        allowed = _option_names(cls.options_model)
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
            _report_provider_problem(item, text.removeprefix(f"{cfg.name}: "), problems)
    except Exception as exc:
        problems.add(item.el, f"provider {cfg.provider_class!r} rejects this instance: {exc}")


_ELEMENT_FIRST = re.compile(r"^<(?P<tag>\w+)> (?P<text>.*)$", re.S)


def _report_provider_problem(item: Bound, text: str, problems: Problems) -> None:
    """Point ``"<AfterProcessing> 'x' is not possible"`` at that element when it is present."""
    match = _ELEMENT_FIRST.match(text)
    if match is None:
        problems.add(item.el, text)
        return
    el = item.child(match["tag"])
    problems.add(el, match["text"] if el is not item.el else text)


def _option_names(options_model: type[BaseModel]) -> list[str]:
    return [info.alias or name for name, info in options_model.model_fields.items()]


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


def secret_problem(secret: Secret) -> str | None:
    """What is wrong with where ``secret`` comes from, or None; never includes the value."""
    if secret.env and secret.file:
        return "use Env= or File=, not both"
    if (secret.env or secret.file) and (secret.value or "").strip():
        return "has both inline text and Env=/File=: use one"
    if secret.env:
        if secret.env not in os.environ:
            return f"environment variable {secret.env} is not set (export {secret.env}=...)"
        return (
            None
            if os.environ[secret.env].strip()
            else f"environment variable {secret.env} is empty"
        )
    if secret.file:
        return _file_problem(secret.file)
    return None if (secret.value or "").strip() else "is empty (give the secret, Env= or File=)"


def _file_problem(path: str) -> str | None:
    try:
        content = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        return f"cannot read secret file {path!r}: {exc.strerror or type(exc).__name__}"
    except UnicodeDecodeError:
        return f"secret file {path!r} is not UTF-8 text"
    return None if content.strip() else f"secret file {path!r} is empty"
