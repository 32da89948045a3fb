"""An incoming provider reading a Maildir (``<ProviderClass>maildir</ProviderClass>``).

Features: lists messages of ``new/`` and ``cur/`` in delivery order, fetches their exact bytes,
post-processes them (``seen`` moves to ``cur/`` with the S flag, ``delete`` removes the file,
``move:Folder`` moves it into the Maildir++ folder ``.Folder``).

Options (``<Parameters>``): ``path`` - the Maildir directory (with ``new/``, ``cur/``, ``tmp/``).

Cursor: ``{"after": [seconds, microseconds, counter, name]}``, the delivery-order key of the
last message staged; delivery order comes from the unique file names the Maildir spec makes.
"""

from __future__ import annotations

import mailbox
import re
from collections.abc import Sequence
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from router.config import ProviderConfiguration
from router.errors import ConfigError
from router.models import MessageRef
from router.providers.base import IncomingProvider, InstanceState, JsonDict

#: ``<seconds>.M<microseconds>P<pid>Q<counter>.<host>``: the names Python and most MDAs make.
_NAME = re.compile(r"^(\d+)\.(?:M(\d+))?\D*(?:Q(\d+))?")
OrderKey = tuple[int, int, int, str]


class MaildirOptions(BaseModel):
    """``path``: the Maildir directory to read."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    path: str


def order_key(name: str) -> OrderKey:
    """Delivery order of a Maildir file name (foreign names sort by their name)."""
    match = _NAME.match(name)
    if match is None:
        return (0, 0, 0, name)
    seconds, micros, counter = (int(g or 0) for g in match.groups())
    return (seconds, micros, counter, name)


class MaildirProvider(IncomingProvider):
    """Reads the Maildir at ``path``; use it where an MDA delivers into a local directory."""

    alias = "maildir"
    options_model = MaildirOptions
    capabilities = frozenset({"seen", "move", "delete"})

    def __init__(self, config: ProviderConfiguration) -> None:
        super().__init__(config)
        self.path = Path(self.options.path)
        self.box: mailbox.Maildir | None = None

    def _connect(self) -> None:
        if not (self.path / "new").is_dir():
            raise ConfigError(f"{self.name}: <Parameter Name='path'>: not a Maildir: {self.path}")
        self.box = mailbox.Maildir(self.path, factory=None, create=False)

    def _close(self) -> None:
        self.box = None

    def _list_new(self, state: InstanceState, limit: int) -> Sequence[MessageRef]:
        after = tuple((state.cursor or {}).get("after", (-1, 0, 0, "")))
        keys = sorted((k for k in self._box().iterkeys() if order_key(k) > after), key=order_key)
        return [MessageRef(k, self._size(k)) for k in keys[:limit]]

    def _fetch(self, ref: MessageRef) -> bytes:
        return self._box().get_bytes(ref.key)

    def _advance(self, state: InstanceState, refs: Sequence[MessageRef]) -> JsonDict:
        if not refs:
            return state.cursor or {}
        return {"after": list(max(order_key(r.key) for r in refs))}

    def _post_process(self, refs: Sequence[MessageRef], action: str) -> None:
        box = self._box()
        for ref in refs:
            if ref.key not in box:
                continue  # gone already (an earlier, interrupted post-processing)
            if action == "delete":
                box.discard(ref.key)
            elif action == "seen":
                self._mark_seen(box, ref.key)
            elif action.startswith("move:"):
                self._move(box, ref.key, action.removeprefix("move:"))

    def _mark_seen(self, box: mailbox.Maildir, key: str) -> None:
        message = box[key]
        message.set_subdir("cur")
        message.add_flag("S")
        box[key] = message

    def _move(self, box: mailbox.Maildir, key: str, folder: str) -> None:
        target = box.add_folder(folder) if folder not in box.list_folders() else None
        target = target or box.get_folder(folder)
        target.add(box.get_bytes(key))
        box.discard(key)

    def _size(self, key: str) -> int:
        return len(self._box().get_bytes(key))

    def _box(self) -> mailbox.Maildir:
        assert self.box is not None, "open() first"
        return self.box
